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


def attempts():
    # Only the probes' attempts (their views are on CDN "bench"), not the background traffic's.
    with urllib.request.urlopen(f"{url}/api/v1/metrics?from=now-10m&filter=cdn:bench") as r:
        return sum(p["attempts"] for s in json.load(r)["series"] for p in s["points"])


base = attempts()
lags = []
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
    while attempts() < base + i + 1:
        time.sleep(0.02)
    lags.append((time.perf_counter() - accepted) * 1000)
    time.sleep(0.3)
lags.sort()
print(f"freshness over {n} beacons (accepted -> counted by /api/v1/metrics), ms: "
      f"median {statistics.median(lags):.0f}, p95 {lags[round((n - 1) * 0.95)]:.0f}, max {lags[-1]:.0f}")
