//! The epoch runner shared by every source: read → sessionize → sinks → checkpoint, exactly once
//! (`docs/architecture.md` §7).
//!
//! Work goes in **epochs**. An epoch reads what the source has past the checkpointed position (up to
//! `max_records_per_epoch`), sessionizes it, flushes the window deltas, finished views, events and dead
//! letters, and commits them in this order:
//!
//! 1. the epoch's **intent** (its exact input range) is saved;
//! 2. ClickHouse rows are inserted (if configured);
//! 3. Parquet files named after the epoch are **staged** (invisible to readers: [`objstore::Location::stage`]);
//! 4. the **checkpoint** (epoch, position, the staged files' handles) and what the epoch changed in the
//!    sessionizer's state are committed in one transaction of the state store
//!    (`pipeline/<source>.state.redb`, see [`crate::store`]): only what changed is written;
//! 5. the staged files are **published** (renamed, or their multipart uploads completed on S3).
//!
//! After a crash or a sink failure, the runner restores the checkpoint, publishes what the checkpointed
//! epoch staged, deletes what the unfinished epoch staged, and replays exactly the intent's range. The sessionizer is deterministic (its time is
//! the watermark from the input), so the replay produces the same rows with the same identities: Parquet
//! files are rewritten, ClickHouse's ReplacingMergeTree keeps one copy. A failed epoch pauses the
//! pipeline with backoff; nothing is skipped. Records that do not decode become dead-letter rows.
//!
//! **Poison records.** A record whose processing fails (a panic, caught per record) fails its epoch; once
//! the same record has failed `poison_attempts` times in a row it is **quarantined**: it becomes a
//! dead-letter row (`rejected`, tag `quarantined`, with the error) and the epoch goes on without it. The
//! quarantined records are part of the epoch's intent, so a replay quarantines the same ones. Sink
//! failures are never blamed on a record: an outage pauses the pipeline (reported by `/readyz` through
//! [`PipelineStatus`]) until the sink is back.
//!
//! **Ownership and identity.** A runner holds an exclusive lock on its checkpoint
//! (`pipeline/<source>.lock`) for its whole life, so a second process on the same checkpoint refuses to
//! start. Its rows carry `source` = `<source>-<instance id>`, the id persisted in `<data dir>/instance-id`
//! at first start: two instances, or one restarted on a new data directory, never share a row identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Context;
use bytes::Bytes;
use schemas::Record;
use schemas::record::RejectedRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;

use schemas::tables::ClickHouseConfig;

use crate::clickhouse::ClickHouseSink;
use crate::config::PipelineConfig;
use crate::parquet::ParquetSink;
use crate::sessionizer::{Sessionizer, Stats};
use crate::store::StateStore;
pub use crate::status::PipelineStatus;

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
    /// Some partition has more to read right now (the epoch was cut short, or a shard is behind).
    pub behind: bool,
    /// How far behind, when the source knows (Kinesis: the largest `MillisBehindLatest`); otherwise the
    /// runner takes the wall clock less the watermark.
    pub behind_ms: Option<i64>,
}

/// A replayable input. Positions are what checkpoints and intents store.
pub trait Source: Send {
    type Position: Serialize + DeserializeOwned + Clone + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static;

    /// Names the checkpoint, the intent and the row identities (`local`, `kinesis-w0`, …).
    fn name(&self) -> String;

    /// Positions the source just after `from`.
    fn seek(&mut self, from: &Self::Position) -> impl Future<Output = crate::Result<()>> + Send;

    /// The next records (at most about `max` of them and `max_bytes` of data, one entry per stored
    /// record) and the position after them. No records and the same position: nothing new.
    fn next(&mut self, max: usize, max_bytes: usize) -> impl Future<Output = crate::Result<Batch<Self::Position>>> + Send;

    /// Exactly the records up to `to` (replaying a recorded intent).
    fn next_until(&mut self, to: &Self::Position) -> impl Future<Output = crate::Result<Vec<SourceRecord>>> + Send;

    /// Everything up to `position` is committed (the source may release it).
    fn committed(&mut self, position: &Self::Position) -> impl Future<Output = ()> + Send;
}

/// The runner's part of a commit, saved in the state store with the sessionizer's changes.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(bound = "P: Serialize + DeserializeOwned + Default")]
struct Checkpoint<P> {
    epoch: u64,
    position: P,
    /// The Parquet files this epoch staged, published right after this checkpoint is saved (again at
    /// a restart, in case the crash came in between).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    staged: Vec<objstore::Staged>,
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
    caught_up: Vec<String>,
    clock_ms: Option<i64>,
    /// Records of the range processed as dead letters instead (poison records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quarantined: Vec<Quarantined>,
}

/// A record taken out of processing after failing `poison_attempts` times.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Quarantined {
    /// The record's position label ([`SourceRecord::label`]).
    label: String,
    reason: String,
}

/// Processing a record failed (it panicked): the epoch cannot be committed with it.

/// How the records that failed processing are tracked across attempts.
#[derive(Debug, Default)]
struct Poison {
    /// The record that failed last, and how many attempts in a row it failed.
    last: Option<(String, u32)>,
    /// Records to quarantine in the next epoch that reads them (label → reason).
    pending: std::collections::BTreeMap<String, String>,
}

impl Poison {
    /// Counts a failure; returns true when the record has now failed `attempts` times in a row and
    /// was queued for quarantine.
    fn failed(&mut self, label: &str, reason: &str, attempts: u32) -> bool {
        let count = match &self.last {
            Some((last, n)) if last == label => n + 1,
            _ => 1,
        };
        self.last = Some((label.to_owned(), count));
        if count >= attempts {
            self.pending.insert(label.to_owned(), reason.to_owned());
            self.last = None;
            return true;
        }
        false
    }
}

/// What a run needs besides its source.
struct Ctx<'a> {
    data_dir: &'a Path,
    /// The Parquet dataset.
    dataset: objstore::Location,
    /// The checkpoint's name: `source.name()`.
    name: String,
    /// The row identity: `<name>-<instance id>`.
    identity: String,
    config: &'a PipelineConfig,
    clickhouse: &'a ClickHouseConfig,
    status: &'a PipelineStatus,
    store: StateStore,
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
fn save_json(dir: &Path, name: &str, value: &impl Serialize) -> crate::Result<()> {
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

fn load_json<T: DeserializeOwned>(path: &Path) -> crate::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("corrupt {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The Parquet dataset under a data directory (the default dataset location).
pub fn parquet_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("parquet")
}

/// The persisted id of the instance owning `data_dir` (created at first start): what makes this
/// instance's row identities its own.
pub fn instance_id(data_dir: &Path) -> crate::Result<String> {
    use std::io::Write;
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        crate::error::ensure!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{} is corrupt: expected letters and digits, found {id:?}",
            path.display()
        );
        return Ok(id.to_owned());
    }
    std::fs::create_dir_all(data_dir)?;
    // Letters and digits, starting with a letter other than `e` (file names read `-e<epoch>`).
    const ALPHABET: &[u8] = b"abcdfghijkmnpqrstuvwxyz23456789";
    let mut id: String = (0..12).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    id.replace_range(0..1, &((b'a' + rand::random_range(0..4)) as char).to_string());
    // Written beside and linked into place: of two processes starting at once, one id wins.
    let tmp = data_dir.join(format!(".instance-id.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&tmp, &path);
    std::fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => {
            std::fs::File::open(data_dir)?.sync_all()?;
            tracing::info!(instance = %id, dir = %data_dir.display(), "new instance id for this data directory");
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => instance_id(data_dir),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// Runs `source` until `shutdown` turns true. An epoch that cannot be committed (disk full, ClickHouse
/// down) pauses the pipeline: it retries from the last checkpoint with backoff, and nothing is skipped
/// but records quarantined as poison (see the module header).
pub async fn run<S: Source>(
    mut source: S,
    data_dir: PathBuf,
    dataset: objstore::Location,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    status: Arc<PipelineStatus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<()> {
    config.validate().map_err(crate::Error::Config)?;
    let name = source.name();
    let lock_path = data_dir.join("pipeline").join(format!("{name}.lock"));
    let _lock = locallog::lock_exclusive(&lock_path).with_context(|| format!("pipeline checkpoint {name} in {}", data_dir.display()))?;
    let identity = format!("{name}-{}", instance_id(&data_dir)?);
    let store = StateStore::open(
        &data_dir.join("pipeline").join(format!("{name}.state.redb")),
        config.state_cache_mb << 20,
    )?;
    let ctx = Ctx {
        data_dir: &data_dir,
        dataset,
        name,
        identity,
        config: &config,
        clickhouse: &clickhouse,
        status: &status,
        store,
    };
    let mut poison = Poison::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        let Err(e) = run_from_checkpoint(&mut source, &ctx, &mut poison, shutdown.clone()).await else {
            return Ok(());
        };
        if let crate::Error::Poison { label, reason } = &e
            && poison.failed(label, reason, config.poison_attempts)
        {
            status.quarantined();
            tracing::error!(record = %label, reason = %reason, attempts = config.poison_attempts, "pipeline: record quarantined after failing every attempt; it goes to the dead letters");
        }
        status.failed(&format!("{e:#}"));
        tracing::error!(error = format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "pipeline paused: epoch not committed");
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".to_owned(),
    }
}

/// Decodes and sessionizes one record; an undecodable one becomes a dead letter. Panics are the
/// caller's to catch.
fn process_record(session: &mut Sessionizer, partition: &str, label: &str, data: &[u8], panic_view: Option<&str>) {
    match Record::decode(data) {
        Ok(record) => {
            if let (Some(view), Record::Events(e)) = (panic_view, &record)
                && e.view_id == view
            {
                panic!("failpoint pipeline_panic_view: view {view}");
            }
            session.process_from(partition, record)
        }
        Err(e) => {
            let dead = raw_dead_letter(session, "poison_record", label, &e.to_string(), data);
            session.process_from(partition, Record::Rejected(dead))
        }
    }
}

/// The dead letter standing for a quarantined record: its content (decoded when possible) and why.
fn quarantined_record(session: &Sessionizer, label: &str, reason: &str, data: &[u8]) -> RejectedRecord {
    let mut dead = raw_dead_letter(session, "quarantined", label, reason, data);
    let (recv_ms, key, payload) = match Record::decode(data) {
        Ok(Record::Events(e)) => (e.recv_ms, e.key.clone(), serde_json::to_string(&e).unwrap_or_default()),
        Ok(Record::Rejected(r)) => (r.recv_ms, r.key.clone(), serde_json::to_string(&r).unwrap_or_default()),
        Err(_) => return dead,
    };
    (dead.recv_ms, dead.key, dead.payload) = (recv_ms, key, RejectedRecord::truncate_payload(&payload));
    dead
}

/// A dead letter for a stored record from its bytes alone (`tag`: why it could not be processed).
fn raw_dead_letter(session: &Sessionizer, tag: &str, label: &str, reason: &str, data: &[u8]) -> RejectedRecord {
    RejectedRecord {
        recv_ms: session.watermark().max(0),
        key: None,
        index: None,
        tag: tag.into(),
        reason: format!("{label}: {reason}"),
        payload: RejectedRecord::truncate_payload(&String::from_utf8_lossy(data)),
    }
}

async fn run_from_checkpoint<S: Source>(
    source: &mut S,
    ctx: &Ctx<'_>,
    poison: &mut Poison,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<()> {
    let (config, name, status) = (ctx.config, &ctx.name, ctx.status);
    let state_dir = ctx.data_dir.join("pipeline");
    let intent_name = format!("intent-{name}.json");
    let sink = Arc::new(ParquetSink::new(
        ctx.dataset.clone(),
        &ctx.identity,
        config.dims.clone(),
    ));
    let clickhouse = match &ctx.clickhouse.url {
        Some(url) => {
            let ch = ClickHouseSink::new(ctx.clickhouse, url, config.dims.clone(), &ctx.identity);
            ch.ensure_schema().await.context("applying ClickHouse DDL")?;
            Some(ch)
        }
        None => None,
    };
    let (mut session, ckpt) = Sessionizer::open(config.session(), ctx.store.clone())?;
    let ckpt: Checkpoint<S::Position> = match ckpt {
        Some(bytes) => serde_json::from_slice(&bytes).context("the checkpoint in the state store")?,
        None => Checkpoint::default(),
    };
    // An epoch started but not committed is replayed over exactly its recorded range.
    let mut replay = load_json::<Intent<S::Position>>(&state_dir.join(&intent_name))?
        .filter(|i| i.epoch == ckpt.epoch + 1 && i.from == ckpt.position);
    let removed = sink
        .recover(ckpt.epoch, &ckpt.staged)
        .await
        .context("recovering the Parquet dataset")?;
    if removed > 0 {
        tracing::info!(removed, epoch = ckpt.epoch, "pipeline: removed files of an unfinished epoch; replaying it");
    }
    tracing::info!(source = %name, identity = %ctx.identity, epoch = ckpt.epoch, position = ?ckpt.position, "pipeline: resuming from checkpoint");
    status.restored(&session.stats);
    let panic_view = failpoint("pipeline_panic_view");
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
        let (records, to, caught_up, clock, behind) = match replay.take() {
            Some(intent) => {
                // A replay quarantines what its first run did.
                for q in intent.quarantined {
                    poison.pending.entry(q.label).or_insert(q.reason);
                }
                (source.next_until(&intent.to).await?, intent.to, intent.caught_up, intent.clock_ms, None)
            }
            None => {
                let batch = source.next(config.max_records_per_epoch, config.max_epoch_bytes).await?;
                let clock = (!batch.caught_up.is_empty()).then(|| schemas::now_ms() - CAUGHT_UP_LAG_MS);
                let behind = batch.behind.then(|| batch.behind_ms.unwrap_or(-1));
                (batch.records, batch.to, batch.caught_up, clock, behind)
            }
        };
        // A recorded intent is always replayed, idle or not, so the epoch gets the same rows again.
        let idle = records.is_empty() && to == position;
        if !replaying && idle && (session.open_views() == 0 || clock.is_none() || last_epoch.elapsed() < IDLE_EPOCH_EVERY) {
            status.idle(session.open_views());
            continue;
        }
        last_epoch = std::time::Instant::now();
        let mut quarantined = Vec::new();
        for SourceRecord { partition, label, data } in records {
            if let Some(reason) = poison.pending.get(&label) {
                // Decoding failed before, maybe by panicking: the dead letter does not depend on it.
                let dead = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| quarantined_record(&session, &label, reason, &data)))
                    .unwrap_or_else(|_| raw_dead_letter(&session, "quarantined", &label, reason, &data));
                session.process_from(&partition, Record::Rejected(dead));
                quarantined.push(Quarantined { label, reason: reason.clone() });
                continue;
            }
            let processed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                process_record(&mut session, &partition, &label, &data, panic_view.as_deref())
            }));
            if let Err(panic) = processed {
                // The sessionizer may be half-way through the record: the caller restores the checkpoint.
                return Err(crate::Error::Poison { label, reason: panic_message(panic.as_ref()) });
            }
        }
        if let Some(clock) = clock {
            session.tick(&caught_up, clock);
        }
        // A panic here belongs to no one record: the epoch fails and is retried (reported as stalled).
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.advance()))
            .map_err(|panic| crate::Error::msg(format!("advancing the views' clocks {}", panic_message(panic.as_ref()))))?;
        let out = session.flush();
        epoch += 1;
        let intent = Intent { epoch, from: position.clone(), to: to.clone(), caught_up, clock_ms: clock, quarantined };
        save_json(&state_dir, &intent_name, &intent)?;
        if let Some(ch) = &clickhouse {
            ch.write_epoch(epoch, &out).await.with_context(|| format!("ClickHouse insert of epoch {epoch}"))?;
        }
        // Staged: invisible until published after the checkpoint below.
        let (sink2, epoch_out) = (sink.clone(), out);
        let files =
            tokio::task::spawn_blocking(move || sink2.encode_epoch(epoch, &epoch_out)).await??;
        let staged = sink
            .stage(files)
            .await
            .with_context(|| format!("staging the Parquet files of epoch {epoch}"))?;
        if failpoint("pipeline_after_files").and_then(|e| e.parse::<u64>().ok()) == Some(epoch) {
            tracing::error!(
                epoch,
                "failpoint pipeline_after_files: aborting before the checkpoint"
            );
            std::process::abort();
        }
        let next = serde_json::to_vec(&Checkpoint {
            epoch,
            position: to.clone(),
            staged: staged.clone(),
        })?;
        let commit = session
            .take_commit(Some(next))
            .with_context(|| format!("state of epoch {epoch}"))?;
        let store = ctx.store.clone();
        let committed = tokio::task::spawn_blocking(move || store.commit(commit)).await?;
        // Not committed: stop rather than skip; the caller replays this epoch from the checkpoint.
        let forgotten = committed.with_context(|| format!("committing pipeline epoch {epoch}"))?;
        // Committed: a failure to publish is finished by the restart (`recover`).
        sink.publish(&staged)
            .await
            .with_context(|| format!("publishing the Parquet files of epoch {epoch}"))?;
        session.committed(forgotten);
        write_progress(&state_dir, name, epoch, &to, &session, &ctx.store);
        position = to;
        for q in &intent.quarantined {
            poison.pending.remove(&q.label);
        }
        let lag_ms = match behind {
            None => 0,
            Some(ms) if ms >= 0 => ms,
            Some(_) => schemas::now_ms().saturating_sub(session.watermark()),
        };
        status.committed(&session.stats, session.open_views(), lag_ms);
        log_progress(epoch, &session.stats, session.open_views(), &mut late_dropped_logged);
        source.committed(&position).await;
        if config.compact_after_ms > 0 && last_compaction.elapsed() >= COMPACTION_EVERY {
            last_compaction = std::time::Instant::now();
            let closed_before = session.watermark() - config.compact_after_ms;
            // Only committed epochs are merged; a failure leaves the inputs in place and is retried later.
            match sink
                .compact(
                    epoch,
                    closed_before,
                    config.compact_min_files,
                    config.compact_target_bytes,
                )
                .await
            {
                Ok(c) if c.partitions > 0 => tracing::info!(
                    partitions = c.partitions,
                    files = c.files_in,
                    rows = c.rows,
                    "pipeline: compacted Parquet partitions"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "pipeline: Parquet compaction failed; will retry"),
            }
        }
    }
    Ok(())
}

/// What `pipeline/checkpoint-<source>.json` shows (for operators, tests and benchmarks; the state
/// store is the authority): the committed epoch and position first, then the state's sizes.
#[derive(Serialize)]
struct Progress<'a, P> {
    epoch: u64,
    position: &'a P,
    watermark: i64,
    open_views: usize,
    cached_views: usize,
    ended_views: u64,
    buffered_events: usize,
    max_skipped_ranges: usize,
    state_store_bytes: u64,
    stats: &'a Stats,
}

/// Writes the progress file after a commit (replaced by rename; not fsynced: it is informational, and
/// never ahead of the commit it describes).
fn write_progress<P: Serialize>(dir: &Path, name: &str, epoch: u64, position: &P, session: &Sessionizer, store: &StateStore) {
    let sizes = session.sizes();
    let progress = Progress {
        epoch,
        position,
        watermark: session.watermark(),
        open_views: sizes.open_views,
        cached_views: sizes.cached_views,
        ended_views: sizes.ended_views,
        buffered_events: sizes.buffered_events,
        max_skipped_ranges: sizes.max_skipped_ranges,
        state_store_bytes: store.disk_bytes(),
        stats: &session.stats,
    };
    let (tmp, path) = (dir.join(format!(".checkpoint-{name}.json.tmp")), dir.join(format!("checkpoint-{name}.json")));
    let written = serde_json::to_vec(&progress).map_err(std::io::Error::other).and_then(|b| std::fs::write(&tmp, b)).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "pipeline: could not write the progress file");
    }
}

/// How often (wall time) the runner looks for Parquet partitions to compact.
const COMPACTION_EVERY: Duration = Duration::from_secs(30);

/// Test failpoints, `QOEFLOW_FAILPOINT=<name>:<argument>`:
/// - `pipeline_after_files:<epoch>` aborts the process after that epoch's files are written and before
///   its checkpoint, the window a crash-safety test must hit;
/// - `pipeline_panic_view:<view id>` panics while processing any record of that view (a poison record).
fn failpoint(name: &str) -> Option<String> {
    let value = std::env::var("QOEFLOW_FAILPOINT").ok()?;
    value.strip_prefix(name)?.strip_prefix(':').map(str::to_owned)
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
