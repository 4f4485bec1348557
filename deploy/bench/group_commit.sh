#!/usr/bin/env bash
# The collector's group commit under three regimes (BENCHMARKS.md §21): one 10 s wrk round (-t1 -c64,
# 20-event beacons) against `serve --no-pipeline` for each `local_log.group_commit_wait_us` given, on
# both cores, on one core (`taskset -c 0`: collector and wrk share it), and on both cores beside a busy
# loop. Prints beacons/s, the server's CPU, the machine's, and the mean time a request waited for its
# records to be durable (from /metrics). With several binaries (an older build, say), each regime's
# rounds alternate between them.
#
#   deploy/bench/group_commit.sh [BINARIES=target/release/qoeflow] [WAITS="200 0"] [ROUNDS=2]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bins="${1:-target/release/qoeflow}"; waits="${2:-200 0}"; rounds="${3:-2}"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
round() { # regime binary wait [pin...]
  local regime=$1 bin=$2 wait=$3; shift 3
  rm -rf "$work/data"
  QOEFLOW_LOCAL_LOG__GROUP_COMMIT_WAIT_US=$wait QOEFLOW_LOG_LEVEL=error "$@" "$bin" serve --listen 127.0.0.1:18489 \
    --data-dir "$work/data" --no-pipeline &
  local pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18489) 2>/dev/null && break; sleep 0.1; done
  local p0 m0 out m
  p0=$(ticks $pid); m0=$(machine)
  out=$("$@" wrk -t1 -c64 -d10s --latency -s deploy/bench/beacon.lua http://127.0.0.1:18489/v1/beacon -- 20 | awk '/^RESULT/')
  local cpu=$(( $(ticks $pid) - p0 )) all=$(( $(machine) - m0 ))
  m=$(curl -s 127.0.0.1:18489/metrics)
  local sink
  sink=$(echo "$m" | awk '/sink_latency_seconds_sum/ {s=$2} /sink_latency_seconds_count/ {c=$2} END {printf "%.0f", s / c * 1e6}')
  echo "$regime $bin wait_us=$wait $out server_cpu=$((cpu / 10))% machine_cpu=$((all / 10))% sink_wait_us=$sink"
  kill $pid; wait $pid 2>/dev/null || true
}
for r in $(seq 1 "$rounds"); do
  for b in $bins; do for w in $waits; do round two_cores "$b" "$w" env; done; done
  for b in $bins; do for w in $waits; do round one_core "$b" "$w" taskset -c 0; done; done
  python3 -c 'while True: pass' & hog=$!
  for b in $bins; do for w in $waits; do round beside_a_busy_loop "$b" "$w" env; done; done
  kill $hog
done
