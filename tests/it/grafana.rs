//! The Grafana dashboards (`dashboards/grafana/*.json`, official ClickHouse datasource plugin): every
//! panel's and variable's SQL, with Grafana's macros expanded as the plugin does, runs against a real
//! ClickHouse server filled by the pipeline and returns rows.

use std::time::Duration;

use crate::common::clickhouse::ClickHouse;
use crate::common::workload::*;
use crate::common::*;
use serde_json::Value;

const PLUGIN: &str = "grafana-clickhouse-datasource";
const FILTER_VARIABLES: [&str; 7] = ["cdn", "country", "device_type", "os", "browser", "player_name", "stream_type"];

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Grafana's expansion: the plugin's time macros for the range, `$__interval_s`, and "All" (`%`) for
/// the filter variables.
fn expand(sql: &str, from_ms: i64, to_ms: i64) -> String {
    let mut s = sql
        .replace("$__fromTime", &format!("toDateTime(intDiv({from_ms}, 1000))"))
        .replace("$__toTime", &format!("toDateTime(intDiv({to_ms}, 1000))"))
        .replace("$__interval_s", "10");
    for v in FILTER_VARIABLES {
        s = s.replace(&format!("${{{v}}}"), "%").replace(&format!("${v}"), "%");
    }
    assert!(!s.contains('$'), "an unexpanded macro or variable in:\n{s}");
    s
}

/// The plugin of a dashboard's `datasource` variable: the QoE dashboards read ClickHouse; the operations
/// one reads Prometheus (checked in `operator_metrics`).
pub fn datasource_plugin(file: &std::path::Path) -> String {
    let dashboard: Value = serde_json::from_slice(&std::fs::read(file).expect("read")).expect("dashboard JSON");
    let list = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    let ds = list.iter().find(|v| v["type"] == "datasource").unwrap_or_else(|| panic!("{}: no datasource variable", file.display()));
    ds["query"].as_str().expect("datasource plugin").to_owned()
}

/// Every panel, rows' nested panels included (for the other dashboards' tests).
pub fn all_panels(dashboard: &Value) -> Vec<&Value> {
    panels(dashboard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_panel_query_returns_rows_from_clickhouse() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(ch_dir.path());
    let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &[]);
    let t0 = now_ms() - 60_000;
    post_views(&q, 30, t0, 1_000).await;
    ch.wait_for_views(30, Duration::from_secs(30));
    q.stop();
    let (from, to) = (now_ms() - 3_600_000, now_ms() + 60_000);

    let files: Vec<_> = std::fs::read_dir(repo_root().join("dashboards/grafana"))
        .expect("dashboards/grafana")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| datasource_plugin(p) == PLUGIN)
        .collect();
    assert!(!files.is_empty(), "no Grafana dashboards");
    let mut titles = Vec::new();
    let mut queries = 0;
    for file in &files {
        let dashboard: Value = serde_json::from_slice(&std::fs::read(file).expect("read")).expect("dashboard JSON");
        for v in dashboard["templating"]["list"].as_array().expect("templating") {
            if v["type"] == "query" {
                let sql = expand(v["query"].as_str().expect("variable query"), from, to);
                assert!(!ch.query(&format!("{sql}\nFORMAT JSONEachRow")).is_empty(), "variable {} has no values:\n{sql}", v["name"]);
                queries += 1;
            }
        }
        for p in panels(&dashboard) {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().expect("title");
            titles.push(title.to_owned());
            let targets = p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no query"));
            for t in targets {
                assert_eq!(t["datasource"]["type"], PLUGIN, "{title}");
                let sql = expand(t["rawSql"].as_str().expect("rawSql"), from, to);
                let rows = ch.query(&format!("{sql}\nFORMAT JSONEachRow"));
                assert!(!rows.is_empty(), "{title}: no rows from\n{sql}");
                if p["type"] == "stat" {
                    assert!(!rows.contains(":null") && !rows.contains("nan"), "{title}: no value in {rows}");
                }
                if title == "Attempts" && p["type"] == "stat" {
                    assert_eq!(rows, r#"{"attempts":"30"}"#, "the filter variables' All value matches every row");
                }
                queries += 1;
            }
        }
    }
    for kpi in [
        "Concurrent viewers", "Attempts", "Video start time p50", "Video start time p95", "Rebuffer ratio",
        "Connection-induced rebuffer ratio", "Video start failures", "Exits before video start", "Playback failures",
        "CDN cache-hit ratio", "Average bitrate", "Errors",
    ] {
        assert!(titles.iter().filter(|t| t.starts_with(kpi)).count() >= 2, "{kpi}: a tile and a time series");
    }
    for breakdown in ["By CDN", "By country", "By device", "By os", "By browser", "By player", "By stream type"] {
        assert!(titles.iter().any(|t| t == breakdown), "breakdown {breakdown:?} missing from {titles:?}");
    }
    assert!(queries >= 30, "{queries} queries checked");
}
