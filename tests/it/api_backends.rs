//! The metrics API's two backends answer the same: `qoeflow serve --clickhouse-url` writes the same
//! traffic to Parquet and ClickHouse, then a `qoeflow query-server` on each backend is asked the same
//! questions and must give identical JSON. The ClickHouse SQL endpoint is read-only and bounded.

use std::time::Duration;

use crate::common::clickhouse::ClickHouse;
use crate::common::workload::*;
use crate::common::*;
use serde_json::{Value, json};

async fn get(url: &str) -> Value {
    let r = reqwest::get(url).await.expect("get");
    assert_eq!(r.status().as_u16(), 200, "{url}");
    r.json().await.expect("json body")
}

fn query_server(args: &[&str], env: &[(&str, &str)]) -> Qoeflow {
    let mut all = vec!["query-server", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Qoeflow::spawn(&all, env, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_and_clickhouse_backends_answer_the_same() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(ch_dir.path());
    let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &[]);
    let client = reqwest::Client::new();
    let t0 = now_ms() - 90_000;
    post_views(&q, 45, t0, 1_300).await;
    wait_for_views(dir.path(), 45, Duration::from_secs(30));
    ch.wait_for_views(45, Duration::from_secs(30));
    q.stop();

    let data_dir = dir.path().to_str().expect("utf-8");
    let env = [("QOEFLOW_SQL__MAX_ROWS", "5"), ("QOEFLOW_SQL__TIMEOUT_MS", "1000")];
    let parquet = query_server(&["--data-dir", data_dir, "--backend", "parquet"], &[]);
    let clickhouse = query_server(&["--backend", "clickhouse", "--clickhouse-url", &ch.url(), "--admin-token", "t"], &env);

    // Fixed times, so both servers see the same range.
    let range = format!("from={}&to={}", t0 - 3_600_000, now_ms() + 3_600_000);
    let mut questions = vec![
        format!("summary?{range}"),
        format!("summary?{range}&filter=cdn:akamai"),
        format!("metrics?{range}&step=10s"),
        format!("metrics?{range}&step=1m&group_by=cdn"),
        format!("metrics?{range}&step=30s&group_by=player_name&filter=stream_type:vod"),
        format!("breakdown?dimension=cdn&{range}&limit=2"),
        format!("breakdown?dimension=cdn&{range}&filter=cdn:it's%20\\%20odd"),
    ];
    for dim in ["cdn", "country", "device_type", "os", "browser", "player_name", "stream_type", "video_id"] {
        questions.push(format!("breakdown?dimension={dim}&{range}"));
    }
    for question in &questions {
        let a = get(&format!("{}/api/v1/{question}", parquet.url)).await;
        let b = get(&format!("{}/api/v1/{question}", clickhouse.url)).await;
        assert_eq!(a, b, "{question}: parquet and clickhouse disagree");
    }
    // And the answers are about the traffic, not empty on both sides.
    let summary = get(&format!("{}/api/v1/summary?{range}", clickhouse.url)).await;
    assert_eq!(summary["metrics"]["attempts"], 45, "{summary}");
    assert!(summary["metrics"]["startup_p95"].as_f64() > Some(0.0), "{summary}");
    assert!(summary["peak_concurrent_viewers"].as_i64() > Some(0), "{summary}");
    let empty = get(&format!("{}/api/v1/breakdown?dimension=cdn&{range}&filter=cdn:it's%20\\%20odd", clickhouse.url)).await;
    assert_eq!(empty["rows"], json!([]), "a quote and a backslash in a filter value are data, not SQL");

    // POST /api/v1/sql on ClickHouse: read-only, row limit, time limit.
    let sql = |sql: &str| {
        let req = client.post(format!("{}/api/v1/sql", clickhouse.url)).bearer_auth("t").json(&json!({"sql": sql}));
        async move {
            let r = req.send().await.expect("post");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = sql("SELECT count() AS n FROM views FINAL").await;
    assert_eq!((status, &body["rows"][0]["n"], &body["columns"]), (200, &json!(45), &json!(["n"])), "{body}");
    let (status, body) = sql("SELECT view_id FROM views FINAL ORDER BY view_id;").await;
    assert_eq!((status, body["rows"].as_array().map(Vec::len), &body["truncated"]), (200, Some(5), &json!(true)), "{body}");
    for refused in [
        "DROP TABLE views",
        "INSERT INTO views SELECT * FROM views",
        "CREATE TABLE t (a Int8) ENGINE = Memory",
        "SELECT * FROM file('/etc/passwd', 'TSV', 'line String')",
        "SELECT * FROM url('http://127.0.0.1:9/', 'TSV', 'line String')",
        "SET max_threads = 1",
        "SELECT 1) UNION ALL (SELECT * FROM file('/etc/passwd', 'TSV', 'line String')",
    ] {
        let (status, body) = sql(refused).await;
        assert_eq!(status, 400, "{refused}: {body}");
        if refused.starts_with(['D', 'I', 'C', 'S']) && !refused.starts_with("SELECT") {
            assert!(body["message"].as_str().is_some_and(|m| m.contains("only SELECT")), "{refused}: {body}");
        }
        if refused.starts_with("SELECT * FROM") {
            assert!(body["message"].as_str().is_some_and(|m| m.contains("readonly")), "{refused}: {body}");
        }
    }
    let (status, body) = sql("SELECT count() FROM system.numbers").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("query_timeout")), "{body}");
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.views FINAL"), 45, "nothing was dropped or added");
}
