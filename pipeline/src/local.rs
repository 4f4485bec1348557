//! The pipeline's source on the embedded local log (`qoeflow serve`): positions
//! are log offsets, reads never pass the durable end, and segments before a committed position are
//! deleted. The epoch protocol itself is in [`crate::runner`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Context;
use locallog::{LocalLog, LogReader};

use schemas::tables::ClickHouseConfig;

use crate::config::PipelineConfig;
use crate::runner::{Batch, PartitionLag, Source, SourceRecord};

/// The local log is one partition.
const PARTITION: &str = "local";

/// The local log as a pipeline source.
pub struct LocalSource {
    log: LocalLog,
    reader: Option<LogReader>,
}

impl LocalSource {
    pub fn new(log: LocalLog) -> LocalSource {
        LocalSource { log, reader: None }
    }

    async fn read(&mut self, max: usize, max_bytes: usize, upto: u64) -> crate::Result<(Vec<SourceRecord>, u64)> {
        let mut reader = self.reader.take().context("local source read before seek")?;
        let (entries, reader) =
            tokio::task::spawn_blocking(move || (reader.read_batch_bytes(max, max_bytes, upto), reader)).await?;
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

    async fn seek(&mut self, from: &u64) -> crate::Result<()> {
        self.reader = Some(self.log.reader(*from)?);
        Ok(())
    }

    async fn next(&mut self, max: usize, max_bytes: usize) -> crate::Result<Batch<u64>> {
        let end = self.log.durable_end();
        let (records, to) = self.read(max, max_bytes, end).await?;
        let caught_up = if to >= end { vec![PARTITION.to_owned()] } else { Vec::new() };
        let lags = vec![PartitionLag { partition: PARTITION.to_owned(), records: Some(end.saturating_sub(to)), millis_behind: None }];
        Ok(Batch { records, to, caught_up, behind: to < end, behind_ms: None, lags })
    }

    async fn next_until(&mut self, to: &u64) -> crate::Result<Vec<SourceRecord>> {
        let (records, position) = self.read(usize::MAX, usize::MAX, *to).await?;
        crate::error::ensure!(position == *to, "the local log ends at {position}, before the recorded epoch end {to}");
        Ok(records)
    }

    async fn committed(&mut self, position: &u64) {
        if let Err(e) = self.log.retain_from(*position).await {
            tracing::warn!(error = %e, "local log retention failed (retried next epoch)");
        }
    }
}

/// Runs the pipeline on the local log until `shutdown` turns true (see [`crate::runner::run`]): state
/// in `data_dir`, Parquet to `dataset`.
pub async fn run(
    log: LocalLog,
    data_dir: PathBuf,
    dataset: objstore::Location,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    status: Arc<crate::PipelineStatus>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<()> {
    crate::runner::run(
        LocalSource::new(log),
        data_dir,
        dataset,
        config,
        clickhouse,
        status,
        shutdown,
    )
    .await
}
