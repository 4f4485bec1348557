#!/usr/bin/env bash
# Freshness of `qoeflow serve` under `qoeflow loadgen` traffic: beacon accepted -> counted by
# /api/v1/metrics (deploy/bench/freshness.py), with the pipeline's epoch length FLUSH_MS
# (`pipeline.flush_interval_ms`, default 1000; docs/operating.md "Freshness").
#
#   deploy/bench/freshness.sh [FLUSH_MS=1000] [LOAD_VIEWERS=3000] [PROBES=30]
#
# Expects the release binary (api.sh and run.sh build it); FRESH_BIN=<another build> measures that one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
flush="${1:-1000}"; load="${2:-3000}"; probes="${3:-30}"; bin="${FRESH_BIN:-./target/release/qoeflow}"
work="$(mktemp -d)"; trap 'kill "${serve_pid:-0}" "${load_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS="$flush" \
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/serve" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# Background traffic: LOAD_VIEWERS simulated viewers for the length of the measurement.
./target/release/qoeflow loadgen --target "http://127.0.0.1:$port" --viewers "$load" --duration 120s --ramp-up 20s \
  --seed 3 --quiet >"$work/loadgen.txt" 2>&1 &
load_pid=$!
sleep 25
kill -0 "$load_pid" || { cat "$work/loadgen.txt"; echo "the background loadgen is not running" >&2; exit 1; }
echo "background: $load simulated viewers posting to the same qoeflow serve; epoch ${flush} ms"
python3 deploy/bench/freshness.py "http://127.0.0.1:$port" "$probes"
kill -0 "$load_pid" || { cat "$work/loadgen.txt"; echo "the background loadgen ended during the measurement" >&2; exit 1; }
# Where an epoch's time went, from the pipeline's own histograms (the whole run, loadgen's ramp included).
curl -fs "http://127.0.0.1:$port/metrics" | python3 -c '
import re, sys
sums, counts = {}, {}
for line in sys.stdin:
    m = re.match(r"qoeflow_pipeline_(epoch_duration|sink_write_duration)_seconds_(sum|count)(\{[^}]*\})? (\S+)", line)
    if m:
        name = m.group(1) + (m.group(3) or "")
        (sums if m.group(2) == "sum" else counts)[name] = float(m.group(4))
print("pipeline, mean ms per epoch (per write for sinks; parquet: staging and publishing each): " + ", ".join(f"{k} {1000 * sums[k] / counts[k]:.1f}" for k in sorted(sums) if counts.get(k)))
'
# How many files a query of the open hour opens (compaction by levels keeps it to tens; BENCHMARKS §12).
echo "qoe_window files in the dataset at the end: $(find "$work/serve/parquet/qoe_window" -name '*.parquet' | wc -l)"
