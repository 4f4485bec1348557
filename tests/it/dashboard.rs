//! The live dashboard in a real browser: headless Chromium (Debian's, driven by playwright-core through
//! `tests/browser/dashboard.mjs`) opens `/` of a `qoeflow serve` fed with known views. A firing alert is
//! shown at the top and on its tile, every KPI tile
//! shows the number the batch reference computes from the same events, each chart draws its series,
//! the page refreshes by itself, and clicking a breakdown row filters every tile. Screenshots are
//! written to `target/test-artifacts/`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::common::workload::*;
use crate::common::*;
use crate::oracle::reference::{self, BatchResult};
use pipeline::sessionizer::Dim;
use pipeline::window::WindowDelta;
use schemas::hist::new_histogram;
use schemas::measures::Measure::*;
use serde_json::Value;

/// What each tile must show for the views whose CDN is `cdn` (all views for None), from the reference.
fn expected(truth: &BatchResult, cdn: Option<&str>) -> BTreeMap<&'static str, Option<f64>> {
    let at = Dim::DEFAULT.iter().position(|d| *d == Dim::Cdn).expect("cdn is a default dimension");
    let windows: Vec<(i64, &WindowDelta)> =
        truth.windows.iter().filter(|((_, dims), _)| cdn.is_none_or(|c| dims[at] == c)).map(|((w, _), d)| (*w, d)).collect();
    let sum = |f: fn(&WindowDelta) -> i64| windows.iter().map(|(_, d)| f(d)).sum::<i64>() as f64;
    let ratio = |n: f64, d: f64| (d != 0.0).then(|| n / d);
    let mut hist = new_histogram();
    let mut active: BTreeMap<i64, u64> = BTreeMap::new();
    for (w, d) in &windows {
        hist.add(d.startup_hist.histogram()).expect("merge");
        *active.entry(*w).or_default() += d.sums[ActiveViews] as u64;
    }
    let latest_active = active.values().rev().find(|n| **n > 0).copied().unwrap_or(0);
    let quantile = |q: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(q) as f64);
    let (attempts, play, stall) = (sum(|d| d.sums[Attempt]), sum(|d| d.sums[PlayMs]), sum(|d| d.sums[StallMs]));
    let (hit, miss) = (sum(|d| d.sums[SegmentsHit]), sum(|d| d.sums[SegmentsMiss]));
    BTreeMap::from([
        ("concurrent_viewers", Some(latest_active as f64)),
        ("attempts", Some(attempts)),
        ("startup_p50", quantile(0.5)),
        ("startup_p95", quantile(0.95)),
        ("rebuffer_ratio", ratio(stall, play + stall)),
        ("connection_induced_rebuffer_ratio", ratio(stall - sum(|d| d.sums[SeekStallMs]), play + stall)),
        ("vsf_pct", ratio(100.0 * sum(|d| d.sums[Vsf]), attempts)),
        ("ebvs_pct", ratio(100.0 * sum(|d| d.sums[Ebvs]), attempts)),
        ("playback_failure_pct", ratio(100.0 * sum(|d| d.sums[PlaybackFailure]), attempts)),
        ("cache_hit_ratio", ratio(hit, hit + miss)),
        ("avg_bitrate_kbps", ratio(sum(|d| d.sums[BitrateMs]), sum(|d| d.sums[BitrateKnownMs]))),
        ("errors", Some(sum(|d| d.sums[Errors]))),
    ])
}

/// The number a tile's text shows, in the unit of its metric (percent texts of fractions ÷ 100).
fn shown(kpi: &str, text: &str) -> Option<f64> {
    if text == "—" {
        return None;
    }
    let number: f64 = text.trim_end_matches(" %").trim_end_matches(" ms").trim_end_matches(" kbps").replace(',', "").parse().ok()?;
    Some(if kpi.ends_with("_ratio") { number / 100.0 } else { number })
}

fn assert_tiles(tiles: &Value, want: &BTreeMap<&'static str, Option<f64>>, when: &str) {
    let got: Vec<&String> = tiles.as_object().expect("tiles").keys().collect();
    assert_eq!(got.len(), want.len(), "{when}: tiles {got:?}");
    for (kpi, want) in want {
        let tile = &tiles[*kpi];
        let value = tile["value"].as_f64();
        match (value, want) {
            (Some(v), Some(w)) => assert!((v - w).abs() <= 1e-9 * w.abs().max(1.0), "{when}: {kpi} = {v}, expected {w}"),
            _ => assert_eq!(value, *want, "{when}: {kpi}"),
        }
        // The text is the same number, rounded for display (2 decimals of percent, whole ms and kbps).
        let text = tile["text"].as_str().expect("text");
        let tolerance = if kpi.ends_with("_ratio") { 0.00005 } else if kpi.ends_with("_pct") { 0.005 } else { 0.5 };
        match (shown(kpi, text), want) {
            (Some(s), Some(w)) => assert!((s - w).abs() <= tolerance + 1e-12, "{when}: {kpi} shows {text:?}, expected {w}"),
            (s, w) => assert_eq!(s, *w, "{when}: {kpi} shows {text:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_known_traffic_in_chromium() {
    let dir = tempfile::tempdir().expect("tmp");
    // A rule that fires on this traffic (20 % start failures over 36 attempts) at its first evaluation.
    let config = dir.path().join("qoeflow.toml");
    std::fs::write(
        &config,
        "[alerts]\ninterval_ms = 1000\ndefault_rules = false\n[[alerts.rules]]\nname = \"StartFailures\"\nmetric = \"vsf_pct\"\n\
         range = \"1h\"\nop = \">\"\nthreshold = 10.0\nmin_volume = 10\nfor = \"0s\"\nseverity = \"critical\"\n",
    )
    .expect("config");
    let mut q = Qoeflow::serve(dir.path(), &["--config", config.to_str().expect("utf-8")], &[]);
    let t0 = now_ms() - 100_000;
    post_views(&q, 36, t0, 2_000).await;
    wait_for_views(dir.path(), 36, Duration::from_secs(30));
    let truth = reference::compute(&read_local_log(dir.path()), 10_000, &Dim::DEFAULT);

    let shots = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&shots).expect("artifact dir");
    let browser_dir = repo_root().join("tests/browser");
    let out = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .args([&format!("{}/", q.url), shots.to_str().expect("utf-8"), "cdn", "akamai"])
        .current_dir(&browser_dir)
        .output()
        .expect("node (deploy/test.sh installs playwright-core and chromium)");
    assert!(out.status.success(), "browser script failed: {}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    q.stop();

    assert_eq!(seen["console_errors"], serde_json::json!([]), "the page logged errors");
    assert_eq!(seen["foreign_requests"], serde_json::json!([]), "the page fetched something from elsewhere");
    let before = &seen["before"]["tiles"];
    let all = expected(&truth, None);
    assert!(all["attempts"] == Some(36.0) && all["vsf_pct"] > Some(0.0) && all["concurrent_viewers"] > Some(0.0));
    assert_tiles(before, &all, "unfiltered");
    // Coloured against the §6 targets: 20 % start failures is bad, a ~0.3 s start is good, attempts
    // have no target.
    assert_eq!(before["vsf_pct"]["status"], "bad");
    assert_eq!(before["startup_p50"]["status"], "good");
    assert_eq!(before["attempts"]["status"], "neutral");
    // Every chart drew its series (pixels in the series colour; an empty chart has none). The views
    // are placed at their receive time, all within seconds, so a ratio's series may be a single dot.
    for (kpi, pixels) in seen["before"]["charts"].as_object().expect("charts") {
        assert!(pixels.as_u64() >= Some(12), "chart {kpi} drew {pixels} series pixels");
    }
    // The firing alert: in the banner at the top, and on the tile of the metric it watches only.
    let alerts = &seen["alerts"];
    assert_eq!(alerts["visible"], true);
    let banner = alerts["banner"].as_array().expect("banner");
    assert_eq!(banner.len(), 1, "{alerts}");
    assert_eq!((banner[0]["rule"].as_str(), banner[0]["state"].as_str(), banner[0]["metric"].as_str()), (Some("StartFailures"), Some("firing"), Some("vsf_pct")));
    assert_eq!(alerts["marked"], serde_json::json!({"vsf_pct": "firing"}));
    let mut rows: Vec<&str> = seen["breakdown_rows"].as_array().expect("rows").iter().map(|r| r.as_str().expect("str")).collect();
    rows.sort();
    assert_eq!(rows, ["akamai", "cloudfront", "fastly"]);

    // After clicking the akamai row: a filter chip, and every tile is about akamai's views only.
    assert_eq!(seen["chips"], serde_json::json!(["cdn:akamai"]));
    let akamai = expected(&truth, Some("akamai"));
    assert!(akamai["attempts"] < all["attempts"] && akamai["attempts"] > Some(0.0));
    assert_tiles(&seen["after"]["tiles"], &akamai, "filtered by cdn:akamai");
    assert!(shots.join("dashboard.png").is_file() && shots.join("dashboard-filtered.png").is_file());
}
