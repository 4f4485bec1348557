//! The QoE metrics as SQL over `qoe_window` rows, defined once: the helper view `qoe_ratios` and the
//! metrics API both aggregate with these expressions, so they cannot disagree.

/// (name, SQL over a group of `qoe_window` rows). Sums are exact; ratios are fractions unless `_pct`.
pub const METRICS: &[(&str, &str)] = &[
    ("attempts", "sum(attempts)"),
    ("starts", "sum(starts)"),
    ("startup_ms_sum", "sum(startup_ms_sum)"),
    ("startup_p50", "hdr_quantile(startup_hist, 0.5)"),
    ("startup_p95", "hdr_quantile(startup_hist, 0.95)"),
    ("vsf", "sum(vsf)"),
    ("ebvs", "sum(ebvs)"),
    ("playback_failures", "sum(playback_failures)"),
    ("play_ms", "sum(play_ms)"),
    ("stall_count", "sum(stall_count)"),
    ("stall_ms", "sum(stall_ms)"),
    ("seek_stall_ms", "sum(seek_stall_ms)"),
    ("bitrate_ms", "sum(bitrate_ms)"),
    ("bitrate_known_ms", "sum(bitrate_known_ms)"),
    ("switches_up", "sum(switches_up)"),
    ("switches_down", "sum(switches_down)"),
    ("segments_hit", "sum(segments_hit)"),
    ("segments_miss", "sum(segments_miss)"),
    ("bytes_hit", "sum(bytes_hit)"),
    ("bytes_total", "sum(bytes_total)"),
    ("errors", "sum(errors)"),
    ("fatal_errors", "sum(fatal_errors)"),
    ("active_views", "sum(active_views)"),
    ("rebuffer_ratio", "CAST(sum(stall_ms) AS DOUBLE) / NULLIF(CAST(sum(play_ms) + sum(stall_ms) AS DOUBLE), 0)"),
    (
        "connection_induced_rebuffer_ratio",
        "CAST(sum(stall_ms) - sum(seek_stall_ms) AS DOUBLE) / NULLIF(CAST(sum(play_ms) + sum(stall_ms) AS DOUBLE), 0)",
    ),
    ("vsf_pct", "100.0 * CAST(sum(vsf) AS DOUBLE) / NULLIF(CAST(sum(attempts) AS DOUBLE), 0)"),
    ("ebvs_pct", "100.0 * CAST(sum(ebvs) AS DOUBLE) / NULLIF(CAST(sum(attempts) AS DOUBLE), 0)"),
    ("playback_failure_pct", "100.0 * CAST(sum(playback_failures) AS DOUBLE) / NULLIF(CAST(sum(attempts) AS DOUBLE), 0)"),
    ("cache_hit_ratio", "CAST(sum(segments_hit) AS DOUBLE) / NULLIF(CAST(sum(segments_hit) + sum(segments_miss) AS DOUBLE), 0)"),
    ("cache_hit_ratio_bytes", "CAST(sum(bytes_hit) AS DOUBLE) / NULLIF(CAST(sum(bytes_total) AS DOUBLE), 0)"),
    ("avg_bitrate_kbps", "CAST(sum(bitrate_ms) AS DOUBLE) / NULLIF(CAST(sum(bitrate_known_ms) AS DOUBLE), 0)"),
    ("rebuffer_frequency_per_min", "CAST(sum(stall_count) AS DOUBLE) / NULLIF(CAST(sum(play_ms) AS DOUBLE) / 60000.0, 0)"),
];

/// `expr AS name, …` for a SELECT list.
pub fn select_list() -> String {
    METRICS.iter().map(|(name, expr)| format!("{expr} AS {name}")).collect::<Vec<_>>().join(",\n    ")
}
