//! The QoE measures, declared once.
//!
//! Every measure is one entry of the list below: its column in `views` (the per-view total), its column
//! in `qoe_window` (the window sum), whether the load generator's truth reports it, and its meaning
//! (`docs/metrics.md` §2 defines each one, §3 the state rules that produce them). From this list come:
//!
//! - the per-view totals and the window sums ([`Values`], one `i64` per measure, merged by adding),
//! - the measure columns of the `views` and `qoe_window` tables (`schemas::tables`), hence the Arrow
//!   and ClickHouse schemas and every sink's cells,
//! - the sums the metrics API and the helper views serve (`query`),
//! - the keys of the load generator's truth (`loadgen`).
//!
//! Adding a measure is one entry here plus its state rule in `pipeline/src/view.rs` (and its truth in
//! the simulation when `truth` is set). A test in each consumer checks it derives from this list.

use serde::{Deserialize, Serialize};

use crate::column::ColType::{self, Bool, Int64, UInt64};

/// One measure's declaration.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    pub measure: Measure,
    /// Column in `views` (name, type): the view's total. `None`: not a per-view measure.
    pub view: Option<(&'static str, ColType)>,
    /// Column in `qoe_window` (name, type): the sum over the views and time of a window. `None`: not
    /// summed per window.
    pub window: Option<(&'static str, ColType)>,
    /// Reported by the load generator's truth (under the window column's name).
    pub truth: bool,
    pub doc: &'static str,
}

macro_rules! measures {
    ($( $(#[doc = $doc:literal])+ $variant:ident { view: $view:expr, window: $window:expr, truth: $truth:literal } )+) => {
        /// A QoE measure: an index into [`Values`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Measure { $( $(#[doc = $doc])+ $variant, )+ }

        /// The list, in column order.
        pub const MEASURES: [Def; COUNT] = [ $( Def {
            measure: Measure::$variant,
            view: $view,
            window: $window,
            truth: $truth,
            doc: concat!($($doc),+),
        }, )+ ];

        /// How many measures there are.
        pub const COUNT: usize = [$(stringify!($variant)),+].len();
    };
}

measures! {
    /// The view asked to play (a `playrequest`, or a first `playing` without one).
    Attempt { view: Some(("attempt", Bool)), window: Some(("attempts", Int64)), truth: true }
    /// The view showed its first frame after an attempt.
    Started { view: Some(("started", Bool)), window: Some(("starts", Int64)), truth: true }
    /// Video start time: first `playing` minus the attempt (ms). Also recorded in the window's
    /// start-time histogram (`startup_hist`) and its quantiles.
    StartupMs { view: Some(("startup_ms", Int64)), window: Some(("startup_ms_sum", Int64)), truth: false }
    /// Video start failure: a fatal error after the attempt, before the first frame.
    Vsf { view: Some(("vsf", Bool)), window: Some(("vsf", Int64)), truth: true }
    /// Exit before video start: attempted, never started, no fatal error, ended.
    Ebvs { view: Some(("ebvs", Bool)), window: Some(("ebvs", Int64)), truth: true }
    /// A fatal error after the first frame.
    PlaybackFailure { view: Some(("playback_failure", Bool)), window: Some(("playback_failures", Int64)), truth: true }
    /// Time playing (ms).
    PlayMs { view: Some(("play_ms", Int64)), window: Some(("play_ms", Int64)), truth: true }
    /// Rebuffering stalls begun (after the first frame, while playing or seeking).
    StallCount { view: Some(("stall_count", UInt64)), window: Some(("stall_count", Int64)), truth: true }
    /// Time stalled (ms), seek stalls included.
    StallMs { view: Some(("stall_ms", Int64)), window: Some(("stall_ms", Int64)), truth: true }
    /// Time stalled in stalls that began while seeking (ms).
    SeekStallMs { view: Some(("seek_stall_ms", Int64)), window: Some(("seek_stall_ms", Int64)), truth: true }
    /// Σ bitrate (kbps, rounded) × play time (ms) at that bitrate.
    BitrateMs { view: Some(("bitrate_ms", Int64)), window: Some(("bitrate_ms", Int64)), truth: false }
    /// Play time at a known bitrate (ms): the average bitrate's denominator.
    BitrateKnownMs { view: Some(("bitrate_known_ms", Int64)), window: Some(("bitrate_known_ms", Int64)), truth: false }
    /// Quality switches to a higher bitrate, after the first frame.
    SwitchesUp { view: Some(("switches_up", UInt64)), window: Some(("switches_up", Int64)), truth: true }
    /// Quality switches to a lower bitrate, after the first frame.
    SwitchesDown { view: Some(("switches_down", UInt64)), window: Some(("switches_down", Int64)), truth: true }
    /// Segments served from the CDN's cache.
    SegmentsHit { view: Some(("segments_hit", UInt64)), window: Some(("segments_hit", Int64)), truth: true }
    /// Segments the CDN fetched from the origin.
    SegmentsMiss { view: Some(("segments_miss", UInt64)), window: Some(("segments_miss", Int64)), truth: true }
    /// Segments whose cache status the player could not see.
    SegmentsUnknown { view: Some(("segments_unknown", UInt64)), window: Some(("segments_unknown", Int64)), truth: false }
    /// Bytes of cache hits.
    BytesHit { view: Some(("bytes_hit", UInt64)), window: Some(("bytes_hit", Int64)), truth: true }
    /// Bytes of cache misses.
    BytesMiss { view: Some(("bytes_miss", UInt64)), window: None, truth: false }
    /// Bytes of segments of unknown cache status.
    BytesUnknown { view: Some(("bytes_unknown", UInt64)), window: None, truth: false }
    /// Bytes of segments of known cache status (hits and misses): the byte-weighted hit ratio's
    /// denominator.
    BytesTotal { view: None, window: Some(("bytes_total", Int64)), truth: true }
    /// Error events, fatal or not.
    Errors { view: Some(("errors", UInt64)), window: Some(("errors", Int64)), truth: true }
    /// Fatal error events.
    FatalErrors { view: Some(("fatal_errors", UInt64)), window: Some(("fatal_errors", Int64)), truth: true }
    /// Views playing or stalled at some time in the window (concurrent viewers).
    ActiveViews { view: None, window: Some(("active_views", Int64)), truth: false }
}

/// The measure whose values also go into the start-time histogram (and whose `views` column is NULL
/// for a view that did not start).
pub const HISTOGRAM_MEASURE: Measure = Measure::StartupMs;
/// The start-time quantiles `qoe_window` stores beside the histogram: (column, q).
pub const WINDOW_QUANTILES: [(&str, f64); 4] = [("startup_p50", 0.5), ("startup_p90", 0.9), ("startup_p95", 0.95), ("startup_p99", 0.99)];
/// The start-time quantiles the metrics API and the truth report: (name, q).
pub const API_QUANTILES: [(&str, f64); 2] = [("startup_p50", 0.5), ("startup_p95", 0.95)];

impl Measure {
    /// Whether windows sum this measure (it has a `qoe_window` column).
    #[inline]
    pub const fn in_window(self) -> bool {
        MEASURES[self as usize].window.is_some()
    }
}

/// The `qoe_window` sums, in column order: (measure, column).
pub fn window_sums() -> impl Iterator<Item = (Measure, &'static str)> {
    MEASURES.iter().filter_map(|d| Some((d.measure, d.window?.0)))
}

/// The truth's measure keys, in list order (the truth adds `views` and the start-time quantiles).
pub fn truth_keys() -> impl Iterator<Item = &'static str> {
    MEASURES.iter().filter(|d| d.truth).filter_map(|d| d.window.map(|w| w.0))
}

/// One value per measure: a view's totals, or the sums of a window. Adding is the only merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values(#[serde(with = "values_serde")] [i64; COUNT]);

impl Default for Values {
    fn default() -> Self {
        Values([0; COUNT])
    }
}

impl Values {
    /// Adds `amount` to measure `m`. Sums stop at `i64::MAX` (and `i64::MIN`): valid input can pass
    /// them (a segment may say 2^53 − 1 bytes, and a view or a window may have any number of segments),
    /// and a sum pinned at the limit reads as absurd where a wrapped one would read as plausible.
    #[inline]
    pub fn add(&mut self, m: Measure, amount: i64) {
        let a = &mut self.0[m as usize];
        *a = a.saturating_add(amount);
    }

    /// Adds every measure of `other` (saturating, as [`Values::add`]).
    #[inline]
    pub fn merge(&mut self, other: &Values) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Adds `new - old` of every measure (a correction's delta; saturating, as [`Values::add`]).
    #[inline]
    pub fn add_difference(&mut self, new: &Values, old: &Values) {
        for ((a, n), o) in self.0.iter_mut().zip(new.0.iter()).zip(old.0.iter()) {
            *a = a.saturating_add(n.saturating_sub(*o));
        }
    }

    /// Whether a flag measure (a `Bool` view column) is set.
    pub fn flag(&self, m: Measure) -> bool {
        self[m] != 0
    }

    /// Sets a flag measure.
    pub fn set_flag(&mut self, m: Measure, on: bool) {
        self[m] = i64::from(on);
    }
}

impl std::ops::Index<Measure> for Values {
    type Output = i64;
    #[inline]
    fn index(&self, m: Measure) -> &i64 {
        &self.0[m as usize]
    }
}

impl std::ops::IndexMut<Measure> for Values {
    #[inline]
    fn index_mut(&mut self, m: Measure) -> &mut i64 {
        &mut self.0[m as usize]
    }
}

/// Serde for the fixed array (serde's derive covers arrays up to 32 only).
mod values_serde {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::COUNT;

    pub fn serialize<S: Serializer>(v: &[i64; COUNT], s: S) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[i64; COUNT], D::Error> {
        let v = Vec::<i64>::deserialize(d)?;
        let n = v.len();
        v.try_into().map_err(|_| D::Error::custom(format!("expected {COUNT} measures, got {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adding, merging and a correction's delta saturate at the limits, and are exact below them
    /// (a window's running delta may be negative).
    #[test]
    fn sums_saturate_at_the_limits_and_are_exact_below() {
        let m = Measure::BytesHit;
        let mut a = Values::default();
        a.add(m, i64::MAX - 1);
        a.add(m, 5);
        assert_eq!(a[m], i64::MAX);
        let mut b = Values::default();
        b.add(m, 7);
        b.merge(&a);
        assert_eq!(b[m], i64::MAX);
        // A cell at -3 corrected from 10 to 4: -9, exact.
        let (mut cell, mut old, mut new) = (Values::default(), Values::default(), Values::default());
        cell.add(m, -3);
        old.add(m, 10);
        new.add(m, 4);
        cell.add_difference(&new, &old);
        assert_eq!(cell[m], -9);
        // A saturated cell corrected upwards stays at the limit.
        cell.add_difference(&a, &Values::default());
        cell.add_difference(&a, &Values::default());
        assert_eq!(cell[m], i64::MAX);
    }

    #[test]
    fn the_list_is_consistent() {
        for (i, d) in MEASURES.iter().enumerate() {
            assert_eq!(d.measure as usize, i, "{:?} is at its own index", d.measure);
            assert!(d.view.is_some() || d.window.is_some(), "{:?} appears in some table", d.measure);
            assert!(!d.truth || d.window.is_some(), "{:?}: the truth reports window sums", d.measure);
            assert!(!d.doc.trim().is_empty(), "{:?} is documented", d.measure);
        }
        let mut names: Vec<_> = window_sums().map(|(_, n)| n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), window_sums().count(), "window columns are unique");
        let v = Values::default();
        let json = serde_json::to_string(&v).expect("serialize");
        assert_eq!(serde_json::from_str::<Values>(&json).expect("deserialize"), v);
        assert!(serde_json::from_str::<Values>("[1,2]").is_err(), "a wrong length is an error");
    }
}
