#!/usr/bin/env bash
# Collector throughput benchmark: 20-event beacons (or EVENTS per beacon) on the local-log sink, next to a minimal axum handler
# that reads the body and answers 204 (the machine's HTTP ceiling), measured in the same run, alternating,
# ROUNDS times each; prints medians and the ratio. Two qoeflow targets: the collector alone on the local
# log (`serve --no-pipeline`), and `qoeflow serve` as it runs (the pipeline sessionizing the same traffic
# into Parquet in the same process, on the same 2 cores as wrk). Besides throughput, each target's CPU
# time per beacon: the server process's (all threads, from /proc/<pid>/stat) and the rest of the
# machine's (wrk, mostly), which is where the gap to the baseline is spent; and for `serve`, the events
# its pipeline read per second of the round (from its /metrics as the round ends): at these rates the
# pipeline falls behind, and what it gets of the cores is what the collector does not.
#
#   deploy/bench/collector.sh [DURATION_S=15] [CONNECTIONS=64] [ROUNDS=3] [EVENTS=20]
#
# A third qoeflow target is `qoeflow serve` with `pipeline.sched_idle = true` (the pipeline's threads under
# Linux's SCHED_IDLE: only the CPU time nothing else wants).
#
# With AB_QOEFLOW=/path/to/another/qoeflow (an older build, say), that binary runs the same two targets in
# the same alternating rounds, and the table gets its rows and its ratio to this build. (Not QOEFLOW_*:
# qoeflow reads every QOEFLOW_ variable as a setting and refuses unknown ones.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
duration="${1:-15}"; conns="${2:-64}"; rounds="${3:-3}"; events="${4:-20}"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
# One build of both packages, as run.sh and api.sh build them: qoeflow alone unifies its dependencies'
# features differently and rebuilds DataFusion and the rest from scratch (an hour on 2 cores).
cargo build --release -q -p qoeflow --bin qoeflow -p bench --bin baseline_server

work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/baseline_server 127.0.0.1:18481 2>/dev/null &
baseline_pid=$!
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; }
wait_port 18481
# Each qoeflow round gets a fresh process and data directory, stopped after its round: wrk's beacons
# open views that never end, and a pipeline still working through one round's backlog (or checkpointing
# its open views) must not take CPU from the next round of another target.
qoeflow_round() { # name port [serve flags...]
  local name=$1 port=$2; shift 2
  local bin=target/release/qoeflow
  [[ $name == *_b ]] && bin="$AB_QOEFLOW"
  # (Set only for that target: a build from before the setting refuses QOEFLOW_ variables it lacks.)
  local vars=(QOEFLOW_LOG_LEVEL=error)
  [[ $name == *_idle ]] && vars+=(QOEFLOW_PIPELINE__SCHED_IDLE=true)
  rm -rf "$work/data"
  env "${vars[@]}" "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" "$@" &
  local pid=$!
  wait_port "$port"
  local line read
  line=$(run "$name" "$port" "$pid")
  # The events serve's pipeline read during the round (0 with --no-pipeline): it shares the cores with
  # the collector, and reads what the collector wrote, as far as it keeps up.
  read=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^qoeflow_pipeline_events_read_total/ {s += $2} END {print s + 0}')
  echo "$line pipeline_events=$read" >>"$work/results"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# CPU time in clock ticks: of one process (all its threads), and of the whole machine (busy, not idle).
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
run() { # name port server-pid
  local p0 m0 out
  p0=$(proc_ticks "$3"); m0=$(machine_ticks)
  out=$(wrk -t1 -c"$conns" -d"${duration}s" --latency -s deploy/bench/beacon.lua "http://127.0.0.1:$2/v1/beacon" -- "$events" \
    | awk '/^RESULT/')
  # The server's CPU and the rest of the machine's (wrk, mostly) during the round, in ticks.
  echo "$1 $out server_ticks=$(( $(proc_ticks "$3") - p0 )) machine_ticks=$(( $(machine_ticks) - m0 ))"
}
for r in $(seq 1 "$rounds"); do
  run baseline 18481 "$baseline_pid" >>"$work/results"
  qoeflow_round collector 18482 --no-pipeline
  qoeflow_round qoeflow 18480
  qoeflow_round qoeflow_idle 18485
  if [[ -n "${AB_QOEFLOW:-}" ]]; then
    qoeflow_round collector_b 18483 --no-pipeline
    qoeflow_round qoeflow_b 18484
  fi
done

python3 - "$work/results" "$conns" "$duration" "$rounds" "$events" "$(getconf CLK_TCK)" <<'PY'
import re, statistics, sys, os, platform
rows = {}
for line in open(sys.argv[1]):
    name = line.split()[0]
    kv = dict(re.findall(r"(\w+)=([\d.]+)", line))
    rows.setdefault(name, []).append(kv)
def med(name, key): return statistics.median(float(r[key]) for r in rows[name])
tick_us = 1e6 / float(sys.argv[6])
def per_beacon(name, key):
    # CPU microseconds per beacon: the round's ticks over its beacons (rps x duration).
    return statistics.median(float(r[key]) * tick_us / (float(r["rps"]) * float(sys.argv[3])) for r in rows[name])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
events = int(sys.argv[5])
print(f"machine: {os.cpu_count()} cores, {cpu}; wrk -t1 -c{sys.argv[2]} -d{sys.argv[3]}s, {events}-event beacons, median of {sys.argv[4]} alternating rounds")
print(f"{'target':<40} {'beacons/s':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'server CPU µs/beacon':>21} {'rest µs/beacon':>15} {'pipeline events/s':>18}")
targets = [("baseline", "axum read body + 204 (baseline)"),
           ("collector", "qoeflow collector (local log, fsync)"),
           ("qoeflow", "qoeflow serve (collector + pipeline)"),
           ("qoeflow_idle", "serve, pipeline.sched_idle = true")]
if "collector_b" in rows:
    targets += [("collector_b", "AB_QOEFLOW collector"), ("qoeflow_b", "AB_QOEFLOW serve")]
for name, label in targets:
    errs = sum(int(float(r["errors"])) + int(float(r["non2xx"])) for r in rows[name])
    server = per_beacon(name, "server_ticks")
    rest = per_beacon(name, "machine_ticks") - server
    # Events the pipeline read per second of the round (serve's; the collector's rounds have none).
    read = statistics.median(float(r.get("pipeline_events", 0)) for r in rows[name]) / float(sys.argv[3])
    read = f"{read:>18.0f}" if read else f"{'-':>18}"
    print(f"{label:<40} {med(name,'rps'):>10.0f} {med(name,'rps')*events:>10.0f} {med(name,'p50_ms'):>8.2f} {med(name,'p99_ms'):>8.2f} {errs:>7} {server:>21.1f} {rest:>15.1f} {read}")
print(f"ratio collector / baseline (throughput): {med('collector','rps')/med('baseline','rps'):.2f}")
print(f"ratio serve / baseline (throughput): {med('qoeflow','rps')/med('baseline','rps'):.2f}")
print(f"ratio serve with pipeline.sched_idle / baseline (throughput): {med('qoeflow_idle','rps')/med('baseline','rps'):.2f}")
if "collector_b" in rows:
    print(f"ratio this build / AB_QOEFLOW: collector {med('collector','rps')/med('collector_b','rps'):.2f}, serve {med('qoeflow','rps')/med('qoeflow_b','rps'):.2f}")
PY
