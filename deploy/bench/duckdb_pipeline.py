"""Pipeline baseline: DuckDB computing the per-view and per-window QoE metrics of `docs/metrics.md` in batch
SQL over the same events, stored as Parquet (the `events` table qoeflow's pipeline wrote), writing both
results to Parquet. Prints events/s (wall and per CPU core, median of ROUNDS), and checks that its totals
equal the simulation's truth (DIR/truth.json), so the baseline is known to do the same work.

    python3 deploy/bench/duckdb_pipeline.py DIR [ROUNDS=3]

The SQL is a batch state machine: dedupe on (view_id, seq); per view the first play request, first frame,
first fatal error and end; the state each event leaves the view in (play, stall, pause, seek, off);
spans from each event to the next, split at 10-second window boundaries; point measures in the window
of their event. It follows §4 for the sequences players (and `qoeflow loadgen`) send; it does not
replicate every corner of the streaming state machine (for example a `stall_start` while paused, or a
`stall_end` while paused or seeking, which it takes as a resume).
"""
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import duckdb

WINDOW_MS = 10_000

SQL = """
CREATE OR REPLACE TEMP TABLE ev AS
SELECT view_id, seq, type, epoch_ms(event_ms) AS t, bitrate_kbps, bytes, cache, coalesce(fatal, false) AS fatal,
       device_type, os, browser, country, raw
FROM read_parquet('{events}')
QUALIFY row_number() OVER (PARTITION BY view_id, seq ORDER BY recv_ms) = 1;

CREATE OR REPLACE TEMP TABLE marks AS
SELECT view_id,
       min(seq) FILTER (WHERE type = 'playrequest') AS req_seq,
       arg_min(t, seq) FILTER (WHERE type = 'playrequest') AS req_t,
       min(seq) FILTER (WHERE type = 'playing') AS play_seq,
       arg_min(t, seq) FILTER (WHERE type = 'playing') AS play_t,
       min(seq) FILTER (WHERE type = 'error' AND fatal) AS fatal_seq,
       arg_min(t, seq) FILTER (WHERE type = 'error' AND fatal) AS fatal_t,
       min(seq) FILTER (WHERE type = 'viewend') AS end_seq,
       arg_min(t, seq) FILTER (WHERE type = 'viewend') AS end_t,
       arg_min(device_type, seq) AS device_type, arg_min(os, seq) AS os, arg_min(browser, seq) AS browser,
       arg_min(country, seq) AS country,
       arg_min(json_extract_string(raw, '$.cdn'), seq) FILTER (WHERE type = 'viewstart') AS cdn,
       arg_min(json_extract_string(raw, '$.player_name'), seq) FILTER (WHERE type = 'viewstart') AS player_name,
       arg_min(json_extract_string(raw, '$.stream_type'), seq) FILTER (WHERE type = 'viewstart') AS stream_type
FROM ev GROUP BY view_id;

CREATE OR REPLACE TEMP TABLE outcome AS
SELECT *,
       play_seq IS NOT NULL AND play_seq < coalesce(fatal_seq, 9e18) AND play_seq < coalesce(end_seq, 9e18) AS started,
       req_seq IS NOT NULL AND req_seq < coalesce(fatal_seq, 9e18) AND fatal_seq IS NOT NULL
           AND fatal_seq < coalesce(play_seq, 9e18) AND fatal_seq < coalesce(end_seq, 9e18) AS vsf
FROM marks;

CREATE OR REPLACE TEMP TABLE st AS
SELECT e.*, o.started, o.play_seq,
       CASE
         WHEN e.seq > coalesce(o.end_seq, 9e18) THEN NULL
         WHEN e.type = 'viewend' OR e.seq = o.fatal_seq THEN 'off'
         WHEN NOT o.started OR e.seq < o.play_seq OR e.seq > coalesce(o.fatal_seq, 9e18) THEN NULL
         WHEN e.type IN ('playing', 'stall_end') THEN 'play'
         WHEN e.type = 'pause' THEN 'pause'
         WHEN e.type = 'seeking' THEN 'seek'
         WHEN e.type = 'stall_start' THEN 'stall'
       END AS s,
       e.seq <= coalesce(o.end_seq, 9e18) AS live
FROM ev e JOIN outcome o USING (view_id);

CREATE OR REPLACE TEMP TABLE spans AS
WITH w AS (
  SELECT *,
         last_value(s IGNORE NULLS) OVER v AS cur,
         last_value(s IGNORE NULLS) OVER (PARTITION BY view_id ORDER BY seq
             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_s,
         last_value(bitrate_kbps IGNORE NULLS) OVER v AS bitrate,
         lead(t) OVER (PARTITION BY view_id ORDER BY seq) AS next_t
  FROM st WINDOW v AS (PARTITION BY view_id ORDER BY seq ROWS UNBOUNDED PRECEDING)
), seekflag AS (
  SELECT *, last_value(CASE WHEN s = 'stall' THEN prev_s = 'seek' END IGNORE NULLS)
              OVER (PARTITION BY view_id ORDER BY seq ROWS UNBOUNDED PRECEDING) AS seek_stall
  FROM w
)
SELECT view_id, cur, seek_stall, coalesce(round(bitrate)::BIGINT, 0) AS bitrate, t, next_t
FROM seekflag WHERE cur IN ('play', 'stall') AND next_t > t AND live;

CREATE OR REPLACE TEMP TABLE switches AS
SELECT view_id, t,
       CASE WHEN b > prev_b THEN 1 ELSE 0 END AS up, CASE WHEN b < prev_b THEN 1 ELSE 0 END AS down
FROM (
  SELECT e.view_id, e.seq, e.t, e.live, e.started, e.play_seq, round(e.bitrate_kbps) AS b,
         last_value(round(e.bitrate_kbps) IGNORE NULLS) OVER (PARTITION BY e.view_id ORDER BY e.seq
             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_b, e.type
  FROM st e WHERE e.type = 'quality_change'
) WHERE live AND started AND seq > play_seq;

CREATE OR REPLACE TEMP TABLE per_view AS
SELECT o.view_id, o.cdn, o.country, o.device_type, o.os, o.browser, o.player_name, o.stream_type,
       o.req_seq IS NOT NULL OR o.started AS attempt, o.started,
       CASE WHEN o.started THEN o.play_t - least(coalesce(o.req_t, o.play_t), o.play_t) END AS startup_ms,
       o.vsf,
       (o.req_seq IS NOT NULL OR o.started) AND NOT o.started AND NOT o.vsf
           AND coalesce(o.fatal_seq, 9e18) > o.end_seq AND o.end_seq IS NOT NULL AS ebvs,
       o.started AND o.fatal_seq > o.play_seq AND o.fatal_seq < coalesce(o.end_seq, 9e18) AS playback_failure,
       coalesce(sp.play_ms, 0) AS play_ms, coalesce(sp.stall_ms, 0) AS stall_ms,
       coalesce(sp.seek_stall_ms, 0) AS seek_stall_ms, coalesce(sp.bitrate_ms, 0) AS bitrate_ms,
       coalesce(pt.stall_count, 0) AS stall_count, coalesce(sw.up, 0) AS switches_up, coalesce(sw.down, 0) AS switches_down,
       coalesce(pt.segments_hit, 0) AS segments_hit, coalesce(pt.segments_miss, 0) AS segments_miss,
       coalesce(pt.bytes_hit, 0) AS bytes_hit, coalesce(pt.bytes_miss, 0) AS bytes_miss,
       coalesce(pt.errors, 0) AS errors, coalesce(pt.fatal_errors, 0) AS fatal_errors
FROM outcome o
LEFT JOIN (SELECT view_id, sum(next_t - t) FILTER (WHERE cur = 'play') AS play_ms,
                  sum(next_t - t) FILTER (WHERE cur = 'stall') AS stall_ms,
                  sum(next_t - t) FILTER (WHERE cur = 'stall' AND seek_stall) AS seek_stall_ms,
                  sum(bitrate * (next_t - t)) FILTER (WHERE cur = 'play') AS bitrate_ms
           FROM spans GROUP BY view_id) sp USING (view_id)
LEFT JOIN (SELECT view_id, count(*) FILTER (WHERE s = 'stall') AS stall_count,
                  count(*) FILTER (WHERE type = 'segment' AND cache = 'hit') AS segments_hit,
                  count(*) FILTER (WHERE type = 'segment' AND cache = 'miss') AS segments_miss,
                  sum(bytes) FILTER (WHERE type = 'segment' AND cache = 'hit') AS bytes_hit,
                  sum(bytes) FILTER (WHERE type = 'segment' AND cache = 'miss') AS bytes_miss,
                  count(*) FILTER (WHERE type = 'error') AS errors,
                  count(*) FILTER (WHERE type = 'error' AND fatal) AS fatal_errors
           FROM st WHERE live GROUP BY view_id) pt USING (view_id)
LEFT JOIN (SELECT view_id, sum(up) AS up, sum(down) AS down FROM switches GROUP BY view_id) sw USING (view_id)
WHERE o.end_seq IS NOT NULL;

COPY per_view TO '{out}/views.parquet' (FORMAT parquet, COMPRESSION zstd);

CREATE OR REPLACE TEMP TABLE per_window AS
WITH points AS (
  SELECT view_id, req_t AS t, 1 AS attempts, 0 AS starts, 0 AS startup, 0 AS vsf, 0 AS ebvs, 0 AS pf
  FROM outcome WHERE req_seq IS NOT NULL AND (play_seq IS NULL OR req_seq < play_seq)
  UNION ALL SELECT view_id, play_t, CASE WHEN req_seq IS NULL OR req_seq > play_seq THEN 1 ELSE 0 END, 1,
         play_t - least(coalesce(req_t, play_t), play_t), 0, 0, 0
  FROM outcome WHERE started
  UNION ALL SELECT view_id, fatal_t, 0, 0, 0, CASE WHEN vsf THEN 1 ELSE 0 END, 0, CASE WHEN started THEN 1 ELSE 0 END
  FROM outcome WHERE fatal_seq IS NOT NULL AND fatal_seq < coalesce(end_seq, 9e18)
  UNION ALL SELECT o.view_id, o.end_t, 0, 0, 0, 0, 1, 0 FROM outcome o JOIN per_view p USING (view_id) WHERE p.ebvs
), events_w AS (
  SELECT view_id, t,
         CASE WHEN s = 'stall' THEN 1 ELSE 0 END AS stall_count,
         CASE WHEN type = 'segment' AND cache = 'hit' THEN 1 ELSE 0 END AS segments_hit,
         CASE WHEN type = 'segment' AND cache = 'miss' THEN 1 ELSE 0 END AS segments_miss,
         CASE WHEN type = 'segment' AND cache = 'hit' THEN bytes ELSE 0 END AS bytes_hit,
         CASE WHEN type = 'segment' AND cache IN ('hit', 'miss') THEN bytes ELSE 0 END AS bytes_total,
         CASE WHEN type = 'error' THEN 1 ELSE 0 END AS errors,
         CASE WHEN type = 'error' AND fatal THEN 1 ELSE 0 END AS fatal_errors
  FROM st WHERE live AND (s = 'stall' OR type IN ('segment', 'error'))
), pieces AS (
  SELECT view_id, cur, seek_stall, bitrate, w AS window_start,
         least(next_t, w + {window}) - greatest(t, w) AS d
  FROM (SELECT *, unnest(range(t // {window} * {window}, next_t, {window})) AS w FROM spans)
), facts AS (
  SELECT view_id, t // {window} * {window} AS window_start, attempts, starts, startup, vsf, ebvs, pf,
         0 AS play_ms, 0 AS stall_ms, 0 AS seek_stall_ms, 0 AS bitrate_ms, 0 AS stall_count, 0 AS up, 0 AS down,
         0 AS segments_hit, 0 AS segments_miss, 0 AS bytes_hit, 0 AS bytes_total, 0 AS errors, 0 AS fatal_errors,
         CASE WHEN starts = 1 THEN startup END AS startup_value, false AS active
  FROM points
  UNION ALL
  SELECT view_id, window_start, 0, 0, 0, 0, 0, 0,
         CASE WHEN cur = 'play' THEN d ELSE 0 END, CASE WHEN cur = 'stall' THEN d ELSE 0 END,
         CASE WHEN cur = 'stall' AND seek_stall THEN d ELSE 0 END, CASE WHEN cur = 'play' THEN bitrate * d ELSE 0 END,
         0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, d > 0
  FROM pieces
  UNION ALL
  SELECT view_id, t // {window} * {window}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, stall_count, 0, 0,
         segments_hit, segments_miss, bytes_hit, bytes_total, errors, fatal_errors, NULL, false
  FROM events_w
  UNION ALL
  SELECT view_id, t // {window} * {window}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, up, down, 0, 0, 0, 0, 0, 0, NULL, false
  FROM switches
)
SELECT f.window_start, {window} AS window_ms, p.cdn, p.country, p.device_type, p.os, p.browser, p.player_name,
       p.stream_type, sum(attempts) AS attempts, sum(starts) AS starts, sum(startup) AS startup_ms_sum,
       quantile_disc(startup_value, [0.5, 0.9, 0.95, 0.99]) AS startup_quantiles,
       sum(vsf) AS vsf, sum(ebvs) AS ebvs, sum(pf) AS playback_failures, sum(play_ms) AS play_ms,
       sum(stall_count) AS stall_count, sum(stall_ms) AS stall_ms, sum(seek_stall_ms) AS seek_stall_ms,
       sum(bitrate_ms) AS bitrate_ms, sum(up) AS switches_up, sum(down) AS switches_down,
       sum(segments_hit) AS segments_hit, sum(segments_miss) AS segments_miss, sum(bytes_hit) AS bytes_hit,
       sum(bytes_total) AS bytes_total, sum(errors) AS errors, sum(fatal_errors) AS fatal_errors,
       count(DISTINCT CASE WHEN active THEN f.view_id END) AS active_views
FROM facts f
JOIN (SELECT view_id, cdn, country, device_type, os, browser, player_name, stream_type FROM per_view) p USING (view_id)
GROUP BY ALL;

COPY per_window TO '{out}/qoe_window.parquet' (FORMAT parquet, COMPRESSION zstd);
"""

TOTALS = """
SELECT count(*) AS views, sum(attempt::INT) AS attempts, sum(started::INT) AS starts, sum(vsf::INT) AS vsf,
       sum(ebvs::INT) AS ebvs, sum(playback_failure::INT) AS playback_failures, sum(play_ms) AS play_ms,
       sum(stall_count) AS stall_count, sum(stall_ms) AS stall_ms, sum(seek_stall_ms) AS seek_stall_ms,
       sum(switches_up) AS switches_up, sum(switches_down) AS switches_down, sum(segments_hit) AS segments_hit,
       sum(segments_miss) AS segments_miss, sum(bytes_hit) AS bytes_hit, sum(bytes_hit + bytes_miss) AS bytes_total,
       sum(errors) AS errors, sum(fatal_errors) AS fatal_errors
FROM read_parquet('{out}/views.parquet')
"""

WINDOW_TOTALS = """
SELECT sum(attempts), sum(starts), sum(play_ms), sum(stall_ms), sum(bytes_total) FROM read_parquet('{out}/qoe_window.parquet')
"""


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    data = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    events_glob = os.path.join(data, "parquet", "events", "**", "*.parquet")
    con = duckdb.connect()
    n_events = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT view_id, seq FROM read_parquet('{events_glob}'))"
    ).fetchone()[0]
    rates, per_core = [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(rounds):
            con = duckdb.connect()  # cold: nothing cached between rounds
            t, c = time.perf_counter(), cpu_seconds()
            con.execute(SQL.format(events=events_glob, out=out, window=WINDOW_MS))
            wall, cpu = time.perf_counter() - t, cpu_seconds() - c
            rates.append(n_events / wall)
            per_core.append(n_events / max(cpu, 0.01))
        cols = [d[0] for d in con.execute(TOTALS.format(out=out)).description]
        got = dict(zip(cols, con.execute(TOTALS.format(out=out)).fetchone()))
        win = con.execute(WINDOW_TOTALS.format(out=out)).fetchone()
    truth = json.load(open(os.path.join(data, "truth.json")))
    diff = {k: (truth[k], int(got[k] or 0)) for k in got if int(got[k] or 0) != truth[k]}
    win_ok = list(map(int, win)) == [truth["attempts"], truth["starts"], truth["play_ms"], truth["stall_ms"], truth["bytes_total"]]
    print(f"duckdb {duckdb.__version__}: {n_events} events, median of {rounds} rounds")
    print(f"{'stage':<52} {'events/s':>12} {'events/s/core':>16}")
    print(f"{'baseline: DuckDB batch SQL -> views + windows':<52} "
          f"{statistics.median(rates):>12.0f} {statistics.median(per_core):>16.0f}")
    print("DuckDB totals equal the simulation's truth: " + ("yes" if not diff and win_ok else f"NO {diff} windows ok={win_ok}"))


if __name__ == "__main__":
    main()
