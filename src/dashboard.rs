//! The live dashboard at `/`: `dashboards/web/src` and the charting library (uPlot, installed from npm
//! by `dashboards/build.rs`) embedded in the binary, and `/dashboard/config.json` with the KPI targets.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

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
    /// the targets of DESIGN.md §6. Set one to replace a default; unknown metric names are refused.
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
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((500..=5_000).contains(&self.refresh_ms), "dashboard.refresh_ms must be 500 to 5000");
        for (name, th) in &self.thresholds {
            anyhow::ensure!(query::metrics::names().any(|n| n == name), "dashboard.thresholds.{name}: no such metric");
            let ordered = if th.higher_is_better { th.good >= th.bad } else { th.good <= th.bad };
            anyhow::ensure!(ordered, "dashboard.thresholds.{name}: `good` must be on the better side of `bad`");
        }
        Ok(())
    }
}

const INDEX: &str = include_str!("../dashboards/web/src/index.html");
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript", include_bytes!("../dashboards/web/src/app.js")),
    ("style.css", "text/css", include_bytes!("../dashboards/web/src/style.css")),
    ("uPlot.iife.min.js", "text/javascript", include_bytes!(concat!(env!("OUT_DIR"), "/web/uPlot.iife.min.js"))),
    ("uPlot.min.css", "text/css", include_bytes!(concat!(env!("OUT_DIR"), "/web/uPlot.min.css"))),
];

pub fn router(config: DashboardConfig) -> axum::Router {
    let config = serde_json::to_vec(&config).unwrap_or_default();
    axum::Router::new()
        .route("/", get(|| async { ([(header::CACHE_CONTROL, "no-cache")], axum::response::Html(INDEX)) }))
        .route("/assets/{file}", get(asset))
        .route(
            "/dashboard/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], config) }
            }),
        )
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => {
            let mut r = body.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_at_start_up() {
        assert!(DashboardConfig::default().validate().is_ok(), "the §6 defaults are valid");
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
