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
//! **Lease mode** ([`run_with`] with a [`Shared`]: the elastic Kinesis workers, one runner per shard
//! lineage). The lineage's history lives on object storage beside the dataset
//! (`<dataset>/_pipeline/<lineage>/`), so any worker can continue it:
//!
//! - intents are written **create-only** (`intent-<epoch>.json`): the first writer defines epoch E, a
//!   worker that finds E already defined by someone else is fenced;
//! - the checkpoint is committed through the [`Fence`] (the lease's conditional update in DynamoDB)
//!   after staging and before the local state store: refused, the epoch is not published and the run
//!   stops; a runner whose lease may have expired (not renewed within the timeout) writes nothing;
//! - the state store is **snapshotted** (`snapshot-<epoch>.redb`) every `snapshot_every`. A new owner
//!   restores the newest snapshot at or below the lease's epoch (or keeps its local store when that is
//!   still on the lineage's history), replays the intents after it to the lease's epoch with the output
//!   discarded (deterministic: the same state), publishes what that epoch staged, replays an intent past
//!   it if one exists (with output: a previous owner's unfinished epoch), and goes on. Each snapshot
//!   prunes the intents no restore from the newest two snapshots needs, and a worker whose lease was
//!   just taken from it may still ship one: a new owner that planned to replay from its local store
//!   can find an intent gone. It does not retry that ([`crate::Error::HistoryMoved`]): the run ends and
//!   the worker starts it over, which restores from the newest snapshot (the elastic test "a worker
//!   paused past its lease" once stalled here for good, retrying the missing intent every 5 s).
//!
//! Row identities are the lineage's (`kinesis-<root shard>-<lineage id>`), not the instance's: a replay
//! by another worker rewrites the same files and ClickHouse rows.
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
use schemas::record::{Checked, RejectedRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;

use schemas::tables::ClickHouseConfig;

use crate::clickhouse::ClickHouseSink;
use crate::config::PipelineConfig;
use crate::parquet::ParquetSink;
use crate::sessionizer::{Sessionizer, Stats};
use crate::store::StateStore;
pub use crate::status::{PartitionLag, PipelineStatus};
use crate::status::{Sink, SourceMetrics};

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
    /// How far behind each partition read is, as far as the source knows (for the metrics).
    pub lags: Vec<PartitionLag>,
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

/// What fences a lineage's commits in lease mode (the lease, [`crate::kinesis::lease::Held`]).
pub trait Fence: Send + Sync {
    /// The checkpoint last committed through the fence (JSON of the runner's checkpoint), None before
    /// the lineage's first commit.
    fn committed(&self) -> impl Future<Output = Option<String>> + Send;
    /// Commits `checkpoint` as epoch `epoch`. False: fenced (another worker holds the lineage now).
    fn commit(&self, epoch: u64, checkpoint: &str) -> impl Future<Output = crate::Result<bool>> + Send;
    /// Whether this runner may still write (its lease cannot have expired on another worker's clock).
    fn valid(&self) -> bool;
    /// Confirms with the lease table that this runner still holds the lease (a conditional renewal):
    /// false when another worker took it, even one that stole it for balance while [`Fence::valid`]
    /// still holds on this runner's clock. Asked before recovery deletes files.
    fn confirm(&self) -> impl Future<Output = crate::Result<bool>> + Send;
    /// Whether the lineage's previous holder can no longer be writing (a lease: a timeout after it was
    /// taken): until then this runner does not compact, so two workers never merge the same files into
    /// overlapping ranges.
    fn settled(&self) -> bool;
}

/// No fence: a runner that owns its source alone (the local log, static Kinesis workers).
pub enum NoFence {}

impl Fence for NoFence {
    async fn committed(&self) -> Option<String> {
        match *self {}
    }
    async fn commit(&self, _: u64, _: &str) -> crate::Result<bool> {
        match *self {}
    }
    fn valid(&self) -> bool {
        match *self {}
    }
    async fn confirm(&self) -> crate::Result<bool> {
        match *self {}
    }
    fn settled(&self) -> bool {
        match *self {}
    }
}

/// Lease mode (see the module header): the fence, and where the lineage's history is shared.
pub struct Shared<F> {
    pub fence: F,
    /// `<dataset>/_pipeline/<lineage>/`: intents and state snapshots.
    pub history: objstore::Location,
    /// How often the state store is snapshotted there.
    pub snapshot_every: Duration,
}

/// The history's key of epoch `epoch`'s intent, and of the state snapshot after it.
fn intent_key(epoch: u64) -> String {
    format!("intent-{epoch:020}.json")
}
fn snapshot_key(epoch: u64) -> String {
    format!("snapshot-{epoch:020}.redb")
}
/// The epoch of a history key (`intent-…`/`snapshot-…`), by kind.
fn history_epoch<'a>(key: &'a str, kind: &str) -> Option<u64> {
    key.strip_prefix(kind)?.strip_prefix('-')?.split('.').next()?.parse().ok()
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
struct Ctx<'a, F> {
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
    metrics: SourceMetrics,
    store: StateStore,
    shared: Option<&'a Shared<F>>,
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

/// A random id of `len` letters and digits, starting with a letter other than `e` (file names read
/// `-e<epoch>` after a row identity).
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdfghijkmnpqrstuvwxyz23456789";
    let mut id: String = (0..len.max(1)).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    id.replace_range(0..1, &((b'a' + rand::random_range(0..4)) as char).to_string());
    id
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
    let id = random_id(12);
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
    source: S,
    data_dir: PathBuf,
    dataset: objstore::Location,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    status: Arc<PipelineStatus>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<()> {
    run_with::<S, NoFence>(source, data_dir, dataset, config, clickhouse, status, shutdown, None).await
}

/// [`run`], in lease mode with `shared` (see the module header): returns `Err` with
/// [`crate::Error::is_fenced`] when the lineage is lost to another worker.
#[allow(clippy::too_many_arguments)]
pub async fn run_with<S: Source, F: Fence>(
    mut source: S,
    data_dir: PathBuf,
    dataset: objstore::Location,
    config: PipelineConfig,
    clickhouse: ClickHouseConfig,
    status: Arc<PipelineStatus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    shared: Option<Shared<F>>,
) -> crate::Result<()> {
    config.validate().map_err(crate::Error::Config)?;
    let name = source.name();
    let lock_path = data_dir.join("pipeline").join(format!("{name}.lock"));
    let _lock = locallog::lock_exclusive(&lock_path).with_context(|| format!("pipeline checkpoint {name} in {}", data_dir.display()))?;
    tracing::info!(source = %name, lock = %lock_path.display(), "pipeline: checkpoint locked");
    // A lineage's rows are the lineage's, whoever writes them; otherwise they are this instance's.
    let identity = match &shared {
        Some(_) => name.clone(),
        None => format!("{name}-{}", instance_id(&data_dir)?),
    };
    let state_path = data_dir.join("pipeline").join(format!("{name}.state.redb"));
    if let Some(shared) = &shared {
        restore_state(shared, &state_path, config.state_cache_mb << 20).await.with_context(|| format!("restoring the state of lineage {name}"))?;
    }
    let store = StateStore::open(&state_path, config.state_cache_mb << 20)?;
    let ctx = Ctx {
        data_dir: &data_dir,
        dataset,
        metrics: status.source(&name),
        name,
        identity,
        config: &config,
        clickhouse: &clickhouse,
        status: &status,
        store,
        shared: shared.as_ref(),
    };
    let mut poison = Poison::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        let Err(e) = run_from_checkpoint(&mut source, &ctx, &mut poison, shutdown.clone()).await else {
            return Ok(());
        };
        if e.is_fenced() {
            tracing::warn!(source = %ctx.name, error = format!("{e:#}"), "pipeline: lineage lost to another worker; stopping it");
            return Err(e);
        }
        if e.is_history_moved() {
            tracing::warn!(source = %ctx.name, error = format!("{e:#}"), "pipeline: the lineage's history moved; restoring it again");
            return Err(e);
        }
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

/// `write`, its time and outcome reported as a write to `sink`.
async fn timed<T, E>(metrics: &SourceMetrics, sink: Sink, write: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = write.await;
    metrics.sink_write(sink, started.elapsed(), result.is_ok());
    result
}

/// Decodes and sessionizes one record; an undecodable one becomes a dead letter. Panics are the
/// caller's to catch.
fn process_record(session: &mut Sessionizer, partition: &str, label: &str, data: &[u8], panic_view: Option<&str>) {
    match Record::decode_checked(data) {
        Ok(record) => {
            if let (Some(view), Checked::Events(e)) = (panic_view, &record)
                && e.view_id == view
            {
                panic!("failpoint pipeline_panic_view: view {view}");
            }
            session.process_checked(partition, record)
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

/// Where a run's intents are kept: a local file (one intent, the unfinished epoch's) or, in lease mode,
/// the lineage's shared history (every epoch's, create-only).
enum Intents<'a> {
    Local { dir: PathBuf, file: String },
    Shared(&'a objstore::Location),
}

impl Intents<'_> {
    async fn get<P: Serialize + DeserializeOwned>(&self, epoch: u64) -> crate::Result<Option<Intent<P>>> {
        let intent: Option<Intent<P>> = match self {
            Intents::Local { dir, file } => load_json(&dir.join(file))?,
            Intents::Shared(history) => match history.get(&intent_key(epoch)).await? {
                Some(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| format!("corrupt intent of epoch {epoch} in {}", history.url()))?),
                None => None,
            },
        };
        Ok(intent.filter(|i| i.epoch == epoch))
    }

    /// Saves the intent of an epoch about to be written. False: the shared history already defines
    /// that epoch (another worker wrote it: this one is fenced).
    async fn put<P: Serialize + DeserializeOwned>(&self, intent: &Intent<P>) -> crate::Result<bool> {
        match self {
            Intents::Local { dir, file } => save_json(dir, file, intent).map(|()| true),
            Intents::Shared(history) => Ok(history.put_if_absent(&intent_key(intent.epoch), Bytes::from(serde_json::to_vec(intent)?)).await?),
        }
    }
}

/// Lease mode, before the state store opens: makes the local store one the lineage's history can
/// continue to the lease's epoch. The local store stays if it is at or below that epoch with every
/// intent after it kept; otherwise it is replaced by the newest snapshot at or below the lease's epoch
/// (or removed, to start from nothing, when the history begins at epoch 1).
async fn restore_state<F: Fence>(shared: &Shared<F>, path: &Path, cache_bytes: usize) -> crate::Result<()> {
    let target = match shared.fence.committed().await {
        Some(json) => serde_json::from_str::<Checkpoint<serde_json::Value>>(&json).context("the lease's checkpoint")?.epoch,
        None => 0,
    };
    let local = match path.exists() {
        false => None,
        true => {
            let p = path.to_owned();
            let bytes = tokio::task::spawn_blocking(move || StateStore::open(&p, cache_bytes)?.checkpoint()).await??;
            Some(match bytes {
                Some(b) => serde_json::from_slice::<Checkpoint<serde_json::Value>>(&b).context("the local checkpoint")?.epoch,
                None => 0,
            })
        }
    };
    let listed = shared.history.list("").await?;
    let intents: std::collections::BTreeSet<u64> = listed.iter().filter_map(|e| history_epoch(&e.key, "intent")).collect();
    let has_intents = |from: u64| (from + 1..=target).all(|e| intents.contains(&e));
    if local.is_some_and(|l| l <= target && has_intents(l)) {
        tracing::info!(local = local.unwrap_or(0), lease = target, "pipeline: continuing the lineage from the local state store");
        return Ok(());
    }
    let snapshot = listed.iter().filter_map(|e| history_epoch(&e.key, "snapshot")).filter(|&e| e <= target && has_intents(e)).max();
    let tmp = path.with_extension("restore.tmp");
    match snapshot {
        Some(epoch) => {
            let bytes = shared.history.get(&snapshot_key(epoch)).await?.with_context(|| format!("snapshot of epoch {epoch} vanished"))?;
            let (tmp2, path2) = (tmp.clone(), path.to_owned());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp2)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp2, &path2)
            })
            .await??;
            tracing::info!(snapshot = epoch, lease = target, local = ?local, "pipeline: restored the lineage's state snapshot");
        }
        None if has_intents(0) => {
            if local.is_some() {
                std::fs::remove_file(path)?;
            }
            tracing::info!(lease = target, local = ?local, "pipeline: rebuilding the lineage's state from its first epoch");
        }
        None => {
            return Err(crate::Error::msg(format!(
                "no state snapshot and intents in {} lead to the lease's epoch {target} (local state at {local:?})",
                shared.history.url()
            )));
        }
    }
    Ok(())
}

/// Lease mode, after a commit: ships the state store to the lineage's history and drops what no restore
/// needs any more (snapshots but the newest two, intents up to the older of them).
async fn snapshot<F>(shared: &Shared<F>, store: &StateStore, epoch: u64) -> crate::Result<()> {
    let store2 = store.clone();
    let bytes = tokio::task::spawn_blocking(move || store2.file_bytes()).await??;
    let size = bytes.len();
    shared.history.put(&snapshot_key(epoch), Bytes::from(bytes)).await?;
    let listed = shared.history.list("").await?;
    let snapshots: Vec<u64> = listed.iter().filter_map(|e| history_epoch(&e.key, "snapshot")).collect();
    if let Some(&keep_from) = snapshots.iter().rev().nth(1) {
        for e in &listed {
            let old_snapshot = history_epoch(&e.key, "snapshot").is_some_and(|s| s < keep_from);
            let old_intent = history_epoch(&e.key, "intent").is_some_and(|i| i <= keep_from);
            if old_snapshot || old_intent {
                shared.history.delete(&e.key).await?;
            }
        }
    }
    tracing::info!(epoch, bytes = size, "pipeline: state snapshot shipped");
    Ok(())
}

/// Sessionizes one epoch's records (quarantining those `poison` says), moves the caught-up partitions'
/// clocks and the views' timers. Returns the records quarantined. A record that panics fails the epoch.
fn process_epoch(
    session: &mut Sessionizer,
    records: Vec<SourceRecord>,
    caught_up: &[String],
    clock: Option<i64>,
    poison: &Poison,
    panic_view: Option<&str>,
    metrics: Option<&SourceMetrics>,
) -> crate::Result<Vec<Quarantined>> {
    let mut quarantined = Vec::new();
    // Per partition: records, bytes, events (in source order, so a partition's records are adjacent).
    let mut read: Vec<(Arc<str>, u64, u64, u64)> = Vec::new();
    let mut count = |partition: &Arc<str>, bytes: usize, events: u64| match read.last_mut() {
        Some(last) if last.0 == *partition => (last.1, last.2, last.3) = (last.1 + 1, last.2 + bytes as u64, last.3 + events),
        _ => read.push((partition.clone(), 1, bytes as u64, events)),
    };
    for SourceRecord { partition, label, data } in records {
        let events_before = session.stats.events;
        if let Some(reason) = poison.pending.get(&label) {
            // Decoding failed before, maybe by panicking: the dead letter does not depend on it.
            let dead = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| quarantined_record(session, &label, reason, &data)))
                .unwrap_or_else(|_| raw_dead_letter(session, "quarantined", &label, reason, &data));
            session.process_from(&partition, Record::Rejected(dead));
            quarantined.push(Quarantined { label, reason: reason.clone() });
            count(&partition, data.len(), 0);
            continue;
        }
        let processed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process_record(session, &partition, &label, &data, panic_view)));
        if let Err(panic) = processed {
            // The sessionizer may be half-way through the record: the caller restores the checkpoint.
            return Err(crate::Error::Poison { label, reason: service::panic_message(panic.as_ref()) });
        }
        count(&partition, data.len(), session.stats.events - events_before);
    }
    if let Some(metrics) = metrics {
        for (partition, records, bytes, events) in read {
            metrics.read(&partition, records, bytes, events);
        }
    }
    if let Some(clock) = clock {
        session.tick(caught_up, clock);
    }
    // A panic here belongs to no one record: the epoch fails and is retried (reported as stalled).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.advance()))
        .map_err(|panic| crate::Error::msg(format!("advancing the views' clocks {}", service::panic_message(panic.as_ref()))))?;
    Ok(quarantined)
}

/// Commits the sessionizer's changes with `checkpoint` to the state store (off the async threads).
async fn commit_state(session: &mut Sessionizer, store: &StateStore, epoch: u64, checkpoint: Vec<u8>) -> crate::Result<()> {
    let commit = session.take_commit(Some(checkpoint)).with_context(|| format!("state of epoch {epoch}"))?;
    let store = store.clone();
    let committed = tokio::task::spawn_blocking(move || store.commit(commit)).await?;
    // Not committed: stop rather than skip; the caller replays this epoch from the checkpoint.
    let forgotten = committed.with_context(|| format!("committing pipeline epoch {epoch}"))?;
    session.committed(forgotten);
    Ok(())
}

fn fenced(name: &str, what: impl std::fmt::Display) -> crate::Error {
    crate::Error::Fenced(format!("lineage {name}: {what}"))
}

async fn run_from_checkpoint<S: Source, F: Fence>(
    source: &mut S,
    ctx: &Ctx<'_, F>,
    poison: &mut Poison,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<()> {
    let (config, name, status) = (ctx.config, &ctx.name, ctx.status);
    let state_dir = ctx.data_dir.join("pipeline");
    let intents = match ctx.shared {
        Some(shared) => Intents::Shared(&shared.history),
        None => Intents::Local { dir: state_dir.clone(), file: format!("intent-{name}.json") },
    };
    let may_write = || match ctx.shared {
        Some(shared) if !shared.fence.valid() => Err(fenced(name, "the lease was not renewed within its timeout; writing nothing")),
        _ => Ok(()),
    };
    let sink = Arc::new(ParquetSink::new(ctx.dataset.clone(), &ctx.identity, config.dims.clone()));
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
    let panic_view = failpoint("pipeline_panic_view");
    let mut epoch = ckpt.epoch;
    let mut position = ckpt.position;
    let mut to_publish = ckpt.staged;
    source.seek(&position).await.context("positioning the source at the checkpoint")?;
    // Lease mode: the local state catches up with the lease's epoch, replaying the lineage's intents
    // with the output discarded (the epochs were committed by whoever held the lease).
    if let Some(shared) = ctx.shared {
        let lease: Checkpoint<S::Position> = match shared.fence.committed().await {
            Some(json) => serde_json::from_str(&json).context("the lease's checkpoint")?,
            None => Checkpoint::default(),
        };
        crate::error::ensure!(epoch <= lease.epoch, "the local state (epoch {epoch}) is ahead of the lease's checkpoint (epoch {})", lease.epoch);
        let from = epoch;
        while epoch < lease.epoch {
            let intent: Intent<S::Position> = intents.get(epoch + 1).await?.ok_or_else(|| {
                crate::Error::HistoryMoved(format!("the lineage's intent of epoch {} is missing (the state store is at {epoch})", epoch + 1))
            })?;
            crate::error::ensure!(intent.from == position, "the intent of epoch {} does not start where epoch {epoch} ended", intent.epoch);
            for q in &intent.quarantined {
                poison.pending.entry(q.label.clone()).or_insert(q.reason.clone());
            }
            let records = source.next_until(&intent.to).await?;
            process_epoch(&mut session, records, &intent.caught_up, intent.clock_ms, poison, panic_view.as_deref(), None)?;
            drop(session.flush());
            epoch += 1;
            let staged = if epoch == lease.epoch { lease.staged.clone() } else { Vec::new() };
            let next = serde_json::to_vec(&Checkpoint { epoch, position: intent.to.clone(), staged })?;
            commit_state(&mut session, &ctx.store, epoch, next).await?;
            position = intent.to;
        }
        if epoch > from {
            tracing::info!(from, to = epoch, "pipeline: caught the lineage's state up with its lease");
        }
        to_publish = lease.staged;
    }
    // An epoch started but not committed is replayed over exactly its recorded range.
    let mut replay = intents.get::<S::Position>(epoch + 1).await?.filter(|i| i.from == position);
    // Recovery deletes this source's files of epochs after the checkpoint as this runner knows it. A
    // runner starting again after an error may have lost its lease meanwhile, and the new holder's
    // published epochs are past that checkpoint: it confirms it still holds the lease first.
    if let Some(shared) = ctx.shared {
        may_write()?;
        if !shared.fence.confirm().await? {
            return Err(fenced(name, "another worker holds the lease; recovering nothing"));
        }
    }
    let removed = sink.recover(epoch, &to_publish).await.context("recovering the Parquet dataset")?;
    if removed > 0 {
        tracing::info!(removed, epoch, "pipeline: removed files of an unfinished epoch; replaying it");
    }
    tracing::info!(source = %name, identity = %ctx.identity, epoch, position = ?position, "pipeline: resuming from checkpoint");
    status.restored(&session.stats);
    ctx.metrics.restored(&session.stats);
    // Compaction runs beside the epochs, told of each commit (epoch, watermark); it ends with them.
    let (progress, committed) = tokio::sync::watch::channel(None::<(u64, i64)>);
    let compaction = compact_beside(&sink, config, committed, || may_write().is_ok() && ctx.shared.is_none_or(|s| s.fence.settled()));
    let mut last_snapshot = std::time::Instant::now();
    let mut last_epoch = std::time::Instant::now();
    let mut late_dropped_logged = session.stats.late_dropped;
    let mut tick = tokio::time::interval(Duration::from_millis(config.flush_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let epochs = async {
        let progress = progress;
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
                    ctx.metrics.lags(&batch.lags);
                    (batch.records, batch.to, batch.caught_up, clock, behind)
                }
            };
            // A recorded intent is always replayed, idle or not, so the epoch gets the same rows again.
            let idle = records.is_empty() && to == position;
            if !replaying && idle && (session.open_views() == 0 || clock.is_none() || last_epoch.elapsed() < IDLE_EPOCH_EVERY) {
                status.idle();
                ctx.metrics.idle(session.open_views());
                continue;
            }
            last_epoch = std::time::Instant::now();
            let quarantined = process_epoch(&mut session, records, &caught_up, clock, poison, panic_view.as_deref(), Some(&ctx.metrics))?;
            let out = session.flush();
            let ended = crate::status::ended_views(&out.views);
            epoch += 1;
            let intent = Intent { epoch, from: position.clone(), to: to.clone(), caught_up, clock_ms: clock, quarantined };
            may_write()?;
            // A replayed intent is already saved (in lease mode, possibly by the lineage's previous owner).
            if !(replaying && ctx.shared.is_some()) && !intents.put(&intent).await? {
                return Err(fenced(name, format_args!("epoch {epoch} was defined by another worker")));
            }
            if let Some(ch) = &clickhouse {
                timed(&ctx.metrics, Sink::ClickHouse, ch.write_epoch(epoch, &out)).await.with_context(|| format!("ClickHouse insert of epoch {epoch}"))?;
            }
            // Staged: invisible until published after the checkpoint below.
            let (sink2, epoch_out) = (sink.clone(), out);
            let encode_and_stage = async {
                let files = tokio::task::spawn_blocking(move || sink2.encode_epoch(epoch, &epoch_out)).await??;
                sink.stage(files).await.with_context(|| format!("staging the Parquet files of epoch {epoch}"))
            };
            let staged = timed(&ctx.metrics, Sink::Parquet, encode_and_stage).await?;
            if failpoint("pipeline_after_files").and_then(|e| e.parse::<u64>().ok()) == Some(epoch) {
                tracing::error!(epoch, "failpoint pipeline_after_files: aborting before the checkpoint");
                std::process::abort();
            }
            let next = serde_json::to_vec(&Checkpoint { epoch, position: to.clone(), staged: staged.clone() })?;
            // Lease mode: the commit point is the lease's conditional update; refused, nothing is published.
            if let Some(shared) = ctx.shared {
                may_write()?;
                stop_failpoint(epoch);
                let json = std::str::from_utf8(&next).map_err(|e| crate::Error::msg(e.to_string()))?;
                if !timed(&ctx.metrics, Sink::Lease, shared.fence.commit(epoch, json)).await.with_context(|| format!("committing epoch {epoch} to the lease"))? {
                    status.fenced();
                    return Err(fenced(name, format_args!("the lease refused the commit of epoch {epoch}; its files stay unpublished")));
                }
            }
            timed(&ctx.metrics, Sink::StateStore, commit_state(&mut session, &ctx.store, epoch, next)).await?;
            // Committed: a failure to publish is finished by the restart (`recover`).
            timed(&ctx.metrics, Sink::Parquet, sink.publish(&staged)).await.with_context(|| format!("publishing the Parquet files of epoch {epoch}"))?;
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
            status.committed(&session.stats, lag_ms);
            ctx.metrics.committed(last_epoch.elapsed(), &ended, &session.stats, session.open_views(), lag_ms, ctx.store.disk_bytes());
            log_progress(epoch, &session.stats, session.open_views(), &mut late_dropped_logged);
            source.committed(&position).await;
            if let Some(shared) = ctx.shared
                && last_snapshot.elapsed() >= shared.snapshot_every
                && may_write().is_ok()
            {
                last_snapshot = std::time::Instant::now();
                // A failed snapshot is retried at the next one: restores use an older one and more intents.
                if let Err(e) = snapshot(shared, &ctx.store, epoch).await {
                    tracing::warn!(error = format!("{e:#}"), "pipeline: shipping the state snapshot failed; will retry");
                }
            }
            progress.send_replace(Some((epoch, session.watermark())));
        }
        Ok::<(), crate::Error>(())
    };
    let (result, ()) = tokio::join!(epochs, compaction);
    result
}

/// Compacts this source's Parquet partitions every [`COMPACTION_EVERY`] beside the epoch loop, which
/// sends `(epoch, watermark)` after each commit: a pass takes from milliseconds to seconds (object
/// storage, big hours) and no longer delays the next epoch (freshness). A pass merges only files of
/// epochs committed when it starts, and only while `may_write` holds, asked before each merge and again
/// before the merged file replaces its inputs (lease mode: a worker whose lease lapsed stops merging
/// files it no longer owns, and one that just took a lease waits until its previous holder has
/// stopped). Returns once the epoch loop has ended (its sender dropped), leaving unpublished the merge
/// under way; a failed pass leaves its inputs in place and is retried at the next.
async fn compact_beside(
    sink: &ParquetSink,
    config: &PipelineConfig,
    mut committed: tokio::sync::watch::Receiver<Option<(u64, i64)>>,
    may_write: impl Fn() -> bool,
) {
    if config.compact_after_ms <= 0 {
        return;
    }
    // At a short epoch the open hour gains `compact_open_files` single-epoch files well before the
    // next pass is due (150 in 30 s at 200 ms), and every query of the last minutes opens them all:
    // that many epochs since the last pass start one early.
    let open_files = config.compact_open_files as u64;
    let mut last_pass = 0;
    loop {
        let next_pass = tokio::time::Instant::now() + COMPACTION_EVERY;
        loop {
            match tokio::time::timeout_at(next_pass, committed.changed()).await {
                Ok(Ok(())) => {
                    let epoch = committed.borrow().map_or(0, |(epoch, _)| epoch);
                    if open_files >= 2 && epoch >= last_pass + open_files {
                        break;
                    }
                }
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        let Some((epoch, watermark)) = *committed.borrow_and_update() else {
            continue;
        };
        last_pass = epoch;
        if !may_write() {
            continue;
        }
        let policy = crate::parquet::Compaction {
            closed_before: watermark - config.compact_after_ms,
            min_files: config.compact_min_files,
            open_files: config.compact_open_files,
            target_bytes: config.compact_target_bytes,
            open_target_bytes: config.compact_open_target_bytes,
            roll_up: schemas::dataset::rollable_window(config.window_ms),
        };
        let running = || may_write() && committed.has_changed().is_ok();
        match sink.compact_while(epoch, policy, running).await {
            Ok(c) if c.partitions > 0 => tracing::info!(partitions = c.partitions, files = c.files_in, rows = c.rows, "pipeline: compacted Parquet partitions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "pipeline: Parquet compaction failed; will retry"),
        }
    }
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
/// - `pipeline_panic_view:<view id>` panics while processing any record of that view (a poison record);
/// - `pipeline_stop_before_lease_commit:<epoch>` stops the process (lease mode, see [`stop_failpoint`]).
fn failpoint(name: &str) -> Option<String> {
    let value = std::env::var("QOEFLOW_FAILPOINT").ok()?;
    value.strip_prefix(name)?.strip_prefix(':').map(str::to_owned)
}

/// `pipeline_stop_before_lease_commit:<epoch>`: the process stops itself (SIGSTOP), once, when a lineage
/// reaches that epoch's lease commit: the worst moment for a pause (a GC, a frozen VM), after the
/// lease was last judged valid. The fencing test resumes it once another worker took the lease.
///
/// The signal goes to this thread (`raise(3)`), not to the process: a process-directed SIGSTOP is taken
/// by whichever thread the kernel wakes for it, and until that thread runs the others go on, so under
/// load this one went on to the commit before the pause began. A thread-directed one stops this
/// thread on its way out of the system call, and the rest of the process with it.
fn stop_failpoint(epoch: u64) {
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if failpoint("pipeline_stop_before_lease_commit").and_then(|e| e.parse::<u64>().ok()) == Some(epoch)
        && !STOPPED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::error!(epoch, "failpoint pipeline_stop_before_lease_commit: stopping the process before the lease commit");
        if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGSTOP) {
            tracing::error!(epoch, error = %e, "failpoint pipeline_stop_before_lease_commit: could not stop");
        }
        tracing::warn!(epoch, "failpoint pipeline_stop_before_lease_commit: resumed");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with nothing to read.
    struct Empty;

    impl Source for Empty {
        type Position = u64;
        fn name(&self) -> String {
            "kinesis-shardId-000000000000-stolen".into()
        }
        async fn seek(&mut self, _: &u64) -> crate::Result<()> {
            Ok(())
        }
        async fn next(&mut self, _: usize, _: usize) -> crate::Result<Batch<u64>> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Batch { records: Vec::new(), to: 0, caught_up: Vec::new(), behind: false, behind_ms: None, lags: Vec::new() })
        }
        async fn next_until(&mut self, _: &u64) -> crate::Result<Vec<SourceRecord>> {
            Ok(Vec::new())
        }
        async fn committed(&mut self, _: &u64) {}
    }

    /// A lease another worker stole for balance: still fresh on this runner's clock (it has not
    /// renewed since), refused by the table.
    struct Stolen;

    impl Fence for Stolen {
        async fn committed(&self) -> Option<String> {
            None
        }
        async fn commit(&self, _: u64, _: &str) -> crate::Result<bool> {
            Ok(false)
        }
        fn valid(&self) -> bool {
            true
        }
        async fn confirm(&self) -> crate::Result<bool> {
            Ok(false)
        }
        fn settled(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_runner_whose_lease_was_stolen_deletes_none_of_the_new_holders_files() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = objstore::Location::local(dir.path().join("dataset"));
        let name = Empty.name();
        // The new holder already published epoch 5: past the checkpoint this runner knows (none yet).
        let key = format!("views/dt=2026-12-06/hour=07/{}", schemas::dataset::file_name(&name, 5));
        dataset.put(&key, Bytes::from_static(b"PAR1")).await.unwrap();
        let shared = Shared { fence: Stolen, history: dataset.join(&format!("_pipeline/{name}")), snapshot_every: Duration::from_secs(3600) };
        let status = Arc::new(PipelineStatus::new(&prometheus::Registry::new(), 60_000, 60_000));
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let run = run_with(Empty, dir.path().join("data"), dataset.clone(), PipelineConfig::default(), ClickHouseConfig::default(), status, stop_rx, Some(shared));
        let result = tokio::time::timeout(Duration::from_secs(10), run).await.expect("the runner stops by itself");
        assert!(result.as_ref().is_err_and(|e| e.is_fenced()), "{result:?}");
        assert!(dataset.get(&key).await.unwrap().is_some(), "the new holder's file is still there");
    }
}
