//! The start-time histogram codec: HdrHistogram V2 bytes (the `startup_hist` column of `qoe_window`),
//! readable by every HdrHistogram implementation. Writers record into [`new_histogram`]; readers merge
//! serialized histograms with [`add_serialized`] and take quantiles. `docs/metrics.md` defines the
//! bounds (1 ms to 1 h, 3 significant digits; larger values are clamped to 1 h).

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

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

/// The value each bucket index of a [`new_histogram`] stands for (its highest equivalent value),
/// increasing with the index.
static INDEX_VALUES: std::sync::LazyLock<Vec<u64>> =
    std::sync::LazyLock::new(|| new_histogram().iter_all().map(|v| v.value_iterated_to()).collect());

const V2_COOKIE: u32 = 0x1c84_9313;
const V2_HEADER: usize = 40;

/// The counts payload of V2 bytes written for a [`new_histogram`]'s configuration (uncompressed, no
/// index offset, conversion ratio 1), or None for anything else.
fn v2_payload(bytes: &[u8]) -> Option<&[u8]> {
    let be32 = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let be64 = |at: usize| bytes.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
    let ours = be32(0) == Some(V2_COOKIE)
        && be32(8) == Some(0)
        && be32(12) == Some(u32::from(HIST_SIGFIG))
        && be64(16) == Some(1)
        && be64(24) == Some(HIST_MAX_MS)
        && be64(32) == Some(1.0f64.to_bits());
    ours.then(|| be32(4).and_then(|l| bytes.get(V2_HEADER..V2_HEADER + l as usize))).flatten()
}

/// Calls `f(index, count)` for each non-zero bucket of a V2 counts payload, in increasing index order.
fn for_each_bucket(payload: &[u8], mut f: impl FnMut(usize, u64) -> Result<(), String>) -> Result<(), String> {
    let buckets = INDEX_VALUES.len();
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
                if index >= buckets {
                    return Err("histogram bucket out of range".into());
                }
                f(index, n as u64)?;
            }
            index = index.checked_add(1).ok_or("histogram bucket out of range")?;
        }
    }
    Ok(())
}

/// Adds a serialized histogram into `acc` (a [`new_histogram`]) without building it: the V2 payload is
/// a run-length list of bucket counts, and a window's histogram has only a few non-zero buckets, while
/// deserializing allocates and zeroes all ~24,000. Anything else (another configuration, the deflate
/// variant) goes through the full deserializer.
pub fn add_serialized(acc: &mut Histogram<u64>, bytes: &[u8]) -> Result<(), String> {
    let ours = acc.low() == 1 && acc.high() == HIST_MAX_MS && acc.sigfig() == HIST_SIGFIG;
    let Some(payload) = v2_payload(bytes).filter(|_| ours) else {
        let h = deserialize_histogram(bytes)?;
        return acc.add(&h).map_err(|e| format!("{e:?}"));
    };
    let table = &*INDEX_VALUES;
    for_each_bucket(payload, |index, n| acc.record_n(table[index], n).map_err(|e| format!("{e:?}")))
}

/// A start-time histogram of a [`new_histogram`]'s configuration kept sparse: its non-zero buckets as
/// (bucket index, count), in increasing index order. A window cell holds a few starts, and the dense
/// histogram is ~24,000 counts (190 KB) to allocate, zero and scan; this is 16 bytes a bucket in use.
/// It serializes to the same V2 bytes as the dense one with the same counts, and answers the same
/// quantiles, for every count up to `i64::MAX` and totals under 2^53 (beyond, where the dense one
/// writes nothing or answers 0, this one caps the count or answers the last bucket). At most one entry
/// per bucket of the configuration, so it is bounded like the dense one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseHist {
    buckets: Vec<(u32, u64)>,
}

impl SparseHist {
    /// The bucket index of `value` (clamped to [`HIST_MAX_MS`]): the first whose highest equivalent
    /// value is not below it.
    fn index_of(value: u64) -> u32 {
        let table = &*INDEX_VALUES;
        table.partition_point(|&v| v < value.min(HIST_MAX_MS)).min(table.len() - 1) as u32
    }

    /// Records `n` values of `value` (clamped to the tracked range, as the dense histogram's writers do).
    pub fn record_n(&mut self, value: u64, n: u64) {
        if n > 0 {
            self.add_bucket(Self::index_of(value), n);
        }
    }

    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    fn add_bucket(&mut self, index: u32, n: u64) {
        // Most additions land at or after the last bucket (values recorded in time order, merges of
        // sorted lists).
        match self.buckets.last_mut() {
            Some(last) if last.0 == index => last.1 = last.1.saturating_add(n),
            Some(last) if last.0 > index => match self.buckets.binary_search_by_key(&index, |b| b.0) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
                Err(i) => self.buckets.insert(i, (index, n)),
            },
            _ => self.buckets.push((index, n)),
        }
    }

    /// Adds another histogram's counts.
    pub fn add(&mut self, other: &SparseHist) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        let (a, b) = (&self.buckets, &other.buckets);
        let mut merged = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => {
                    merged.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push(b[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    merged.push((a[i].0, a[i].1.saturating_add(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.buckets = merged;
    }

    /// Adds a serialized histogram (V2 bytes, as [`serialize_histogram`] or [`SparseHist::serialize`]
    /// write them; another configuration is read fully and its values re-recorded here).
    pub fn add_serialized(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut other = SparseHist::default();
        match v2_payload(bytes) {
            Some(payload) => for_each_bucket(payload, |index, n| {
                other.add_bucket(index as u32, n);
                Ok(())
            })?,
            None => {
                let h = deserialize_histogram(bytes)?;
                // Each bucket's lowest value, as the dense histogram's `add` records another's.
                for v in h.iter_recorded() {
                    other.record_n(h.lowest_equivalent(v.value_iterated_to()), v.count_at_value());
                }
            }
        }
        self.add(&other);
        Ok(())
    }

    /// How many values it holds.
    pub fn len(&self) -> u64 {
        self.buckets.iter().fold(0u64, |n, b| n.saturating_add(b.1))
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The value at quantile `q` (0..=1), as [`Histogram::value_at_quantile`] gives it for the same
    /// counts; None when empty.
    pub fn value_at_quantile(&self, q: f64) -> Option<u64> {
        let total = self.len();
        if total == 0 {
            return None;
        }
        // Above 1 (and NaN) as 1.
        let q = q.min(1.0);
        let target = ((q * total as f64).ceil() as u64).max(1);
        let table = &*INDEX_VALUES;
        let mut seen = 0u64;
        let index = self
            .buckets
            .iter()
            .find(|b| {
                seen = seen.saturating_add(b.1);
                seen >= target
            })
            .or(self.buckets.last())
            .map_or(0, |b| b.0 as usize);
        Some(match (q == 0.0, index) {
            // The lowest value equivalent to the bucket's.
            (true, 0) => 0,
            (true, i) => table[i - 1] + 1,
            (false, i) => table[i],
        })
    }

    /// The dense histogram with the same counts.
    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        let table = &*INDEX_VALUES;
        for &(index, n) in &self.buckets {
            // Every index is one of the configuration's buckets.
            let _ = h.record_n(table[index as usize], n);
        }
        h
    }

    /// HdrHistogram V2 bytes, the same as [`serialize_histogram`] writes for the dense histogram with
    /// these counts (an empty one's when empty); a count over `i64::MAX` is written as `i64::MAX`.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(V2_HEADER + 1 + self.buckets.len() * 4);
        out.extend_from_slice(&V2_COOKIE.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // payload length, set below
        out.extend_from_slice(&0u32.to_be_bytes()); // normalizing index offset
        out.extend_from_slice(&u32::from(HIST_SIGFIG).to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&HIST_MAX_MS.to_be_bytes());
        out.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        // Counts from index 0 to the last non-zero one; one empty bucket is written as a zero count,
        // two or more as the negated length of the run (hdrhistogram's encoder).
        let zigzag = |n: i64| ((n << 1) ^ (n >> 63)) as u64;
        let mut next = 0u32;
        for &(index, n) in &self.buckets {
            match index - next {
                0 => {}
                1 => write_varint(&mut out, 0),
                run => write_varint(&mut out, zigzag(-i64::from(run))),
            }
            write_varint(&mut out, zigzag(n.min(i64::MAX as u64) as i64));
            next = index + 1;
        }
        if self.buckets.is_empty() {
            write_varint(&mut out, 0);
        }
        let payload = (out.len() - V2_HEADER) as u32;
        out[4..8].copy_from_slice(&payload.to_be_bytes());
        out
    }
}

/// LEB128 with at most 9 bytes, the 9th carrying 8 bits (HdrHistogram's V2 varint).
fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded pseudo-random sequence (xorshift64).
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn adding_serialized_histograms_equals_deserializing_them() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
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
    fn the_sparse_histogram_serializes_and_answers_as_the_dense_one() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let empty = SparseHist::default();
        assert_eq!(empty.serialize(), serialize_histogram(&new_histogram()), "empty");
        assert_eq!(empty.value_at_quantile(0.5), None);
        let (mut all_sparse, mut all_dense) = (SparseHist::default(), new_histogram());
        for round in 0..300 {
            let (mut sparse, mut dense) = (SparseHist::default(), new_histogram());
            for _ in 0..(next() % 60) {
                // Zero, small, large, beyond the range (clamped), adjacent buckets, repeats; out of order.
                let v = match next() % 6 {
                    0 => 0,
                    1 => next() % 100,
                    2 => next() % 20_000,
                    3 => next() % (2 * HIST_MAX_MS),
                    4 => 2_048 + next() % 3,
                    _ => 1_234,
                };
                let n = 1 + next() % (if round % 7 == 0 { 1 << 40 } else { 3 });
                sparse.record_n(v, n);
                dense.record_n(v.min(HIST_MAX_MS), n).unwrap();
            }
            let bytes = sparse.serialize();
            assert_eq!(bytes, serialize_histogram(&dense), "round {round}: the same V2 bytes");
            assert_eq!(sparse.len(), dense.len());
            assert_eq!(sparse.to_histogram(), dense);
            for q in [0.0, 0.001, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0, 1.5] {
                let want = (dense.len() > 0).then(|| dense.value_at_quantile(q));
                assert_eq!(sparse.value_at_quantile(q), want, "round {round}, q={q}");
            }
            // Merging: as sparse lists, from the serialized bytes, and from the dense histogram's bytes.
            let mut from_bytes = all_sparse.clone();
            from_bytes.add_serialized(&serialize_histogram(&dense)).unwrap();
            all_sparse.add(&sparse);
            assert_eq!(from_bytes, all_sparse, "round {round}");
            all_dense.add(&dense).unwrap();
        }
        assert_eq!(all_sparse.serialize(), serialize_histogram(&all_dense));
        assert_eq!(all_sparse.to_histogram(), all_dense);
        // Another configuration is read whole and re-recorded into this one's buckets.
        let mut other = Histogram::<u64>::new_with_bounds(1, 10_000, 2).unwrap();
        other.record_n(5_000, 3).unwrap();
        let mut s = SparseHist::default();
        s.add_serialized(&serialize_histogram(&other)).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.add_serialized(&[0x1c, 0x84]).is_err(), "garbage is an error");
        // As the dense histogram adds another configuration's: each bucket's lowest value.
        let mut dense = new_histogram();
        dense.add(&other).unwrap();
        assert_eq!(s.serialize(), serialize_histogram(&dense));
        // Counts that take 7, 8 and 9 bytes as varints, up to i64::MAX.
        let (mut sparse, mut dense) = (SparseHist::default(), new_histogram());
        for (v, n) in [(3, 1u64 << 45), (5, 1 << 52), (7, 1 << 60), (9, i64::MAX as u64 - (1 << 61) - (1 << 60))] {
            sparse.record_n(v, n);
            dense.record_n(v, n).unwrap();
        }
        let mut max = SparseHist::default();
        max.record_n(11, i64::MAX as u64);
        let mut dense_max = new_histogram();
        dense_max.record_n(11, i64::MAX as u64).unwrap();
        assert_eq!(sparse.serialize(), serialize_histogram(&dense));
        assert_eq!(max.serialize(), serialize_histogram(&dense_max));
        let mut back = SparseHist::default();
        back.add_serialized(&max.serialize()).unwrap();
        assert_eq!(back, max);
    }
}
