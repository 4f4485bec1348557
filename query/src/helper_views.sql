-- Helper views registered by `qoeflow query` (and the metrics API). `qoe_window` rows are deltas:
-- these views sum them per (window, dimensions) and add the ratios of docs/metrics.md §15.

-- `views`: the latest version of each view (a corrected row supersedes the earlier ones, and every
-- version is in `views_versions`, the files as written).
CREATE VIEW views AS
SELECT {views_columns}, dt, hour
FROM (
    SELECT *, row_number() OVER (PARTITION BY view_id ORDER BY version DESC) AS version_rank
    FROM views_versions
)
WHERE version_rank = 1;

CREATE VIEW qoe_ratios AS
SELECT
    window_start, window_ms, {dims},
    {metrics}
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
