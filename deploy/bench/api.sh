#!/usr/bin/env bash
# Dashboard API latency over a day of data (qoeflow, Parquet backend, as written and compacted, with a
# DuckDB baseline over the same files) and freshness of `qoeflow serve` under `qoeflow loadgen` traffic
# (beacon accepted -> counted by /api/v1/metrics).
#
#   deploy/bench/api.sh [VIEWS=50000] [EPOCHS=8640] [RUNS=9] [LOAD_VIEWERS=3000]
#
# Needs what ./deploy/test.sh installs (DuckDB from tests/requirements.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
views="${1:-50000}"; epochs="${2:-8640}"; runs="${3:-9}"; load="${4:-3000}"
work="$(mktemp -d)"; trap 'kill "${serve_pid:-0}" "${load_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release -q -p qoeflow --bin qoeflow -p bench --bin bench_api
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
./target/release/bench_api "$work/day" "$views" "$epochs" "$runs"
echo
python3 deploy/bench/duckdb_api.py "$work/day" "$runs"
echo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/qoeflow serve --listen "127.0.0.1:$port" --data-dir "$work/serve" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# Background traffic: LOAD_VIEWERS simulated viewers for the length of the measurement.
./target/release/qoeflow loadgen --target "http://127.0.0.1:$port" --viewers "$load" --duration 120s --ramp-up 20s \
  --seed 3 --quiet >"$work/loadgen.txt" 2>&1 &
load_pid=$!
sleep 25
kill -0 "$load_pid" || { cat "$work/loadgen.txt"; echo "the background loadgen is not running" >&2; exit 1; }
echo "background: $load simulated viewers posting to the same qoeflow serve"
python3 deploy/bench/freshness.py "http://127.0.0.1:$port" 30
kill -0 "$load_pid" || { cat "$work/loadgen.txt"; echo "the background loadgen ended during the measurement" >&2; exit 1; }
