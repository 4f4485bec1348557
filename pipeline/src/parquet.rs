//! Parquet sink: `<root>/<table>/dt=YYYY-MM-DD/hour=HH/part-<source>-e<epoch>.parquet`, zstd.
//!
//! Each committed epoch writes at most one file per (table, partition). A file is written to a
//! temporary name, fsynced, renamed into place, and its directory fsynced, so a reader never sees a torn
//! file. Names are deterministic per (source, epoch): before an epoch is committed (its checkpoint
//! saved), a crash may leave some of its files behind; at start-up [`ParquetSink::remove_uncommitted`]
//! deletes every file of this source with an epoch above the last committed one, and the replay writes
//! them again. Files are plain Parquet with Arrow schemas from `schemas::tables`: DuckDB, Spark and
//! DataFusion read them with hive partitioning and no qoeflow code.
//!
//! **Compaction.** One file per epoch and partition would leave ~86,400 small files per table per day at
//! one epoch a second, and every query lists and opens them all. Once the watermark has passed an hour
//! partition by `compact_after_ms`, [`ParquetSink::compact`] merges this source's committed files there
//! into `part-<source>-e<first>-<last>.parquet`, holding exactly their rows (row identity included).
//! Files roll by age (each epoch, one flush interval, closes its files) and by size (merged files are
//! cut at about `compact_target_bytes`, 128 MiB by default). The merged file is made durable first, then the inputs are deleted; after a crash in
//! between, [`ParquetSink::remove_uncommitted`] deletes the inputs a merged file supersedes. Late rows
//! for a compacted hour land in new small files and are merged again later. Within `qoeflow serve` the
//! swap holds [`DATASET_LOCK`] for writing and queries hold it for reading, so a query sees either the
//! inputs or the merged file; a separate reader process may see both for the instant between the
//! rename and the deletes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use schemas::dataset::{DATASET_LOCK, epochs_of, file_name, merged_file_name, partition_of, partition_start, source_prefix};
use schemas::tables::{self, ColType, Column};

use crate::rows::{self, Cell};
use crate::sessionizer::{Dim, Output};

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub partitions: usize,
    pub files_in: usize,
    pub rows: usize,
}

/// Every partition directory (`<table>/dt=…/hour=…`) under `root`.
fn partition_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut has_files = false;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                has_files = true;
            }
        }
        if has_files && partition_start(&dir).is_some() {
            out.push(dir);
        }
    }
    out.sort();
    Ok(out)
}

pub struct ParquetSink {
    root: PathBuf,
    source: String,
    dims: Vec<Dim>,
}

enum Builder {
    Bool(BooleanBuilder),
    I64(Int64Builder),
    U64(UInt64Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Ts(TimestampMillisecondBuilder),
}

impl Builder {
    fn new(ty: ColType) -> Builder {
        match ty {
            ColType::Bool => Builder::Bool(BooleanBuilder::new()),
            ColType::Int64 => Builder::I64(Int64Builder::new()),
            ColType::UInt64 => Builder::U64(UInt64Builder::new()),
            ColType::Float64 => Builder::F64(Float64Builder::new()),
            ColType::Utf8 => Builder::Str(StringBuilder::new()),
            ColType::Binary => Builder::Bin(BinaryBuilder::new()),
            ColType::TimestampMs => Builder::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC")),
        }
    }

    /// Appends a cell. The row functions in `rows` produce cells matching the column list; a mismatch is
    /// a programming error caught by the tests of every table.
    fn push(&mut self, cell: &Cell, column: &Column) {
        match (self, cell) {
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::I64(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::U64(b), Cell::U64(v)) => b.append_value(*v),
            (Builder::F64(b), Cell::F64(v)) => b.append_value(*v),
            (Builder::Str(b), Cell::Str(v)) => b.append_value(v),
            (Builder::Bin(b), Cell::Bin(v)) => b.append_value(v),
            (Builder::Ts(b), Cell::Ts(v)) => b.append_value(*v),
            (Builder::Bool(b), Cell::Null) => b.append_null(),
            (Builder::I64(b), Cell::Null) => b.append_null(),
            (Builder::U64(b), Cell::Null) => b.append_null(),
            (Builder::F64(b), Cell::Null) => b.append_null(),
            (Builder::Str(b), Cell::Null) => b.append_null(),
            (Builder::Bin(b), Cell::Null) => b.append_null(),
            (Builder::Ts(b), Cell::Null) => b.append_null(),
            (_, cell) => panic!("column {} ({:?}) cannot take {cell:?}", column.name, column.ty),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Bin(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds a record batch of `rows` (cells in column order).
pub fn record_batch(columns: &[Column], rows: &[Vec<Cell>]) -> crate::Result<RecordBatch> {
    let mut builders: Vec<Builder> = columns.iter().map(|c| Builder::new(c.ty)).collect();
    for row in rows {
        crate::error::ensure!(row.len() == columns.len(), "row has {} cells for {} columns", row.len(), columns.len());
        for ((b, cell), col) in builders.iter_mut().zip(row).zip(columns) {
            b.push(cell, col);
        }
    }
    let arrays: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
    Ok(RecordBatch::try_new(tables::arrow_schema(columns), arrays)?)
}

fn writer_properties() -> crate::Result<WriterProperties> {
    Ok(WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Splits `files` (sorted by epoch) into runs of consecutive files of at most about `target_bytes`
/// together; a file of `target_bytes` or more ends the run before it and stays alone, so no merged
/// file's epoch range ever covers a file left out of it.
fn size_groups(files: &[(u64, u64, PathBuf)], target_bytes: u64) -> std::io::Result<Vec<&[(u64, u64, PathBuf)]>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, (_, _, path)) in files.iter().enumerate() {
        let size = std::fs::metadata(path)?.len();
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
    Ok(groups.into_iter().filter(|g| !g.is_empty()).collect())
}

impl ParquetSink {
    pub fn new(root: impl Into<PathBuf>, source: impl Into<String>, dims: Vec<Dim>) -> ParquetSink {
        ParquetSink { root: root.into(), source: source.into(), dims }
    }

    fn file_name(&self, epoch: u64) -> String {
        file_name(&self.source, epoch)
    }

    /// Deletes this source's files of epochs after `committed` and any temporary files (left by a
    /// crash before the checkpoint of their epoch). Returns how many files were deleted.
    pub fn remove_uncommitted(&self, committed: u64) -> std::io::Result<usize> {
        let prefix = source_prefix(&self.source);
        let mut deleted = 0;
        // Files are only ever written into partition directories.
        for dir in partition_dirs(&self.root)? {
            let mut changed = false;
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let epochs = epochs_of(name, &prefix);
                let stale_tmp = name.starts_with(&format!(".{prefix}")) && name.ends_with(".tmp");
                if stale_tmp || epochs.is_some_and(|(_, last)| last > committed) {
                    std::fs::remove_file(&path)?;
                    deleted += 1;
                    changed = true;
                }
            }
            if changed {
                fsync_dir(&dir)?;
            }
            deleted += self.remove_superseded(&dir)?;
        }
        Ok(deleted)
    }

    /// This source's files in `dir` as (first epoch, last epoch, path), sorted.
    fn own_files(&self, dir: &Path) -> std::io::Result<Vec<(u64, u64, PathBuf)>> {
        let prefix = source_prefix(&self.source);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some((first, last)) = epochs_of(name, &prefix) {
                files.push((first, last, path));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Deletes files whose epochs a merged file in the same directory covers (left by a crash between a
    /// compaction's rename and its deletes).
    fn remove_superseded(&self, dir: &Path) -> std::io::Result<usize> {
        let files = self.own_files(dir)?;
        let mut deleted = 0;
        for (first, last, path) in &files {
            let covered = files.iter().any(|(a, b, p)| p != path && a <= first && last <= b && (a, b) != (first, last));
            if covered {
                std::fs::remove_file(path)?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            fsync_dir(dir)?;
        }
        Ok(deleted)
    }

    /// Merges this source's files in every hour partition that ended before `closed_before` (epoch ms)
    /// and holds at least `min_files` of them, all of epochs up to `committed`. Files roll by size:
    /// consecutive files (in epoch order) are merged into outputs of about `target_bytes` at most, and a
    /// file already that big is left as it is.
    pub fn compact(&self, committed: u64, closed_before: i64, min_files: usize, target_bytes: u64) -> crate::Result<Compacted> {
        let mut done = Compacted::default();
        for dir in partition_dirs(&self.root)? {
            let Some(start) = partition_start(&dir) else { continue };
            if start + 3_600_000 > closed_before {
                continue;
            }
            let files: Vec<_> = self.own_files(&dir)?.into_iter().filter(|(_, last, _)| *last <= committed).collect();
            if files.len() < min_files.max(2) {
                continue;
            }
            let mut merged_any = false;
            for group in size_groups(&files, target_bytes)? {
                if group.len() < 2 {
                    continue;
                }
                done.rows += self.merge_files(&dir, group)?;
                done.files_in += group.len();
                merged_any = true;
            }
            if merged_any {
                done.partitions += 1;
            }
        }
        Ok(done)
    }

    /// Merges `files` (consecutive in epoch order, in `dir`) into one durable file named after their
    /// epoch range, then deletes them. Returns the rows written.
    fn merge_files(&self, dir: &Path, files: &[(u64, u64, PathBuf)]) -> crate::Result<usize> {
        let (first, last) = (files[0].0, files.iter().map(|f| f.1).max().unwrap_or(files[0].1));
        let name = merged_file_name(&self.source, first, last);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut writer: Option<ArrowWriter<File>> = None;
        let mut rows = 0;
        for (_, _, path) in files {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?
                .with_batch_size(8192)
                .build()?;
            for batch in reader {
                let batch = batch?;
                if writer.is_none() {
                    writer = Some(ArrowWriter::try_new(File::create(&tmp)?, batch.schema(), Some(writer_properties()?))?);
                }
                if let Some(w) = writer.as_mut() {
                    w.write(&batch)?;
                    rows += batch.num_rows();
                }
            }
        }
        let Some(writer) = writer else { return Ok(0) };
        writer.into_inner()?.sync_all()?;
        let _swap = DATASET_LOCK.blocking_write();
        std::fs::rename(&tmp, dir.join(&name))?;
        fsync_dir(dir)?;
        for (_, _, path) in files {
            std::fs::remove_file(path)?;
        }
        fsync_dir(dir)?;
        Ok(rows)
    }

    /// Writes one epoch's output: one durable file per (table, partition) with rows.
    pub fn write_epoch(&self, epoch: u64, out: &Output) -> crate::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for (table, columns, rows) in rows::tables_of(out, &self.dims, &self.source, epoch) {
            let mut parts: BTreeMap<String, Vec<Vec<Cell>>> = BTreeMap::new();
            for (ts, row) in rows {
                parts.entry(partition_of(ts)).or_default().push(row);
            }
            for (part, rows) in parts {
                let dir = self.root.join(table).join(part);
                written.push(self.write_file(&dir, epoch, columns, &rows)?);
            }
        }
        Ok(written)
    }

    fn write_file(&self, dir: &Path, epoch: u64, columns: &[Column], rows: &[Vec<Cell>]) -> crate::Result<PathBuf> {
        let new_dir = !dir.exists();
        std::fs::create_dir_all(dir)?;
        if new_dir {
            // Make the new partition directories themselves durable.
            let mut d = dir.to_path_buf();
            while d != self.root && d.pop() {
                fsync_dir(&d)?;
            }
        }
        let name = self.file_name(epoch);
        let tmp = dir.join(format!(".{name}.tmp"));
        let batch = record_batch(columns, rows)?;
        let file = File::create(&tmp)?;
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties()?))?;
        writer.write(&batch)?;
        let file = writer.into_inner()?;
        file.sync_all()?;
        let path = dir.join(name);
        std::fs::rename(&tmp, &path)?;
        fsync_dir(dir)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of `table` under `root` as its (source, epoch, row) identity and a measure, sorted.
    fn rows_of(root: &Path, table: &str) -> Vec<String> {
        let mut out = Vec::new();
        for dir in partition_dirs(&root.join(table)).unwrap() {
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
            .unwrap()
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn compaction_merges_committed_files_of_closed_hours_and_survives_a_crash() {
        use crate::sessionizer::{SessionConfig, Sessionizer};
        use schemas::record::EventsRecord;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("parquet");
        let sink = ParquetSink::new(&root, "local", Dim::DEFAULT.to_vec());
        let mut session = Sessionizer::new(SessionConfig::default());
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000; // an hour boundary
        // Ten epochs, two views each, over two hours of event time.
        for epoch in 1..=10u64 {
            for v in 0..2 {
                let t = t0 + (epoch as i64 - 1) * 700_000 + v * 1_000;
                let id = format!("v{epoch}-{v}");
                let events = [("playrequest", 0), ("playing", 300), ("viewend", 5_000)]
                    .iter()
                    .enumerate()
                    .map(|(seq, (kind, dt))| {
                        serde_json::json!({"view_id": id, "seq": seq, "type": kind, "ts": t + dt}).as_object().cloned().unwrap()
                    })
                    .collect();
                let client = schemas::ClientInfo::default();
                session.process(schemas::Record::Events(EventsRecord { recv_ms: t + 6_000, sent_at: t + 6_000, key: None, view_id: id, client, events }));
            }
            session.advance();
            sink.write_epoch(epoch, &session.flush()).unwrap();
        }
        let before: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        assert!(before.iter().all(|r| !r.is_empty()));
        let files_before = files_in(&root).len();

        // Epochs up to 8 committed; only the first hour (t0..t0+1h) is closed.
        let done = sink.compact(8, t0 + 3_600_000, 2, u64::MAX).unwrap();
        assert!(done.partitions >= 2 && done.files_in > done.partitions, "{done:?}");
        let after: Vec<_> = TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect();
        assert_eq!(after, before, "compaction keeps exactly the same rows");
        let files = files_in(&root);
        assert!(files.len() < files_before);
        assert!(files.iter().any(|f| f.starts_with("part-local-e000000000001-0000000000")), "{files:?}");
        // Nothing of the open hour or of uncommitted epochs was merged.
        let second_hour = root.join("qoe_window").join(partition_of(t0 + 3_600_000));
        assert!(sink.own_files(&second_hour).unwrap().iter().all(|(a, b, _)| a == b));

        // A crash between the rename and the deletes leaves inputs next to the merged file: the
        // start-up cleanup deletes exactly those.
        let first_hour = root.join("qoe_window").join(partition_of(t0));
        let merged = sink.own_files(&first_hour).unwrap();
        assert_eq!(merged.len(), 1);
        sink.write_epoch(1, &{
            let mut s = Sessionizer::new(SessionConfig::default());
            let events = vec![serde_json::json!({"view_id": "v1-0", "seq": 0, "type": "playrequest", "ts": t0}).as_object().cloned().unwrap()];
            s.process(schemas::Record::Events(EventsRecord { recv_ms: t0, sent_at: t0, key: None, view_id: "v1-0".into(), client: Default::default(), events }));
            s.advance();
            s.flush()
        })
        .unwrap();
        assert_eq!(sink.own_files(&first_hour).unwrap().len(), 2, "a leftover input beside the merged file");
        assert!(sink.remove_uncommitted(10).unwrap() >= 1);
        assert_eq!(sink.own_files(&first_hour).unwrap(), merged);
        assert_eq!(TABLES_UNDER_TEST.iter().map(|t| rows_of(&root, t)).collect::<Vec<_>>(), before);
        // Compacting again with nothing new changes nothing.
        assert_eq!(sink.compact(8, t0 + 3_600_000, 2, u64::MAX).unwrap(), Compacted::default());
    }

    const TABLES_UNDER_TEST: [&str; 3] = ["events", "views", "qoe_window"];

    #[test]
    fn size_groups_roll_merged_files_and_leave_big_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(u64, u64, PathBuf)> = [10u64, 10, 10, 50, 10, 10, 10, 10, 25]
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, vec![0u8; *size as usize]).unwrap();
                (i as u64 + 1, i as u64 + 1, path)
            })
            .collect();
        let groups: Vec<Vec<u64>> =
            size_groups(&files, 25).unwrap().iter().map(|g| g.iter().map(|f| f.0).collect()).collect();
        // Runs of at most 25 bytes; the 50-byte file and the 25-byte file stay alone, and no run spans them.
        assert_eq!(groups, vec![vec![1, 2], vec![3], vec![4], vec![5, 6], vec![7, 8], vec![9]]);
    }
}
