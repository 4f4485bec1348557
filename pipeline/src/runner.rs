//! The epoch runner shared by every source: read → sessionize → sinks → checkpoint, exactly once.
//!
//! Work goes in **epochs**. An epoch reads what the source has past the checkpointed position (up to
//! `max_records_per_epoch`), sessionizes it, flushes the window deltas, finished views, events and dead
//! letters, and commits them in this order:
//!
//! 1. the epoch's **intent** (its exact input range) is saved;
//! 2. ClickHouse rows are inserted (if configured);
//! 3. Parquet files named after the epoch are written durably;
//! 4. the **checkpoint** (epoch, position, sessionizer state) is saved with temp/fsync/rename.
//!
//! After a crash or a sink failure, the runner restores the checkpoint, deletes the unfinished epoch's
//! Parquet files, and replays exactly the intent's range. The sessionizer is deterministic (its time is
//! the watermark from the input), so the replay produces the same rows with the same identities: Parquet
//! files are rewritten, ClickHouse's ReplacingMergeTree keeps one copy. A failed epoch pauses the
//! pipeline with backoff; nothing is skipped. Records that do not decode become dead-letter rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use schemas::Record;
use schemas::record::RejectedRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clickhouse::{ClickHouseConfig, ClickHouseSink};
use crate::local::PipelineConfig;
use crate::parquet::ParquetSink;
use crate::sessionizer::{SessionState, Sessionizer, Stats};

/// One record as the source stored it.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// The source partition it was read from (a shard; `local` for the local log): each partition has
    /// its own clock in the sessionizer.
    pub partition: Arc<str>,
    /// Where it was read from, for error messages.
    pub label: String,
    pub data: Bytes,
}

/// What [`Source::next`] read.
#[derive(Debug)]
pub struct Batch<P> {
    pub records: Vec<SourceRecord>,
    /// The position after them.
    pub to: P,
    /// Partitions with nothing more to read right now (or ever): their clocks may move to the present.
    pub caught_up: Vec<String>,
}

/// A replayable input. Positions are what checkpoints and intents store.
pub trait Source: Send {
    type Position: Serialize + DeserializeOwned + Clone + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static;

    /// Names the checkpoint, the intent and the row identities (`local`, `kinesis-w0`, …).
    fn name(&self) -> String;

    /// Positions the source just after `from`.
    fn seek(&mut self, from: &Self::Position) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The next records (at most about `max`, one entry per stored record) and the position after
    /// them. No records and the same position: nothing new.
    fn next(&mut self, max: usize) -> impl Future<Output = anyhow::Result<Batch<Self::Position>>> + Send;

    /// Exactly the records up to `to` (replaying a recorded intent).
    fn next_until(&mut self, to: &Self::Position) -> impl Future<Output = anyhow::Result<Vec<SourceRecord>>> + Send;

    /// Everything up to `position` is committed (the source may release it).
    fn committed(&mut self, position: &Self::Position) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(bound = "P: Serialize + DeserializeOwned + Default")]
struct Checkpoint<P> {
    epoch: u64,
    position: P,
    state: SessionState,
}

/// The input range of an epoch, saved before any sink write.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(bound = "P: Serialize + DeserializeOwned")]
struct Intent<P> {
    epoch: u64,
    from: P,
    to: P,
    /// Partitions the source reported caught up, and the clock they moved to (wall time when the epoch
    /// was read): recorded so a replay makes the same time-based decisions.
    #[serde(default)]
    caught_up: Vec<String>,
    #[serde(default)]
    clock_ms: Option<i64>,
}

/// A caught-up partition's clock trails the wall clock by this much, for records still on their way
/// from the collector's receive time into the stream (the collector retries a PutRecords for up to
/// about 8 s; a local-log fsync can stall). It only matters while a partition is quiet: with traffic,
/// its records' own receive times lead.
const CAUGHT_UP_LAG_MS: i64 = 10_000;

/// With nothing new to read, an epoch still runs this often while views are open, so a quiet stream's
/// clock moves on: views time out and gaps are proceeded past.
const IDLE_EPOCH_EVERY: Duration = Duration::from_secs(5);

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

fn load_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("corrupt {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The Parquet dataset under a data directory.
pub fn parquet_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("parquet")
}

/// Runs `source` until `shutdown` turns true. An epoch that cannot be committed (disk full, ClickHouse
/// down) pauses the pipeline: it retries from the last checkpoint with backoff, and nothing is skipped.
pub async fn run<S: Source>(
    mut source: S,
    data_dir: PathBuf,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Err(e) = run_from_checkpoint(&mut source, &data_dir, &config, &clickhouse, shutdown.clone()).await else {
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

async fn run_from_checkpoint<S: Source>(
    source: &mut S,
    data_dir: &Path,
    config: &PipelineConfig,
    clickhouse: &ClickHouseConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = source.name();
    let state_dir = data_dir.join("pipeline");
    let (ckpt_name, intent_name) = (format!("checkpoint-{name}.json"), format!("intent-{name}.json"));
    let sink = Arc::new(ParquetSink::new(parquet_dir(data_dir), &name, config.dims.clone()));
    let clickhouse = match &clickhouse.url {
        Some(url) => {
            let ch = ClickHouseSink::new(clickhouse, url, config.dims.clone(), &name);
            ch.ensure_schema().await.context("applying ClickHouse DDL")?;
            Some(ch)
        }
        None => None,
    };
    let ckpt: Checkpoint<S::Position> = load_json(&state_dir.join(&ckpt_name))?.unwrap_or_default();
    // An epoch started but not committed is replayed over exactly its recorded range.
    let mut replay = load_json::<Intent<S::Position>>(&state_dir.join(&intent_name))?
        .filter(|i| i.epoch == ckpt.epoch + 1 && i.from == ckpt.position);
    let removed = sink.remove_uncommitted(ckpt.epoch)?;
    if removed > 0 {
        tracing::info!(removed, epoch = ckpt.epoch, "pipeline: removed files of an unfinished epoch; replaying it");
    }
    tracing::info!(source = %name, epoch = ckpt.epoch, position = ?ckpt.position, "pipeline: resuming from checkpoint");
    let mut session = Sessionizer::restore(config.session(), ckpt.state);
    let mut epoch = ckpt.epoch;
    let mut position = ckpt.position;
    source.seek(&position).await.context("positioning the source at the checkpoint")?;
    let mut last_compaction = std::time::Instant::now();
    let mut last_epoch = std::time::Instant::now();
    let mut late_dropped_logged = session.stats.late_dropped;
    let mut tick = tokio::time::interval(Duration::from_millis(config.flush_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let replaying = replay.is_some();
        let (records, to, caught_up, clock) = match replay.take() {
            Some(intent) => (source.next_until(&intent.to).await?, intent.to, intent.caught_up, intent.clock_ms),
            None => {
                let batch = source.next(config.max_records_per_epoch).await?;
                let clock = (!batch.caught_up.is_empty()).then(|| schemas::now_ms() - CAUGHT_UP_LAG_MS);
                (batch.records, batch.to, batch.caught_up, clock)
            }
        };
        // A recorded intent is always replayed, idle or not, so the epoch gets the same rows again.
        let idle = records.is_empty() && to == position;
        if !replaying && idle && (session.open_views() == 0 || clock.is_none() || last_epoch.elapsed() < IDLE_EPOCH_EVERY) {
            continue;
        }
        last_epoch = std::time::Instant::now();
        for SourceRecord { partition, label, data } in records {
            match Record::decode(&data) {
                Ok(record) => session.process_from(&partition, record),
                Err(e) => session.process_from(
                    &partition,
                    Record::Rejected(RejectedRecord {
                        recv_ms: session.watermark().max(0),
                        key: None,
                        index: None,
                        tag: "poison_record".into(),
                        reason: format!("{label}: {e}"),
                        payload: RejectedRecord::truncate_payload(&String::from_utf8_lossy(&data)),
                    }),
                ),
            }
        }
        if let Some(clock) = clock {
            session.tick(&caught_up, clock);
        }
        session.advance();
        let out = session.flush();
        epoch += 1;
        save_json(&state_dir, &intent_name, &Intent { epoch, from: position.clone(), to: to.clone(), caught_up, clock_ms: clock })?;
        if let Some(ch) = &clickhouse {
            ch.write_epoch(epoch, &out).await.with_context(|| format!("ClickHouse insert of epoch {epoch}"))?;
        }
        let next = Checkpoint { epoch, position: to.clone(), state: session.snapshot() };
        let (sink2, dir, ckpt_name2) = (sink.clone(), state_dir.clone(), ckpt_name.clone());
        let crash_at = failpoint_after_files();
        let committed = tokio::task::spawn_blocking(move || {
            sink2.write_epoch(epoch, &out)?;
            if crash_at == Some(epoch) {
                tracing::error!(epoch, "failpoint pipeline_after_files: aborting before the checkpoint");
                std::process::abort();
            }
            save_json(&dir, &ckpt_name2, &next)
        })
        .await?;
        // Not committed: stop rather than skip; the caller replays this epoch from the checkpoint.
        committed.with_context(|| format!("committing pipeline epoch {epoch}"))?;
        position = to;
        log_progress(epoch, &session.stats, session.open_views(), &mut late_dropped_logged);
        source.committed(&position).await;
        if config.compact_after_ms > 0 && last_compaction.elapsed() >= COMPACTION_EVERY {
            last_compaction = std::time::Instant::now();
            let (sink2, closed_before) = (sink.clone(), session.watermark() - config.compact_after_ms);
            let (min_files, target_bytes) = (config.compact_min_files, config.compact_target_bytes);
            // Only committed epochs are merged; a failure leaves the inputs in place and is retried later.
            match tokio::task::spawn_blocking(move || sink2.compact(epoch, closed_before, min_files, target_bytes)).await? {
                Ok(c) if c.partitions > 0 => tracing::info!(partitions = c.partitions, files = c.files_in, rows = c.rows, "pipeline: compacted Parquet partitions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "pipeline: Parquet compaction failed; will retry"),
            }
        }
    }
    Ok(())
}

/// How often (wall time) the runner looks for Parquet partitions to compact.
const COMPACTION_EVERY: Duration = Duration::from_secs(30);

/// Test failpoint: `QOEFLOW_FAILPOINT=pipeline_after_files:<epoch>` aborts the process after that
/// epoch's files are written and before its checkpoint, the window a crash-safety test must hit.
fn failpoint_after_files() -> Option<u64> {
    std::env::var("QOEFLOW_FAILPOINT").ok()?.strip_prefix("pipeline_after_files:")?.parse().ok()
}

fn log_progress(epoch: u64, stats: &Stats, open_views: usize, late_dropped_logged: &mut u64) {
    if stats.late_dropped > *late_dropped_logged {
        tracing::warn!(
            epoch,
            dropped = stats.late_dropped - *late_dropped_logged,
            total = stats.late_dropped,
            "pipeline: dropped events older than the late horizon (pipeline.late_horizon_ms)"
        );
        *late_dropped_logged = stats.late_dropped;
    }
    tracing::debug!(
        epoch,
        records = stats.records,
        events = stats.events,
        duplicates = stats.duplicates,
        gaps = stats.gaps,
        late_dropped = stats.late_dropped,
        stragglers = stats.stragglers,
        after_end = stats.after_end,
        views_ended = stats.views_ended,
        open_views,
        "pipeline epoch committed"
    );
}
