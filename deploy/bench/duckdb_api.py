"""DuckDB baseline for the dashboard API benchmark: the same questions over the same Parquet files.

    python3 duckdb_api.py DATA_DIR RUNS

DuckDB has no HdrHistogram merge, so its summary computes the sums and ratios only (qoeflow's also
merges the start-time histograms): the baseline does less work than qoeflow.
"""
import statistics
import sys
import time

import duckdb

data, runs = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
table = f"read_parquet('{data}/parquet/qoe_window/*/*/*.parquet', hive_partitioning = true)"
sums = ", ".join(f"sum({c}) AS {c}" for c in [
    "attempts", "starts", "startup_ms_sum", "vsf", "ebvs", "playback_failures", "play_ms", "stall_count", "stall_ms",
    "seek_stall_ms", "bitrate_ms", "bitrate_known_ms", "switches_up", "switches_down", "segments_hit",
    "segments_miss", "bytes_hit", "bytes_total", "errors", "fatal_errors", "active_views"])
ratios = ("sum(stall_ms) / nullif(sum(play_ms) + sum(stall_ms), 0) AS rebuffer_ratio, "
          "100.0 * sum(vsf) / nullif(sum(attempts), 0) AS vsf_pct")
day = f"epoch_ms(window_start) >= {now - 86_400_000} AND epoch_ms(window_start) < {now}"
queries = {
    "summary, 24h (sums + ratios, no histograms)": f"SELECT {sums}, {ratios} FROM {table} WHERE {day}",
    "metrics, 24h, 360 s buckets": f"SELECT epoch_ms(window_start) // 360000 AS t, {sums}, {ratios} FROM {table} WHERE {day} GROUP BY t ORDER BY t",
    "breakdown by country, 24h": f"SELECT country, {sums}, {ratios} FROM {table} WHERE {day} GROUP BY country ORDER BY attempts DESC LIMIT 10",
}
con = duckdb.connect()
print(f"{'DuckDB ' + duckdb.__version__ + ', same files':<52} {'median / p95 ms':>18}")
for name, sql in queries.items():
    con.sql(sql).fetchall()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        con.sql(sql).fetchall()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p95 = times[round((len(times) - 1) * 0.95)]
    print(f"{name:<52} {statistics.median(times):>8.1f} / {p95:.1f}")
