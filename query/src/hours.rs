//! The closed hours' cache of the metrics API (Parquet backend): the partial aggregates of whole
//! rolled-up hours, kept in memory so that a dashboard's ranges over the last day read only what is
//! new (the open hour, the range's ragged ends) and merge the rest.
//!
//! A closed hour's rows change only when its files do (a late file, or compaction swapping files):
//! an entry is keyed by the hour partition, a hash of its files' names and sizes in `qoe_window` and
//! `qoe_minute` ([`crate::engine::RolledUpHour`]) and the query's shape (filters, grouping, bucket
//! length, what is summed), so changed files are a miss, never a stale answer. A partial holds each
//! group's sums and its start-time histograms, serialized, not its quantiles: those are taken once
//! the hours are merged. Bounded by `query.hour_cache_bytes`, least recently used out first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::metrics::{AggRow, sum_count};

/// One group's partial aggregate: its sums (in [`crate::metrics::sums`] order) and its merged
/// start-time histograms, serialized (empty when none).
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub bucket: Option<i64>,
    pub group: Option<String>,
    pub sums: Vec<i64>,
    pub hist: Vec<u8>,
    pub retract: Vec<u8>,
}

impl Partial {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Partial>() + self.sums.len() * 8 + self.hist.len() + self.retract.len() + self.group.as_ref().map_or(0, String::len)
    }

    /// A row without histograms (per-window active views, [`crate::backend::Backend::active_per_window`]'s rows).
    pub fn of_row(row: AggRow) -> Partial {
        Partial { bucket: row.bucket, group: row.group, sums: row.sums, hist: Vec::new(), retract: Vec::new() }
    }
}

/// Merges partials of the same (bucket, group) into rows: sums added, histograms merged and the
/// retractions subtracted, then the quantiles (`with_quantiles`; per-window active views have none).
/// With `top`, only the `top` groups with the most attempts (ties by value) are kept, and only theirs
/// are merged. Rows come sorted like [`crate::backend::Backend::aggregate`]'s.
pub fn merge<'a>(parts: impl Iterator<Item = &'a Partial>, top: Option<u32>, with_quantiles: bool) -> crate::Result<Vec<AggRow>> {
    struct Acc<'a> {
        sums: Vec<i64>,
        hists: Vec<&'a [u8]>,
        retracts: Vec<&'a [u8]>,
    }
    let mut groups: HashMap<(Option<i64>, Option<&'a str>), Acc<'a>> = HashMap::new();
    for p in parts {
        let acc = groups.entry((p.bucket, p.group.as_deref())).or_insert_with(|| Acc { sums: vec![0; sum_count()], hists: Vec::new(), retracts: Vec::new() });
        // Saturating, as the pipeline's sums are (docs/metrics.md §14): hours that each reached
        // `i64::MAX` must not overflow here.
        for (a, b) in acc.sums.iter_mut().zip(&p.sums) {
            *a = a.saturating_add(*b);
        }
        if !p.hist.is_empty() {
            acc.hists.push(&p.hist);
        }
        if !p.retract.is_empty() {
            acc.retracts.push(&p.retract);
        }
    }
    let mut merged: Vec<_> = groups.into_iter().collect();
    match top {
        Some(n) => {
            // Ties by value, a missing value last (SQL's `ORDER BY s_attempts DESC, grp`).
            merged.sort_by(|(a, x), (b, y)| y.sums[0].cmp(&x.sums[0]).then_with(|| (a.1.is_none(), a.1).cmp(&(b.1.is_none(), b.1))));
            merged.truncate(n as usize);
        }
        None => merged.sort_by_key(|(key, _)| *key),
    }
    merged
        .into_iter()
        .map(|((bucket, group), acc)| {
            let quantiles = if with_quantiles { crate::hdr::quantiles_of_serialized(&acc.hists, &acc.retracts)? } else { Vec::new() };
            Ok(AggRow { bucket, group: group.map(str::to_owned), sums: acc.sums, quantiles, windows: None })
        })
        .collect()
}

/// What an entry stands for: one hour's partition as listed, and the query's shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub dt: String,
    pub hour: String,
    /// [`crate::engine::RolledUpHour::files`].
    pub files: u64,
    /// Filters, grouping, bucket length and what is aggregated, as the query spells them.
    pub shape: String,
}

impl Key {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Key>() + self.dt.len() + self.hour.len() + self.shape.len()
    }
}

/// The cache's counters, for tests and `GET /metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
}

struct Entry {
    parts: Arc<Vec<Partial>>,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Shapes an hour of which was larger than its share of the budget: their requests are answered
    /// by one query, uncached (at most [`MAX_TOO_LARGE`], forgotten all at once past it).
    too_large: std::collections::HashSet<String>,
    bytes: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// How many shapes too large to keep are remembered.
const MAX_TOO_LARGE: usize = 1024;

/// Closed hours' partial aggregates, at most `budget` bytes (estimated: sums, histograms, keys).
pub struct HourCache {
    budget: usize,
    inner: Mutex<Inner>,
    metrics: CacheMetrics,
}

/// `qoeflow_query_hour_cache_{hits,misses}_total` and `qoeflow_query_hour_cache_bytes`.
#[derive(Clone)]
struct CacheMetrics {
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    bytes: prometheus::IntGauge,
}

impl HourCache {
    pub fn new(budget: usize) -> HourCache {
        // The names are constants prometheus accepts.
        let counter = |name: &str, help: &str| prometheus::IntCounter::new(name, help).expect("valid metric");
        let metrics = CacheMetrics {
            hits: counter("qoeflow_query_hour_cache_hits_total", "Whole closed hours of metrics API requests answered from the closed hours' cache"),
            misses: counter("qoeflow_query_hour_cache_misses_total", "Whole closed hours of metrics API requests queried (then kept) instead"),
            bytes: prometheus::IntGauge::new("qoeflow_query_hour_cache_bytes", "What the closed hours' cache holds, estimated").expect("valid metric"),
        };
        HourCache { budget, inner: Mutex::new(Inner::default()), metrics }
    }

    /// Exposes the cache's counters in `registry` (once; a second registration is ignored).
    pub fn register(&self, registry: &prometheus::Registry) {
        let m = self.metrics.clone();
        let _ = registry.register(Box::new(m.hits));
        let _ = registry.register(Box::new(m.misses));
        let _ = registry.register(Box::new(m.bytes));
    }

    /// Whether it keeps anything (`query.hour_cache_bytes` > 0).
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Its state stays consistent between statements: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Vec<Partial>>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        match inner.map.get_mut(key) {
            Some(e) => {
                e.used = clock;
                let parts = e.parts.clone();
                inner.hits += 1;
                self.metrics.hits.inc();
                Some(parts)
            }
            None => {
                inner.misses += 1;
                self.metrics.misses.inc();
                None
            }
        }
    }

    /// Whether hours of this shape were found too large to keep ([`HourCache::insert`]).
    pub fn too_large(&self, shape: &str) -> bool {
        self.lock().too_large.contains(shape)
    }

    /// Keeps `parts` for `key`, dropping the least recently used entries until the total fits, when
    /// they take at most `1 / hours` of the budget (a request's `hours` whole hours of this shape then
    /// fit together, and do not push each other out). Otherwise keeps nothing, remembers the shape as
    /// too large and returns false: the caller answers with one query instead (many groups per hour,
    /// such as a breakdown by video, would otherwise cost a query per hour on every request).
    pub fn insert(&self, key: Key, parts: Arc<Vec<Partial>>, hours: usize) -> bool {
        let bytes = key.bytes() + parts.iter().map(Partial::bytes).sum::<usize>();
        let mut inner = self.lock();
        if bytes.saturating_mul(hours.max(1)) > self.budget {
            if inner.too_large.len() >= MAX_TOO_LARGE {
                inner.too_large.clear();
            }
            inner.too_large.insert(key.shape);
            return false;
        }
        inner.clock += 1;
        let used = inner.clock;
        if let Some(old) = inner.map.insert(key, Entry { parts, bytes, used }) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.bytes > self.budget {
            let Some(oldest) = inner.map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
        }
        self.metrics.bytes.set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
        true
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats { hits: inner.hits, misses: inner.misses, entries: inner.map.len(), bytes: inner.bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hdr::tests::hist;
    use crate::metrics::QUANTILES;

    fn part(bucket: i64, group: &str, attempts: i64, hist: Vec<u8>, retract: Vec<u8>) -> Partial {
        let mut sums = vec![0; sum_count()];
        sums[0] = attempts;
        Partial { bucket: Some(bucket), group: Some(group.into()), sums, hist, retract }
    }

    /// Hours merge by (bucket, group): sums add, histograms merge, retractions of one hour subtract from
    /// the merged whole (a start corrected in a later hour), and `top` keeps the groups with most attempts.
    #[test]
    fn partials_merge_into_the_rows_one_query_would_answer() {
        let parts = [
            part(0, "a", 2, hist(&[100, 900]), Vec::new()),
            part(0, "a", 1, hist(&[300]), hist(&[900])),
            part(0, "b", 5, hist(&[50]), Vec::new()),
            part(60_000, "a", 1, Vec::new(), Vec::new()),
        ];
        let rows = merge(parts.iter(), None, true).expect("merge");
        assert_eq!(rows.iter().map(|r| (r.bucket, r.group.as_deref(), r.sums[0])).collect::<Vec<_>>(), [(Some(0), Some("a"), 3), (Some(0), Some("b"), 5), (Some(60_000), Some("a"), 1)]);
        let max = QUANTILES.iter().position(|(_, q)| *q == QUANTILES.iter().map(|(_, q)| *q).fold(0.0, f64::max)).expect("a quantile");
        assert_eq!(rows[0].quantiles[max], Some(300.0), "900 was retracted by the second part");
        assert!(rows[2].quantiles.iter().all(Option::is_none), "no starts, no quantiles");
        let top = merge(parts.iter(), Some(1), true).expect("top");
        assert_eq!((top.len(), top[0].group.as_deref(), top[0].sums[0]), (1, Some("b"), 5));
        // Retracting what no hour added is an error, not a wrong value.
        let bad = [part(0, "a", 0, hist(&[1]), hist(&[2]))];
        assert!(merge(bad.iter(), None, true).is_err());
    }

    /// Hours whose sums each reached `i64::MAX` (absurd input, saturated by the pipeline) merge to
    /// `i64::MAX`, not an overflow.
    #[test]
    fn saturated_hours_merge_without_overflow() {
        let parts = [part(0, "a", i64::MAX, Vec::new(), Vec::new()), part(0, "a", i64::MAX, Vec::new(), Vec::new())];
        let rows = merge(parts.iter(), None, false).expect("merge");
        assert_eq!(rows[0].sums[0], i64::MAX);
    }

    /// The cache never holds more than its budget: the least recently used entries go first, and an
    /// entry larger than the whole budget is not kept.
    #[test]
    fn the_cache_keeps_its_budget_and_drops_the_least_recently_used() {
        let key = |h: &str| Key { dt: "2026-12-05".into(), hour: h.into(), files: 7, shape: "summary".into() };
        let parts = Arc::new(vec![part(0, "a", 1, hist(&[100]), Vec::new())]);
        let one = key("00").bytes() + parts.iter().map(Partial::bytes).sum::<usize>();
        let cache = HourCache::new(3 * one);
        for h in ["00", "01", "02"] {
            assert!(cache.insert(key(h), parts.clone(), 3));
        }
        assert!(cache.get(&key("00")).is_some(), "00 used again: 01 is now the oldest");
        assert!(cache.insert(key("03"), parts.clone(), 1));
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes), (3, 3 * one));
        assert!(cache.get(&key("01")).is_none(), "the least recently used went");
        assert!(cache.get(&key("00")).is_some() && cache.get(&key("03")).is_some());
        assert!(cache.get(&Key { files: 8, ..key("00") }).is_none(), "other files are another entry");
        let big = Arc::new(vec![part(0, "a", 1, vec![0; 4 * one], Vec::new())]);
        let big_key = Key { shape: "big".into(), ..key("04") };
        assert!(!cache.insert(big_key.clone(), big, 1));
        assert!(cache.get(&big_key).is_none(), "larger than the budget: not kept");
        assert!(cache.stats().bytes <= 3 * one);
        // Four hours of a shape do not fit in a budget of three: the shape is not kept, and remembered.
        let other = |h: &str| Key { shape: "breakdown by video".into(), ..key(h) };
        assert!(!cache.insert(other("05"), parts.clone(), 4));
        assert!(cache.too_large("breakdown by video") && cache.too_large("big") && !cache.too_large("summary"));
        assert_eq!(cache.stats().entries, 3, "nothing of the shape too large was kept, nothing pushed out");
        let off = HourCache::new(0);
        off.insert(key("00"), parts, 1);
        assert!(!off.enabled() && off.get(&key("00")).is_none());
    }
}
