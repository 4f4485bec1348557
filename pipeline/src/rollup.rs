//! Minute rollups of `qoe_window` (the `qoe_minute` table), written by compaction.
//!
//! When a compaction merges `qoe_window` files of a closed hour into `part-<source>-e<a>-<b>.parquet`,
//! it also writes `qoe_minute/<same partition>/<same name>`: the same rows summed per (minute,
//! dimensions), with the start-time histograms (and their retractions) merged. `qoe_minute` has the
//! columns of `qoe_window` (`window_ms` is 60,000; `epoch` is the merged file's last epoch, `row` the
//! rollup row), so every sum and histogram over whole minutes is the same from either table: the
//! rollup is exact, not an estimate. Concurrent viewers are a maximum over 10-second windows, not a
//! sum, so each row also keeps the active views of each window of its minute (`active_s0`…`active_s5`). The twin has the merged file's name, so a reader knows which raw
//! files a rollup stands for: an hour partition is **rolled up** when every `qoe_window` file in it has
//! its twin (`docs/architecture.md`, "Rollups").

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use schemas::cells::{Cell, parquet_file, record_batch};
use schemas::measures::{HISTOGRAM_MEASURE, Measure, window_sums};
use schemas::tables::{DIM_COLUMNS, HISTOGRAM_RETRACT_COLUMN};

use crate::error::Context as _;
use crate::sessionizer::Dim;
use crate::window::{WindowDelta, WindowRow};

pub use schemas::dataset::{ROLLUP_MS, ROLLUP_SLOT_MS, ROLLUP_SLOTS, ROLLUP_TABLE, rollable_window};

/// Sums `qoe_window` record batches per (minute, dimensions).
#[derive(Default)]
pub struct MinuteRollup {
    cells: HashMap<(i64, Arc<[String]>), (WindowDelta, [i64; ROLLUP_SLOTS])>,
    /// A row whose window is not a slot of its minute: no rollup can stand for these rows.
    unrollable: bool,
}

impl MinuteRollup {
    /// Adds every row of a `qoe_window` batch.
    pub fn add(&mut self, batch: &RecordBatch) -> crate::Result<()> {
        let column = |name: &str| batch.column_by_name(name).with_context(|| format!("qoe_window has no column {name}"));
        let starts_at = column("window_start")?
            .as_primitive_opt::<TimestampMillisecondType>()
            .context("qoe_window.window_start is not a timestamp (ms)")?;
        let dims = DIM_COLUMNS
            .iter()
            .map(|d| column(d)?.as_string_opt::<i32>().with_context(|| format!("qoe_window.{d} is not a string")))
            .collect::<crate::Result<Vec<_>>>()?;
        let sums = window_sums()
            .map(|(m, name)| Ok((m, column(name)?.as_primitive_opt::<Int64Type>().with_context(|| format!("qoe_window.{name} is not an Int64"))?)))
            .collect::<crate::Result<Vec<_>>>()?;
        let binary = |name: &str| column(name)?.as_binary_opt::<i32>().with_context(|| format!("qoe_window.{name} is not binary"));
        let (hist, retract) = (binary("startup_hist")?, binary(HISTOGRAM_RETRACT_COLUMN)?);
        let starts = column("starts")?.as_primitive_opt::<Int64Type>().context("qoe_window.starts is not an Int64")?;
        let window_ms = column("window_ms")?.as_primitive_opt::<Int64Type>().context("qoe_window.window_ms is not an Int64")?;
        let active = column("active_views")?.as_primitive_opt::<Int64Type>().context("qoe_window.active_views is not an Int64")?;
        for row in 0..batch.num_rows() {
            if !rollable_window(window_ms.value(row)) {
                self.unrollable = true;
                return Ok(());
            }
            let minute = starts_at.value(row).div_euclid(ROLLUP_MS) * ROLLUP_MS;
            let slot = ((starts_at.value(row) - minute) / ROLLUP_SLOT_MS) as usize;
            let key: Arc<[String]> = dims.iter().map(|d| if d.is_null(row) { String::new() } else { d.value(row).to_owned() }).collect();
            let (delta, slots) = self.cells.entry((minute, key)).or_default();
            for (m, values) in &sums {
                delta.sums.add(*m, values.value(row));
            }
            slots[slot] = slots[slot].saturating_add(active.value(row));
            let retracts = !retract.is_null(row) && !retract.value(row).is_empty();
            // A row adds starts to its histogram, or is a correction (which may add and retract).
            if (starts.value(row) != 0 || retracts) && !hist.is_null(row) {
                delta.startup_hist.add_serialized(hist.value(row)).map_err(|e| crate::Error::msg(format!("qoe_window.startup_hist: {e}")))?;
            }
            if retracts {
                delta.startup_retract.add_serialized(retract.value(row)).map_err(|e| crate::Error::msg(format!("qoe_window.{HISTOGRAM_RETRACT_COLUMN}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The rollup as one Parquet file of `qoe_minute` rows (sorted by minute, then dimensions) with
    /// `source` and `epoch` as their identity, and its row count; None when nothing was added, or when
    /// a row's window was not a slot of its minute (windows of another length than
    /// [`schemas::dataset::rollable_window`] allows: those hours are read from `qoe_window`).
    pub fn finish(self, source: &str, epoch: u64) -> crate::Result<Option<(Bytes, usize)>> {
        if self.unrollable {
            return Ok(None);
        }
        let mut rows: Vec<(WindowRow, [i64; ROLLUP_SLOTS])> = self
            .cells
            .into_iter()
            .map(|((window_start, dims), (delta, slots))| (WindowRow { window_start, window_ms: ROLLUP_MS, dims, delta }, slots))
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        rows.sort_by(|(a, _), (b, _)| (a.window_start, &a.dims).cmp(&(b.window_start, &b.dims)));
        let cells: Vec<Vec<Cell<'_>>> = rows
            .iter()
            .enumerate()
            .map(|(i, (w, slots))| {
                let mut row = crate::rows::window_row(w, &Dim::ALL, source, epoch, i);
                row.extend(slots.iter().map(|&n| Cell::I64(n)));
                row
            })
            .collect();
        let batch = record_batch(schemas::tables::qoe_minute(), &cells).map_err(crate::Error::from);
        parquet_file([batch])
    }
}

/// Whether a histogram measure is the one [`MinuteRollup`] merges (kept in step with `window.rs`).
const _: () = assert!(matches!(HISTOGRAM_MEASURE, Measure::StartupMs));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Windows;

    /// Rows of `qoe_window` as the pipeline writes them, for (window start, country, adds).
    fn window_batch(rows: &[(i64, &str, &[(Measure, i64)])]) -> RecordBatch {
        let mut windows = Windows::new(10_000);
        let mut drained = Vec::new();
        for (at, country, adds) in rows {
            let dims: Arc<[String]> = Dim::ALL.iter().map(|d| if *d == Dim::Country { (*country).to_owned() } else { String::new() }).collect();
            windows.add(*at, &dims, adds);
            // One delta row per input row, as separate epochs would write them.
            drained.extend(windows.drain());
        }
        let cells: Vec<_> = drained.iter().enumerate().map(|(i, w)| crate::rows::window_row(w, &Dim::ALL, "s", 1, i)).collect();
        record_batch(schemas::tables::qoe_window(), &cells).expect("batch")
    }

    fn read(bytes: Bytes) -> RecordBatch {
        let mut batches: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet").build().expect("reader").collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.len(), 1, "a few rows are one batch");
        batches.remove(0)
    }

    #[test]
    fn minutes_hold_the_sums_and_merged_histograms_of_their_windows() {
        use Measure::*;
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % 60_000;
        let batch = window_batch(&[
            (t0, "FR", &[(Attempt, 1), (Started, 1), (StartupMs, 900), (PlayMs, 4_000)]),
            (t0 + 20_000, "FR", &[(Attempt, 1), (Started, 1), (StartupMs, 3_000)]),
            (t0 + 59_999, "FR", &[(PlayMs, 1_000), (ActiveViews, 1)]),
            (t0 + 10_000, "DE", &[(Attempt, 1)]),
            (t0 + 60_000, "FR", &[(Attempt, 1), (Started, 1), (StartupMs, 50)]),
        ]);
        let mut rollup = MinuteRollup::default();
        rollup.add(&batch).expect("add");
        let (bytes, rows) = rollup.finish("s", 7).expect("finish").expect("rows");
        assert_eq!(rows, 3, "(t0, DE), (t0, FR), (t0+60s, FR)");
        let out = read(bytes);
        let col = |name: &str| out.column_by_name(name).expect(name).as_primitive::<Int64Type>().values().to_vec();
        let starts: Vec<i64> = out.column_by_name("window_start").expect("ts").as_primitive::<TimestampMillisecondType>().values().to_vec();
        assert_eq!(starts, vec![t0, t0, t0 + 60_000]);
        assert_eq!(col("attempts"), vec![1, 2, 1]);
        assert_eq!(col("starts"), vec![0, 2, 1]);
        assert_eq!(col("startup_ms_sum"), vec![0, 3_900, 50]);
        assert_eq!(col("play_ms"), vec![0, 5_000, 0]);
        assert_eq!(col("active_views"), vec![0, 1, 0]);
        assert_eq!(col("active_s5"), vec![0, 1, 0], "the FR view was active in the minute's last window");
        assert_eq!(col("active_s0"), vec![0, 0, 0]);
        assert_eq!(col("window_ms"), vec![60_000; 3]);
        let country = out.column_by_name("country").expect("country").as_string::<i32>();
        assert_eq!((country.value(0), country.value(1)), ("DE", "FR"));
        // The FR minute's histogram holds both starts: its median is one of them, its max the other.
        let hist = schemas::hist::deserialize_histogram(out.column_by_name("startup_hist").expect("hist").as_binary::<i32>().value(1)).expect("hist");
        assert_eq!(hist.len(), 2);
        assert!(hist.equivalent(hist.max(), 3_000) && hist.equivalent(hist.min(), 900));
        let epochs = out.column_by_name("epoch").expect("epoch").as_primitive::<arrow_array::types::UInt64Type>().values().to_vec();
        assert_eq!(epochs, vec![7; 3]);
    }

    #[test]
    fn windows_that_are_not_slots_of_a_minute_make_no_rollup() {
        let mut windows = Windows::new(7_000);
        let dims: Arc<[String]> = Dim::ALL.iter().map(|_| String::new()).collect();
        windows.add(1_800_000_000_000, &dims, &[(Measure::Attempt, 1)]);
        let drained = windows.drain();
        let cells: Vec<_> = drained.iter().enumerate().map(|(i, w)| crate::rows::window_row(w, &Dim::ALL, "s", 1, i)).collect();
        let batch = record_batch(schemas::tables::qoe_window(), &cells).expect("batch");
        let mut rollup = MinuteRollup::default();
        rollup.add(&batch).expect("add");
        assert!(rollup.finish("s", 1).expect("finish").is_none(), "7 s windows are not slots of a minute");
        assert!(rollable_window(10_000) && rollable_window(30_000) && rollable_window(60_000));
        assert!(!rollable_window(5_000) && !rollable_window(7_000) && !rollable_window(120_000));
    }

    #[test]
    fn a_batch_without_the_columns_is_refused() {
        let batch = RecordBatch::try_from_iter([("window_start", Arc::new(arrow_array::Int64Array::from(vec![1])) as _)]).expect("batch");
        let e = MinuteRollup::default().add(&batch).expect_err("not qoe_window");
        assert!(e.to_string().contains("window_start"), "{e}");
    }
}
