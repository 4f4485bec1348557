#!/usr/bin/env bash
# Dashboard API latency over a day of data (qoeflow, Parquet backend, as written and compacted, with a
# DuckDB baseline over the same files) and freshness of `qoeflow serve` (beacon accepted -> in the API).
#
#   deploy/bench/api.sh [VIEWS=200000] [EPOCHS=8640] [RUNS=9]
#
# Needs what ./deploy/test.sh installs (DuckDB from tests/requirements.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
views="${1:-200000}"; epochs="${2:-8640}"; runs="${3:-9}"
work="$(mktemp -d)"; trap 'kill "${serve_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release -q --bin qoeflow -p qoeflow
cargo build --release -q -p query --example bench_api
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
./target/release/examples/bench_api "$work/day" "$views" "$epochs" "$runs"
echo
python3 deploy/bench/duckdb_api.py "$work/day" "$runs"
echo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/qoeflow serve --listen "127.0.0.1:$port" --data-dir "$work/serve" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
python3 deploy/bench/freshness.py "http://127.0.0.1:$port" 30
