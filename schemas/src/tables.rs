//! The output tables (`events`, `views`, `qoe_window`, `rejected`): one column list per table, from
//! which the Arrow schema (Parquet) is derived, so every sink writes the same columns with the same
//! names and meanings. Column meanings are documented in `schemas/README.md`.
//!
//! Timestamps are epoch milliseconds, typed as Arrow `Timestamp(ms, UTC)` so DuckDB, Spark and
//! DataFusion read them as timestamps. Every row of `qoe_window` and `views` carries its identity
//! (`source`, `epoch`, `row`): a replay of the same input rewrites the same identities.

use std::sync::{Arc, LazyLock};

use ::arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

pub use crate::column::{ColType, Column};
use crate::column::{c, n};

use ColType::*;

use crate::measures;

pub use crate::dims::DIM_COLUMNS;

/// The `qoe_window` column of the start times a correction row retracts.
pub const HISTOGRAM_RETRACT_COLUMN: &str = "startup_hist_retract";

/// `qoe_window`: the window and its dimensions, the window sums of `crate::measures` (signed: a
/// correction is a negative delta), the start-time histogram of the starts the row adds and the one of
/// the starts it retracts (`startup_hist_retract`, empty bytes when none; readers subtract it after
/// merging) and the added histogram's quantiles after the start-time sum, then the row identity.
pub fn qoe_window() -> &'static [Column] {
    static COLUMNS: LazyLock<Vec<Column>> = LazyLock::new(|| {
        let mut cols = vec![c("window_start", TimestampMs), c("window_ms", Int64)];
        cols.extend(DIM_COLUMNS.iter().map(|d| c(d, Utf8)));
        for def in &measures::MEASURES {
            let Some((name, ty)) = def.window else { continue };
            cols.push(c(name, ty));
            if def.measure == measures::HISTOGRAM_MEASURE {
                cols.push(c("startup_hist", Binary));
                cols.push(c(HISTOGRAM_RETRACT_COLUMN, Binary));
                cols.extend(measures::WINDOW_QUANTILES.iter().map(|(name, _)| n(name, Float64)));
            }
        }
        cols.extend(IDENTITY);
        cols
    });
    &COLUMNS
}

/// `qoe_minute` (`crate::dataset::ROLLUP_TABLE`): the columns of [`qoe_window`] (rows summed per
/// minute), then the active views of each window of the minute (`active_s0`…, one per
/// `crate::dataset::ROLLUP_SLOT_MS`).
pub fn qoe_minute() -> &'static [Column] {
    static COLUMNS: LazyLock<Vec<Column>> = LazyLock::new(|| {
        let mut cols = qoe_window().to_vec();
        cols.extend(ROLLUP_SLOT_COLUMNS.iter().map(|name| c(name, Int64)));
        cols
    });
    &COLUMNS
}

/// The slot columns of `qoe_minute`.
pub const ROLLUP_SLOT_COLUMNS: [&str; crate::dataset::ROLLUP_SLOTS] = ["active_s0", "active_s1", "active_s2", "active_s3", "active_s4", "active_s5"];

/// `views`: the view, its dimensions and client, the per-view totals of `crate::measures` (the start
/// time NULL for a view that did not start), the dedupe counters, the row's `version` (a corrected row
/// supersedes the earlier versions of its view: read the highest), then the row identity.
pub fn views() -> &'static [Column] {
    static COLUMNS: LazyLock<Vec<Column>> = LazyLock::new(|| {
        let mut cols = VIEW_HEAD.to_vec();
        for def in &measures::MEASURES {
            let Some((name, ty)) = def.view else { continue };
            cols.push(if def.measure == measures::HISTOGRAM_MEASURE { n(name, ty) } else { c(name, ty) });
        }
        cols.extend([c("events", UInt64), c("duplicates", UInt64), c("gaps", UInt64), c("version", UInt64)]);
        cols.extend(IDENTITY);
        cols
    });
    &COLUMNS
}

/// The identity every `qoe_window`, `views` and `rejected` row ends with: a replay of the same input
/// rewrites the same identities.
const IDENTITY: [Column; 3] = [c("source", Utf8), c("epoch", UInt64), c("row", UInt64)];

const VIEW_HEAD: &[Column] = &[
    c("view_id", Utf8),
    n("key", Utf8),
    c("start_ms", TimestampMs),
    c("end_ms", TimestampMs),
    c("end_reason", Utf8),
    c("video_id", Utf8),
    c("video_title", Utf8),
    c("stream_type", Utf8),
    c("player_name", Utf8),
    c("player_version", Utf8),
    c("page_url", Utf8),
    c("cdn", Utf8),
    c("custom", Utf8),
    c("country", Utf8),
    c("device_type", Utf8),
    c("os", Utf8),
    c("os_version", Utf8),
    c("browser", Utf8),
    c("browser_version", Utf8),
    c("ip", Utf8),
    c("bot", Bool),
];

pub const EVENTS: &[Column] = &[
    c("view_id", Utf8),
    c("seq", UInt64),
    c("type", Utf8),
    c("ts", TimestampMs),
    c("event_ms", TimestampMs),
    c("recv_ms", TimestampMs),
    c("sent_at", TimestampMs),
    n("playhead_ms", Float64),
    n("key", Utf8),
    c("ip", Utf8),
    c("device_type", Utf8),
    c("os", Utf8),
    c("browser", Utf8),
    c("country", Utf8),
    c("bot", Bool),
    n("bitrate_kbps", Float64),
    n("width", Int64),
    n("height", Int64),
    n("codec", Utf8),
    n("host", Utf8),
    n("bytes", UInt64),
    n("duration_ms", Float64),
    n("ttfb_ms", Float64),
    n("cache", Utf8),
    n("error_code", Utf8),
    n("error_message", Utf8),
    n("fatal", Bool),
    c("raw", Utf8),
];

/// Text columns read whole and never filtered or grouped on: an event's JSON as received (`events.raw`)
/// and a dead letter's payload (`rejected.payload`). Parquet writes them plain, without a dictionary
/// or min/max statistics: nearly every value is distinct, so the dictionary (each value hashed) is wasted
/// and the statistics (each value compared) narrow no query (BENCHMARKS.md §15).
/// The names match in whichever table has them (every table's writer shares these properties): no
/// other column of any table may be named so.
pub const OPAQUE_TEXT: &[&str] = &["raw", "payload"];

pub const REJECTED: &[Column] = &[
    c("recv_ms", TimestampMs),
    n("key", Utf8),
    n("event_index", Int64),
    c("tag", Utf8),
    c("reason", Utf8),
    c("payload", Utf8),
    c("source", Utf8),
    c("epoch", UInt64),
    c("row", UInt64),
];

/// `alerts`: the alert history, one row per state change of an alert (a rule, or one group of a rule
/// with `group_by`), written by the alert evaluator of `serve` / `query-server`. `state` is `pending`,
/// `firing`, `resolved` or `inactive` (a pending alert whose condition ended before it fired); `value` is
/// the metric when the state changed (NULL when there was none: no data, or below the rule's volume);
/// `labels` is the JSON object of every label the alert carries (as Alertmanager gets them);
/// `active_since` is when the condition started to hold. Identity: (`source`, `seq`), the evaluator's
/// `alerts-<instance id>` and its transition number.
pub const ALERTS: &[Column] = &[
    c("ts", TimestampMs),
    c("rule", Utf8),
    c("state", Utf8),
    c("severity", Utf8),
    c("metric", Utf8),
    c("group_by", Utf8),
    c("group_value", Utf8),
    n("value", Float64),
    c("op", Utf8),
    c("threshold", Float64),
    c("volume", Int64),
    c("labels", Utf8),
    c("active_since", TimestampMs),
    c("source", Utf8),
    c("seq", UInt64),
];

/// Every table, by name: the four the pipeline writes, and the alert history.
pub fn tables() -> [(&'static str, &'static [Column]); 5] {
    [("events", EVENTS), ("views", views()), ("qoe_window", qoe_window()), ("rejected", REJECTED), ("alerts", ALERTS)]
}

/// `[clickhouse]`: the server holding the same tables (written by the pipeline's ClickHouse sink,
/// read by the query server's ClickHouse backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP URL, e.g. `http://127.0.0.1:8123`. None: no ClickHouse sink.
    pub url: Option<String>,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig { url: None, database: "qoeflow".into(), user: None, password: None }
    }
}

/// ClickHouse column type (works on 18.16 and current releases: no DateTime64, Map, LowCardinality).
/// Timestamps are Int64 epoch milliseconds under the same column names.
pub fn clickhouse_type(col: &Column) -> String {
    let t = match col.ty {
        Bool => "UInt8",
        Int64 | TimestampMs => "Int64",
        UInt64 => "UInt64",
        Float64 => "Float64",
        Utf8 | Binary => "String",
    };
    if col.nullable { format!("Nullable({t})") } else { t.to_owned() }
}

/// `CREATE TABLE IF NOT EXISTS` for `table`: ReplacingMergeTree keyed on the row identity, so a replay
/// that rewrites the same rows converges to one copy (read with `FINAL` for exact totals before merges).
pub fn clickhouse_ddl(database: &str, table: &str) -> Option<String> {
    // `views` keeps the highest `version` of each view (a corrected row supersedes the earlier ones);
    // the other tables one copy of each row identity.
    let version = if table == "views" { "(version)" } else { "" };
    let (columns, partition, order) = match table {
        "events" => (EVENTS, "intDiv(event_ms, 86400000)", "view_id, seq"),
        // Not partitioned by time: a corrected row may move to another day, and ReplacingMergeTree
        // replaces only within a partition.
        "views" => (views(), "tuple()", "view_id"),
        "qoe_window" => (qoe_window(), "intDiv(window_start, 86400000)", "source, epoch, row"),
        "rejected" => (REJECTED, "intDiv(recv_ms, 86400000)", "source, epoch, row"),
        "alerts" => (ALERTS, "intDiv(ts, 86400000)", "source, seq"),
        _ => return None,
    };
    let cols: Vec<String> = columns.iter().map(|c| format!("    {} {}", c.name, clickhouse_type(c))).collect();
    Some(format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table} (\n{}\n) ENGINE = ReplacingMergeTree{version} PARTITION BY {partition} ORDER BY ({order})",
        cols.join(",\n")
    ))
}

pub fn arrow_type(t: ColType) -> DataType {
    match t {
        Bool => DataType::Boolean,
        Int64 => DataType::Int64,
        UInt64 => DataType::UInt64,
        Float64 => DataType::Float64,
        Utf8 => DataType::Utf8,
        Binary => DataType::Binary,
        TimestampMs => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

pub fn arrow_schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|c| Field::new(c.name, arrow_type(c.ty), c.nullable)).collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Parquet properties of [`OPAQUE_TEXT`] go by column name in every table: the names hit only
    /// the columns meant.
    #[test]
    fn opaque_text_names_only_the_events_json_and_the_dead_letters_payload() {
        let all = tables().into_iter().chain([("qoe_minute", qoe_minute())]);
        let hit: Vec<(&str, &str)> = all.flat_map(|(t, cols)| cols.iter().filter(|c| OPAQUE_TEXT.contains(&c.name)).map(move |c| (t, c.name))).collect();
        assert_eq!(hit, [("events", "raw"), ("rejected", "payload")]);
    }

    /// The columns derived from the measure list are the tables' columns as released: same names,
    /// types, nullability and order (Parquet files and ClickHouse tables already hold them).
    #[test]
    fn derived_tables_keep_their_columns() {
        // As released, with issue 16's changes: signed window sums, `startup_hist_retract`, `version`.
        // `name type`, `?` when nullable.
        let window = concat!(
            "window_start TimestampMs, window_ms Int64, cdn Utf8, country Utf8, device_type Utf8, os Utf8, \
             browser Utf8, player_name Utf8, player_version Utf8, stream_type Utf8, video_id Utf8, \
             attempts Int64, starts Int64, startup_ms_sum Int64, startup_hist Binary, startup_hist_retract Binary, \
             startup_p50 Float64?, startup_p90 Float64?, startup_p95 Float64?, startup_p99 Float64?, vsf Int64, \
             ebvs Int64, playback_failures Int64, play_ms Int64, stall_count Int64, stall_ms Int64, \
             seek_stall_ms Int64, bitrate_ms Int64, bitrate_known_ms Int64, switches_up Int64, \
             switches_down Int64, segments_hit Int64, segments_miss Int64, segments_unknown Int64, \
             bytes_hit Int64, bytes_total Int64, errors Int64, fatal_errors Int64, active_views Int64, \
             source Utf8, epoch UInt64, row UInt64",
        );
        let views_cols = concat!(
            "view_id Utf8, key Utf8?, start_ms TimestampMs, end_ms TimestampMs, end_reason Utf8, \
             video_id Utf8, video_title Utf8, stream_type Utf8, player_name Utf8, player_version Utf8, \
             page_url Utf8, cdn Utf8, custom Utf8, country Utf8, device_type Utf8, os Utf8, os_version Utf8, \
             browser Utf8, browser_version Utf8, ip Utf8, bot Bool, attempt Bool, started Bool, \
             startup_ms Int64?, vsf Bool, ebvs Bool, playback_failure Bool, play_ms Int64, \
             stall_count UInt64, stall_ms Int64, seek_stall_ms Int64, bitrate_ms Int64, \
             bitrate_known_ms Int64, switches_up UInt64, switches_down UInt64, segments_hit UInt64, \
             segments_miss UInt64, segments_unknown UInt64, bytes_hit UInt64, bytes_miss UInt64, \
             bytes_unknown UInt64, errors UInt64, fatal_errors UInt64, events UInt64, duplicates UInt64, \
             gaps UInt64, version UInt64, source Utf8, epoch UInt64, row UInt64",
        );
        let show = |cols: &[Column]| {
            cols.iter().map(|c| format!("{} {:?}{}", c.name, c.ty, if c.nullable { "?" } else { "" })).collect::<Vec<_>>().join(", ")
        };
        assert_eq!(show(qoe_window()), window);
        assert_eq!(show(views()), views_cols);
    }

    /// Every measure is in the tables the list says, and every measure column of the tables is a
    /// measure: the list is the single source.
    #[test]
    fn every_measure_is_in_its_tables() {
        let names = |cols: &[Column]| cols.iter().map(|c| c.name).collect::<Vec<_>>();
        for def in &measures::MEASURES {
            if let Some((col, ty)) = def.window {
                assert!(qoe_window().iter().any(|c| c.name == col && c.ty == ty), "{col} in qoe_window");
            }
            if let Some((col, ty)) = def.view {
                assert!(views().iter().any(|c| c.name == col && c.ty == ty), "{col} in views");
            }
        }
        let fixed = names(VIEW_HEAD).len() + 4 + IDENTITY.len();
        assert_eq!(views().len() - fixed, measures::MEASURES.iter().filter(|d| d.view.is_some()).count());
        let window_fixed = 2 + DIM_COLUMNS.len() + 2 + measures::WINDOW_QUANTILES.len() + IDENTITY.len();
        assert_eq!(qoe_window().len() - window_fixed, measures::window_sums().count());
    }
}
