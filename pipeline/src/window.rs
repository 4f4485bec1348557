//! Event-time tumbling windows keyed by dimensions, accumulated as **deltas**: every flush drains what
//! changed per (window, dims) since the last flush. Rows are summable (readers `sum` them and merge the
//! start-time histograms), so a late event just produces another delta row for its old window.
//!
//! Durations are split across window boundaries by event time (half-open intervals). A view counts as
//! active once per window in which one of its play or stall spans has positive overlap; the view
//! remembers the last window it was counted in (its spans arrive in time order), so the column stays
//! summable across flushes.

use std::collections::HashMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use schemas::CacheStatus;

use crate::view::{Point, Span};

/// The dimension values of one view, in the configured order.
pub type DimValues = Arc<[String]>;

/// Highest start time the histogram tracks exactly (1 hour); larger values are clamped to it.
pub const HIST_MAX_MS: u64 = 3_600_000;
const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, HIST_MAX_MS, HIST_SIGFIG).expect("valid histogram bounds")
}

/// Serializes a histogram (HdrHistogram V2 format, readable by every HdrHistogram implementation).
pub fn serialize_histogram(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = V2Serializer::new().serialize(h, &mut out);
    out
}

pub fn deserialize_histogram(bytes: &[u8]) -> Result<Histogram<u64>, String> {
    Deserializer::new().deserialize(&mut std::io::Cursor::new(bytes)).map_err(|e| format!("{e:?}"))
}

/// The value each bucket index of a [`new_histogram`] stands for (its highest equivalent value).
static INDEX_VALUES: std::sync::LazyLock<Vec<u64>> =
    std::sync::LazyLock::new(|| new_histogram().iter_all().map(|v| v.value_iterated_to()).collect());

/// Adds a serialized histogram into `acc` (a [`new_histogram`]) without building it: the V2 payload is
/// a run-length list of bucket counts, and a window's histogram has only a few non-zero buckets, while
/// deserializing allocates and zeroes all ~24,000. Anything else (another configuration, the deflate
/// variant) goes through the full deserializer.
pub fn add_serialized(acc: &mut Histogram<u64>, bytes: &[u8]) -> Result<(), String> {
    const V2_COOKIE: u32 = 0x1c84_9313;
    const HEADER: usize = 40;
    let be32 = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let be64 = |at: usize| bytes.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
    let fast = be32(0) == Some(V2_COOKIE)
        && be32(8) == Some(0)
        && be32(12) == Some(u32::from(acc.sigfig()))
        && be64(16) == Some(acc.low())
        && be64(24) == Some(acc.high())
        && be64(32) == Some(1.0f64.to_bits())
        && acc.low() == 1
        && acc.high() == HIST_MAX_MS
        && acc.sigfig() == HIST_SIGFIG;
    let payload_len = be32(4).map(|l| l as usize);
    let payload = payload_len.and_then(|l| bytes.get(HEADER..HEADER + l));
    let (true, Some(payload)) = (fast, payload) else {
        let h = deserialize_histogram(bytes)?;
        return acc.add(&h).map_err(|e| format!("{e:?}"));
    };
    let table = &*INDEX_VALUES;
    let (mut index, mut at) = (0usize, 0usize);
    while at < payload.len() {
        // LEB128 varint, then ZigZag: a count for this index, or a negative run of empty buckets.
        let mut raw = 0u64;
        for i in 0..9 {
            let b = *payload.get(at).ok_or("truncated histogram payload")?;
            at += 1;
            if i == 8 {
                // The 9th byte of a varint carries 8 bits.
                raw |= u64::from(b) << 56;
                break;
            }
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        let n = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        if n < 0 {
            index = index.saturating_add(n.unsigned_abs() as usize);
        } else {
            if n > 0 {
                let value = *table.get(index).ok_or("histogram bucket out of range")?;
                acc.record_n(value, n as u64).map_err(|e| format!("{e:?}"))?;
            }
            index += 1;
        }
    }
    Ok(())
}

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

/// Summable measures of one (window, dims) delta.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDelta {
    pub attempts: u64,
    pub starts: u64,
    pub startup_ms_sum: i64,
    pub startup_hist: StartupHist,
    pub vsf: u64,
    pub ebvs: u64,
    pub playback_failures: u64,
    pub play_ms: i64,
    pub stall_count: u64,
    pub stall_ms: i64,
    pub seek_stall_ms: i64,
    pub bitrate_ms: i64,
    /// Play time at a known bitrate (denominator of the time-weighted average bitrate).
    pub bitrate_known_ms: i64,
    pub switches_up: u64,
    pub switches_down: u64,
    pub segments_hit: u64,
    pub segments_miss: u64,
    pub segments_unknown: u64,
    pub bytes_hit: u64,
    /// Bytes of segments with a known cache status (hit + miss): the byte-weighted ratio's denominator.
    pub bytes_total: u64,
    pub errors: u64,
    pub fatal_errors: u64,
    pub active_views: u64,
}

impl Default for WindowDelta {
    fn default() -> Self {
        WindowDelta {
            attempts: 0,
            starts: 0,
            startup_ms_sum: 0,
            startup_hist: StartupHist::default(),
            vsf: 0,
            ebvs: 0,
            playback_failures: 0,
            play_ms: 0,
            stall_count: 0,
            stall_ms: 0,
            seek_stall_ms: 0,
            bitrate_ms: 0,
            bitrate_known_ms: 0,
            switches_up: 0,
            switches_down: 0,
            segments_hit: 0,
            segments_miss: 0,
            segments_unknown: 0,
            bytes_hit: 0,
            bytes_total: 0,
            errors: 0,
            fatal_errors: 0,
            active_views: 0,
        }
    }
}

impl WindowDelta {
    /// Adds another delta of the same (window, dims).
    pub fn merge(&mut self, o: &WindowDelta) {
        self.attempts += o.attempts;
        self.starts += o.starts;
        self.startup_ms_sum += o.startup_ms_sum;
        self.startup_hist.add(&o.startup_hist);
        self.vsf += o.vsf;
        self.ebvs += o.ebvs;
        self.playback_failures += o.playback_failures;
        self.play_ms += o.play_ms;
        self.stall_count += o.stall_count;
        self.stall_ms += o.stall_ms;
        self.seek_stall_ms += o.seek_stall_ms;
        self.bitrate_ms += o.bitrate_ms;
        self.bitrate_known_ms += o.bitrate_known_ms;
        self.switches_up += o.switches_up;
        self.switches_down += o.switches_down;
        self.segments_hit += o.segments_hit;
        self.segments_miss += o.segments_miss;
        self.segments_unknown += o.segments_unknown;
        self.bytes_hit += o.bytes_hit;
        self.bytes_total += o.bytes_total;
        self.errors += o.errors;
        self.fatal_errors += o.fatal_errors;
        self.active_views += o.active_views;
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
        Windows { window_ms: window_ms.max(1), deltas: HashMap::new() }
    }

    pub fn window_of(&self, event_ms: i64) -> i64 {
        event_ms.div_euclid(self.window_ms) * self.window_ms
    }

    fn at(&mut self, window_start: i64, dims: &DimValues) -> &mut WindowDelta {
        self.deltas.entry((window_start, dims.clone())).or_default()
    }

    /// Adds a point measure at event time `at`.
    pub fn point(&mut self, at: i64, dims: &DimValues, point: Point) {
        let w = self.window_of(at);
        let d = self.at(w, dims);
        match point {
            Point::Attempt => d.attempts += 1,
            Point::Start { startup_ms } => {
                d.starts += 1;
                d.startup_ms_sum += startup_ms;
                d.startup_hist.record(startup_ms);
            }
            Point::Vsf => d.vsf += 1,
            Point::Ebvs => d.ebvs += 1,
            Point::PlaybackFailure => d.playback_failures += 1,
            Point::Stall => d.stall_count += 1,
            Point::SwitchUp => d.switches_up += 1,
            Point::SwitchDown => d.switches_down += 1,
            Point::Segment { cache, bytes } => match cache {
                CacheStatus::Hit => {
                    d.segments_hit += 1;
                    d.bytes_hit += bytes;
                    d.bytes_total += bytes;
                }
                CacheStatus::Miss => {
                    d.segments_miss += 1;
                    d.bytes_total += bytes;
                }
                CacheStatus::Unknown => d.segments_unknown += 1,
            },
            Point::Error { fatal } => {
                d.errors += 1;
                if fatal {
                    d.fatal_errors += 1;
                }
            }
        }
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
                d.active_views += 1;
            }
            match span {
                Span::Play { bitrate_kbps } => {
                    d.play_ms += ms;
                    if let Some(b) = bitrate_kbps {
                        d.bitrate_ms += b * ms;
                        d.bitrate_known_ms += ms;
                    }
                }
                Span::Stall { seek } => {
                    d.stall_ms += ms;
                    if seek {
                        d.seek_stall_ms += ms;
                    }
                }
            }
            start = end;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
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
        let got: Vec<_> = rows.iter().map(|r| (r.window_start, r.delta.play_ms, r.delta.stall_ms, r.delta.active_views)).collect();
        assert_eq!(got, vec![(0, 5_000, 0, 1), (10_000, 10_000, 0, 1), (20_000, 5_000, 2_000, 1)]);
        assert_eq!(rows[1].delta.bitrate_ms, 10_000 * 1000);
        // Later flushes do not count the view again in a window it was already counted in.
        w.span(27_000, 29_000, &dims(), Span::Play { bitrate_kbps: None }, &mut last);
        assert_eq!(w.drain()[0].delta.active_views, 0);
    }

    #[test]
    fn adding_serialized_histograms_equals_deserializing_them() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut fast, mut slow) = (new_histogram(), new_histogram());
        for round in 0..200 {
            let mut h = new_histogram();
            for _ in 0..(next() % 40) {
                // Small, large, clamped and repeated values.
                let v = match next() % 4 {
                    0 => next() % 100,
                    1 => next() % 20_000,
                    2 => next() % (2 * HIST_MAX_MS),
                    _ => 1_234,
                };
                h.record_n(v.min(HIST_MAX_MS), 1 + next() % (if round % 7 == 0 { 100_000 } else { 3 })).unwrap();
            }
            let bytes = serialize_histogram(&h);
            add_serialized(&mut fast, &bytes).unwrap();
            slow.add(&deserialize_histogram(&bytes).unwrap()).unwrap();
        }
        assert!(fast.len() > 1000);
        assert_eq!(fast.len(), slow.len());
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_eq!(fast.value_at_quantile(q), slow.value_at_quantile(q), "q={q}");
        }
        assert_eq!(serialize_histogram(&fast), serialize_histogram(&slow));
        assert!(add_serialized(&mut fast, &[0x1c, 0x84]).is_err(), "garbage is an error");
        // Long varints: a count needing 8 bytes.
        let mut big = new_histogram();
        big.record_n(777, 1 << 50).unwrap();
        let mut acc = new_histogram();
        add_serialized(&mut acc, &serialize_histogram(&big)).unwrap();
        assert_eq!((acc.len(), acc.value_at_quantile(0.5)), (1 << 50, big.value_at_quantile(0.5)));
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
