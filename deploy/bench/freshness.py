"""Freshness of `qoeflow serve`: from a beacon's 204 to its attempt being counted by GET /api/v1/metrics
(the dashboard's series endpoint; the attempts of every point of the last 10 minutes, summed).

    python3 freshness.py URL N
"""
import json
import statistics
import sys
import time
import urllib.request

url, n = sys.argv[1], int(sys.argv[2])


queries = []  # how long each query took, ms


def attempts():
    # Only the probes' attempts (their views are on CDN "bench"), not the background traffic's.
    started = time.perf_counter()
    with urllib.request.urlopen(f"{url}/api/v1/metrics?from=now-10m&filter=cdn:bench") as r:
        n = sum(p["attempts"] for s in json.load(r)["series"] for p in s["points"])
    queries.append((time.perf_counter() - started) * 1000)
    return n


base = attempts()
lags = []
# When each probe became visible: the start of the first query that counted it, from its 204 (the lag
# without that query's own time; the pipeline's share, within the 20 ms between queries).
visible = []
for i in range(n):
    now = int(time.time() * 1000)
    view = f"fresh-{now}-{i}"
    body = json.dumps({"sent_at": now, "events": [
        {"view_id": view, "seq": 0, "type": "viewstart", "ts": now - 20, "cdn": "bench"},
        {"view_id": view, "seq": 1, "type": "playrequest", "ts": now - 10}]}).encode()
    req = urllib.request.Request(f"{url}/v1/beacon", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 204, r.status
    accepted = time.perf_counter()
    while True:
        asked = time.perf_counter()
        if attempts() >= base + i + 1:
            break
        time.sleep(0.02)
    visible.append((asked - accepted) * 1000)
    lags.append((time.perf_counter() - accepted) * 1000)
    time.sleep(0.3)
lags.sort()
visible.sort()
queries.sort()


def p95(v):
    return v[round((len(v) - 1) * 0.95)]


print(f"freshness over {n} beacons (accepted -> counted by /api/v1/metrics), ms: "
      f"median {statistics.median(lags):.0f}, p95 {p95(lags):.0f}, max {lags[-1]:.0f}")
print(f"of which: committed and visible (start of the query that counted it) median {statistics.median(visible):.0f}, "
      f"p95 {p95(visible):.0f}; one query of /api/v1/metrics over {len(queries)}: median "
      f"{statistics.median(queries):.0f}, p95 {p95(queries):.0f}, max {queries[-1]:.0f}")
