//! Reading the Parquet dataset back (with the parquet crate only) and comparing it with the batch
//! reference computed from the local log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The staged (hidden, not yet published) files under `dir`: `.part-….parquet.tmp`.
pub fn staged_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with(".part-") && name.ends_with(".parquet.tmp") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `files` without those a listed merged file of their source covers, per directory
/// (`schemas::dataset::superseded`): what a reader must skip while a compaction swaps files.
pub fn visible(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let keys: Vec<String> = files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
    let skipped = schemas::dataset::superseded(keys.iter().map(String::as_str));
    files.into_iter().zip(&keys).filter(|(_, key)| !skipped.contains(key.as_str())).map(|(f, _)| f).collect()
}

/// Every batch of a table, read while the pipeline may be compacting it, as qoeflow's own readers
/// do: files a listed merged file covers are left out, and when a listed file is gone before it is
/// opened (a compaction deleted the inputs of its merged file) the table is listed and read again.
/// Panics (the test fails) on any unreadable, i.e. torn, file.
pub fn read_table(data_dir: &Path, table: &str) -> Vec<RecordBatch> {
    for _ in 0..50 {
        if let Some(batches) = read_table_once(&data_dir.join("parquet").join(table)) {
            return batches;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{table}: listed files kept vanishing before they were read (50 listings)");
}

/// [`read_table`]'s one listing; `None` if a listed file was gone.
fn read_table_once(dir: &Path) -> Option<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for f in visible(files(dir)) {
        let file = match std::fs::File::open(&f) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            file => file.expect("open parquet"),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{} is not a readable Parquet file: {e}", f.display()))
            .build()
            .expect("reader");
        for b in reader {
            out.push(b.unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        }
    }
    Some(out)
}

pub fn num_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Sum of an integer column (UInt64 or Int64) over all batches.
pub fn sum(batches: &[RecordBatch], column: &str) -> i64 {
    let mut total = 0i64;
    for b in batches {
        let col = b.column_by_name(column).unwrap_or_else(|| panic!("no column {column}"));
        if let Some(a) = col.as_primitive_opt::<UInt64Type>() {
            total += a.iter().flatten().map(|v| v as i64).sum::<i64>();
        } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
            total += a.iter().flatten().sum::<i64>();
        } else {
            panic!("column {column} is not an integer column");
        }
    }
    total
}

pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let a = b.column_by_name(column).unwrap_or_else(|| panic!("no column {column}")).as_string::<i32>();
        out.extend((0..a.len()).map(|i| a.value(i).to_owned()));
    }
    out
}

/// Per-view integer measures from the `views` table: view_id → (column → value).
pub fn view_measures(batches: &[RecordBatch], columns: &[&str]) -> BTreeMap<String, BTreeMap<String, i64>> {
    let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for b in batches {
        let ids = b.column_by_name("view_id").expect("view_id").as_string::<i32>();
        let version = b.column_by_name("version").expect("version").as_primitive::<UInt64Type>();
        for i in 0..b.num_rows() {
            // The latest version of each view (a correction supersedes the earlier rows); one row per
            // version.
            let seen = versions.entry(ids.value(i).to_owned()).or_insert(0);
            assert_ne!(*seen, version.value(i), "view {} version {} written twice", ids.value(i), version.value(i));
            if version.value(i) < *seen {
                continue;
            }
            *seen = version.value(i);
            let mut m = BTreeMap::new();
            for c in columns {
                let col = b.column_by_name(c).unwrap_or_else(|| panic!("no column {c}"));
                let v = if let Some(a) = col.as_primitive_opt::<UInt64Type>() {
                    a.value(i) as i64
                } else if let Some(a) = col.as_primitive_opt::<Int64Type>() {
                    if a.is_null(i) { -1 } else { a.value(i) }
                } else if let Some(a) = col.as_boolean_opt() {
                    a.value(i) as i64
                } else {
                    panic!("column {c} type")
                };
                m.insert((*c).to_owned(), v);
            }
            out.insert(ids.value(i).to_owned(), m);
        }
    }
    out
}
