//! The metrics API of `qoeflow serve` on known traffic: every series sums to the dataset's totals, the
//! breakdown ranks dimension values, and bad parameters get 400 naming the parameter.


use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::common::parquet::*;
use crate::common::workload::*;
use crate::common::*;
use serde_json::Value;

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

fn total(points: &[Value], field: &str) -> i64 {
    points.iter().map(|p| p[field].as_i64().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_breakdown_answer_from_the_dataset() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut q = Qoeflow::serve(dir.path(), &[], &[]);
    // Asked before any data: the files written later must still be seen (no stale listing).
    let (status, empty) = get(&format!("{}/api/v1/summary?from=now-1h", q.url)).await;
    assert_eq!((status, &empty["metrics"]["attempts"]), (200, &serde_json::json!(0)), "{empty}");
    let t0 = now_ms() - 120_000;
    post_views(&q, 30, t0, 1000).await;
    wait_for_views(dir.path(), 30, Duration::from_secs(30));
    let windows = read_table(dir.path(), "qoe_window");
    let api = format!("{}/api/v1", q.url);
    let range = "from=now-1h&to=now";

    let (status, body) = get(&format!("{api}/metrics?{range}&step=1m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["step"], 60_000);
    let series = body["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "no group_by: one series");
    let points = series[0]["points"].as_array().expect("points");
    for field in ["attempts", "starts", "play_ms", "stall_ms", "vsf", "ebvs", "active_views"] {
        assert_eq!(total(points, field), sum(&windows, field), "series total of {field}");
    }
    assert!(points.iter().any(|p| p["startup_p50"].as_f64().is_some()), "start-time percentiles present");
    assert!(points.iter().all(|p| p["t"].as_i64().expect("t") % 60_000 == 0), "buckets align to the step");

    let (status, body) = get(&format!("{api}/metrics?{range}&step=10s&group_by=cdn&filter=stream_type:vod")).await;
    assert_eq!(status, 200, "{body}");
    let groups: Vec<&str> = body["series"].as_array().expect("series").iter().map(|s| s["group"].as_str().expect("group")).collect();
    assert_eq!(groups.len(), 3, "{groups:?}");
    let per_cdn: i64 = body["series"].as_array().expect("series").iter().map(|s| total(s["points"].as_array().expect("points"), "attempts")).sum();
    assert_eq!(per_cdn, sum(&windows, "attempts"));
    let (_, body) = get(&format!("{api}/metrics?{range}&filter=cdn:nope")).await;
    assert!(body["series"].as_array().expect("series").is_empty(), "a filter that matches nothing");

    assert!(points.iter().any(|p| p["concurrent_viewers"].as_i64() > Some(0)), "concurrent viewers per bucket");

    let (status, body) = get(&format!("{api}/summary?{range}")).await;
    assert_eq!(status, 200, "{body}");
    for field in ["attempts", "starts", "play_ms", "stall_ms", "vsf", "ebvs", "errors"] {
        assert_eq!(body["metrics"][field].as_i64(), Some(sum(&windows, field)), "summary {field}");
    }
    let peak = body["peak_concurrent_viewers"].as_i64().expect("peak");
    assert!(peak > 0 && peak <= 30 && body["concurrent_viewers"].as_i64() <= Some(peak), "{body}");

    let (status, body) = get(&format!("{api}/breakdown?dimension=cdn&{range}&limit=2")).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "limit");
    assert!(rows[0]["attempts"].as_i64() >= rows[1]["attempts"].as_i64(), "ranked by attempts");
    let (_, body) = get(&format!("{api}/breakdown?dimension=cdn&{range}")).await;
    let all: i64 = body["rows"].as_array().expect("rows").iter().map(|r| r["attempts"].as_i64().unwrap_or(0)).sum();
    assert_eq!(all, sum(&windows, "attempts"));
    for r in body["rows"].as_array().expect("rows") {
        assert!(r["vsf_pct"].is_number() && r["rebuffer_ratio"].is_number() || r["rebuffer_ratio"].is_null());
    }

    // More traffic after those queries: the new files are seen (no stale file listing).
    let client = reqwest::Client::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    for v in 0..3u64 {
        for b in view_beacons(&format!("more-{v}"), v, now_ms() - 20_000) {
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
    wait_for_views(dir.path(), 33, Duration::from_secs(30));
    let (_, body) = get(&format!("{api}/summary?{range}")).await;
    assert_eq!(body["metrics"]["attempts"].as_i64(), Some(33), "{body}");

    for (query, parameter) in [
        ("metrics?step=abc", "step"),
        ("metrics?from=yesterday", "from"),
        ("metrics?from=now&to=now-1h", "from"),
        ("metrics?group_by=planet", "group_by"),
        ("metrics?filter=cdn", "filter"),
        ("metrics?filter=planet:mars", "filter"),
        ("metrics?from=now-7d&step=1s", "step"),
        ("breakdown?from=now-1h", "dimension"),
        ("breakdown?dimension=cdn&limit=0", "limit"),
    ] {
        let (status, body) = get(&format!("{api}/{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_parameter");
        assert!(body["message"].as_str().expect("message").starts_with(&format!("parameter `{parameter}`")), "{query}: {body}");
    }
    q.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_endpoint_is_read_only_authenticated_and_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = [("QOEFLOW_SQL__MAX_ROWS", "5"), ("QOEFLOW_SQL__TIMEOUT_MS", "300")];
    let q = Qoeflow::serve(dir.path(), &["--admin-token", "s3cret"], &env);
    let client = reqwest::Client::new();
    let stop = AtomicBool::new(false);
    for v in 0..8u64 {
        for b in view_beacons(&format!("view-{v}"), v, now_ms() - 60_000) {
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
    wait_for_views(dir.path(), 8, Duration::from_secs(30));
    let url = format!("{}/api/v1/sql", q.url);
    let sql = |token: Option<&str>, sql: &str| {
        let mut req = client.post(&url).json(&serde_json::json!({"sql": sql}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let ok = Some("s3cret");
    let (status, body) = sql(ok, "SELECT count(*) AS n FROM views").await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &serde_json::json!(8)), "{body}");
    assert_eq!(body["columns"], serde_json::json!(["n"]));
    assert_eq!(body["truncated"], false);

    let (status, body) = sql(ok, "SELECT view_id FROM views").await;
    assert_eq!(status, 200);
    assert_eq!(body["rows"].as_array().expect("rows").len(), 5, "row limit");
    assert_eq!(body["truncated"], true);

    assert_eq!(sql(None, "SELECT 1").await.0, 401);
    assert_eq!(sql(Some("wrong"), "SELECT 1").await.0, 401);

    for refused in [
        "CREATE TABLE t (a INT)",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
        "CREATE VIEW v AS SELECT 1",
        "DROP VIEW qoe_ratios",
        "INSERT INTO views SELECT * FROM views",
        "COPY (SELECT 1) TO '/tmp/qoeflow-sql-escape.csv'",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_parquet('/etc/passwd')",
    ] {
        let (status, body) = sql(ok, refused).await;
        assert_eq!(status, 400, "{refused}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/qoeflow-sql-escape.csv").exists(), "COPY wrote nothing");
    let (status, body) = sql(ok, "SELECT count(*) FROM generate_series(1, 5000000000)").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("query_timeout")), "{body}");
    // Still serving after all that.
    assert_eq!(sql(ok, "SELECT count(*) AS n FROM qoe_ratios").await.0, 200);

    // Without a token configured the endpoint is off.
    let dir2 = tempfile::tempdir().expect("tmp");
    let q2 = Qoeflow::serve(dir2.path(), &[], &[]);
    let r = client.post(format!("{}/api/v1/sql", q2.url)).bearer_auth("x").json(&serde_json::json!({"sql": "SELECT 1"})).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 403);
}

/// The served OpenAPI document is the one in the repository, and it documents every route and every
/// parameter the handlers read (the ones the 400 tests above exercise).
#[tokio::test]
async fn the_openapi_document_matches_the_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = Qoeflow::serve(dir.path(), &[], &[]);
    let (status, served) = get(&format!("{}/api/v1/openapi.json", q.url)).await;
    assert_eq!(status, 200);
    let file: Value = serde_json::from_slice(&std::fs::read(repo_root().join("query/openapi.json")).expect("read")).expect("json");
    assert_eq!(served, file, "served document is the repository's");
    let params = |path: &str, method: &str| -> Vec<String> {
        served["paths"][path][method]["parameters"]
            .as_array()
            .map(|a| a.iter().map(|p| p["name"].as_str().expect("name").to_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(params("/api/v1/metrics", "get"), ["from", "to", "step", "group_by", "filter"]);
    assert_eq!(params("/api/v1/breakdown", "get"), ["dimension", "from", "to", "filter", "limit"]);
    assert!(served["paths"]["/api/v1/sql"]["post"]["requestBody"].is_object());
    assert_eq!(params("/api/v1/alerts", "get"), ["from", "to", "limit"]);
    assert!(served["paths"]["/api/v1/alerts/rules"]["get"].is_object());
    let dims: Vec<&str> = served["paths"]["/api/v1/metrics"]["get"]["parameters"][3]["schema"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .map(|v| v.as_str().expect("str"))
        .collect();
    assert_eq!(dims, schemas::tables::DIM_COLUMNS, "dimensions documented = dimensions accepted");
    assert_eq!(params("/api/v1/summary", "get"), ["from", "to", "filter"]);
    // The documented metrics are exactly the ones served.
    let (_, summary) = get(&format!("{}/api/v1/summary", q.url)).await;
    let mut served_metrics: Vec<&String> = summary["metrics"].as_object().expect("metrics").keys().collect();
    let mut documented: Vec<&String> = served["components"]["schemas"]["Metrics"]["properties"].as_object().expect("props").keys().collect();
    served_metrics.sort();
    documented.sort();
    assert_eq!(served_metrics, documented);
}
