//! The pipeline on the embedded local log (`qoeflow serve`): read → sessionize → Parquet → checkpoint.
//!
//! Work goes in **epochs**. An epoch reads what the log holds durably past the checkpointed offset (up
//! to `max_records_per_epoch`), sessionizes it, flushes the window deltas, finished views, events and
//! dead letters, writes them as Parquet files named after the epoch, and only then saves the checkpoint
//! (epoch, next offset, sessionizer state) with write-temp/fsync/rename. After a crash the files of the
//! unfinished epoch are deleted and the epoch is replayed from the checkpoint, so the dataset holds
//! every record's contribution exactly once. Log segments before the checkpoint are then deleted.
//!
//! Records that do not decode (poison) become dead-letter rows; they never stop the pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ingest::log::LocalLog;
use schemas::Record;
use schemas::record::RejectedRecord;
use serde::{Deserialize, Serialize};

use crate::clickhouse::{ClickHouseConfig, ClickHouseSink};
use crate::parquet::ParquetSink;
use crate::sessionizer::{SessionConfig, SessionState, Sessionizer, Stats};

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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    epoch: u64,
    offset: u64,
    state: SessionState,
}

/// The input range of an epoch, saved before any sink write: a replay after a crash covers exactly this
/// range, so it produces the same rows with the same identities.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    epoch: u64,
    from: u64,
    to: u64,
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint-local.json")
}

fn load_checkpoint(dir: &Path) -> anyhow::Result<Checkpoint> {
    let path = checkpoint_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("corrupt checkpoint {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `value` as JSON to `dir/name` atomically and durably (temp, fsync, rename, fsync dir).
fn save_json(dir: &Path, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn save_checkpoint(dir: &Path, ckpt: &Checkpoint) -> anyhow::Result<()> {
    save_json(dir, "checkpoint-local.json", ckpt)
}

fn load_intent(dir: &Path) -> anyhow::Result<Option<Intent>> {
    match std::fs::read(dir.join("intent-local.json")) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).context("corrupt epoch intent")?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Layout under the data directory.
pub fn parquet_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("parquet")
}

/// Runs until `shutdown` turns true. An epoch that cannot be committed (disk full, I/O error) pauses the
/// pipeline: it retries from the last checkpoint with backoff, and nothing is skipped.
pub async fn run(
    log: LocalLog,
    data_dir: PathBuf,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Err(e) = run_from_checkpoint(&log, &data_dir, &config, &clickhouse, shutdown.clone()).await else {
            return Ok(());
        };
        tracing::error!(error = format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "pipeline paused: epoch not committed");
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn run_from_checkpoint(
    log: &LocalLog,
    data_dir: &Path,
    config: &PipelineConfig,
    clickhouse: &ClickHouseConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state_dir = data_dir.join("pipeline");
    let sink = Arc::new(ParquetSink::new(parquet_dir(data_dir), "local", config.dims.clone()));
    let clickhouse = match &clickhouse.url {
        Some(url) => {
            let ch = ClickHouseSink::new(clickhouse, url, config.dims.clone(), "local");
            ch.ensure_schema().await.context("applying ClickHouse DDL")?;
            Some(ch)
        }
        None => None,
    };
    let ckpt = load_checkpoint(&state_dir)?;
    // An epoch started but not committed is replayed over exactly its recorded range.
    let mut replay = load_intent(&state_dir)?.filter(|i| i.epoch == ckpt.epoch + 1 && i.from == ckpt.offset);
    let removed = sink.remove_uncommitted(ckpt.epoch)?;
    if removed > 0 {
        tracing::info!(removed, epoch = ckpt.epoch, "pipeline: removed files of an unfinished epoch; replaying it");
    }
    tracing::info!(epoch = ckpt.epoch, offset = ckpt.offset, "pipeline: resuming from checkpoint");
    let mut session = Sessionizer::restore(config.session(), ckpt.state);
    let mut epoch = ckpt.epoch;
    let mut ckpt_offset = ckpt.offset;
    let mut reader = Some(log.reader(ckpt.offset).context("positioning the local log reader at the checkpoint")?);
    let mut durable = log.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(config.flush_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let (end, max) = match replay.take() {
            Some(intent) => (intent.to, usize::MAX),
            None => (*durable.borrow_and_update(), config.max_records_per_epoch),
        };
        let Some(mut r) = reader.take() else { break };
        if end <= r.position() {
            reader = Some(r);
            continue;
        }
        let (entries, r) = tokio::task::spawn_blocking(move || (r.read_batch(max, end), r)).await?;
        let position = r.position();
        reader = Some(r);
        for entry in entries.context("reading the local log")? {
            match Record::decode(&entry.data) {
                Ok(record) => session.process(record),
                Err(e) => session.process(Record::Rejected(RejectedRecord {
                    recv_ms: session.watermark().max(0),
                    key: None,
                    index: None,
                    tag: "poison_record".into(),
                    reason: format!("log offset {}: {e}", entry.offset),
                    payload: RejectedRecord::truncate_payload(&String::from_utf8_lossy(&entry.data)),
                })),
            }
        }
        session.advance();
        let out = session.flush();
        epoch += 1;
        let from = ckpt_offset;
        save_json(&state_dir, "intent-local.json", &Intent { epoch, from, to: position })?;
        if let Some(ch) = &clickhouse {
            ch.write_epoch(epoch, &out).await.with_context(|| format!("ClickHouse insert of epoch {epoch}"))?;
        }
        let next = Checkpoint { epoch, offset: position, state: session.snapshot() };
        let (sink2, dir) = (sink.clone(), state_dir.clone());
        let crash_at = failpoint_after_files();
        let committed = tokio::task::spawn_blocking(move || {
            sink2.write_epoch(epoch, &out)?;
            if crash_at == Some(epoch) {
                tracing::error!(epoch, "failpoint pipeline_after_files: aborting before the checkpoint");
                std::process::abort();
            }
            save_checkpoint(&dir, &next)
        })
        .await?;
        // Not committed: stop rather than skip; a restart replays this epoch from the checkpoint.
        committed.with_context(|| format!("committing pipeline epoch {epoch}"))?;
        ckpt_offset = position;
        log_progress(epoch, &session.stats, session.open_views());
        if let Err(e) = log.retain_from(position).await {
            tracing::warn!(error = %e, "local log retention failed (retried next epoch)");
        }
    }
    Ok(())
}

/// Test failpoint: `QOEFLOW_FAILPOINT=pipeline_after_files:<epoch>` aborts the process after that
/// epoch's files are written and before its checkpoint, the window a crash-safety test must hit.
fn failpoint_after_files() -> Option<u64> {
    std::env::var("QOEFLOW_FAILPOINT").ok()?.strip_prefix("pipeline_after_files:")?.parse().ok()
}

fn log_progress(epoch: u64, stats: &Stats, open_views: usize) {
    tracing::debug!(
        epoch,
        records = stats.records,
        events = stats.events,
        duplicates = stats.duplicates,
        gaps = stats.gaps,
        late_dropped = stats.late_dropped,
        views_ended = stats.views_ended,
        open_views,
        "pipeline epoch committed"
    );
}
