//! The qoeflow pipeline: rebuilds every view from the record stream and computes the QoE metrics of
//! `docs/metrics.md` as mergeable window deltas and per-view rows.
//!
//! - [`view`]: the per-view state machine (the metric definitions).
//! - [`window`]: event-time tumbling windows, accumulated as deltas, with start-time histograms.
//! - [`sessionizer`]: dedupe, reorder, corrections, view lifecycle, dimensions, watermark, late horizon.
//! - `open`: the open views, the hot ones in memory and the others in the store.
//! - `replay`: a view's state, and its re-derivation from its history (corrections).
//! - [`store`]: the state store (open and ended views, view histories, checkpoints) on disk.
//! - [`rows`], [`parquet`], [`rollup`]: output rows in the columns of `schemas::tables`, the Parquet sink
//!   and its compaction's minute rollups.
//! - [`clickhouse`]: the ClickHouse sink (same tables, RowBinary, ReplacingMergeTree).
//! - [`runner`]: the epoch protocol (intent → sinks → checkpoint) shared by every source.
//! - `kinesis`: the Kinesis source (shards, lineage, KPL deaggregation, worker assignment); the
//!   `kinesis` feature.
//! - [`local`]: the local-log source (`qoeflow serve`).
//! - [`config`], [`error`]: `[pipeline]` settings; the error type.
//! - [`status`]: the pipeline's metrics and readiness (stalled, far behind).

pub mod clickhouse;
pub mod config;
pub mod error;
mod history;
mod intern;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod local;
mod open;
pub mod parquet;
pub mod rollup;
mod replay;
pub mod rows;
pub mod runner;
pub mod sessionizer;
pub mod status;
pub mod store;
pub mod view;
pub mod window;

/// The maps the sessionizer looks up per record and per event (open views, an epoch's dirty views and
/// history chunks, window cells, the interners' values): hashbrown's, for `entry_ref`, which copies a
/// key only when it inserts it, hashed by foldhash instead of the standard library's SipHash
/// (`BENCHMARKS.md` §31). Named here rather than taken as hashbrown's default, which may change.
///
/// View ids come from clients. foldhash is seeded at random per map, but is not built to resist an
/// attacker who can observe timing or iteration order; here none can: the pipeline reads behind the
/// log, a view id is at most 128 characters, every output taken from these maps is sorted first, and
/// an epoch's maps are rebuilt every epoch. Should that change, `std::hash::RandomState` (SipHash) in
/// place of `foldhash::fast::RandomState` keeps the rest as it is.
pub(crate) type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
/// [`FastMap`]'s set.
pub(crate) type FastSet<T> = hashbrown::HashSet<T, foldhash::fast::RandomState>;

pub use config::PipelineConfig;
pub use error::{Error, Result};
pub use status::PipelineStatus;
pub use sessionizer::{Dim, EventRow, Output, Received, SessionConfig, Sessionizer, StateSizes, Stats, ViewRow};
pub use store::StateStore;
