//! `qoeflow serve --clickhouse-url`: the same tables in a real ClickHouse server as in Parquet, and a
//! ClickHouse outage under load that loses nothing and doubles nothing.


use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::common::clickhouse::ClickHouse;
use crate::common::parquet::*;
use crate::common::workload::*;
use crate::common::*;

const WINDOW_SUMS: [&str; 12] = [
    "attempts", "starts", "startup_ms_sum", "vsf", "ebvs", "play_ms", "stall_ms", "seek_stall_ms", "bitrate_ms",
    "bytes_total", "errors", "active_views",
];

/// ClickHouse (read with FINAL) holds exactly what the Parquet dataset holds.
fn assert_clickhouse_equals_parquet(ch: &ClickHouse, dir: &std::path::Path) {
    let windows = read_table(dir, "qoe_window");
    for col in WINDOW_SUMS {
        assert_eq!(ch.scalar(&format!("SELECT sum({col}) FROM qoeflow.qoe_window FINAL")), sum(&windows, col), "qoe_window.{col}");
    }
    let views = read_table(dir, "views");
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.views FINAL") as usize, num_rows(&views));
    for col in ["play_ms", "stall_count", "startup_ms", "bytes_hit"] {
        assert_eq!(ch.scalar(&format!("SELECT sum({col}) FROM qoeflow.views FINAL")), sum(&views, col), "views.{col}");
    }
    let events = read_table(dir, "events");
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.events FINAL") as usize, num_rows(&events));
    assert_eq!(ch.scalar("SELECT count() FROM qoeflow.rejected FINAL") as usize, num_rows(&read_table(dir, "rejected")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_the_same_tables_to_clickhouse() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let ch = ClickHouse::start(ch_dir.path());
    let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &[]);
    let client = reqwest::Client::new();
    let t0 = now_ms() - 60_000;
    post_views(&q, 60, t0, 501).await;
    // One bad event, for the dead-letter table.
    let bad = serde_json::json!({"sent_at": t0, "events": [{"view_id": "x", "seq": 0, "type": "nope", "ts": t0}]});
    assert_eq!(client.post(q.beacon_url()).json(&bad).send().await.expect("post").status().as_u16(), 200);
    wait_for_views(dir.path(), 60, Duration::from_secs(30));
    ch.wait_for_views(60, Duration::from_secs(30));
    q.stop();
    assert_matches_reference(dir.path());
    assert_clickhouse_equals_parquet(&ch, dir.path());
    assert_eq!(ch.query("SELECT tag FROM qoeflow.rejected"), "unknown_type");
    // The DDL is idempotent: a restart against the existing tables works and adds nothing.
    let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &[]);
    q.stop();
    assert_clickhouse_equals_parquet(&ch, dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_under_load_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let ch_dir = tempfile::tempdir().expect("tmp");
    let mut ch = ClickHouse::start(ch_dir.path());
    let env = [("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100")];
    let mut q = Qoeflow::serve(dir.path(), &["--clickhouse-url", &ch.url()], &env);
    let url = Arc::new(q.beacon_url());
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = now_ms() - 120_000;
    let views = 240u64;
    let mut clients = Vec::new();
    for c in 0..6u64 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            for v in (c..views).step_by(6) {
                for b in view_beacons(&format!("view-{v}"), v, t0 + v as i64 * 211) {
                    assert!(post_until_ok(&client, || url.to_string(), &b, &stop).await);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    ch.kill();
    q.wait_for_line("pipeline paused", Duration::from_secs(20));
    let acked_during_outage = metric(&q.url, "qoeflow_ingest_events_accepted_total").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        metric(&q.url, "qoeflow_ingest_events_accepted_total").await > acked_during_outage,
        "the collector keeps accepting while ClickHouse is down"
    );
    ch.restart();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c).await.expect("clients finish").expect("client task");
    }
    wait_for_views(dir.path(), views as usize, Duration::from_secs(60));
    ch.wait_for_views(views as i64, Duration::from_secs(60));
    q.stop();
    assert_matches_reference(dir.path());
    assert_clickhouse_equals_parquet(&ch, dir.path());
}
