//! The log's single writer thread: group commit, segment rolling, retention, repair after errors.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{
    AppendReply, Command, HEADER_LEN, LogConfig, LogError, LogStats, MAX_BATCH_BYTES, MAX_RECORD_BYTES, checksum, fsync_dir,
    list_segments, segment_name,
};

/// How far ahead of its records the active segment is filled with zeros. An `fdatasync` after writing
/// within the file's length flushes only data; one that grows the file also writes its new length: 174 µs
/// against 97 on the benchmark machine's disk, which every handler waiting on a group commit waits too
/// (BENCHMARKS.md §21). Zeros are never a frame: an all-zero header is where readers and recovery see the
/// records end ([`is_unwritten`]). The zeros double what the log writes to disk.
pub(crate) const ZERO_AHEAD: u64 = 1 << 20;

pub(crate) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    group_commit_wait: Duration,
    active: File,
    active_base: u64,
    /// Durable length of the active segment.
    active_len: u64,
    /// The active segment's length on disk: `[active_len, zeroed_to)` is zeros written ahead of the
    /// records (see [`ZERO_AHEAD`]).
    zeroed_to: u64,
    next_offset: u64,
    /// Set after a failed write until the file is truncated back to `active_len`.
    broken: Option<String>,
    healthy: Arc<AtomicBool>,
    stats: Arc<LogStats>,
}

impl Writer {
    /// Opens the log directory, truncating a torn tail, and returns the writer and the durable end.
    pub(crate) fn open(config: &LogConfig, healthy: Arc<AtomicBool>, stats: Arc<LogStats>) -> Result<(Writer, u64), LogError> {
        std::fs::create_dir_all(&config.dir)?;
        let segments = list_segments(&config.dir)?;
        let (base, path) = match segments.last() {
            Some((base, path)) => (*base, path.clone()),
            None => {
                let path = config.dir.join(segment_name(0));
                File::create(&path)?.sync_all()?;
                fsync_dir(&config.dir)?;
                (0, path)
            }
        };
        let active = OpenOptions::new().read(true).write(true).open(&path)?;
        let (count, good_len) = scan_valid_prefix(&active, base)?;
        let file_len = active.metadata()?.len();
        if good_len < file_len {
            // Zeros written ahead of the records are no loss; anything else is a torn tail.
            if !all_zeros(&active, good_len, file_len)? {
                tracing::warn!(
                    segment = %path.display(),
                    dropped_bytes = file_len - good_len,
                    "local log: truncating a torn tail left by a crash (those records were never acknowledged)"
                );
            }
            active.set_len(good_len)?;
            active.sync_all()?;
        }
        let next_offset = base + count;
        let writer = Writer {
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes.max(1),
            group_commit_wait: config.group_commit_wait,
            active,
            active_base: base,
            active_len: good_len,
            zeroed_to: good_len,
            next_offset,
            broken: None,
            healthy,
            stats,
        };
        Ok((writer, next_offset))
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>, end: watch::Sender<u64>) {
        let mut appends: Vec<(Vec<Bytes>, AppendReply)> = Vec::new();
        // Appends in the last group: more than one means they arrive concurrently, and waiting
        // `group_commit_wait` for more spares fsyncs (each costs the kernel and the device a flush).
        let mut last_group = 0usize;
        while let Some(first) = next_command(&mut rx, &self.stats) {
            let mut batch_bytes = 0usize;
            let mut retains = Vec::new();
            let mut next = Some(first);
            let mut lingered = false;
            loop {
                while let Some(cmd) = next.take() {
                    match cmd {
                        Command::Append { records, reply } => {
                            batch_bytes += records.iter().map(|r| r.len() + HEADER_LEN).sum::<usize>();
                            appends.push((records, reply));
                        }
                        Command::Retain { from, reply } => retains.push((from, reply)),
                    }
                    if batch_bytes < MAX_BATCH_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                if lingered || self.group_commit_wait.is_zero() || last_group < 2 || batch_bytes >= MAX_BATCH_BYTES {
                    break;
                }
                lingered = true;
                std::thread::sleep(self.group_commit_wait);
                next = rx.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            last_group = appends.len();
            if !appends.is_empty() {
                let result = self.commit(&appends);
                match result {
                    Ok(mut start) => {
                        let _ = end.send(self.next_offset);
                        self.stats.appends.fetch_add(appends.len() as u64, Ordering::Relaxed);
                        for (records, reply) in appends.drain(..) {
                            let n = records.len() as u64;
                            let _ = reply.send(Ok(start..start + n));
                            start += n;
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        tracing::error!(error = %msg, "local log: write failed; answering the batch with an error");
                        for (_, reply) in appends.drain(..) {
                            let _ = reply.send(Err(LogError::Broken(msg.clone())));
                        }
                    }
                }
            }
            for (from, reply) in retains {
                let _ = reply.send(self.retain(from));
            }
        }
        // Every sender is gone: everything acknowledged is already synced. The zeros stay (the next open
        // cuts them off): once the handles are gone the directory's lock is free, and another open of the
        // log may already be writing this file.
    }

    /// Writes and fsyncs one group; returns the first offset. On error nothing of the group is durable.
    fn commit(&mut self, appends: &[(Vec<Bytes>, AppendReply)]) -> Result<u64, LogError> {
        self.repair()?;
        let total: usize = appends.iter().flat_map(|(r, _)| r.iter()).map(|r| r.len() + HEADER_LEN).sum();
        if self.active_len > 0 && self.active_len + total as u64 > self.segment_bytes {
            self.roll()?;
        }
        let start = self.next_offset;
        let mut buf = Vec::with_capacity(total);
        let mut offset = start;
        for record in appends.iter().flat_map(|(r, _)| r.iter()) {
            debug_assert!(record.len() <= MAX_RECORD_BYTES);
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(offset, record).to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(record);
            offset += 1;
        }
        let written = self
            .active
            .write_all_at(&buf, self.active_len)
            .map(|()| self.zero_ahead(self.active_len + buf.len() as u64))
            .and_then(|()| self.sync(File::sync_data));
        if let Err(e) = written {
            self.broken = Some(e.to_string());
            self.healthy.store(false, Ordering::Relaxed);
            return Err(e.into());
        }
        self.active_len += buf.len() as u64;
        self.next_offset = offset;
        Ok(start)
    }

    /// Once the records end past the zeros written ahead, writes [`ZERO_AHEAD`] more zeros after them
    /// (the group's fsync makes the file's new length durable with its records). Best effort: where the
    /// disk (or the file size limit) has less room, the zeros take what there is and later records
    /// overwrite them, so the log holds as much as it would without them.
    fn zero_ahead(&mut self, records_end: u64) {
        if records_end <= self.zeroed_to {
            return;
        }
        let zeros = vec![0u8; ZERO_AHEAD as usize];
        self.zeroed_to = match self.active.write_all_at(&zeros, records_end) {
            Ok(()) => records_end + ZERO_AHEAD,
            // A write cut short leaves zeros up to the file's end.
            Err(_) => self.active.metadata().map_or(records_end, |m| m.len()).max(records_end),
        };
    }

    /// After a failed write, cut the file back to its durable length before writing anything else.
    fn repair(&mut self) -> Result<(), LogError> {
        if let Some(cause) = &self.broken {
            let fixed = self.active.set_len(self.active_len).and_then(|()| self.sync(File::sync_all));
            if let Err(e) = fixed {
                return Err(LogError::Broken(format!("{cause}; repair failed: {e}")));
            }
            self.zeroed_to = self.active_len;
            tracing::info!("local log: repaired after an earlier write error");
            self.broken = None;
            self.healthy.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One fsync of the active segment, counted.
    fn sync(&self, how: fn(&File) -> std::io::Result<()>) -> std::io::Result<()> {
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        how(&self.active)
    }

    fn roll(&mut self) -> Result<(), LogError> {
        // A sealed segment ends with its last record: readers and retention never meet its zeros.
        self.active.set_len(self.active_len)?;
        self.zeroed_to = self.active_len;
        self.sync(File::sync_all)?;
        let path = self.dir.join(segment_name(self.next_offset));
        // A file of that name can only be left by a roll that failed after creating it: nothing was
        // written to it, and a roll that fails once must not fail forever on it.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        self.stats.fsyncs.fetch_add(2, Ordering::Relaxed);
        if let Err(e) = file.sync_all().and_then(|()| fsync_dir(&self.dir)) {
            // Nor must it stay behind, named for an offset that the next groups may still write to this
            // segment (if they fit): readers and retention would take it for where this segment ends.
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        self.active = file;
        self.active_base = self.next_offset;
        self.active_len = 0;
        self.zeroed_to = 0;
        Ok(())
    }

    fn retain(&mut self, from: u64) -> Result<usize, LogError> {
        let segments = list_segments(&self.dir)?;
        let mut deleted = 0;
        for pair in segments.windows(2) {
            let ((_, path), (next_base, _)) = (&pair[0], &pair[1]);
            // Every record of this segment is before the next segment's base.
            if *next_base <= from && *next_base <= self.active_base {
                std::fs::remove_file(path)?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            fsync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}

/// How long the writer keeps looking for the next append before it sleeps, yielding the CPU between
/// looks (see [`next_command`]).
const YIELD_FOR: Duration = Duration::from_micros(100);
/// A yield that takes longer than this gave the CPU to another thread: it is short.
const SLOW_YIELD: Duration = Duration::from_micros(3);

/// The next command, or `None` once every sender is gone. Under load the next append comes within
/// microseconds of a group's answers, and a writer asleep by then is woken by a futex, on a virtual
/// machine's idle core by an interrupt to the host: 100 µs and more (BENCHMARKS.md §22). So the writer
/// first yields for up to [`YIELD_FOR`], looking between yields, and gives up early when the CPU is short
/// (three yields that let another thread run), as RocksDB's write thread waits for its leader. RocksDB
/// also keeps a credit of how often yielding found what it waited for, and skips it where it rarely
/// does; measured here, that made the collector slower (0.77× on one core, where the yields pay without
/// finding the next append, by giving the handlers the core), so a trickle of appends pays at most
/// [`YIELD_FOR`] of CPU for each.
fn next_command(rx: &mut mpsc::Receiver<Command>, stats: &LogStats) -> Option<Command> {
    let start = Instant::now();
    let mut slow_yields = 0;
    loop {
        match rx.try_recv() {
            Ok(cmd) => return Some(cmd),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if slow_yields >= 3 || start.elapsed() >= YIELD_FOR {
            stats.sleeps.fetch_add(1, Ordering::Relaxed);
            return rx.blocking_recv();
        }
        let yielded = Instant::now();
        std::thread::yield_now();
        if yielded.elapsed() > SLOW_YIELD {
            slow_yields += 1;
        }
    }
}

/// Counts the valid frames at the start of a segment; returns (count, byte length of the valid prefix).
pub(crate) fn scan_valid_prefix(file: &File, base: u64) -> Result<(u64, u64), LogError> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut count = 0u64;
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if read_full(&mut reader, &mut header)? < HEADER_LEN {
            break;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let offset = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        if is_unwritten(&header) || len > MAX_RECORD_BYTES || offset != base + count {
            break;
        }
        payload.resize(len, 0);
        if read_full(&mut reader, &mut payload)? < len || checksum(offset, &payload) != crc {
            break;
        }
        pos += (HEADER_LEN + len) as u64;
        count += 1;
    }
    Ok((count, pos))
}

/// Whether a frame header is zeros written ahead of the records: no frame's header is (the checksum of
/// an empty payload at offset 0 is not zero), so this is where the records end.
pub(crate) fn is_unwritten(header: &[u8; HEADER_LEN]) -> bool {
    header.iter().all(|b| *b == 0)
}

/// Whether `file` holds only zeros in `from..to`.
fn all_zeros(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; (1 << 20).min(to - from) as usize];
    let mut at = from;
    while at < to {
        let n = chunk.len().min((to - at) as usize);
        file.read_exact_at(&mut chunk[..n], at)?;
        if chunk[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
