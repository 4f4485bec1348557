//! A table row as cells in the column order of [`crate::tables`], and its encodings: Arrow record
//! batches, zstd Parquet files, and ClickHouse's RowBinary. Every writer of a table (the pipeline's
//! sinks, the alert history) encodes through these, so a table has one encoding whoever writes it.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::column::{ColType, Column};

/// Why rows could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Rows that do not fit their column list.
    #[error("{0}")]
    Shape(String),
}

/// One value of a row. Strings and bytes borrow from what the row describes where they can (a row is
/// encoded right after it is made): copying every string of every event row was a tenth of the
/// pipeline's CPU.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Bin(Cow<'a, [u8]>),
    /// Epoch milliseconds.
    Ts(i64),
    Null,
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
    /// For `rows` values; `bytes` of string or binary data in all.
    fn with_capacity(ty: ColType, rows: usize, bytes: usize) -> Builder {
        match ty {
            ColType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColType::Int64 => Builder::I64(Int64Builder::with_capacity(rows)),
            ColType::UInt64 => Builder::U64(UInt64Builder::with_capacity(rows)),
            ColType::Float64 => Builder::F64(Float64Builder::with_capacity(rows)),
            ColType::Utf8 => Builder::Str(StringBuilder::with_capacity(rows, bytes)),
            ColType::Binary => Builder::Bin(BinaryBuilder::with_capacity(rows, bytes)),
            ColType::TimestampMs => Builder::Ts(TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC")),
        }
    }

    /// Appends a cell. Row functions produce cells matching their column list; a mismatch is a
    /// programming error caught by the tests of every table.
    fn push(&mut self, cell: &Cell<'_>, column: &Column) {
        match (self, cell) {
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::I64(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::U64(b), Cell::U64(v)) => b.append_value(*v),
            (Builder::F64(b), Cell::F64(v)) => b.append_value(*v),
            (Builder::Str(b), Cell::Str(v)) => b.append_value(v.as_ref()),
            (Builder::Bin(b), Cell::Bin(v)) => b.append_value(v.as_ref()),
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

/// Builds one record batch row by row (cells in column order), its arrays sized up front from estimates
/// of the rows and bytes to come. Rows can be
/// pushed as they are made, so a table's rows never all exist as cells at once: an epoch's `events` rows
/// held as cells were about a kilobyte each, and their memory, fresh every epoch, cost the pipeline more
/// in page faults and copies than the cells themselves (BENCHMARKS.md §15).
pub struct BatchBuilder<'c> {
    columns: &'c [Column],
    builders: Vec<Builder>,
    rows: usize,
}

impl<'c> BatchBuilder<'c> {
    /// A builder for about `rows` rows whose string or binary column `i` holds about `bytes(i)` bytes in
    /// all (estimates: the arrays grow past them).
    pub fn with_capacity(columns: &'c [Column], rows: usize, bytes: impl Fn(usize) -> usize) -> BatchBuilder<'c> {
        let builders = columns.iter().enumerate().map(|(i, c)| Builder::with_capacity(c.ty, rows, bytes(i))).collect();
        BatchBuilder { columns, builders, rows: 0 }
    }

    /// The rows pushed so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one row.
    pub fn push(&mut self, row: &[Cell<'_>]) -> Result<(), EncodeError> {
        if row.len() != self.columns.len() {
            return Err(EncodeError::Shape(format!("a row has {} cells for {} columns", row.len(), self.columns.len())));
        }
        for ((b, cell), col) in self.builders.iter_mut().zip(row).zip(self.columns) {
            b.push(cell, col);
        }
        self.rows += 1;
        Ok(())
    }

    /// The string or binary bytes each column holds so far (0 for other columns).
    pub fn value_bytes(&self) -> Vec<usize> {
        self.builders
            .iter()
            .map(|b| match b {
                Builder::Str(b) => b.values_slice().len(),
                Builder::Bin(b) => b.values_slice().len(),
                _ => 0,
            })
            .collect()
    }

    /// The batch of every row pushed.
    pub fn finish(mut self) -> Result<RecordBatch, EncodeError> {
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        Ok(RecordBatch::try_new(crate::tables::arrow_schema(self.columns), arrays)?)
    }
}

/// The bytes a string or binary cell holds (0 for other cells).
fn cell_bytes(cell: &Cell<'_>) -> usize {
    match cell {
        Cell::Str(v) => v.len(),
        Cell::Bin(v) => v.len(),
        _ => 0,
    }
}

/// Builds a record batch of `rows` (cells in column order).
pub fn record_batch(columns: &[Column], rows: &[Vec<Cell<'_>>]) -> Result<RecordBatch, EncodeError> {
    let bytes = |i: usize| rows.iter().map(|r| r.get(i).map_or(0, cell_bytes)).sum();
    let mut batch = BatchBuilder::with_capacity(columns, rows.len(), bytes);
    for row in rows {
        batch.push(row)?;
    }
    batch.finish()
}

/// How long a Parquet file is meant to stay, which sets how hard it is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLife {
    /// A file compaction merges again within the hour or so (an epoch's files, the open hour's
    /// merges): zstd level 1, which writes faster than level 3 (the pipeline 1.10×, `BENCHMARKS.md`
    /// §17). A closed hour's file that compaction leaves as it is keeps it.
    Transient,
    /// A file that stays (a closed hour's compaction, rollups, alert history): zstd level 3.
    Kept,
}

impl FileLife {
    /// The zstd level of a file of this life.
    pub fn zstd_level(self) -> i32 {
        match self {
            FileLife::Transient => 1,
            FileLife::Kept => 3,
        }
    }
}

fn writer_properties(life: FileLife) -> Result<WriterProperties, parquet::errors::ParquetError> {
    let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(life.zstd_level())?));
    for name in crate::tables::OPAQUE_TEXT {
        let column = ColumnPath::from(*name);
        props = props.set_column_dictionary_enabled(column.clone(), false).set_column_statistics_enabled(column, EnabledStatistics::None);
    }
    Ok(props.build())
}

/// A row group is flushed once the writer holds this much for it: a writer buffers its whole row
/// group, and a compaction merging a flood of rows into one file grew the process by ~80 MB without it.
const ROW_GROUP_MEMORY: usize = 8 << 20;

/// Encodes `batches` (one schema) as one zstd Parquet file meant to stay ([`FileLife::Kept`]), with
/// its row count; None without batches.
pub fn parquet_file<E: From<EncodeError>>(
    batches: impl IntoIterator<Item = Result<RecordBatch, E>>,
) -> Result<Option<(Bytes, usize)>, E> {
    parquet_file_for(FileLife::Kept, batches)
}

/// Encodes `batches` (one schema) as one zstd Parquet file compressed for its `life`, with its row
/// count; None without batches. Row groups end at [`ROW_GROUP_MEMORY`] of buffered data (or the
/// writer's 1 Mi rows).
pub fn parquet_file_for<E: From<EncodeError>>(
    life: FileLife,
    batches: impl IntoIterator<Item = Result<RecordBatch, E>>,
) -> Result<Option<(Bytes, usize)>, E> {
    let mut file = ParquetFile::new(life);
    for batch in batches {
        file.write(&batch?)?;
    }
    Ok(file.finish()?)
}

/// One Parquet file written a record batch at a time ([`parquet_file_for`] over batches as they are
/// made): a writer of many rows can build them in batches of a bounded size, whose memory the next
/// batch reuses, instead of building every row's arrays before the file starts.
pub struct ParquetFile {
    life: FileLife,
    writer: Option<ArrowWriter<Vec<u8>>>,
    rows: usize,
}

impl ParquetFile {
    /// A file compressed for its `life`, empty until its first batch (which sets its schema).
    pub fn new(life: FileLife) -> ParquetFile {
        ParquetFile { life, writer: None, rows: 0 }
    }

    /// Appends `batch`'s rows; row groups end at [`ROW_GROUP_MEMORY`] of buffered data (or the
    /// writer's 1 Mi rows).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), EncodeError> {
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(ArrowWriter::try_new(Vec::new(), batch.schema(), Some(writer_properties(self.life)?))?),
        };
        writer.write(batch)?;
        self.rows += batch.num_rows();
        if writer.memory_size() > ROW_GROUP_MEMORY {
            writer.flush()?;
        }
        Ok(())
    }

    /// The file's bytes and row count; None if no batch was written.
    pub fn finish(self) -> Result<Option<(Bytes, usize)>, EncodeError> {
        let Some(writer) = self.writer else {
            return Ok(None);
        };
        Ok(Some((Bytes::from(writer.into_inner()?), self.rows)))
    }
}

/// Appends one row in ClickHouse's RowBinary format (columns in table order).
pub fn encode_rowbinary(cells: &[Cell<'_>], columns: &[Column], out: &mut Vec<u8>) {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    for (cell, col) in cells.iter().zip(columns) {
        if col.nullable {
            out.push(u8::from(matches!(cell, Cell::Null)));
        }
        match cell {
            Cell::Null => {
                if !col.nullable {
                    // The row functions never put Null in a non-nullable column; should one appear, write
                    // the type's zero value so the stream stays aligned.
                    let zero_len = match col.ty {
                        ColType::Bool | ColType::Utf8 | ColType::Binary => 1, // false / empty string
                        ColType::Int64 | ColType::UInt64 | ColType::Float64 | ColType::TimestampMs => 8,
                    };
                    out.extend(std::iter::repeat_n(0u8, zero_len));
                }
            }
            Cell::Bool(b) => out.push(u8::from(*b)),
            Cell::I64(v) | Cell::Ts(v) => out.extend_from_slice(&v.to_le_bytes()),
            Cell::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Cell::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Cell::Str(v) => {
                varint(v.len(), out);
                out.extend_from_slice(v.as_bytes());
            }
            Cell::Bin(v) => {
                varint(v.len(), out);
                out.extend_from_slice(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::Column;

    #[test]
    fn rowbinary_layout() {
        let cols = [
            Column { name: "s", ty: ColType::Utf8, nullable: false },
            Column { name: "n", ty: ColType::Int64, nullable: true },
            Column { name: "b", ty: ColType::Bool, nullable: false },
            Column { name: "z", ty: ColType::Utf8, nullable: false },
        ];
        let mut out = Vec::new();
        encode_rowbinary(&[Cell::Str("hé".into()), Cell::Null, Cell::Bool(true), Cell::Null], &cols, &mut out);
        assert_eq!(out, vec![3, b'h', 0xc3, 0xa9, 1, 1, 0]);
        out.clear();
        encode_rowbinary(&[Cell::Str("x".repeat(200).into()), Cell::I64(-2), Cell::Bool(false), Cell::Str("".into())], &cols, &mut out);
        assert_eq!(&out[..2], &[0xc8, 0x01], "LEB128 length");
        assert_eq!(&out[202..211], &[0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&out[211..], &[0, 0]);
    }

    #[test]
    fn transient_files_are_compressed_lighter_than_kept_ones_and_read_the_same() {
        let cols = [Column { name: "raw", ty: ColType::Utf8, nullable: false }, Column { name: "n", ty: ColType::Int64, nullable: false }];
        let rows: Vec<Vec<Cell<'_>>> = (0..20_000i64)
            .map(|i| {
                let raw = format!(r#"{{"view_id":"v-{}","seq":{i},"type":"heartbeat","ts":{},"playhead_ms":{}}}"#, i / 40, 1_700_000_000_000 + i * 250, (i % 40) * 250);
                vec![Cell::Str(raw.into()), Cell::I64(i * 7 % 1000)]
            })
            .collect();
        let encode = |life| {
            let batch = record_batch(&cols, &rows).expect("rows fit their columns");
            parquet_file_for::<EncodeError>(life, [Ok(batch)]).expect("encodes").expect("a file")
        };
        let ((transient, n1), (kept, n2)) = (encode(FileLife::Transient), encode(FileLife::Kept));
        assert_eq!((n1, n2), (20_000, 20_000));
        assert!(kept.len() < transient.len(), "level 3 ({} bytes) should be smaller than level 1 ({} bytes)", kept.len(), transient.len());
        let read = |bytes: Bytes| -> Vec<RecordBatch> {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                .expect("a Parquet file")
                .build()
                .expect("a reader")
                .collect::<Result<_, _>>()
                .expect("batches")
        };
        assert_eq!(read(transient), read(kept), "both lives hold the same rows");
    }
}
