//! The output tables (`events`, `views`, `qoe_window`, `rejected`): one column list per table, from
//! which the Arrow schema (Parquet) is derived, so every sink writes the same columns with the same
//! names and meanings. Column meanings are documented in `schemas/README.md`.
//!
//! Timestamps are epoch milliseconds, typed as Arrow `Timestamp(ms, UTC)` so DuckDB, Spark and
//! DataFusion read them as timestamps. Every row of `qoe_window` and `views` carries its identity
//! (`source`, `epoch`, `row`): a replay of the same input rewrites the same identities.

use std::sync::Arc;

use ::arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Bool,
    Int64,
    UInt64,
    Float64,
    Utf8,
    Binary,
    TimestampMs,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub nullable: bool,
}

const fn c(name: &'static str, ty: ColType) -> Column {
    Column { name, ty, nullable: false }
}
const fn n(name: &'static str, ty: ColType) -> Column {
    Column { name, ty, nullable: true }
}

use ColType::*;

/// Dimension columns of `qoe_window`, in the pipeline's `Dim` order; unconfigured ones are "".
pub const DIM_COLUMNS: [&str; 9] =
    ["cdn", "country", "device_type", "os", "browser", "player_name", "player_version", "stream_type", "video_id"];

pub const QOE_WINDOW: &[Column] = &[
    c("window_start", TimestampMs),
    c("window_ms", Int64),
    c("cdn", Utf8),
    c("country", Utf8),
    c("device_type", Utf8),
    c("os", Utf8),
    c("browser", Utf8),
    c("player_name", Utf8),
    c("player_version", Utf8),
    c("stream_type", Utf8),
    c("video_id", Utf8),
    c("attempts", UInt64),
    c("starts", UInt64),
    c("startup_ms_sum", Int64),
    c("startup_hist", Binary),
    n("startup_p50", Float64),
    n("startup_p90", Float64),
    n("startup_p95", Float64),
    n("startup_p99", Float64),
    c("vsf", UInt64),
    c("ebvs", UInt64),
    c("playback_failures", UInt64),
    c("play_ms", Int64),
    c("stall_count", UInt64),
    c("stall_ms", Int64),
    c("seek_stall_ms", Int64),
    c("bitrate_ms", Int64),
    c("bitrate_known_ms", Int64),
    c("switches_up", UInt64),
    c("switches_down", UInt64),
    c("segments_hit", UInt64),
    c("segments_miss", UInt64),
    c("segments_unknown", UInt64),
    c("bytes_hit", UInt64),
    c("bytes_total", UInt64),
    c("errors", UInt64),
    c("fatal_errors", UInt64),
    c("active_views", UInt64),
    c("source", Utf8),
    c("epoch", UInt64),
    c("row", UInt64),
];

pub const VIEWS: &[Column] = &[
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
    c("attempt", Bool),
    c("started", Bool),
    n("startup_ms", Int64),
    c("vsf", Bool),
    c("ebvs", Bool),
    c("playback_failure", Bool),
    c("play_ms", Int64),
    c("stall_count", UInt64),
    c("stall_ms", Int64),
    c("seek_stall_ms", Int64),
    c("bitrate_ms", Int64),
    c("bitrate_known_ms", Int64),
    c("switches_up", UInt64),
    c("switches_down", UInt64),
    c("segments_hit", UInt64),
    c("segments_miss", UInt64),
    c("segments_unknown", UInt64),
    c("bytes_hit", UInt64),
    c("bytes_miss", UInt64),
    c("bytes_unknown", UInt64),
    c("errors", UInt64),
    c("fatal_errors", UInt64),
    c("events", UInt64),
    c("duplicates", UInt64),
    c("gaps", UInt64),
    c("source", Utf8),
    c("epoch", UInt64),
    c("row", UInt64),
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

/// The four tables, by name.
pub const TABLES: [(&str, &[Column]); 4] =
    [("events", EVENTS), ("views", VIEWS), ("qoe_window", QOE_WINDOW), ("rejected", REJECTED)];

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
    let (columns, partition, order) = match table {
        "events" => (EVENTS, "intDiv(event_ms, 86400000)", "view_id, seq"),
        "views" => (VIEWS, "intDiv(end_ms, 86400000)", "view_id"),
        "qoe_window" => (QOE_WINDOW, "intDiv(window_start, 86400000)", "source, epoch, row"),
        "rejected" => (REJECTED, "intDiv(recv_ms, 86400000)", "source, epoch, row"),
        _ => return None,
    };
    let cols: Vec<String> = columns.iter().map(|c| format!("    {} {}", c.name, clickhouse_type(c))).collect();
    Some(format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table} (\n{}\n) ENGINE = ReplacingMergeTree PARTITION BY {partition} ORDER BY ({order})",
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
