#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md in one command, each figure next to its baseline measured in the same
# run; prints each benchmark's own table, then a summary table.
#
#   deploy/bench/run.sh            # full sizes (about 35 minutes to §6 after the release build, 2026-12-05; then §6)
#   deploy/bench/run.sh --quick    # small sizes, to check that everything runs (about 6 minutes)
#
# 1. collector: wrk, 20-event beacons, `qoeflow serve` vs a minimal axum server      (collector.sh);
#    then 1- and 200-event beacons
#    then the collector's request path by stage, no HTTP: CPU µs per beacon     (bench_collector_stages)
# 2. pipeline: local log -> sessionize -> Parquet vs DuckDB batch SQL over the events (bench_pipeline,
#    duckdb_pipeline.py)
# 3. freshness: beacon acknowledged -> counted by /api/v1/metrics, under loadgen traffic (api.sh)
# 4. pipeline memory per active view at 100,000 views open                            (bench_pipeline)
# 5. dashboard API over a day of loadgen traffic vs DuckDB on the same Parquet        (api.sh)
# 6. elastic workers: 1, 2 and 4 on the same stream (scaling vs one), takeover after kill -9 (elastic.py)
#
# Needs what ./deploy/test.sh installs (DuckDB from tests/requirements.txt); installs wrk if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ "${1:-}" == "--quick" ]]; then
  collector=(5 64 1); pipeline=(2000 1 10000); api=(3000 500 3 500); elastic=(--viewers 1000 --rounds 1); stages=(2000 3)
else
  collector=(15 64 3); pipeline=(20000 3 100000); api=(50000 8640 9 3000); elastic=(--viewers 8000 --rounds 3); stages=(20000 5)
fi
python3 -c 'import duckdb' 2>/dev/null || pip install -q -r tests/requirements.txt
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
# Every binary of both packages: `--bin qoeflow` here would select only that binary in both, and the
# benchmark programs below would run whatever build of them target/ held.
cargo build --release -q -p qoeflow -p bench --bins

echo "== 1. collector =="
deploy/bench/collector.sh "${collector[@]}" | tee "$out/collector.txt"
for n in 1 200; do deploy/bench/collector.sh "${collector[@]}" "$n"; done
echo
echo "== 1, by stage: the collector's request path without HTTP =="
./target/release/bench_collector_stages "${stages[@]}"
echo
echo "== 2 and 4. pipeline throughput and memory =="
./target/release/bench_pipeline "$out/pipeline" "${pipeline[@]}" | tee "$out/pipeline.txt"
python3 deploy/bench/duckdb_pipeline.py "$out/pipeline" "${pipeline[1]}" | tee -a "$out/pipeline.txt"
rm -rf "$out/pipeline"
echo
echo "== 3 and 5. dashboard API over a day, and freshness =="
deploy/bench/api.sh "${api[@]}" | tee "$out/api.txt"
echo
echo "== 6. elastic workers =="
python3 deploy/bench/elastic.py --bin target/release/qoeflow "${elastic[@]}" | tee "$out/elastic.txt"
echo
python3 - "$out" <<'PY'
import re, sys
d = sys.argv[1]
text = {n: open(f"{d}/{n}.txt").read() for n in ("collector", "pipeline", "api", "elastic")}
def row(name, pattern, group=0):
    m = re.search(pattern, text[name], re.M)
    return m.group(group) if m else "?"
def nums(line):
    return [float(x) for x in re.findall(r"[\d.]+", line.split("  ", 1)[1])] if line != "?" else []
c_q, c_b = nums(row("collector", r"^qoeflow collector.*$")), nums(row("collector", r"^axum.*$"))
c_s = nums(row("collector", r"^qoeflow serve.*$"))
c_i = nums(row("collector", r"^serve, pipeline.sched_idle.*$"))
p_q, p_b = nums(row("pipeline", r"^qoeflow pipeline.*$")), nums(row("pipeline", r"^baseline: DuckDB.*$"))
agree = row("pipeline", r"DuckDB totals equal the simulation's truth: (.*)$", 1)
mem = row("pipeline", r"RSS growth (\d+) bytes/view; state store on disk (\d+)", 0)
# The probes' own lines ("freshness over N beacons …: median M, p95 P"), the default epoch first; not
# the "committed and visible" lines beside them.
fresh, fresh_short = (re.findall(r"^freshness over [^:]*: (median \d+, p95 \d+)", text["api"], re.M) + ["?", "?"])[:2]
short_ms = (re.findall(r"; epoch (\d+) ms", text["api"]) + ["?", "?"])[1]
def api(label, cached=False):
    # Columns from the end: "+ rollups" median / p95, then "+ hours' cache" median / p95 (first).
    line = row("api", rf"^GET /api/v1/{re.escape(label)}\s.*$")
    return line.split()[-4 if cached else -7] if line != "?" else "?"
def duck(label):
    line = row("api", rf"^{re.escape(label)}.*$")
    return line.split()[-3] if line != "?" else "?"
def ratio(a, b):
    try: return f"{float(a) / float(b):.2f}"
    except (ValueError, ZeroDivisionError): return "?"
print("summary (medians; ratio = qoeflow / baseline)")
print(f"{'#':<3}{'measure':<46}{'qoeflow':>16}{'baseline':>16}{'ratio':>8}  baseline")
if c_q and c_b:
    print(f"{'1':<3}{'collector events/s (20-event beacons)':<46}{c_q[1]:>16.0f}{c_b[1]:>16.0f}{ratio(c_q[1], c_b[1]):>8}  axum read body + 204")
    print(f"{'':<3}{'collector latency p50 / p99 ms':<46}{f'{c_q[2]:.2f} / {c_q[3]:.2f}':>16}{f'{c_b[2]:.2f} / {c_b[3]:.2f}':>16}")
if c_s and c_b:
    print(f"{'':<3}{'serve (collector + pipeline) events/s':<46}{c_s[1]:>16.0f}{c_b[1]:>16.0f}{ratio(c_s[1], c_b[1]):>8}")
if c_i and c_b:
    print(f"{'':<3}{'… with pipeline.sched_idle = true':<46}{c_i[1]:>16.0f}{c_b[1]:>16.0f}{ratio(c_i[1], c_b[1]):>8}")
if p_q and p_b:
    print(f"{'2':<3}{'pipeline events/s per core':<46}{p_q[1]:>16.0f}{p_b[1]:>16.0f}{ratio(p_q[1], p_b[1]):>8}  DuckDB batch SQL (agrees with truth: {agree})")
    print(f"{'':<3}{'pipeline events/s (wall, 2 cores)':<46}{p_q[0]:>16.0f}{p_b[0]:>16.0f}{ratio(p_q[0], p_b[0]):>8}")
print(f"{'3':<3}{'freshness: ack -> /api/v1/metrics, ms':<46}{fresh.replace('median ', '').replace(', p95 ', ' / '):>16}{'1000':>16}{'':>8}  epoch length (the longest a beacon waits for its epoch)")
print(f"{'':<3}{f'… with a {short_ms} ms epoch':<46}{fresh_short.replace('median ', '').replace(', p95 ', ' / '):>16}{short_ms:>16}")
if mem != "?":
    rss, ckpt = re.findall(r"\d+", mem)
    print(f"{'4':<3}{'memory per active view, bytes (RSS)':<46}{rss:>16}{ckpt:>16}{ratio(rss, ckpt):>8}  its state on disk (all views in memory)")
s, sd = api("summary?from=now-24h"), duck("summary, 24h")
m, md = api("metrics?from=now-24h"), duck("metrics, 24h")
b, bd = api("breakdown?dimension=country&from=now-24h"), duck("breakdown by country")
print(f"{'5':<3}{'API summary 24h, ms (compacted, rollups)':<46}{s:>16}{sd:>16}{ratio(s, sd):>8}  DuckDB, same files")
print(f"{'':<3}{'API series 24h, ms':<46}{m:>16}{md:>16}{ratio(m, md):>8}")
print(f"{'':<3}{'API breakdown by country 24h, ms':<46}{b:>16}{bd:>16}{ratio(b, bd):>8}")
for label, name, d in (("summary?from=now-24h", "summary", sd), ("metrics?from=now-24h", "series", md), ("breakdown?dimension=country&from=now-24h", "breakdown", bd)):
    c = api(label, cached=True)
    print(f"{'':<3}{f'… {name}, with the closed hours cache':<46}{c:>16}{d:>16}{ratio(c, d):>8}")
for k in ("2", "4"):
    line = row("elastic", rf"^\| {k} \|.*$")
    if line != "?":
        cells = [c.strip() for c in line.strip("|").split("|")]
        print(f"{'6' if k == '2' else '':<3}{f'elastic: {k} workers, events/s (scaling)':<46}{cells[2]:>16}{'1 worker':>16}{cells[4]:>8}  the same stream read by one worker")
took = row("elastic", r"median ([\d.]+) s$", 1)
print(f"{'':<3}{'elastic: takeover after kill -9, s':<46}{took:>16}{'10':>16}{'':>8}  the lease timeout")
PY
