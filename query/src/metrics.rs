//! The QoE metrics of `docs/metrics.md` §15 over `qoe_window` rows, defined once.
//!
//! Every metric is a sum of a `qoe_window` column, a start-time quantile of the merged histograms, or a
//! ratio of sums. The helper view `qoe_ratios` gets its SQL from these definitions ([`select_list`]);
//! the metrics API asks a backend for the sums and quantiles only and derives the ratios in Rust
//! ([`derive`]), so DataFusion and ClickHouse answers cannot disagree on a formula.

use serde_json::{Map, Value};

/// Summed `qoe_window` columns (all integers), in column order: every window sum of
/// `schemas::measures`.
pub fn sums() -> impl Iterator<Item = &'static str> {
    schemas::measures::window_sums().map(|(_, name)| name)
}

/// How many sums [`sums`] yields.
pub fn sum_count() -> usize {
    sums().count()
}

/// Start-time quantiles from the merged `startup_hist` histograms: (name, q).
pub const QUANTILES: &[(&str, f64)] = &schemas::measures::API_QUANTILES;

/// `scale × Σ(sign × num) / Σ den`, NULL when the denominator is 0.
pub struct Ratio {
    pub name: &'static str,
    pub num: &'static [(i8, &'static str)],
    pub den: &'static [&'static str],
    pub scale: f64,
}

const fn ratio(name: &'static str, num: &'static [(i8, &'static str)], den: &'static [&'static str], scale: f64) -> Ratio {
    Ratio { name, num, den, scale }
}

/// Ratios are fractions (0..1) unless named `_pct`.
pub const RATIOS: &[Ratio] = &[
    ratio("rebuffer_ratio", &[(1, "stall_ms")], &["play_ms", "stall_ms"], 1.0),
    ratio("connection_induced_rebuffer_ratio", &[(1, "stall_ms"), (-1, "seek_stall_ms")], &["play_ms", "stall_ms"], 1.0),
    ratio("vsf_pct", &[(1, "vsf")], &["attempts"], 100.0),
    ratio("ebvs_pct", &[(1, "ebvs")], &["attempts"], 100.0),
    ratio("playback_failure_pct", &[(1, "playback_failures")], &["attempts"], 100.0),
    ratio("error_rate_pct", &[(1, "fatal_errors")], &["attempts"], 100.0),
    ratio("cache_hit_ratio", &[(1, "segments_hit")], &["segments_hit", "segments_miss"], 1.0),
    ratio("cache_hit_ratio_bytes", &[(1, "bytes_hit")], &["bytes_total"], 1.0),
    ratio("avg_bitrate_kbps", &[(1, "bitrate_ms")], &["bitrate_known_ms"], 1.0),
    ratio("avg_startup_ms", &[(1, "startup_ms_sum")], &["starts"], 1.0),
    ratio("rebuffer_frequency_per_min", &[(1, "stall_count")], &["play_ms"], 60_000.0),
];

/// Every metric name, in output order.
pub fn names() -> impl Iterator<Item = &'static str> {
    sums().chain(QUANTILES.iter().map(|(n, _)| *n)).chain(RATIOS.iter().map(|r| r.name))
}

fn sql_sum_of(terms: impl Iterator<Item = (i8, &'static str)>) -> String {
    let mut s = String::new();
    for (i, (sign, col)) in terms.enumerate() {
        match (i, sign < 0) {
            (0, false) => {}
            (0, true) => s.push('-'),
            (_, false) => s.push_str(" + "),
            (_, true) => s.push_str(" - "),
        }
        s.push_str(&format!("CAST(sum({col}) AS DOUBLE)"));
    }
    s
}

/// The DataFusion SQL of a ratio over a group of `qoe_window` rows.
pub fn ratio_sql(r: &Ratio) -> String {
    let num = sql_sum_of(r.num.iter().copied());
    let den = sql_sum_of(r.den.iter().map(|c| (1, *c)));
    // Each sum cast before they are added: sums that reached `i64::MAX` add without wrapping, as in
    // [`ratio_value`].
    format!("{:?} * ({num}) / NULLIF({den}, 0)", r.scale)
}

/// `expr AS name, …` for a DataFusion SELECT list over `qoe_window` (used by the `qoe_ratios` view).
pub fn select_list() -> String {
    let sums = sums().map(|c| format!("sum({c}) AS {c}"));
    let quantiles = QUANTILES.iter().map(|(n, q)| format!("hdr_quantile(startup_hist, startup_hist_retract, {q:?}) AS {n}"));
    let ratios = RATIOS.iter().map(|r| format!("{} AS {}", ratio_sql(r), r.name));
    sums.chain(quantiles).chain(ratios).collect::<Vec<_>>().join(",\n    ")
}

/// The value of a ratio from the sums (in [`sums`] order), computed as its SQL does.
pub fn ratio_value(r: &Ratio, sums: &[i64]) -> Option<f64> {
    let get = |c: &str| self::sums().position(|s| s == c).map_or(0, |i| sums[i]);
    // In i128: sums of sums that reached `i64::MAX` (absurd input) must not overflow here.
    let num: i128 = r.num.iter().map(|(sign, c)| i128::from(*sign) * i128::from(get(c))).sum();
    let den: i128 = r.den.iter().map(|c| i128::from(get(c))).sum();
    (den != 0).then(|| r.scale * num as f64 / den as f64)
}

/// All metrics of one group as JSON: the sums, the quantiles (given in [`QUANTILES`] order; missing
/// ones are null) and the ratios derived from the sums.
pub fn derive(sums: &[i64], quantiles: &[Option<f64>]) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, v) in self::sums().zip(sums) {
        m.insert(name.into(), Value::from(*v));
    }
    for (i, (name, _)) in QUANTILES.iter().enumerate() {
        m.insert((*name).into(), quantiles.get(i).copied().flatten().map_or(Value::Null, Value::from));
    }
    for r in RATIOS {
        m.insert(r.name.into(), ratio_value(r, sums).map_or(Value::Null, Value::from));
    }
    m
}

/// One group's sums (in [`sums`] order) and quantiles (in [`QUANTILES`] order).
#[derive(Debug, Clone, PartialEq)]
pub struct AggRow {
    pub bucket: Option<i64>,
    pub group: Option<String>,
    pub sums: Vec<i64>,
    pub quantiles: Vec<Option<f64>>,
    /// The first and last window start of the bucket's rows (aggregations of `qoe_window` alone, by
    /// buckets of up to [`crate::backend::ONE_QUERY_STEP_MS`]; `None` otherwise): when they are equal, the bucket is
    /// one window.
    pub windows: Option<(i64, i64)>,
}

impl AggRow {
    /// Every metric of this group: the sums, the quantiles and the ratios derived from the sums.
    pub fn metrics(&self) -> Map<String, Value> {
        derive(&self.sums, &self.quantiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sql_and_value_agree_on_the_formula() {
        let r = &RATIOS[1];
        assert_eq!(
            ratio_sql(r),
            "1.0 * (CAST(sum(stall_ms) AS DOUBLE) - CAST(sum(seek_stall_ms) AS DOUBLE)) / NULLIF(CAST(sum(play_ms) AS DOUBLE) + CAST(sum(stall_ms) AS DOUBLE), 0)"
        );
        let mut sums = vec![0; sum_count()];
        let at = |c: &str| self::sums().position(|s| s == c).unwrap();
        sums[at("stall_ms")] = 300;
        sums[at("seek_stall_ms")] = 100;
        sums[at("play_ms")] = 700;
        assert_eq!(ratio_value(r, &sums), Some(0.2));
        assert_eq!(ratio_value(&RATIOS[2], &sums), None, "no attempts: no VSF %");
        let all = derive(&sums, &[Some(10.0), None]);
        assert_eq!(all.len(), names().count());
        assert_eq!(all["rebuffer_ratio"], 0.3);
        assert_eq!(all["startup_p95"], Value::Null);
        assert_eq!(derive(&sums, &[]).len(), names().count(), "no quantiles given: null, not missing");
    }

    /// Sums that stopped at `i64::MAX` (absurd input: the pipeline saturates) still give a ratio: the
    /// denominator `play_ms + stall_ms` does not overflow.
    #[test]
    fn ratios_of_saturated_sums_do_not_overflow() {
        let mut sums = vec![0; sum_count()];
        let at = |c: &str| self::sums().position(|s| s == c).unwrap();
        sums[at("stall_ms")] = i64::MAX;
        sums[at("play_ms")] = i64::MAX;
        sums[at("seek_stall_ms")] = i64::MIN;
        assert_eq!(ratio_value(&RATIOS[0], &sums), Some(0.5));
        assert!(ratio_value(&RATIOS[1], &sums).is_some_and(f64::is_finite));
    }

    /// The API serves every window sum of the measure list, and every ratio is over such sums.
    #[test]
    fn every_window_measure_is_served() {
        let all = derive(&vec![0; sum_count()], &[]);
        for (_, column) in schemas::measures::window_sums() {
            assert!(all.contains_key(column), "{column} is served by the metrics API");
        }
        for r in RATIOS {
            for c in r.num.iter().map(|(_, c)| *c).chain(r.den.iter().copied()) {
                assert!(sums().any(|s| s == c), "{}: {c} is a window sum", r.name);
            }
        }
    }
}
