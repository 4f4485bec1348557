//! qoeflow watching itself: Debian's `prometheus` scrapes `serve`, `ingest` and `pipeline --listen` in
//! the Kinesis topology. With loadgen traffic, and the pipeline paused (SIGSTOP) for a while so it falls
//! behind, Prometheus sees the pipeline's lag and `MillisBehindLatest` rise and fall back to 0, its epoch
//! histogram fill, and its per-shard read counters end equal to what the stream holds; the example
//! alerting rules (`deploy/prometheus/qoeflow-rules.yml`) load and evaluate cleanly; every panel of the
//! Grafana operations dashboard (`dashboards/grafana/qoeflow-operations.json`) returns series.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::kinesis::*;
use crate::common::prom::{Prometheus, webhook_receiver};
use crate::common::workload::*;
use crate::common::*;
use crate::grafana::{all_panels, datasource_plugin};
use schemas::Record;

const STREAM: &str = "beacons";

/// Polls Prometheus until `promql`'s first sample satisfies `ok`, or fails after `within`.
async fn wait_for(prom: &Prometheus, what: &str, promql: &str, within: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = prom.scalar(promql).await;
        if let Some(v) = value
            && ok(v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {promql} is {value:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_process_and_sees_the_pipeline_lag_move_with_traffic() {
    let emu = Emulator::start();
    let client = emu.client().await;
    create_stream(&client, STREAM, 2).await;
    let dir = tempfile::tempdir().expect("tmp");

    let collector = Qoeflow::ingest(STREAM, &emu.endpoint, &[], &[]);
    let pipeline_port = free_port();
    let pipeline_listen = format!("127.0.0.1:{pipeline_port}");
    let data = dir.path().join("pipeline");
    let mut env = AWS_ENV.to_vec();
    env.push(("QOEFLOW_PIPELINE__FLUSH_INTERVAL_MS", "100"));
    // 10 records per shard per GetRecords: a backlog takes several epochs, behind the stream's tip.
    env.push(("QOEFLOW_PIPELINE__MAX_RECORDS_PER_EPOCH", "20"));
    let mut pipeline = Qoeflow::spawn_until(
        &[
            "pipeline", "--kinesis-stream", STREAM, "--kinesis-endpoint", &emu.endpoint, "--data-dir", data.to_str().expect("utf-8"),
            "--listen", &pipeline_listen,
        ],
        &env,
        "pipeline: resuming from checkpoint",
    );

    // serve (embedded log) with a QoE alert destination, so its alert-delivery series exist too.
    let (hook, _got) = webhook_receiver().await;
    let config = dir.path().join("qoeflow.toml");
    std::fs::write(&config, format!("[alerts]\ninterval_ms = 1000\nwebhook_urls = [\"{hook}/direct\"]\n")).expect("config");
    let serve_data = dir.path().join("serve");
    let serve = Qoeflow::spawn(
        &["--config", config.to_str().expect("utf-8"), "serve", "--listen", "127.0.0.1:0", "--data-dir", serve_data.to_str().expect("utf-8")],
        &[],
        None,
    );

    let rules = repo_root().join("deploy/prometheus/qoeflow-rules.yml");
    let prom = Prometheus::start(
        dir.path(),
        &[("qoeflow-serve", &serve.addr), ("qoeflow-ingest", &collector.addr), ("qoeflow-pipeline", &pipeline_listen)],
        Some(&rules),
    );
    wait_for(&prom, "every target scraped", "sum(up)", Duration::from_secs(30), |v| v == 3.0).await;
    let epochs_before = prom.scalar(r#"sum(qoeflow_pipeline_epoch_duration_seconds_count{job="qoeflow-pipeline"})"#).await.unwrap_or(0.0);

    // Traffic: 400 viewers over 20 s into the collector; the pipeline is paused from 4 s to 14 s.
    post_views(&serve, 20, now_ms() - 60_000, 1_000).await;
    let _ = reqwest::get(format!("{}/api/v1/summary?from=now-1h", serve.url)).await.expect("summary");
    let mut loadgen = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(["loadgen", "--target", &collector.url, "--viewers", "400", "--duration", "25s", "--ramp-up", "20s", "--seed", "9", "--quiet"])
        .env("QOEFLOW_LOG_LEVEL", "warn")
        .spawn()
        .expect("loadgen");
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(pipeline.pid(), "-STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal(pipeline.pid(), "-CONT");

    // Behind, as Prometheus sees it: the shards' MillisBehindLatest and the committed epochs' lag.
    let behind = wait_for(
        &prom,
        "a shard behind the stream's tip",
        r#"max(max_over_time(qoeflow_pipeline_millis_behind_latest{job="qoeflow-pipeline"}[2m]))"#,
        Duration::from_secs(30),
        |v| v > 0.0,
    )
    .await;
    let lag = wait_for(
        &prom,
        "the pipeline's lag",
        r#"max(max_over_time(qoeflow_pipeline_lag_milliseconds{job="qoeflow-pipeline"}[2m]))"#,
        Duration::from_secs(30),
        |v| v > 0.0,
    )
    .await;
    println!("seen behind: MillisBehindLatest up to {behind} ms, lag up to {lag} ms");
    assert!(loadgen.wait().expect("loadgen").success(), "loadgen");

    // Caught up: every record the stream holds was read, per shard, and the lag is back to 0.
    let stream = read_stream(&client, STREAM).await;
    let events: usize = stream.iter().map(|r| if let Record::Events(e) = &r.record { e.events.len() } else { 0 }).sum();
    wait_for(
        &prom,
        "every stream record read",
        r#"sum(qoeflow_pipeline_records_read_total{job="qoeflow-pipeline"})"#,
        Duration::from_secs(60),
        |v| v == stream.len() as f64,
    )
    .await;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let want = stream.iter().filter(|r| r.shard == shard).count() as f64;
        let q = format!(r#"sum(qoeflow_pipeline_records_read_total{{job="qoeflow-pipeline",partition="{shard}"}})"#);
        assert_eq!(prom.scalar(&q).await, Some(want), "{shard}");
    }
    wait_for(&prom, "events read", r#"sum(qoeflow_pipeline_events_read_total{job="qoeflow-pipeline"})"#, Duration::from_secs(10), |v| {
        v == events as f64
    })
    .await;
    assert_eq!(prom.scalar(r#"sum(qoeflow_ingest_events_accepted_total{job="qoeflow-ingest"})"#).await, Some(events as f64));
    wait_for(&prom, "lag back to 0", r#"max(qoeflow_pipeline_lag_milliseconds{job="qoeflow-pipeline"})"#, Duration::from_secs(30), |v| v == 0.0).await;
    wait_for(
        &prom,
        "shards at their tip",
        r#"max(qoeflow_pipeline_millis_behind_latest{job="qoeflow-pipeline"})"#,
        Duration::from_secs(30),
        |v| v == 0.0,
    )
    .await;
    let epochs = prom.scalar(r#"sum(qoeflow_pipeline_epoch_duration_seconds_count{job="qoeflow-pipeline"})"#).await.expect("epochs");
    assert!(epochs >= epochs_before + 10.0, "epochs observed: {epochs_before} before the traffic, {epochs} after");
    let p99 = prom
        .scalar(r#"histogram_quantile(0.99, sum by (le) (rate(qoeflow_pipeline_epoch_duration_seconds_bucket{job="qoeflow-pipeline"}[2m])))"#)
        .await
        .expect("epoch p99");
    assert!(p99 > 0.0 && p99.is_finite(), "epoch duration p99 {p99}");
    // serve: the local log's lag in records and the query API's latency per endpoint.
    assert!(prom.scalar(r#"max(qoeflow_pipeline_partition_lag_records{job="qoeflow-serve",partition="local"})"#).await.is_some());
    assert!(prom.scalar(r#"sum(qoeflow_query_requests_total{job="qoeflow-serve",endpoint="/api/v1/summary"})"#).await >= Some(1.0));
    // The closed hours' cache of the metrics API is watched (its counters exist from the start).
    assert!(prom.scalar(r#"sum(qoeflow_query_hour_cache_misses_total{job="qoeflow-serve"})"#).await.is_some());
    assert!(prom.scalar(r#"max(qoeflow_query_hour_cache_bytes{job="qoeflow-serve"})"#).await.is_some());

    // The example operator rules: loaded, every one evaluated without error.
    let loaded = prom.rules().await;
    let rules: Vec<Value> = loaded["data"]["groups"].as_array().expect("groups").iter().flat_map(|g| g["rules"].as_array().expect("rules").clone()).collect();
    assert!(rules.len() >= 8, "{loaded}");
    for name in ["QoeflowPipelineLagging", "QoeflowPipelineStalled", "QoeflowSinkErrors", "QoeflowCollector5xx"] {
        assert!(rules.iter().any(|r| r["name"] == name), "{name} missing from {loaded}");
    }
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }

    // The Grafana operations dashboard: every panel's query returns series.
    let file = repo_root().join("dashboards/grafana/qoeflow-operations.json");
    assert_eq!(datasource_plugin(&file), "prometheus");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("dashboard JSON");
    let mut checked = 0;
    for panel in all_panels(&dashboard).into_iter().filter(|p| p["type"] != "row") {
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["type"], "prometheus");
            let expr = target["expr"].as_str().expect("expr").replace("$__rate_interval", "2m");
            assert!(!expr.contains('$'), "an unexpanded variable in {expr}");
            assert!(!prom.query(&expr).await.is_empty(), "{}: no series from {expr}", panel["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} panel queries");
    pipeline.stop();
}
