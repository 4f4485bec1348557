//! The embedded durable local log: the default sink of `qoeflow serve` and the pipeline's source there.
//!
//! Append-only segment files `<first offset, 20 digits>.log` in one directory. Each record is a frame:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of (offset ‖ payload) | u64 LE offset | payload
//! ```
//!
//! Offsets are consecutive record numbers from 0. One writer thread owns the files and does **group
//! commit**: it takes every append waiting in its queue, writes them with one `pwrite`, `fdatasync`s once
//! and only then answers all of them, so an acknowledged record is on disk and throughput does not pay one
//! fsync per request. With its queue empty the writer yields the CPU for up to 100 µs, looking for the
//! next append between yields, before it sleeps: a sleeping thread is woken late, on a virtual machine
//! by an interrupt through the host (BENCHMARKS.md §22). The durable end offset is published on a watch
//! channel; in-process readers never read past it, so they never see a record that a crash could still
//! take back.
//!
//! The active segment is kept 1 MiB longer than its records, in zeros: a group's `fdatasync` then
//! flushes data only, not a new file length (97 against 174 µs on the benchmark machine's disk). An
//! all-zero header is no frame (the one frame it could describe, an empty payload at offset 0, has a
//! checksum that is not zero), so readers and recovery take it for the end of the records, like the end
//! of the file. A segment loses its zeros when a roll seals it, and at the next open. A reader of
//! everything whole on disk (`upto = u64::MAX`, as after a restart or from another process) stops in the
//! last segment at the first frame that is not whole, as recovery would cut it: past the end of a file
//! a torn frame was cut short, over zeros it reads as a bad checksum. Anywhere else a bad frame is
//! corruption, and so are records missing before a later segment.
//!
//! Recovery at open scans the last segment and truncates it where its zeros begin, or at the first frame
//! that is incomplete, fails its checksum or breaks the offset sequence (a torn tail from a crash
//! mid-write: never acknowledged).
//! Earlier segments were fsynced before the log rolled past them; readers still verify every checksum and
//! report corruption instead of returning bad data.
//!
//! Retention deletes whole segments that lie entirely before an offset the pipeline has checkpointed
//! past; the active segment is never deleted. After a write error the writer truncates back to the last
//! durable length before accepting more (and refuses appends until that succeeds), so one failed fsync
//! (disk full) cannot leave a hole that later acknowledged records would sit behind. Readers never keep
//! buffered bytes past the durable end, so bytes a failed write left and the repair cut off are never
//! returned in place of the records written there afterwards.
//!
//! One process owns a log: `open` takes an exclusive OS lock on `<dir>/LOCK` (released when the process
//! exits, however it exits), and a second `open` of the same directory fails with
//! [`LogError::InUse`] instead of writing over acknowledged records.

mod reader;
mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use reader::{LogEntry, LogReader};

pub(crate) const HEADER_LEN: usize = 16;
/// Largest payload a frame may carry; anything larger in a header is corruption.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;
/// Upper bound of bytes one group commit writes (more waits for the next one).
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("local log I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("local log is corrupt in {segment} at byte {position}: {problem}")]
    Corrupt { segment: PathBuf, position: u64, problem: &'static str },
    #[error("offset {requested} is no longer retained (first retained offset is {first})")]
    OffsetRetained { requested: u64, first: u64 },
    #[error("offset {requested} is beyond the end of the log ({end})")]
    OffsetBeyondEnd { requested: u64, end: u64 },
    #[error("record of {0} bytes is over the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge(usize),
    #[error("local log writer has stopped")]
    Closed,
    #[error("local log cannot write until an earlier write error is repaired: {0}")]
    Broken(String),
    #[error("{0} is in use by another process (another qoeflow on the same --data-dir?)")]
    InUse(PathBuf),
}

/// Takes an exclusive OS lock on `path` (created if missing) for as long as the returned file is open:
/// the way one process claims a directory. Fails with [`LogError::InUse`] if another process holds it.
pub fn lock_exclusive(path: &Path) -> Result<std::fs::File, LogError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::InUse(path.parent().unwrap_or(path).to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// How long the writer waits for more appends before a group commit, once groups have been shared
/// (see [`LogConfig::group_commit_wait`]): not at all. Since the writer yields the CPU for a moment
/// before it sleeps on an empty queue, waiting 200 µs made the collector slower on two cores and on one,
/// and no faster beside a busy loop (BENCHMARKS.md §22, measured on one kind of host: a VM whose idle
/// cores halt, where waking a thread is slow). Groups are smaller without the wait (more `fdatasync`s
/// a record); on a device whose flush is slow they grow by themselves, as appends queue during it.
pub const DEFAULT_GROUP_COMMIT_WAIT: Duration = Duration::ZERO;

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// When the last group commit held more than one append (appends are arriving concurrently), the
    /// writer waits this long for more before writing and fsyncing the next group, so one fsync makes
    /// more appends durable. A lone writer never waits. Zero: never wait.
    pub group_commit_wait: Duration,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig { dir: dir.into(), segment_bytes: DEFAULT_SEGMENT_BYTES, group_commit_wait: DEFAULT_GROUP_COMMIT_WAIT }
    }
}

/// Where an append's answer goes: the offsets its records got, or why they are not durable.
pub(crate) type AppendReply = oneshot::Sender<Result<Range<u64>, LogError>>;

pub(crate) enum Command {
    Append { records: Vec<Bytes>, reply: AppendReply },
    Retain { from: u64, reply: oneshot::Sender<Result<usize, LogError>> },
}

/// Handle to an open local log (cheap to clone). Dropping every handle stops the writer thread after it
/// has answered what was queued.
#[derive(Clone)]
pub struct LocalLog {
    tx: mpsc::Sender<Command>,
    durable_end: watch::Receiver<u64>,
    healthy: Arc<AtomicBool>,
    stats: Arc<LogStats>,
    dir: Arc<PathBuf>,
    /// The directory's lock, held while any handle lives.
    _lock: Arc<std::fs::File>,
}

/// Counters the writer thread keeps (relaxed atomics: cheap, for tests and diagnostics).
#[derive(Debug, Default)]
pub(crate) struct LogStats {
    /// `fsync`/`fdatasync` calls the writer made after open: one per group commit, plus those of segment
    /// rolls, repairs and retention.
    pub(crate) fsyncs: AtomicU64,
    /// Appends the writer made durable.
    pub(crate) appends: AtomicU64,
    /// Times the writer, its queue empty, stopped yielding and went to sleep.
    pub(crate) sleeps: AtomicU64,
}

impl LocalLog {
    /// Opens (creating if needed) the log in `config.dir`, recovering from a crash, and starts the writer.
    pub fn open(config: LogConfig) -> Result<LocalLog, LogError> {
        let lock = Arc::new(lock_exclusive(&config.dir.join("LOCK"))?);
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(LogStats::default());
        let (writer, end) = writer::Writer::open(&config, healthy.clone(), stats.clone())?;
        let (end_tx, end_rx) = watch::channel(end);
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("qoeflow-log-writer".into())
            .spawn(move || writer.run(rx, end_tx))?;
        Ok(LocalLog { tx, durable_end: end_rx, healthy, stats, dir: Arc::new(config.dir), _lock: lock })
    }

    /// Appends records; resolves once they are fsynced, with their offsets.
    pub async fn append(&self, records: Vec<Bytes>) -> Result<Range<u64>, LogError> {
        if let Some(r) = records.iter().find(|r| r.len() > MAX_RECORD_BYTES) {
            return Err(LogError::RecordTooLarge(r.len()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Append { records, reply }).await.map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Deletes segments that hold only records before `from`. Returns how many were deleted.
    pub async fn retain_from(&self, from: u64) -> Result<usize, LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Retain { from, reply }).await.map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// The offset one past the last durable record.
    pub fn durable_end(&self) -> u64 {
        *self.durable_end.borrow()
    }

    /// Watch the durable end offset (readers wait on it to follow the tail).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable_end.clone()
    }

    /// False while the last write failed and has not been repaired (disk full, I/O error).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// How many `fsync`s the writer has made since open. With group commit this grows slower than
    /// [`appends`](Self::appends) under concurrency: one fsync answers every append of its group.
    pub fn fsyncs(&self) -> u64 {
        self.stats.fsyncs.load(Ordering::Relaxed)
    }

    /// How many appends the writer has made durable since open.
    pub fn appends(&self) -> u64 {
        self.stats.appends.load(Ordering::Relaxed)
    }

    /// A reader positioned at `from` that stops at the durable end.
    pub fn reader(&self, from: u64) -> Result<LogReader, LogError> {
        LogReader::open(&self.dir, from)
    }
}

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Segments in `dir` as (first offset, path), sorted.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".log") else { continue };
        if stem.len() == 20 {
            if let Ok(base) = stem.parse::<u64>() {
                out.push((base, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn checksum(offset: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&offset.to_le_bytes());
    h.update(payload);
    h.finalize()
}

pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
