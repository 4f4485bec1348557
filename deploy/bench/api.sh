#!/usr/bin/env bash
# Dashboard API latency over a day of data (qoeflow, Parquet backend, as written and compacted, with a
# DuckDB baseline over the same files) and freshness of `qoeflow serve` under `qoeflow loadgen` traffic
# (beacon accepted -> counted by /api/v1/metrics).
#
#   deploy/bench/api.sh [VIEWS=50000] [EPOCHS=8640] [RUNS=9] [LOAD_VIEWERS=3000]   (FRESH_FLUSH_MS=100: the short epoch)
#
# Needs what ./deploy/test.sh installs (DuckDB from tests/requirements.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
views="${1:-50000}"; epochs="${2:-8640}"; runs="${3:-9}"; load="${4:-3000}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT

cargo build --release -q -p qoeflow --bin qoeflow -p bench --bin bench_api
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
./target/release/bench_api "$work/day" "$views" "$epochs" "$runs"
echo
python3 deploy/bench/duckdb_api.py "$work/day" "$runs"
echo
# Freshness with the default epoch, then with a short one (the setting docs/operating.md recommends
# for live dashboards).
deploy/bench/freshness.sh 1000 "$load"
deploy/bench/freshness.sh "${FRESH_FLUSH_MS:-100}" "$load"
