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
//! Limits: one file per epoch and partition means small files at low traffic (compaction is future work).

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
use schemas::tables::{self, ColType, Column};

use crate::rows::{self, Cell};
use crate::sessionizer::{Dim, Output};

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
pub fn record_batch(columns: &[Column], rows: &[Vec<Cell>]) -> anyhow::Result<RecordBatch> {
    let mut builders: Vec<Builder> = columns.iter().map(|c| Builder::new(c.ty)).collect();
    for row in rows {
        anyhow::ensure!(row.len() == columns.len(), "row has {} cells for {} columns", row.len(), columns.len());
        for ((b, cell), col) in builders.iter_mut().zip(row).zip(columns) {
            b.push(cell, col);
        }
    }
    let arrays: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
    Ok(RecordBatch::try_new(tables::arrow_schema(columns), arrays)?)
}

/// `dt=YYYY-MM-DD/hour=HH` of an epoch-ms timestamp (UTC).
pub fn partition_of(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("dt={y:04}-{m:02}-{d:02}/hour={hour:02}")
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ParquetSink {
    pub fn new(root: impl Into<PathBuf>, source: impl Into<String>, dims: Vec<Dim>) -> ParquetSink {
        ParquetSink { root: root.into(), source: source.into(), dims }
    }

    fn file_name(&self, epoch: u64) -> String {
        format!("part-{}-e{epoch:012}.parquet", self.source)
    }

    /// Deletes this source's files of epochs after `committed` and any temporary files (left by a
    /// crash before the checkpoint of their epoch). Returns how many files were deleted.
    pub fn remove_uncommitted(&self, committed: u64) -> std::io::Result<usize> {
        let prefix = format!("part-{}-e", self.source);
        let mut deleted = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut changed = false;
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let epoch = name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".parquet"))
                    .and_then(|e| e.parse::<u64>().ok());
                let stale_tmp = name.starts_with(&format!(".{prefix}")) && name.ends_with(".tmp");
                if stale_tmp || epoch.is_some_and(|e| e > committed) {
                    std::fs::remove_file(&path)?;
                    deleted += 1;
                    changed = true;
                }
            }
            if changed {
                fsync_dir(&dir)?;
            }
        }
        Ok(deleted)
    }

    /// Writes one epoch's output: one durable file per (table, partition) with rows.
    pub fn write_epoch(&self, epoch: u64, out: &Output) -> anyhow::Result<Vec<PathBuf>> {
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

    fn write_file(&self, dir: &Path, epoch: u64, columns: &[Column], rows: &[Vec<Cell>]) -> anyhow::Result<PathBuf> {
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
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .build();
        let file = File::create(&tmp)?;
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
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

    #[test]
    fn partitions_are_utc_dates_and_hours() {
        assert_eq!(partition_of(0), "dt=1970-01-01/hour=00");
        assert_eq!(partition_of(1_700_000_000_000), "dt=2023-11-14/hour=22");
        assert_eq!(partition_of(951_782_400_000 + 3_600_000 * 5), "dt=2000-02-29/hour=05");
        assert_eq!(partition_of(4_102_444_799_999), "dt=2099-12-31/hour=23");
    }
}
