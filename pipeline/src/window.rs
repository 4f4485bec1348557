//! Event-time tumbling windows keyed by dimensions, accumulated as **deltas**: every flush drains what
//! changed per (window, dims) since the last flush. Rows are summable (readers `sum` them and merge the
//! start-time histograms), so a late event just produces another delta row for its old window. The rules:
//! `docs/metrics.md` §10–§12.
//!
//! Durations are split across window boundaries by event time (half-open intervals). A view counts as
//! active once per window in which one of its play or stall spans has positive overlap; the view
//! remembers the last window it was counted in (its spans arrive in time order), so the column stays
//! summable across flushes.

use std::collections::HashMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use schemas::hist::{new_histogram, serialize_histogram, HIST_MAX_MS};

use schemas::measures::Measure::{self, *};
use schemas::measures::{HISTOGRAM_MEASURE, Values};

use crate::intern::Interner;
use crate::view::Span;

/// The dimension values of one view, in the configured order.
pub type DimValues = Arc<[String]>;

/// A delta's start-time histogram, allocated on the first start: most deltas (a view's play time in a
/// window) carry no start, and a full histogram is ~24,000 buckets (190 KB) to allocate and zero. Found
/// by the pipeline benchmark on `qoeflow loadgen` traffic, where zeroing empty histograms took half the
/// pipeline's CPU. Serializes exactly as a [`new_histogram`] would.
#[derive(Debug, Clone, Default)]
pub struct StartupHist(Option<Box<Histogram<u64>>>);

/// The serialized empty histogram, made once.
static EMPTY_HISTOGRAM: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| serialize_histogram(&new_histogram()));

impl StartupHist {
    /// Records a start-up time (clamped to the tracked range).
    pub fn record(&mut self, startup_ms: i64) {
        let h = self.0.get_or_insert_with(|| Box::new(new_histogram()));
        // In range after the clamp.
        let _ = h.record((startup_ms.max(0) as u64).min(HIST_MAX_MS));
    }

    pub fn add(&mut self, other: &StartupHist) {
        let Some(o) = &other.0 else { return };
        match &mut self.0 {
            // Both share bounds; values were clamped on record.
            Some(h) => drop(h.add(o.as_ref())),
            None => self.0 = Some(o.clone()),
        }
    }

    /// Adds a serialized histogram (HdrHistogram V2 bytes of a [`new_histogram`]).
    pub fn add_serialized(&mut self, bytes: &[u8]) -> Result<(), String> {
        schemas::hist::add_serialized(self.0.get_or_insert_with(|| Box::new(new_histogram())), bytes)
    }

    pub fn len(&self) -> u64 {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn histogram(&self) -> Option<&Histogram<u64>> {
        self.0.as_deref()
    }

    /// HdrHistogram V2 bytes (an empty histogram's when nothing was recorded).
    pub fn serialize(&self) -> Vec<u8> {
        self.0.as_deref().map_or_else(|| EMPTY_HISTOGRAM.clone(), serialize_histogram)
    }
}

impl PartialEq for StartupHist {
    fn eq(&self, other: &StartupHist) -> bool {
        match (self.histogram(), other.histogram()) {
            (Some(a), Some(b)) => a == b,
            _ => self.is_empty() && other.is_empty(),
        }
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
            self.sums[m] += amount;
            if m == HISTOGRAM_MEASURE {
                self.startup_hist.record(amount);
            }
        }
    }

    /// The start-time quantile `q` (0..=1) of this delta's histogram, or None without starts.
    pub fn startup_quantile(&self, q: f64) -> Option<u64> {
        self.startup_hist.histogram().filter(|h| h.len() > 0).map(|h| h.value_at_quantile(q))
    }
}

/// Pending deltas per (window start, dims).
#[derive(Debug, Default)]
pub struct Windows {
    pub window_ms: i64,
    deltas: HashMap<(i64, DimValues), WindowDelta>,
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
        Windows { window_ms: window_ms.max(1), deltas: HashMap::new(), dims: Interner::default() }
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
        self.deltas.entry((window_start, dims.clone())).or_default()
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
                d.sums[ActiveViews] += 1;
            }
            for (m, amount) in span.adds(ms) {
                d.sums[m] += amount;
            }
            start = end;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// Adds the difference `new - old` of one view's whole contribution (both derived from its
    /// history, in windows of the same width): sums subtract; a start-time histogram that differs is
    /// retracted and re-added. Cells before `cutoff` (the late horizon) are left alone; returns how
    /// many changed cells that skipped.
    pub fn add_difference(&mut self, old: Windows, new: Windows, cutoff: i64) -> u64 {
        let mut cells: HashMap<(i64, DimValues), (WindowDelta, WindowDelta)> = HashMap::new();
        for (key, d) in old.deltas {
            cells.entry(key).or_default().0 = d;
        }
        for (key, d) in new.deltas {
            cells.entry(key).or_default().1 = d;
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
        let mut rows: Vec<WindowRow> = self
            .deltas
            .drain()
            .map(|((window_start, dims), delta)| WindowRow { window_start, window_ms, dims, delta })
            .collect();
        rows.sort_by(|a, b| (a.window_start, &a.dims).cmp(&(b.window_start, &b.dims)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::hist::deserialize_histogram;

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
        assert_eq!(Some(&back), a.startup_hist.histogram());
        let mut c = WindowDelta::default();
        c.merge(&a);
        assert_eq!(c, a, "merging into an empty delta copies the histogram");
        assert_eq!(a.startup_quantile(0.5), Some(250));
        assert!(a.startup_quantile(1.0).unwrap() >= 5_000);
    }
}
