//! Parquet sink: `<root>/<table>/dt=YYYY-MM-DD/hour=HH/part-<source>-e<epoch>.parquet`, zstd.
//!
//! The dataset is an [`objstore::Location`]: a local directory or an S3 prefix. Each committed epoch
//! writes at most one file per (table, partition), in two steps around its checkpoint: the files are
//! **staged** before it (a hidden `.part-….tmp` file fsynced locally; an uncompleted multipart upload on
//! S3), their handles saved in the checkpoint, and **published** after it (a rename; completing the
//! upload), so a reader never sees a torn file nor a file of an epoch that did not commit, and no step
//! needs an atomic rename on S3. Names are deterministic per (source, epoch): at start-up
//! [`ParquetSink::recover`] publishes what the checkpointed epoch staged (a crash may have come between
//! the checkpoint and the publication), deletes whatever else this source staged, and the replay of the
//! next epoch stages its files again. Files are plain Parquet with Arrow schemas from
//! `schemas::tables`: DuckDB, Spark and DataFusion read them with hive partitioning and no qoeflow code.
//!
//! **Compaction.** One file per epoch and partition would leave ~86,400 small files per table per day at
//! one epoch a second, and every query lists and opens them all. Once the watermark has passed an hour
//! partition by `compact_after_ms`, [`ParquetSink::compact`] merges this source's committed files there
//! into `part-<source>-e<first>-<last>.parquet`, holding exactly their rows (row identity included).
//! Files roll by age (each epoch, one flush interval, closes its files) and by size (merged files are
//! cut at about `compact_target_bytes`, 128 MiB by default). The merged file is written whole and durably
//! first, then the inputs are deleted; after a crash in between, [`ParquetSink::recover`] deletes the
//! inputs a merged file supersedes. Late rows
//! for a compacted hour land in new small files and are merged again later. The hour still being
//! written is compacted by levels: once it holds [`Compaction::open_files`] single-epoch files in a row,
//! they become one file, and as many merged files of one level become one of the next
//! ([`open_hour_runs`]), so a query of the last minutes opens tens of files whatever the epoch length.
//! Within `qoeflow serve` the
//! deletes hold [`DATASET_LOCK`] for writing and queries hold it for reading, so a query sees either the
//! inputs or the merged file; a separate reader process may list both for the instant between the
//! merged file's appearance and the deletes: its query engine leaves out the files a listed merged file
//! covers (`query::superseded`) and lists again when a listed file is gone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use objstore::{Location, Staged};
use schemas::dataset::{DATASET_LOCK, PARTITION_MS, epochs_of, file_name, is_rollup, merged_file_name, partition_of, partition_start, rollup_twin, source_prefix};
use schemas::cells::{BatchBuilder, FileLife, ParquetFile, parquet_file_for};

use crate::error::Context;
use crate::rows;
use crate::sessionizer::{Dim, Output};

/// Which files a compaction pass merges.
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    /// Hour partitions that ended before this (epoch ms) are closed: all their files are merged …
    pub closed_before: i64,
    /// … once there are at least this many.
    pub min_files: usize,
    /// In an hour still open, files are merged by level ([`open_hour_runs`]): a run of this many
    /// single-epoch files becomes one, as does a run of this many merged files of one level (0: never).
    pub open_files: usize,
    /// Merged files roll over at about this size …
    pub target_bytes: u64,
    /// … and in an hour still open at about this size.
    pub open_target_bytes: u64,
    /// Closed hours of `qoe_window` get their minute rollups (`qoe_minute`, [`crate::rollup`]): when
    /// the pipeline's windows are slots of a minute ([`schemas::dataset::rollable_window`]).
    pub roll_up: bool,
}

/// Files a compaction leaves as they are get a rollup of their own only in hours that closed within
/// this long (the late horizon's default): an upgrade does not roll up the whole history at once.
const ROLL_UP_ALONE_WITHIN_MS: i64 = 24 * 3_600_000;

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub partitions: usize,
    pub files_in: usize,
    pub rows: usize,
}

/// One of this source's files in a partition: its epochs, key and size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OwnFile {
    first: u64,
    last: u64,
    key: String,
    size: u64,
}

/// `<table>/dt=…/hour=…` and the file name, for a key of a file in a partition.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let (dir, name) = key.rsplit_once('/')?;
    partition_start(Path::new(dir))?;
    Some((dir, name))
}

/// At most this many bytes of a table's string columns together are reserved ahead for a batch of an
/// epoch's file (the arrays grow past it as needed).
const MAX_RESERVED_BYTES: usize = 32 << 20;

/// The rows of a table an epoch's file is built from at a time (one record batch).
const BATCH_ROWS: usize = 8192;

pub struct ParquetSink {
    dataset: Location,
    source: String,
    dims: Vec<Dim>,
    /// Per table, the string and binary bytes per row of each column in the last epoch that wrote it:
    /// the next epoch's arrays are sized from them. Grown from empty by doubling, the `events` table's
    /// were reallocated and copied some twenty times an epoch (BENCHMARKS.md §19).
    bytes_per_row: std::sync::Mutex<HashMap<&'static str, Vec<usize>>>,
}

/// A compaction input's record batches, decoded one at a time as they are taken.
fn batches_of(bytes: Bytes) -> crate::Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    Ok(parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(8192).build()?)
}

/// Splits `files` (sorted by epoch) into runs of consecutive files of at most about `target_bytes`
/// together; a file of `target_bytes` or more ends the run before it and stays alone, so no merged
/// file's epoch range ever covers a file left out of it.
fn size_groups(files: &[OwnFile], target_bytes: u64) -> Vec<&[OwnFile]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, file) in files.iter().enumerate() {
        let size = file.size;
        if size >= target_bytes {
            groups.push(&files[start..i]);
            groups.push(&files[i..=i]);
            (start, bytes) = (i + 1, 0);
        } else if bytes + size > target_bytes {
            groups.push(&files[start..i]);
            (start, bytes) = (i, size);
        } else {
            bytes += size;
        }
    }
    groups.push(&files[start..]);
    groups.into_iter().filter(|g| !g.is_empty()).collect()
}

/// A file's level in an hour still written to: 0 for one epoch's file, else ⌊log_fan_in(span)⌋ and at
/// least 1, the span being the epochs it covers. Merging `fan_in` files of a level gives a file of a
/// higher one, so levels grow with age like the digits of a counter.
fn open_level(file: &OwnFile, fan_in: usize) -> u32 {
    if file.first == file.last {
        return 0;
    }
    (file.last - file.first + 1).ilog(fan_in as u64).max(1)
}

/// What an hour still written to merges (`files` in epoch order): each run of at least `fan_in` files
/// of one level ([`open_level`]) with no other file between them. A merged file is named after the
/// range of epochs it covers, and recovery deletes a file another's range covers, so a merge may only
/// take files next to each other: a file left alone (a single one bigger than the size target, say)
/// splits a run. Each row is rewritten about log_fan_in(epochs in the hour) times while the hour is
/// open, and the hour holds at most about `fan_in` files per level.
fn open_hour_runs(files: &[OwnFile], fan_in: usize) -> Vec<&[OwnFile]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=files.len() {
        if i == files.len() || open_level(&files[i], fan_in) != open_level(&files[start], fan_in) {
            if i - start >= fan_in {
                runs.push(&files[start..i]);
            }
            start = i;
        }
    }
    runs
}

impl ParquetSink {
    pub fn new(dataset: Location, source: impl Into<String>, dims: Vec<Dim>) -> ParquetSink {
        ParquetSink {
            bytes_per_row: Default::default(),
            dataset,
            source: source.into(),
            dims,
        }
    }

    /// Where the files go.
    pub fn dataset(&self) -> &Location {
        &self.dataset
    }

    /// This source's files in the dataset, by partition directory (`<table>/dt=…/hour=…`), and its
    /// staged local files (`.part-….tmp`).
    async fn own_files(&self) -> crate::Result<(BTreeMap<String, Vec<OwnFile>>, Vec<String>)> {
        let prefix = source_prefix(&self.source);
        let (mut by_dir, mut staged): (BTreeMap<String, Vec<OwnFile>>, Vec<String>) =
            Default::default();
        for entry in self.dataset.list("").await? {
            let Some((dir, name)) = split_key(&entry.key) else {
                continue;
            };
            if name.starts_with(&format!(".{prefix}")) && name.ends_with(".tmp") {
                staged.push(entry.key);
            } else if let Some((first, last)) = epochs_of(name, &prefix) {
                by_dir.entry(dir.to_owned()).or_default().push(OwnFile {
                    first,
                    last,
                    key: entry.key,
                    size: entry.size,
                });
            }
        }
        by_dir.values_mut().for_each(|files| files.sort());
        Ok((by_dir, staged))
    }

    /// After a restart from the checkpoint of epoch `committed`: publishes the files that epoch staged
    /// (`pending`, in case the crash came between the checkpoint and their publication; one a merged
    /// file already covers was published and compacted before the crash), then deletes
    /// this source's staged files of later epochs, files of epochs after `committed`, and files a merged
    /// file supersedes (a crash in the middle of a compaction). Returns how many files were deleted.
    pub async fn recover(&self, committed: u64, pending: &[Staged]) -> crate::Result<usize> {
        let mut unpublished = Vec::new();
        for file in pending {
            if let Err(e) = self.dataset.publish(file).await {
                unpublished.push((file.key.as_str(), e));
            }
        }
        let (by_dir, staged) = self.own_files().await?;
        // A file published before the crash may have been merged by a compaction since (the committed
        // epoch's files are compacted before the next commit): a merged file of its partition covers it.
        if !unpublished.is_empty() {
            // Only files that stay: those of later epochs are deleted below.
            let keys = by_dir.values().flatten().filter(|f| f.last <= committed).map(|f| f.key.as_str()).chain(unpublished.iter().map(|(k, _)| *k));
            let covered = schemas::dataset::superseded(keys);
            if let Some((_, e)) = unpublished.into_iter().find(|(key, _)| !covered.contains(key)) {
                return Err(e.into());
            }
        }
        let mut deleted = 0;
        for key in staged {
            self.dataset.delete(&key).await?;
            deleted += 1;
        }
        // Covered by a merged file of the same partition: the rule readers skip files by.
        let covered = schemas::dataset::superseded(by_dir.values().flatten().map(|f| f.key.as_str()));
        let doomed = |file: &OwnFile| file.last > committed || covered.contains(file.key.as_str());
        // The files that stay, then rollups whose `qoe_window` file does not (a crash in a swap).
        let twins_kept: std::collections::HashSet<String> =
            by_dir.values().flatten().filter(|f| !doomed(f)).filter_map(|f| rollup_twin(&f.key)).collect();
        for files in by_dir.values() {
            for file in files {
                let orphan = is_rollup(&file.key) && !twins_kept.contains(&file.key);
                if doomed(file) || orphan {
                    self.dataset.delete(&file.key).await?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// Merges this source's files in every hour partition that ended before `closed_before` (epoch ms)
    /// and holds at least `min_files` of them, all of epochs up to `committed`. Files roll by size:
    /// consecutive files (in epoch order) are merged into outputs of about `target_bytes` at most, and a
    /// file already that big is left as it is.
    pub async fn compact(
        &self,
        committed: u64,
        closed_before: i64,
        min_files: usize,
        target_bytes: u64,
    ) -> crate::Result<Compacted> {
        let policy = Compaction { closed_before, min_files, open_files: 0, target_bytes, open_target_bytes: target_bytes, roll_up: true };
        self.compact_while(committed, policy, || true).await
    }

    /// [`ParquetSink::compact`], asking `keep_going` before each merge and again, under the dataset's
    /// lock, before a merged file replaces its inputs (lease mode: whether the lineage's lease is still
    /// fresh, so a worker that lost it stops merging files it no longer owns). A pass stopped there
    /// leaves its staged output unpublished.
    pub async fn compact_while(
        &self,
        committed: u64,
        policy: Compaction,
        keep_going: impl Fn() -> bool,
    ) -> crate::Result<Compacted> {
        let mut done = Compacted::default();
        let by_dir = self.own_files().await?.0;
        let twins: std::collections::HashSet<&str> =
            by_dir.iter().filter(|(dir, _)| is_rollup(dir)).flat_map(|(_, files)| files.iter().map(|f| f.key.as_str())).collect();
        for (dir, files) in &by_dir {
            // Rollups are written with their `qoe_window` files, never merged on their own.
            let Some(start) = partition_start(Path::new(dir)).filter(|_| !is_rollup(dir)) else {
                continue;
            };
            let committed_files = files.iter().filter(|f| f.last <= committed).cloned();
            let closed = start + PARTITION_MS <= policy.closed_before;
            // A closed hour's `qoe_window` files get their minute rollups.
            let roll_up = policy.roll_up && closed && rollup_twin(dir).is_some();
            let files: Vec<_> = committed_files.collect();
            let (runs, target): (Vec<&[OwnFile]>, u64) = if closed {
                (vec![&files], policy.target_bytes)
            } else if policy.open_files >= 2 {
                (open_hour_runs(&files, policy.open_files), policy.open_target_bytes)
            } else {
                continue;
            };
            let mut merged_any = false;
            let enough = !closed || files.len() >= policy.min_files.max(2);
            for group in runs.into_iter().flat_map(|run| size_groups(run, target)) {
                if !keep_going() {
                    return Ok(done);
                }
                if enough && group.len() >= 2 {
                    // A closed hour's merge stays; the open hour's is merged again when it closes.
                    let life = if closed { FileLife::Kept } else { FileLife::Transient };
                    let Some(rows) = self.merge_files(dir, group, roll_up, life, &keep_going).await? else {
                        return Ok(done);
                    };
                    done.rows += rows;
                    done.files_in += group.len();
                    merged_any = true;
                } else if roll_up && start + PARTITION_MS > policy.closed_before - ROLL_UP_ALONE_WITHIN_MS {
                    // Files that stay as they are (too few to merge, or big enough) are rolled up alone.
                    for file in group.iter().filter(|f| rollup_twin(&f.key).is_some_and(|t| !twins.contains(t.as_str()))) {
                        if !self.roll_up_file(file, &keep_going).await? {
                            return Ok(done);
                        }
                    }
                }
            }
            if merged_any {
                done.partitions += 1;
            }
        }
        Ok(done)
    }

    /// Writes the minute rollup of one `qoe_window` file that compaction leaves as it is, unless
    /// `keep_going` says no before it is published (false then).
    async fn roll_up_file(&self, file: &OwnFile, keep_going: &impl Fn() -> bool) -> crate::Result<bool> {
        let bytes = self.dataset.get(&file.key).await?.with_context(|| format!("{} vanished during compaction", file.key))?;
        let (source, last) = (self.source.clone(), file.last);
        let rolled = tokio::task::spawn_blocking(move || {
            let mut rollup = crate::rollup::MinuteRollup::default();
            for batch in batches_of(bytes)? {
                rollup.add(&batch?)?;
            }
            rollup.finish(&source, last)
        })
        .await??;
        if let (Some((bytes, _)), Some(twin)) = (rolled, rollup_twin(&file.key)) {
            let staged = self.dataset.stage(&twin, bytes).await?;
            let _swap = DATASET_LOCK.write().await;
            if !keep_going() {
                return Ok(false);
            }
            self.publish(&[staged]).await?;
        }
        Ok(true)
    }

    /// Merges `files` (consecutive in epoch order, in partition `dir`) into one file named after their
    /// epoch range and, with `roll_up` (`qoe_window` of a closed hour), its `qoe_minute` twin
    /// ([`crate::rollup`]). Both are staged whole and durably, then, under [`DATASET_LOCK`], published
    /// and the inputs (and their twins) deleted: a query in this process sees the inputs or the merged
    /// file, never both. Returns the rows written; None when `keep_going`, asked once the merged file
    /// is staged, says to stop (the staged file is never published; recovery deletes it locally).
    async fn merge_files(
        &self,
        dir: &str,
        files: &[OwnFile],
        roll_up: bool,
        life: FileLife,
        keep_going: &impl Fn() -> bool,
    ) -> crate::Result<Option<usize>> {
        let (first, last) = (
            files[0].first,
            files.iter().map(|f| f.last).max().unwrap_or(files[0].last),
        );
        let mut inputs = Vec::with_capacity(files.len());
        for file in files {
            let bytes = self
                .dataset
                .get(&file.key)
                .await?
                .with_context(|| format!("{} vanished during compaction", file.key))?;
            inputs.push(bytes);
        }
        let source = self.source.clone();
        let (merged, rolled) = tokio::task::spawn_blocking(move || {
            let mut readers = Vec::with_capacity(inputs.len());
            for bytes in inputs {
                readers.push(batches_of(bytes)?);
            }
            let mut rollup = roll_up.then(crate::rollup::MinuteRollup::default);
            // Batches are decoded one at a time as the writer takes them (and the rollup adds them).
            let batches = readers.into_iter().flatten().map(|b| {
                let b = b.map_err(crate::Error::from)?;
                if let Some(r) = rollup.as_mut() {
                    r.add(&b)?;
                }
                Ok::<_, crate::Error>(b)
            });
            let merged = parquet_file_for(life, batches)?;
            let rolled = match rollup {
                Some(r) => r.finish(&source, last)?,
                None => None,
            };
            Ok::<_, crate::Error>((merged, rolled))
        })
        .await??;
        let Some((bytes, rows)) = merged else {
            return Ok(Some(0));
        };
        let key = format!("{dir}/{}", merged_file_name(&self.source, first, last));
        let mut staged = vec![self.dataset.stage(&key, bytes).await?];
        if let (Some((bytes, _)), Some(twin)) = (rolled, rollup_twin(&key)) {
            staged.push(self.dataset.stage(&twin, bytes).await?);
        }
        // Merging takes a while: a lease may have lapsed, or been taken over, since the pass began.
        let _swap = DATASET_LOCK.write().await;
        if !keep_going() {
            return Ok(None);
        }
        self.publish(&staged).await?;
        for file in files {
            self.dataset.delete(&file.key).await?;
            if let Some(twin) = rollup_twin(&file.key).filter(|_| roll_up) {
                self.dataset.delete(&twin).await?;
            }
        }
        Ok(Some(rows))
    }

    /// Encodes one epoch's output: one Parquet file per (table, partition) with rows, as (key, bytes).
    pub fn encode_epoch(&self, epoch: u64, out: &Output) -> crate::Result<Vec<(String, Bytes)>> {
        let mut files = Vec::new();
        let name = file_name(&self.source, epoch);
        for t in rows::tables_of(out, &self.dims, &self.source, epoch) {
            // By the hour each row falls in (its partition), named once per file, not per row. Rows go
            // into a batch as they are made, and each batch of `BATCH_ROWS` into its file: the next
            // batch's arrays then take the memory the last one's freed, still mapped and in cache.
            // (Built whole, an epoch's arrays were fresh memory every epoch, tens of megabytes, whose page
            // faults and growth by copying were 9 % of the pipeline's CPU: BENCHMARKS.md §30.)
            // The first row's hour's batches are sized for their rows, strings from the last epoch's
            // bytes per row (most epochs write one hour); any other hour's grow as needed.
            let len = t.rows.size_hint().0;
            let batch_rows = len.min(BATCH_ROWS);
            // An eighth more than the last epoch's bytes per row, so that most batches never grow them;
            // bounded for the table, as one epoch of huge values must not reserve gigabytes for the next.
            let per_row = self.bytes_per_row.lock().map(|m| m.get(t.table).cloned()).unwrap_or_default().unwrap_or_default();
            let mut reserve: Vec<usize> = per_row.iter().map(|b| b.saturating_add(b / 8).saturating_mul(batch_rows)).collect();
            let total = reserve.iter().fold(0usize, |t, b| t.saturating_add(*b));
            if total > MAX_RESERVED_BYTES {
                reserve.iter_mut().for_each(|b| *b = (*b as u128 * MAX_RESERVED_BYTES as u128 / total as u128) as usize);
            }
            let new_batch = |sized: bool| match sized {
                true => BatchBuilder::with_capacity(t.columns, batch_rows, |i| reserve.get(i).copied().unwrap_or(0)),
                false => BatchBuilder::with_capacity(t.columns, 0, |_| 0),
            };
            let mut bytes = vec![0usize; t.columns.len()];
            // Ends a batch: counts its bytes and writes it to its file.
            let mut write = |file: &mut ParquetFile, batch: BatchBuilder<'_>| -> crate::Result<()> {
                bytes.iter_mut().zip(batch.value_bytes()).for_each(|(b, n)| *b += n);
                file.write(&batch.finish()?)?;
                Ok(())
            };
            // Each hour's file and the batch it is filling (made at its first row).
            let mut parts: BTreeMap<i64, (ParquetFile, Option<BatchBuilder<'_>>)> = BTreeMap::new();
            let mut first_hour = None;
            for (ts, row) in t.rows {
                let hour = ts.div_euclid(PARTITION_MS);
                let sized = *first_hour.get_or_insert(hour) == hour;
                // Compaction merges an epoch's files later (`FileLife::Transient`: written fast).
                let (file, batch) = parts.entry(hour).or_insert_with(|| (ParquetFile::new(FileLife::Transient), None));
                batch.get_or_insert_with(|| new_batch(sized)).push(&row)?;
                // A full batch is written before the next is made, so that the next reuses its memory.
                if let Some(full) = batch.take_if(|b| b.len() >= BATCH_ROWS) {
                    write(file, full)?;
                }
            }
            for (hour, (mut file, batch)) in parts {
                if let Some(batch) = batch {
                    write(&mut file, batch)?;
                }
                if let Some((encoded, _)) = file.finish()? {
                    files.push((format!("{}/{}/{name}", t.table, partition_of(hour * PARTITION_MS)), encoded));
                }
            }
            if len > 0 {
                let per_row: Vec<usize> = bytes.iter().map(|b| b.div_ceil(len)).collect();
                if let Ok(mut m) = self.bytes_per_row.lock() {
                    m.insert(t.table, per_row);
                }
            }
        }
        Ok(files)
    }

    /// Uploads encoded files where no reader sees them yet ([`objstore::Location::stage`]).
    pub async fn stage(&self, files: Vec<(String, Bytes)>) -> crate::Result<Vec<Staged>> {
        let mut staged = Vec::with_capacity(files.len());
        for (key, bytes) in files {
            staged.push(self.dataset.stage(&key, bytes).await?);
        }
        Ok(staged)
    }

    /// Makes staged files visible (after their epoch's checkpoint); repeating it is harmless.
    pub async fn publish(&self, staged: &[Staged]) -> crate::Result<()> {
        for file in staged {
            self.dataset.publish(file).await?;
        }
        Ok(())
    }

    /// Writes one epoch's files visibly at once (no checkpoint between): for tools and tests.
    pub async fn write_epoch(&self, epoch: u64, out: &Output) -> crate::Result<Vec<String>> {
        let files = self.encode_epoch(epoch, out)?;
        let keys = files.iter().map(|(k, _)| k.clone()).collect();
        for (key, bytes) in files {
            self.dataset.put(&key, bytes).await?;
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::dataset::ROLLUP_TABLE;
    use arrow_array::ArrayRef;
    use std::fs::File;
    use std::path::PathBuf;

    /// Every partition directory (`<table>/dt=…/hour=…`) under `root`.
    fn partition_dirs(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                }
            }
            if partition_start(&dir).is_some() {
                out.push(dir);
            }
        }
        out.sort();
        out
    }

    /// This source's files in one partition directory (`<table>/dt=…/hour=…`) as (first, last) epochs.
    async fn own_in(sink: &ParquetSink, dir: &str) -> Vec<(u64, u64)> {
        sink.own_files()
            .await
            .unwrap()
            .0
            .get(dir)
            .map(|f| f.iter().map(|f| (f.first, f.last)).collect())
            .unwrap_or_default()
    }

    /// Every row of `table` under `root` as its (source, epoch, row) identity and a measure, sorted.
    fn rows_of(root: &Path, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        for dir in partition_dirs(&root.join(table)) {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "parquet") {
                    continue;
                }
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap().build().unwrap();
                let key: &[&str] = match table {
                    "events" => &["view_id", "seq", "type"],
                    "views" => &["view_id", "play_ms", "startup_ms"],
                    _ => &["epoch", "row", "attempts", "play_ms"],
                };
                for batch in reader {
                    let batch = batch.unwrap();
                    for i in 0..batch.num_rows() {
                        let cells: Vec<String> = key.iter().map(|n| cell(batch.column(batch.schema().index_of(n).unwrap()), i)).collect();
                        out.push(format!("{}/{}", dir.display(), cells.join("/")));
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn cell(array: &ArrayRef, i: usize) -> String {
        use arrow_array::{Array, Int64Array, StringArray, UInt64Array};
        if array.is_null(i) {
            return "null".into();
        }
        let any = array.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            a.value(i).to_owned()
        } else if let Some(a) = any.downcast_ref::<UInt64Array>() {
            a.value(i).to_string()
        } else if let Some(a) = any.downcast_ref::<Int64Array>() {
            a.value(i).to_string()
        } else {
            panic!("unexpected column type {:?}", array.data_type())
        }
    }

    fn files_in(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = partition_dirs(root)
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }

    /// A dataset directory (kept alive by the returned `TempDir`), its root, a sink of source `local`
    /// on it, a sessionizer, and an hour boundary to write at.
    fn hour_fixture() -> (tempfile::TempDir, PathBuf, ParquetSink, crate::sessionizer::Sessionizer, i64) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("parquet");
        let sink = ParquetSink::new(Location::local(&root), "local", Dim::DEFAULT.to_vec());
        let session = crate::sessionizer::Sessionizer::new(crate::sessionizer::SessionConfig::default());
        (dir, root, sink, session, 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000)
    }

    /// A view that starts at `t`, plays and ends, in one record received 6 s later.
    fn short_view(id: String, t: i64) -> schemas::Record {
        let events = [("playrequest", 0), ("playing", 300), ("viewend", 5_000)]
            .iter()
            .enumerate()
            .map(|(seq, (kind, dt))| serde_json::json!({"view_id": id, "seq": seq, "type": kind, "ts": t + dt}).as_object().cloned().unwrap())
            .collect();
        let client = schemas::ClientInfo::default();
        schemas::Record::Events(schemas::record::EventsRecord { recv_ms: t + 6_000, sent_at: t + 6_000, key: None, view_id: id, client, events })
    }

    /// One epoch whose events fall in two hours (rows streamed into a batch per hour): a file per hour
    /// holding exactly that hour's rows; the events' JSON (`raw`, opaque text) written without a
    /// dictionary or statistics, `view_id` with both.
    #[test]
    fn an_epoch_writes_one_file_per_hour_and_the_events_json_plain() {
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let (_dir, _root, sink, mut session, t0) = hour_fixture();
        // Views of 5 s: three before the hour boundary (whole), one across it, two after.
        for (i, at) in [-40_000, -30_000, -20_000, -2_000, 10_000, 20_000].into_iter().enumerate() {
            session.process(short_view(format!("v{i}"), t0 + at));
        }
        session.advance();
        let out = session.flush();
        let files = sink.encode_epoch(1, &out).unwrap();
        let events: Vec<&(String, Bytes)> = files.iter().filter(|(k, _)| k.starts_with("events/")).collect();
        let keys: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [format!("events/{}/part-local-e000000000001.parquet", partition_of(t0 - 1)), format!("events/{}/part-local-e000000000001.parquet", partition_of(t0))]);
        let mut rows_per_hour = Vec::new();
        for (_, bytes) in &events {
            let reader = SerializedFileReader::new(bytes.clone()).unwrap();
            let meta = reader.metadata();
            rows_per_hour.push(meta.file_metadata().num_rows());
            let column = |name: &str| {
                let rg = meta.row_group(0);
                let i = (0..rg.num_columns()).find(|&i| rg.column(i).column_path().string() == name).unwrap();
                rg.column(i).clone()
            };
            let raw = column("raw");
            assert!(raw.statistics().is_none(), "no statistics for the events' JSON");
            assert!(raw.dictionary_page_offset().is_none() && !raw.encodings().any(|e| e == Encoding::RLE_DICTIONARY), "{:?}", raw.encodings().collect::<Vec<_>>());
            let view_id = column("view_id");
            assert!(view_id.statistics().is_some_and(|s| s.min_bytes_opt().is_some()), "view_id keeps its statistics");
            assert!(view_id.encodings().any(|e| e == Encoding::RLE_DICTIONARY), "view_id keeps its dictionary");
        }
        // 3 events per view: before the hour v0, v1, v2 and v3's first two events; after it v3's end, v4, v5.
        assert_eq!(rows_per_hour, [11, 7]);
        assert_eq!(out.events.len(), 18);
    }

    /// Epochs of more rows than a batch (`BATCH_ROWS`), in two hours: each hour's file holds exactly its
    /// rows, in the order the epoch produced them, across the batches it was written in; the second
    /// epoch (whose batches are sized from the bytes per row the first kept) as well as the first.
    #[test]
    fn an_epoch_of_many_batches_writes_every_row_once_in_order() {
        use arrow_array::{Array, StringArray, UInt64Array};
        let (_dir, _root, sink, mut session, t0) = hour_fixture();
        for epoch in 1..=2u64 {
            // 3 events a view: 3,000 views before the hour boundary (9,000 rows, two batches), 400 after.
            for i in 0..3_400 {
                let at = if i < 3_000 { -1_800_000 + i as i64 } else { 60_000 + i as i64 };
                session.process(short_view(format!("e{epoch}-v{i:05}"), t0 + at));
            }
            session.advance();
            let out = session.flush();
            assert_eq!(out.events.len(), 3 * 3_400);
            let files = sink.encode_epoch(epoch, &out).unwrap();
            for (hour_start, expected_rows) in [(t0 - 1, 9_000), (t0, 1_200)] {
                let key = format!("events/{}/{}", partition_of(hour_start), file_name("local", epoch));
                let (_, bytes) = files.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("no {key}"));
                let expected: Vec<(String, u64)> = out
                    .events
                    .iter()
                    .filter(|e| e.event_ms.div_euclid(PARTITION_MS) == hour_start.div_euclid(PARTITION_MS))
                    .map(|e| (e.received.view_id.clone(), e.seq))
                    .collect();
                assert_eq!(expected.len(), expected_rows);
                let mut got = Vec::new();
                for batch in batches_of(bytes.clone()).unwrap() {
                    let batch = batch.unwrap();
                    let ids = batch.column(batch.schema().index_of("view_id").unwrap()).as_any().downcast_ref::<StringArray>().unwrap().clone();
                    let seqs = batch.column(batch.schema().index_of("seq").unwrap()).as_any().downcast_ref::<UInt64Array>().unwrap().clone();
                    got.extend((0..batch.num_rows()).map(|i| (ids.value(i).to_owned(), seqs.value(i))));
                    assert_eq!(ids.null_count(), 0);
                }
                assert_eq!(got, expected, "epoch {epoch}, {key}");
            }
        }
        assert!(sink.bytes_per_row.lock().unwrap().get("events").is_some_and(|b| b.iter().any(|&n| n > 0)), "bytes per row kept for the next epoch");
    }

    #[tokio::test]
    async fn the_open_hour_merges_its_single_epoch_files_then_its_merged_ones_by_level() {
        use crate::sessionizer::Sessionizer;
        let (_dir, root, sink, mut session, t0) = hour_fixture();
        let epoch_of_views = |session: &mut Sessionizer, epoch: u64| {
            session.process(short_view(format!("v{epoch}"), t0 + epoch as i64 * 60_000));
            session.advance();
            session.flush()
        };
        for epoch in 1..=8u64 {
            let out = epoch_of_views(&mut session, epoch);
            sink.write_epoch(epoch, &out).await.unwrap();
        }
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        let hour = format!("qoe_window/{}", partition_of(t0));
        let open = |open_files| Compaction { closed_before: t0, min_files: 2, open_files, target_bytes: u64::MAX, open_target_bytes: u64::MAX, roll_up: true };

        // Off, or fewer single-epoch files than asked for: nothing moves.
        assert_eq!(sink.compact_while(7, open(0), || true).await.unwrap().files_in, 0);
        assert_eq!(sink.compact_while(7, open(8), || true).await.unwrap().files_in, 0);
        // Files already at the open hour's size target stay as they are (the hour's close merges them).
        assert_eq!(sink.compact_while(7, Compaction { open_target_bytes: 1, ..open(5) }, || true).await.unwrap().files_in, 0);
        // Seven committed singles of the open hour become one file; epoch 8 (not committed) stays.
        let done = sink.compact_while(7, open(5), || true).await.unwrap();
        assert!(done.files_in >= 7, "{done:?}");
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 7), (8, 8)]);
        assert_eq!(TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect::<Vec<_>>(), before, "the same rows");

        // Two more epochs: three singles, under the five asked for; the merged file is left alone.
        for epoch in 9..=10u64 {
            let out = epoch_of_views(&mut session, epoch);
            sink.write_epoch(epoch, &out).await.unwrap();
        }
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        sink.compact_while(10, open(5), || true).await.unwrap();
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 7), (8, 8), (9, 9), (10, 10)]);
        // At fan-in 3 the three singles merge, then the two merged files of level 1 are not yet three.
        sink.compact_while(10, open(3), || true).await.unwrap();
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 7), (8, 10)]);
        assert_eq!(TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect::<Vec<_>>(), before, "the same rows");
        // Three more singles make a third level-1 file, and the three of them merge into one.
        for epoch in 11..=13u64 {
            let out = epoch_of_views(&mut session, epoch);
            sink.write_epoch(epoch, &out).await.unwrap();
        }
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        sink.compact_while(13, open(3), || true).await.unwrap();
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 7), (8, 10), (11, 13)], "one level per pass");
        sink.compact_while(13, open(3), || true).await.unwrap();
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 13)]);
        assert_eq!(TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect::<Vec<_>>(), before, "the same rows");
        // Once the hour closes, everything in it is merged, the earlier merges included.
        let out = epoch_of_views(&mut session, 14);
        sink.write_epoch(14, &out).await.unwrap();
        sink.compact(14, t0 + 2 * PARTITION_MS, 2, u64::MAX).await.unwrap();
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 14)]);
    }

    #[tokio::test]
    async fn recovery_republishes_an_epoch_whose_files_compaction_already_merged() {
        let (_dir, root, sink, mut session, t0) = hour_fixture();
        let mut staged = Vec::new();
        for epoch in 1..=3u64 {
            session.process(short_view(format!("v{epoch}"), t0 + epoch as i64 * 60_000));
            session.advance();
            staged = sink.stage(sink.encode_epoch(epoch, &session.flush()).unwrap()).await.unwrap();
            sink.publish(&staged).await.unwrap();
        }
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        // The open hour's compaction merges the committed epochs, the last one's files included.
        let open = Compaction { closed_before: t0, min_files: 2, open_files: 2, target_bytes: u64::MAX, open_target_bytes: u64::MAX, roll_up: true };
        sink.compact_while(3, open, || true).await.unwrap();
        assert_eq!(own_in(&sink, &format!("qoe_window/{}", partition_of(t0))).await, vec![(1, 3)]);
        // A crash before epoch 4's commit: the restart republishes epoch 3's staged files, which the
        // merge already replaced. That is done, not an error that would stop the pipeline for good.
        sink.recover(3, &staged).await.expect("republishing a merged epoch");
        assert_eq!(TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect::<Vec<_>>(), before, "the same rows, once");
        // A staged file that was never published nor merged still fails.
        session.process(short_view("v5".into(), t0 + 5 * 60_000));
        session.advance();
        let lost = sink.stage(sink.encode_epoch(5, &session.flush()).unwrap()).await.unwrap();
        assert!(!lost.is_empty());
        sink.recover(4, &[]).await.unwrap();
        assert!(sink.recover(5, &lost).await.is_err(), "a staged file that vanished unmerged is an error");
    }

    #[tokio::test]
    async fn a_merge_is_not_published_once_its_writer_may_no_longer_write() {
        let (_dir, root, sink, mut session, t0) = hour_fixture();
        for epoch in 1..=4u64 {
            session.process(short_view(format!("v{epoch}"), t0 + epoch as i64 * 60_000));
            session.advance();
            sink.write_epoch(epoch, &session.flush()).await.unwrap();
        }
        let hour = format!("qoe_window/{}", partition_of(t0));
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        let open = Compaction { closed_before: t0, min_files: 2, open_files: 2, target_bytes: u64::MAX, open_target_bytes: u64::MAX, roll_up: true };
        // Fresh when the merge starts, lapsed (or taken over) by the time its file is staged.
        let asked = std::cell::Cell::new(0);
        let lapses = || {
            asked.set(asked.get() + 1);
            asked.get() == 1
        };
        assert_eq!(sink.compact_while(4, open, lapses).await.unwrap(), Compacted::default());
        assert!(asked.get() >= 2, "asked again before publishing");
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 1), (2, 2), (3, 3), (4, 4)], "the inputs stay, no merged file");
        assert_eq!(TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect::<Vec<_>>(), before);
        // What it staged is hidden, and the next recovery deletes it.
        assert!(files_in(&root).iter().any(|f| f.starts_with('.')), "{:?}", files_in(&root));
        sink.recover(4, &[]).await.unwrap();
        assert!(files_in(&root).iter().all(|f| !f.starts_with('.')), "{:?}", files_in(&root));
        // Still fresh: the same pass merges.
        sink.compact_while(4, open, || true).await.unwrap();
        assert_eq!(own_in(&sink, &hour).await, vec![(1, 4)]);
    }

    /// Σ of an Int64 column over every file of `table` (by row: 0 for NULL).
    fn column_sum(root: &Path, table: &str, column: &str) -> i64 {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        let mut sum = 0;
        for dir in partition_dirs(&root.join(table)) {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(entry.unwrap().path()).unwrap()).unwrap().build().unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let values = batch.column_by_name(column).unwrap().as_primitive::<arrow_array::types::Int64Type>().clone();
                    sum += (0..values.len()).filter(|&i| values.is_valid(i)).map(|i| values.value(i)).sum::<i64>();
                }
            }
        }
        sum
    }

    #[tokio::test]
    async fn closed_hours_get_minute_rollups_that_follow_their_merged_files() {
        let (_dir, root, sink, mut session, t0) = hour_fixture();
        let mut write = async |epoch: u64, at: i64| {
            session.process(short_view(format!("v{epoch}"), at));
            session.advance();
            sink.write_epoch(epoch, &session.flush()).await.unwrap();
        };
        for epoch in 1..=8u64 {
            write(epoch, t0 + epoch as i64 * 90_000).await;
        }
        let part = partition_of(t0);
        let twins = |root: &Path| files_in(&root.join(ROLLUP_TABLE));
        let same_sums = |root: &Path| {
            for column in ["attempts", "starts", "startup_ms_sum", "play_ms", "active_views"] {
                let raw = column_sum(root, "qoe_window", column);
                assert!(raw > 0 || column == "active_views", "{column}");
                assert_eq!(column_sum(root, ROLLUP_TABLE, column), raw, "{column}: the rollup sums what it stands for");
            }
        };

        // The open hour's light compaction writes no rollup.
        let open = Compaction { closed_before: t0, min_files: 2, open_files: 4, target_bytes: u64::MAX, open_target_bytes: u64::MAX, roll_up: true };
        sink.compact_while(8, open, || true).await.unwrap();
        assert_eq!(own_in(&sink, &format!("qoe_window/{part}")).await, vec![(1, 8)]);
        assert!(twins(&root).is_empty(), "{:?}", twins(&root));

        // Closed: a file left as it is (one alone) gets its twin, with the same sums per minute.
        let closed = t0 + 2 * PARTITION_MS;
        sink.compact(8, closed, 2, u64::MAX).await.unwrap();
        assert_eq!(own_in(&sink, &format!("qoe_window/{part}")).await, vec![(1, 8)], "one merged file stays as it is");
        assert_eq!(twins(&root), vec![merged_file_name("local", 1, 8)]);
        same_sums(&root);

        // A late epoch, merged with it: the merged file's twin replaces the old one.
        write(9, t0 + 30 * 60_000).await;
        sink.compact(9, closed, 2, u64::MAX).await.unwrap();
        assert_eq!(twins(&root), vec![merged_file_name("local", 1, 9)]);
        same_sums(&root);

        // Another, too few files to merge (`min_files` 8): it is rolled up alone.
        write(10, t0 + 45 * 60_000).await;
        sink.compact(10, closed, 8, u64::MAX).await.unwrap();
        assert_eq!(own_in(&sink, &format!("qoe_window/{part}")).await, vec![(1, 9), (10, 10)]);
        assert_eq!(twins(&root), vec![merged_file_name("local", 1, 9), file_name("local", 10)]);
        same_sums(&root);
        sink.compact(10, closed, 2, u64::MAX).await.unwrap();
        assert_eq!(twins(&root), vec![merged_file_name("local", 1, 10)], "merged: both twins replaced");
        same_sums(&root);

        // After a crash in a swap: a twin whose file is gone is deleted at start-up; the good one stays.
        let minute_dir = root.join(ROLLUP_TABLE).join(&part);
        std::fs::copy(minute_dir.join(merged_file_name("local", 1, 10)), minute_dir.join(merged_file_name("local", 1, 9))).unwrap();
        assert_eq!(sink.recover(10, &[]).await.unwrap(), 1);
        assert_eq!(twins(&root), vec![merged_file_name("local", 1, 10)]);
        same_sums(&root);
    }

    #[tokio::test]
    async fn compaction_merges_committed_files_of_closed_hours_and_survives_a_crash() {
        use crate::sessionizer::{SessionConfig, Sessionizer};
        use schemas::record::EventsRecord;
        let (_dir, root, sink, mut session, t0) = hour_fixture(); // t0: an hour boundary
        // Ten epochs, two views each, over two hours of event time.
        for epoch in 1..=10u64 {
            for v in 0..2 {
                let t = t0 + (epoch as i64 - 1) * 700_000 + v * 1_000;
                session.process(short_view(format!("v{epoch}-{v}"), t));
            }
            session.advance();
            sink.write_epoch(epoch, &session.flush()).await.unwrap();
        }
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        assert!(before.iter().all(|r| !r.is_empty()));
        let files_before = files_in(&root).len();

        // Epochs up to 8 committed; only the first hour (t0..t0+1h) is closed.
        let done = sink.compact(8, t0 + 3_600_000, 2, u64::MAX).await.unwrap();
        assert!(
            done.partitions >= 2 && done.files_in > done.partitions,
            "{done:?}"
        );
        let after: Vec<_> = TABLES_UNDER_TEST
            .iter()
            .map(|t| rows_of(&root, t))
            .collect();
        assert_eq!(after, before, "compaction keeps exactly the same rows");
        let files = files_in(&root);
        assert!(files.len() < files_before);
        assert!(files.iter().any(|f| f.starts_with("part-local-e000000000001-0000000000")), "{files:?}");
        // Nothing of the open hour or of uncommitted epochs was merged.
        let second_hour = format!("qoe_window/{}", partition_of(t0 + 3_600_000));
        assert!(
            own_in(&sink, &second_hour)
                .await
                .iter()
                .all(|(a, b)| a == b)
        );

        // A crash between the rename and the deletes leaves inputs next to the merged file: the
        // start-up cleanup deletes exactly those.
        let first_hour = format!("qoe_window/{}", partition_of(t0));
        let merged = own_in(&sink, &first_hour).await;
        assert_eq!(merged.len(), 1);
        sink.write_epoch(1, &{
            let mut s = Sessionizer::new(SessionConfig::default());
            let events = vec![serde_json::json!({"view_id": "v1-0", "seq": 0, "type": "playrequest", "ts": t0}).as_object().cloned().unwrap()];
            s.process(schemas::Record::Events(EventsRecord { recv_ms: t0, sent_at: t0, key: None, view_id: "v1-0".into(), client: Default::default(), events }));
            s.advance();
            s.flush()
        })
        .await
        .unwrap();
        assert_eq!(
            own_in(&sink, &first_hour).await.len(),
            2,
            "a leftover input beside the merged file"
        );
        assert!(sink.recover(10, &[]).await.unwrap() >= 1);
        assert_eq!(own_in(&sink, &first_hour).await, merged);
        assert_eq!(
            TABLES_UNDER_TEST
                .iter()
                .map(|t| rows_of(&root, t))
                .collect::<Vec<_>>(),
            before
        );
        // Compacting again with nothing new changes nothing.
        assert_eq!(
            sink.compact(8, t0 + 3_600_000, 2, u64::MAX).await.unwrap(),
            Compacted::default()
        );
    }

    const TABLES_UNDER_TEST: [&str; 3] = ["events", "views", "qoe_window"];

    #[test]
    fn size_groups_roll_merged_files_and_leave_big_files_alone() {
        let files: Vec<OwnFile> = [10u64, 10, 10, 50, 10, 10, 10, 10, 25]
            .iter()
            .enumerate()
            .map(|(i, size)| OwnFile {
                first: i as u64 + 1,
                last: i as u64 + 1,
                key: format!("f{i}"),
                size: *size,
            })
            .collect();
        let groups: Vec<Vec<u64>> = size_groups(&files, 25)
            .iter()
            .map(|g| g.iter().map(|f| f.first).collect())
            .collect();
        // Runs of at most 25 bytes; the 50-byte file and the 25-byte file stay alone, and no run spans them.
        assert_eq!(groups, vec![vec![1, 2], vec![3], vec![4], vec![5, 6], vec![7, 8], vec![9]]);
    }

    fn own(ranges: &[(u64, u64, u64)]) -> Vec<OwnFile> {
        ranges.iter().map(|&(first, last, size)| OwnFile { first, last, key: format!("f{first}-{last}"), size }).collect()
    }

    fn ranges(runs: &[&[OwnFile]]) -> Vec<Vec<(u64, u64)>> {
        runs.iter().map(|r| r.iter().map(|f| (f.first, f.last)).collect()).collect()
    }

    #[test]
    fn the_open_hour_merges_runs_of_one_level_and_never_across_a_file_left_alone() {
        // Levels at fan-in 4: singles 0; spans 2..15: 1; 16..63: 2.
        let files = own(&[(1, 16, 9), (17, 20, 9), (21, 24, 9), (25, 28, 9), (29, 32, 9), (33, 33, 1), (34, 34, 1), (35, 35, 1)]);
        // Four level-1 files in a row; three singles are not enough.
        assert_eq!(ranges(&open_hour_runs(&files, 4)), vec![vec![(17, 20), (21, 24), (25, 28), (29, 32)]]);
        let files = own(&[(1, 16, 9), (17, 20, 9), (21, 24, 9), (25, 28, 9), (29, 32, 9), (33, 33, 1), (34, 34, 1), (35, 35, 1), (36, 36, 1)]);
        assert_eq!(open_hour_runs(&files, 4).len(), 2, "the level-1 run and the four singles");
        // A single between merged files (one left alone as bigger than the size target) splits the
        // run: merging across it would name a file whose range covers it, and recovery would delete it.
        let files = own(&[(1, 4, 9), (5, 8, 9), (9, 9, 500), (10, 13, 9), (14, 17, 9), (18, 18, 1), (19, 19, 1), (20, 20, 1), (21, 21, 1)]);
        assert_eq!(ranges(&open_hour_runs(&files, 3)), vec![vec![(18, 18), (19, 19), (20, 20), (21, 21)]]);
        for run in open_hour_runs(&files, 2) {
            let (first, last) = (run[0].first, run[run.len() - 1].last);
            assert!(files.iter().filter(|f| first <= f.first && f.last <= last).count() == run.len(), "{run:?} covers a file it does not merge");
        }
    }

    #[test]
    fn open_hour_levels_keep_the_hour_to_tens_of_files_over_a_whole_hour_of_short_epochs() {
        // An hour of 200 ms epochs merged as the pipeline does (a pass every N epochs), by size alone
        // never split: the hour never holds more than about N files per level, and each epoch's rows
        // are rewritten about log_N(epochs) times.
        let fan_in = 16;
        let mut files: Vec<OwnFile> = Vec::new();
        let (mut most, mut rewritten) = (0, 0u64);
        for epoch in 1..=18_000u64 {
            files.push(OwnFile { first: epoch, last: epoch, key: String::new(), size: 1 });
            if epoch % fan_in as u64 == 0 {
                loop {
                    let runs: Vec<(u64, u64, usize)> = open_hour_runs(&files, fan_in).iter().map(|r| (r[0].first, r[r.len() - 1].last, r.len())).collect();
                    if runs.is_empty() {
                        break;
                    }
                    for (first, last, _) in runs {
                        let size: u64 = files.iter().filter(|f| first <= f.first && f.last <= last).map(|f| f.size).sum();
                        rewritten += size;
                        files.retain(|f| !(first <= f.first && f.last <= last));
                        files.push(OwnFile { first, last, key: String::new(), size });
                        files.sort();
                    }
                }
            }
            most = most.max(files.len());
        }
        assert!(most <= 4 * fan_in, "at most {most} files in the hour");
        assert!(rewritten <= 4 * 18_000, "each row rewritten {} times on average", rewritten as f64 / 18_000.0);
        assert!(files.windows(2).all(|w| w[0].last < w[1].first), "files never overlap");
    }

    #[tokio::test]
    async fn staged_files_are_invisible_until_published_and_recovery_finishes_a_committed_epoch() {
        use crate::sessionizer::{SessionConfig, Sessionizer};
        use schemas::record::EventsRecord;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("parquet");
        let sink = ParquetSink::new(Location::local(&root), "w", Dim::DEFAULT.to_vec());
        let mut session = Sessionizer::new(SessionConfig::default());
        let t = 1_700_000_000_000;
        let events = vec![
            serde_json::json!({"view_id": "a", "seq": 0, "type": "playrequest", "ts": t})
                .as_object()
                .cloned()
                .unwrap(),
        ];
        session.process(schemas::Record::Events(EventsRecord {
            recv_ms: t,
            sent_at: t,
            key: None,
            view_id: "a".into(),
            client: Default::default(),
            events,
        }));
        session.advance();
        let out = session.flush();
        let epoch1 = sink
            .stage(sink.encode_epoch(1, &out).unwrap())
            .await
            .unwrap();
        let epoch2 = sink
            .stage(sink.encode_epoch(2, &out).unwrap())
            .await
            .unwrap();
        assert!(!epoch1.is_empty());
        assert!(
            files_in(&root).iter().all(|f| f.starts_with('.')),
            "staged files are hidden: {:?}",
            files_in(&root)
        );
        // Epoch 1 was checkpointed (its staged files are in the checkpoint), epoch 2 was not.
        sink.recover(1, &epoch1).await.unwrap();
        let files = files_in(&root);
        assert!(
            files.iter().all(|f| f.starts_with("part-w-e000000000001")),
            "{files:?}"
        );
        assert_eq!(files.len(), epoch1.len());
        assert!(
            sink.publish(&epoch2).await.is_err(),
            "an uncommitted epoch's staged files are gone"
        );
    }
}
