//! The pipeline's configuration, and its source on the embedded local log (`qoeflow serve`): positions
//! are log offsets, reads never pass the durable end, and segments before a committed position are
//! deleted. The epoch protocol itself is in [`crate::runner`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ingest::log::{LocalLog, LogReader};
use serde::{Deserialize, Serialize};

use crate::clickhouse::ClickHouseConfig;
use crate::runner::{Batch, Source, SourceRecord};
use crate::sessionizer::SessionConfig;

pub use crate::runner::parquet_dir;

/// The local log is one partition.
const PARTITION: &str = "local";

/// `[pipeline]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Event-time window length.
    pub window_ms: i64,
    /// Dimensions the windows are keyed by.
    pub dims: Vec<crate::Dim>,
    /// A view without records for this long (watermark time) ends at its last event.
    pub inactivity_timeout_ms: i64,
    /// Contributions older than this behind the watermark are dropped (counted as late_dropped).
    pub late_horizon_ms: i64,
    /// How long a view waits for a missing `seq` before proceeding past the gap.
    pub reorder_wait_ms: i64,
    /// How often an epoch is committed (window deltas become visible at this pace).
    pub flush_interval_ms: u64,
    pub max_records_per_epoch: usize,
    /// Parquet compaction: an hour partition is merged once the watermark is this far past its end
    /// (0 turns compaction off).
    pub compact_after_ms: i64,
    /// … and once it holds at least this many files of this pipeline.
    pub compact_min_files: usize,
    /// Merged Parquet files roll over at about this size.
    pub compact_target_bytes: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let s = SessionConfig::default();
        PipelineConfig {
            window_ms: s.window_ms,
            dims: s.dims,
            inactivity_timeout_ms: s.inactivity_timeout_ms,
            late_horizon_ms: s.late_horizon_ms,
            reorder_wait_ms: s.reorder_wait_ms,
            flush_interval_ms: 1000,
            max_records_per_epoch: 100_000,
            compact_after_ms: 10 * 60_000,
            compact_min_files: 8,
            compact_target_bytes: 128 << 20,
        }
    }
}

impl PipelineConfig {
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            window_ms: self.window_ms,
            dims: self.dims.clone(),
            inactivity_timeout_ms: self.inactivity_timeout_ms,
            late_horizon_ms: self.late_horizon_ms,
            reorder_wait_ms: self.reorder_wait_ms,
        }
    }
}

/// The local log as a pipeline source.
pub struct LocalSource {
    log: LocalLog,
    reader: Option<LogReader>,
}

impl LocalSource {
    pub fn new(log: LocalLog) -> LocalSource {
        LocalSource { log, reader: None }
    }

    async fn read(&mut self, max: usize, upto: u64) -> anyhow::Result<(Vec<SourceRecord>, u64)> {
        let mut reader = self.reader.take().context("local source read before seek")?;
        let (entries, reader) = tokio::task::spawn_blocking(move || (reader.read_batch(max, upto), reader)).await?;
        let position = reader.position();
        self.reader = Some(reader);
        let entries = entries.context("reading the local log")?;
        let partition: Arc<str> = Arc::from(PARTITION);
        let records = entries
            .into_iter()
            .map(|e| SourceRecord { partition: partition.clone(), label: format!("log offset {}", e.offset), data: e.data })
            .collect();
        Ok((records, position))
    }
}

impl Source for LocalSource {
    type Position = u64;

    fn name(&self) -> String {
        "local".into()
    }

    async fn seek(&mut self, from: &u64) -> anyhow::Result<()> {
        self.reader = Some(self.log.reader(*from)?);
        Ok(())
    }

    async fn next(&mut self, max: usize) -> anyhow::Result<Batch<u64>> {
        let end = self.log.durable_end();
        let (records, to) = self.read(max, end).await?;
        let caught_up = if to >= end { vec![PARTITION.to_owned()] } else { Vec::new() };
        Ok(Batch { records, to, caught_up })
    }

    async fn next_until(&mut self, to: &u64) -> anyhow::Result<Vec<SourceRecord>> {
        let (records, position) = self.read(usize::MAX, *to).await?;
        anyhow::ensure!(position == *to, "the local log ends at {position}, before the recorded epoch end {to}");
        Ok(records)
    }

    async fn committed(&mut self, position: &u64) {
        if let Err(e) = self.log.retain_from(*position).await {
            tracing::warn!(error = %e, "local log retention failed (retried next epoch)");
        }
    }
}

/// Runs the pipeline on the local log until `shutdown` turns true (see [`crate::runner::run`]).
pub async fn run(
    log: LocalLog,
    data_dir: PathBuf,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    crate::runner::run(LocalSource::new(log), data_dir, config, clickhouse, shutdown).await
}
