//! The query side's configuration, in one place: `[query]` (backend, listener, bounds), `[sql]` (the
//! SQL endpoint) and `[dashboard]` (refresh and KPI targets). Defaults and checks live here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[query]`: where the metrics API and the dashboard read, where they listen and how they are bounded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `parquet` (the data directory's dataset, the default) or `clickhouse` (the `[clickhouse]` server).
    pub backend: BackendKind,
    /// `qoeflow serve`: serve the API and dashboard on this address instead of the beacon listener.
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token every `/api/` route requires; None: open.
    pub api_token: Option<String>,
    /// Memory the queries' operators may hold together (DataFusion's pool); over it a query fails.
    pub memory_limit_bytes: usize,
    /// Longest a metrics API query may run.
    pub timeout_ms: u64,
    /// Memory for the closed hours' partial aggregates the metrics API keeps (Parquet backend,
    /// `query::hours`; least recently used out first); 0: none, every query reads every hour.
    pub hour_cache_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            backend: BackendKind::default(),
            listen: None,
            api_token: None,
            memory_limit_bytes: 1 << 30,
            timeout_ms: 30_000,
            hour_cache_bytes: 64 << 20,
        }
    }
}

/// `[query] backend`: which store the metrics API reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The Parquet dataset under the data directory, through DataFusion.
    #[default]
    Parquet,
    /// The ClickHouse tables the pipeline writes (`[clickhouse]` url and database).
    ClickHouse,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<BackendKind, String> {
        match s {
            "parquet" => Ok(BackendKind::Parquet),
            "clickhouse" => Ok(BackendKind::ClickHouse),
            other => Err(format!("unknown backend {other:?} (parquet or clickhouse)")),
        }
    }
}

/// Limits of `POST /api/v1/sql`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Bearer token required by `POST /api/v1/sql`; None disables the endpoint.
    pub admin_token: Option<String>,
    pub timeout_ms: u64,
    pub max_rows: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig { admin_token: None, timeout_ms: 10_000, max_rows: 10_000 }
    }
}

/// One KPI's target: `good` or better is good, worse than `bad` is bad, in between is a warning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub good: f64,
    pub bad: f64,
    #[serde(default)]
    pub higher_is_better: bool,
}

/// `[dashboard]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Auto-refresh period of the page (at most 5 s).
    pub refresh_ms: u64,
    /// Targets per metric name (`[dashboard.thresholds.startup_p95] good = 500.0 …`); the defaults are
    /// the targets the platforms state (`docs/metrics.md` §19). Set one to replace a default; unknown metric names are refused.
    pub thresholds: BTreeMap<String, Threshold>,
}

fn t(good: f64, bad: f64, higher_is_better: bool) -> Threshold {
    Threshold { good, bad, higher_is_better }
}

impl Default for DashboardConfig {
    fn default() -> Self {
        let thresholds = [
            // Video start time < 2–3 s on the web (mobile reels want < 500 ms: configure it).
            ("startup_p50", t(2_000.0, 3_000.0, false)),
            ("startup_p95", t(2_000.0, 3_000.0, false)),
            // Stall rate < 0.5 %; buffering ratio > 3 % is a warning alert.
            ("rebuffer_ratio", t(0.005, 0.03, false)),
            ("connection_induced_rebuffer_ratio", t(0.005, 0.03, false)),
            // Start success < 95 % is critical.
            ("vsf_pct", t(1.0, 5.0, false)),
            ("ebvs_pct", t(5.0, 10.0, false)),
            // Error rate > 1 % is critical.
            ("playback_failure_pct", t(0.5, 1.0, false)),
            ("error_rate_pct", t(0.5, 1.0, false)),
            // CDN cache-hit ratio > 95 %.
            ("cache_hit_ratio", t(0.95, 0.90, true)),
            ("avg_bitrate_kbps", t(2_500.0, 1_000.0, true)),
        ];
        DashboardConfig {
            refresh_ms: 5_000,
            thresholds: thresholds.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }
}

impl DashboardConfig {
    pub fn validate(&self) -> crate::Result<()> {
        crate::error::ensure_config((500..=5_000).contains(&self.refresh_ms), || format!("dashboard.refresh_ms must be 500 to 5000"))?;
        for (name, th) in &self.thresholds {
            crate::error::ensure_config(crate::metrics::names().any(|n| n == name), || format!("dashboard.thresholds.{name}: no such metric"))?;
            let ordered = if th.higher_is_better { th.good >= th.bad } else { th.good <= th.bad };
            crate::error::ensure_config(ordered, || format!("dashboard.thresholds.{name}: `good` must be on the better side of `bad`"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_at_start_up() {
        assert!(DashboardConfig::default().validate().is_ok(), "the default targets are valid");
        let with = |name: &str, th: Threshold| {
            let mut c = DashboardConfig::default();
            c.thresholds.insert(name.into(), th);
            c.validate().map_err(|e| e.to_string())
        };
        assert_eq!(with("nope", t(1.0, 2.0, false)), Err("dashboard.thresholds.nope: no such metric".into()));
        let inverted = with("vsf_pct", t(5.0, 1.0, false)).unwrap_err();
        assert!(inverted.contains("vsf_pct") && inverted.contains("better side"), "{inverted}");
        assert!(with("cache_hit_ratio", t(0.9, 0.95, true)).is_err(), "higher is better: good must be the larger");
        let slow = DashboardConfig { refresh_ms: 10_000, ..DashboardConfig::default() };
        assert!(slow.validate().unwrap_err().to_string().contains("refresh_ms"));
    }
}
