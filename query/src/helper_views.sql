-- Helper views registered by `qoeflow query` (and the metrics API). `qoe_window` rows are deltas:
-- these views sum them per (window, dimensions) and add the ratios of DESIGN.md §4.

CREATE VIEW qoe_ratios AS
SELECT
    window_start, window_ms, {dims},
    sum(attempts) AS attempts,
    sum(starts) AS starts,
    sum(startup_ms_sum) AS startup_ms_sum,
    hdr_quantile(startup_hist, 0.5) AS startup_p50,
    hdr_quantile(startup_hist, 0.95) AS startup_p95,
    sum(vsf) AS vsf,
    sum(ebvs) AS ebvs,
    sum(playback_failures) AS playback_failures,
    sum(play_ms) AS play_ms,
    sum(stall_count) AS stall_count,
    sum(stall_ms) AS stall_ms,
    sum(seek_stall_ms) AS seek_stall_ms,
    sum(bitrate_ms) AS bitrate_ms,
    sum(bitrate_known_ms) AS bitrate_known_ms,
    sum(switches_up) AS switches_up,
    sum(switches_down) AS switches_down,
    sum(segments_hit) AS segments_hit,
    sum(segments_miss) AS segments_miss,
    sum(bytes_hit) AS bytes_hit,
    sum(bytes_total) AS bytes_total,
    sum(errors) AS errors,
    sum(fatal_errors) AS fatal_errors,
    sum(active_views) AS active_views,
    CAST(sum(stall_ms) AS DOUBLE) / NULLIF(CAST(sum(play_ms) + sum(stall_ms) AS DOUBLE), 0) AS rebuffer_ratio,
    CAST(sum(stall_ms) - sum(seek_stall_ms) AS DOUBLE) / NULLIF(CAST(sum(play_ms) + sum(stall_ms) AS DOUBLE), 0) AS connection_induced_rebuffer_ratio,
    100.0 * CAST(sum(vsf) AS DOUBLE) / NULLIF(CAST(sum(attempts) AS DOUBLE), 0) AS vsf_pct,
    100.0 * CAST(sum(ebvs) AS DOUBLE) / NULLIF(CAST(sum(attempts) AS DOUBLE), 0) AS ebvs_pct,
    100.0 * CAST(sum(playback_failures) AS DOUBLE) / NULLIF(CAST(sum(attempts) AS DOUBLE), 0) AS playback_failure_pct,
    CAST(sum(segments_hit) AS DOUBLE) / NULLIF(CAST(sum(segments_hit) + sum(segments_miss) AS DOUBLE), 0) AS cache_hit_ratio,
    CAST(sum(bytes_hit) AS DOUBLE) / NULLIF(CAST(sum(bytes_total) AS DOUBLE), 0) AS cache_hit_ratio_bytes,
    CAST(sum(bitrate_ms) AS DOUBLE) / NULLIF(CAST(sum(bitrate_known_ms) AS DOUBLE), 0) AS avg_bitrate_kbps,
    CAST(sum(stall_count) AS DOUBLE) / NULLIF(CAST(sum(play_ms) AS DOUBLE) / 60000.0, 0) AS rebuffer_frequency_per_min
FROM qoe_window
GROUP BY window_start, window_ms, {dims};

CREATE VIEW view_ratios AS
SELECT
    *,
    CAST(stall_ms AS DOUBLE) / NULLIF(CAST(play_ms + stall_ms AS DOUBLE), 0) AS rebuffer_ratio,
    CAST(stall_ms - seek_stall_ms AS DOUBLE) / NULLIF(CAST(play_ms + stall_ms AS DOUBLE), 0) AS connection_induced_rebuffer_ratio,
    CAST(segments_hit AS DOUBLE) / NULLIF(CAST(segments_hit + segments_miss AS DOUBLE), 0) AS cache_hit_ratio,
    CAST(bitrate_ms AS DOUBLE) / NULLIF(CAST(bitrate_known_ms AS DOUBLE), 0) AS avg_bitrate_kbps,
    CAST(stall_count AS DOUBLE) / NULLIF(CAST(play_ms AS DOUBLE) / 60000.0, 0) AS rebuffer_frequency_per_min
FROM views;
