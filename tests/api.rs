//! The metrics API of `qoeflow serve` on known traffic: every series sums to the dataset's totals, the
//! breakdown ranks dimension values, and bad parameters get 400 naming the parameter.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::parquet::*;
use common::workload::*;
use common::*;
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
    let client = reqwest::Client::new();
    let stop = AtomicBool::new(false);
    let t0 = now_ms() - 120_000;
    for v in 0..30u64 {
        for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 1000) {
            assert!(post_until_ok(&client, || q.beacon_url(), &b, &stop).await);
        }
    }
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
