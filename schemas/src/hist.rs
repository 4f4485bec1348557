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

#[cfg(test)]
mod tests {
    use super::*;

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
}
