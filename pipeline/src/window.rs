//! Event-time tumbling windows keyed by dimensions, accumulated as **deltas**: every flush drains what
//! changed per (window, dims) since the last flush. Rows are summable (readers `sum` them and merge the
//! start-time histograms), so a late event just produces another delta row for its old window. The rules:
//! `docs/metrics.md` §10–§12.
//!
//! Durations are split across window boundaries by event time (half-open intervals). A view counts as
//! active once per window in which one of its play or stall spans has positive overlap; the view
//! remembers the last window it was counted in (its spans arrive in time order), so the column stays
//! summable across flushes.

use std::sync::Arc;

use hdrhistogram::Histogram;
use schemas::hist::SparseHist;

use schemas::measures::Measure::{self, *};
use schemas::measures::{HISTOGRAM_MEASURE, Values};

use crate::FastMap;
use crate::intern::Interner;
use crate::view::Span;

/// The dimension values of one view, in the configured order.
pub type DimValues = Arc<[String]>;

/// A delta's start-time histogram, kept sparse ([`SparseHist`]): most deltas (a view's play time in a
/// window) carry no start and the rest a few, while a dense histogram is ~24,000 buckets (190 KB) to
/// allocate, zero and scan for each (3.5 % of the pipeline's CPU in BENCHMARKS.md §19's profile, and
/// half of it before deltas without starts skipped it). Serializes exactly as a [`schemas::hist::new_histogram`]
/// with the same counts would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupHist(SparseHist);

impl StartupHist {
    /// Records a start-up time (clamped to the tracked range).
    pub fn record(&mut self, startup_ms: i64) {
        self.0.record(startup_ms.max(0) as u64);
    }

    pub fn add(&mut self, other: &StartupHist) {
        self.0.add(&other.0);
    }

    /// Adds a serialized histogram (HdrHistogram V2 bytes of a [`schemas::hist::new_histogram`]).
    pub fn add_serialized(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0.add_serialized(bytes)
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The dense histogram with the same counts.
    pub fn histogram(&self) -> Histogram<u64> {
        self.0.to_histogram()
    }

    /// HdrHistogram V2 bytes (an empty histogram's when nothing was recorded).
    pub fn serialize(&self) -> Vec<u8> {
        self.0.serialize()
    }

    /// HdrHistogram V2 bytes, or no bytes when nothing was recorded (a row that retracts no start).
    pub fn serialize_or_nothing(&self) -> Vec<u8> {
        if self.is_empty() { Vec::new() } else { self.0.serialize() }
    }

    /// The start-time quantile `q` (0..=1), or None without starts.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        self.0.value_at_quantile(q)
    }
}

/// Summable measures of one (window, dims) delta: the window sums of `schemas::measures` (negative in
/// a correction), the start-time histogram of the starts it adds, and the one of the starts it
/// retracts (a correction's; readers subtract it after merging every row of the window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowDelta {
    pub sums: Values,
    pub startup_hist: StartupHist,
    pub startup_retract: StartupHist,
}

impl WindowDelta {
    /// Adds another delta of the same (window, dims).
    pub fn merge(&mut self, o: &WindowDelta) {
        self.sums.merge(&o.sums);
        self.startup_hist.add(&o.startup_hist);
        self.startup_retract.add(&o.startup_retract);
    }

    /// Adds point measures that windows sum (the histogram measure is also recorded in the
    /// histogram); per-view-only measures are skipped.
    #[inline]
    pub fn add(&mut self, adds: &[(Measure, i64)]) {
        for &(m, amount) in adds {
            if !m.in_window() {
                continue;
            }
            self.sums.add(m, amount);
            if m == HISTOGRAM_MEASURE {
                self.startup_hist.record(amount);
            }
        }
    }

    /// The start-time quantile `q` (0..=1) of this delta's histogram, or None without starts.
    pub fn startup_quantile(&self, q: f64) -> Option<u64> {
        self.startup_hist.quantile(q)
    }
}

/// Pending deltas per (window start, dims).
#[derive(Debug, Default)]
pub struct Windows {
    pub window_ms: i64,
    /// The pending cells, in the order they were first added.
    cells: Vec<(i64, DimValues, WindowDelta)>,
    /// Each pending cell's position in `cells`, by (window start, dims).
    index: FastMap<(i64, DimValues), usize>,
    /// The cell found last. A view's events and spans land in the same cell one after another, with
    /// the same shared dims: found again by comparing a pointer, without hashing and comparing the
    /// dimension strings (that was 4 % of the pipeline's CPU, BENCHMARKS.md §19).
    last: Option<usize>,
    /// The views' dimension values, one shared copy per distinct set (views hold them between epochs).
    dims: Interner<[String]>,
}

/// One drained delta row.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub window_start: i64,
    pub window_ms: i64,
    pub dims: DimValues,
    pub delta: WindowDelta,
}

impl Windows {
    pub fn new(window_ms: i64) -> Windows {
        Windows { window_ms: window_ms.max(1), ..Windows::default() }
    }

    /// Makes `dims` the shared copy of its values (a view's, when first computed or loaded from the
    /// state store).
    pub(crate) fn share_dims(&mut self, dims: &mut DimValues) {
        self.dims.share(dims);
    }

    #[cfg(test)]
    pub(crate) fn dims_len(&self) -> usize {
        self.dims.len()
    }

    /// Forgets dimension values no view holds any more (after a commit, once the deltas are drained).
    pub(crate) fn prune_dims(&mut self) {
        self.dims.prune();
    }

    pub fn window_of(&self, event_ms: i64) -> i64 {
        event_ms.div_euclid(self.window_ms) * self.window_ms
    }

    fn at(&mut self, window_start: i64, dims: &DimValues) -> &mut WindowDelta {
        let again = self.last.filter(|&i| self.cells.get(i).is_some_and(|c| c.0 == window_start && Arc::ptr_eq(&c.1, dims)));
        let i = match again {
            Some(i) => i,
            None => {
                let next = self.cells.len();
                let i = *self.index.entry((window_start, dims.clone())).or_insert(next);
                if i == next {
                    self.cells.push((window_start, dims.clone(), WindowDelta::default()));
                }
                self.last = Some(i);
                i
            }
        };
        &mut self.cells[i].2
    }

    /// Adds point measures at event time `at`.
    pub fn add(&mut self, at: i64, dims: &DimValues, adds: &[(Measure, i64)]) {
        let w = self.window_of(at);
        self.at(w, dims).add(adds);
    }

    /// Adds the span `[from, to)` of event time, split across windows; counts the view active in each
    /// window it overlaps that is later than `last_active` (updated).
    pub fn span(&mut self, from: i64, to: i64, dims: &DimValues, span: Span, last_active: &mut Option<i64>) {
        let mut start = from;
        while start < to {
            let w = self.window_of(start);
            let end = to.min(w + self.window_ms);
            let ms = end - start;
            let first_time = last_active.is_none_or(|l| w > l);
            if first_time {
                *last_active = Some(w);
            }
            let d = self.at(w, dims);
            if first_time {
                d.sums.add(ActiveViews, 1);
            }
            for (m, amount) in span.adds(ms) {
                d.sums.add(m, amount);
            }
            start = end;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Adds the difference `new - old` of one view's whole contribution (both derived from its
    /// history, in windows of the same width): sums subtract; a start-time histogram that differs is
    /// retracted and re-added. Cells before `cutoff` (the late horizon) are left alone; returns how
    /// many changed cells that skipped.
    pub fn add_difference(&mut self, old: Windows, new: Windows, cutoff: i64) -> u64 {
        let mut cells: FastMap<(i64, DimValues), (WindowDelta, WindowDelta)> = FastMap::default();
        for (window, dims, d) in old.cells {
            cells.entry((window, dims)).or_default().0 = d;
        }
        for (window, dims, d) in new.cells {
            cells.entry((window, dims)).or_default().1 = d;
        }
        let mut skipped = 0;
        for ((window, dims), (old, new)) in cells {
            if old == new {
                continue;
            }
            if window < cutoff {
                skipped += 1;
                continue;
            }
            let d = self.at(window, &dims);
            d.sums.add_difference(&new.sums, &old.sums);
            if new.startup_hist != old.startup_hist {
                d.startup_hist.add(&new.startup_hist);
                d.startup_retract.add(&old.startup_hist);
            }
        }
        skipped
    }

    /// Drains every pending delta, ordered by (window, dims) so output is deterministic.
    pub fn drain(&mut self) -> Vec<WindowRow> {
        let window_ms = self.window_ms;
        self.index.clear();
        self.last = None;
        let mut rows: Vec<WindowRow> =
            self.cells.drain(..).map(|(window_start, dims, delta)| WindowRow { window_start, window_ms, dims, delta }).collect();
        rows.sort_by(|a, b| (a.window_start, &a.dims).cmp(&(b.window_start, &b.dims)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::hist::{deserialize_histogram, new_histogram, serialize_histogram};

    fn dims() -> DimValues {
        Arc::from(vec!["fastly".to_string()])
    }

    #[test]
    fn spans_split_at_window_boundaries_and_count_active_once() {
        let mut w = Windows::new(10_000);
        let mut last = None;
        w.span(5_000, 25_000, &dims(), Span::Play { bitrate_kbps: Some(1000) }, &mut last);
        w.span(25_000, 27_000, &dims(), Span::Stall { seek: false }, &mut last);
        let rows = w.drain();
        let got: Vec<_> =
            rows.iter().map(|r| (r.window_start, r.delta.sums[PlayMs], r.delta.sums[StallMs], r.delta.sums[ActiveViews])).collect();
        assert_eq!(got, vec![(0, 5_000, 0, 1), (10_000, 10_000, 0, 1), (20_000, 5_000, 2_000, 1)]);
        assert_eq!(rows[1].delta.sums[BitrateMs], 10_000 * 1000);
        // Later flushes do not count the view again in a window it was already counted in.
        w.span(27_000, 29_000, &dims(), Span::Play { bitrate_kbps: None }, &mut last);
        assert_eq!(w.drain()[0].delta.sums[ActiveViews], 0);
    }

    #[test]
    fn a_cell_is_one_row_whichever_copy_of_its_dims_adds_to_it() {
        let mut w = Windows::new(10_000);
        let (a, a_copy, b) = (dims(), dims(), Arc::<[String]>::from(vec!["akamai".to_string()]));
        assert!(!Arc::ptr_eq(&a, &a_copy));
        // The same cell by the same pointer, by an equal copy, after another cell, in another window.
        for (at, d) in [(1_000, &a), (2_000, &a), (3_000, &a_copy), (4_000, &b), (5_000, &a), (15_000, &a), (6_000, &a_copy), (7_000, &b)] {
            w.add(at, d, &[(Attempt, 1)]);
        }
        let got: Vec<_> = w.drain().iter().map(|r| (r.window_start, r.dims[0].clone(), r.delta.sums[Attempt])).collect();
        assert_eq!(got, vec![(0, "akamai".into(), 2), (0, "fastly".into(), 5), (10_000, "fastly".into(), 1)]);
        assert!(w.is_empty());
        // After a drain, the cell found last is a new one.
        w.add(1_000, &a, &[(Attempt, 1)]);
        w.add(1_000, &a, &[(Attempt, 1)]);
        assert_eq!(w.drain().iter().map(|r| r.delta.sums[Attempt]).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn histograms_roundtrip_and_merge() {
        let mut a = WindowDelta::default();
        let mut b = WindowDelta::default();
        let empty = WindowDelta::default();
        assert_eq!(empty.startup_hist.serialize(), serialize_histogram(&new_histogram()), "empty serializes as before");
        for v in [0, 100, 250, 900] {
            a.startup_hist.record(v);
        }
        b.startup_hist.record(5_000);
        a.merge(&b);
        a.merge(&empty);
        assert_eq!(a.startup_hist.len(), 5);
        let back = deserialize_histogram(&a.startup_hist.serialize()).unwrap();
        assert_eq!(back, a.startup_hist.histogram());
        let mut c = WindowDelta::default();
        c.merge(&a);
        assert_eq!(c, a, "merging into an empty delta copies the histogram");
        assert_eq!(a.startup_quantile(0.5), Some(250));
        assert!(a.startup_quantile(1.0).unwrap() >= 5_000);
    }
}
