//! Dashboard API latency over a day of data. Writes a day of `qoeflow loadgen` viewers (ending now,
//! flushed into records as the SDK would send them) through the real pipeline into DATA_DIR, then times the dashboard's requests against the HTTP API on the Parquet
//! backend, twice: with the files as the pipeline wrote them (one per epoch and partition) and after
//! compacting the closed hours. Prints a table of medians and p95s; `deploy/bench/api.sh` adds a
//! DuckDB baseline over the same files.
//!
//! cargo run --release -p bench --bin bench_api -- DATA_DIR [VIEWS=50000] [EPOCHS=8640] [RUNS=9]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use locallog::{LocalLog, LogConfig};
use pipeline::PipelineConfig;
use pipeline::parquet::ParquetSink;
use query::backend::Backend;
use loadgen::collector_records;
use loadgen::sim::RunSpec;
use serde_json::Value;

const DAY: i64 = 86_400_000;

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { usize::from(e.path().extension().is_some_and(|x| x == "parquet")) })
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn time_requests(url: &str, runs: usize) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let client = reqwest::Client::new();
    let requests = [
        "summary?from=now-24h",
        "metrics?from=now-24h",
        "metrics?from=now-24h&group_by=cdn",
        "breakdown?dimension=country&from=now-24h",
        "summary?from=now-1h",
        "metrics?from=now-15m",
    ];
    let mut out = Vec::new();
    for r in requests {
        let mut times = Vec::new();
        for i in 0..runs + 1 {
            let t = Instant::now();
            let resp = client.get(format!("{url}/api/v1/{r}")).send().await?;
            anyhow::ensure!(resp.status().is_success(), "{r}: {}", resp.status());
            let body: Value = resp.json().await?;
            if i > 0 {
                // The first run warms the OS page cache; the rest are timed.
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            if r.starts_with("summary?from=now-24h") && i == 0 {
                eprintln!("  24h attempts: {}", body["metrics"]["attempts"]);
            }
        }
        out.push((r.to_owned(), percentile(times.clone(), 0.5), percentile(times, 0.95)));
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().ok_or_else(|| anyhow::anyhow!("usage: bench_api DATA_DIR [VIEWS] [EPOCHS] [RUNS]"))?);
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (views, epochs, runs) = (num(1, 50_000), num(2, 8_640), num(3, 9) as usize);
    anyhow::ensure!(!data.join("parquet").exists(), "{} already holds a dataset", data.display());

    // A day of views ending now, in the local log.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let log = LocalLog::open(LogConfig::new(data.join("log")))?;
    // Viewers arriving over the day; the last ones leave two minutes ago.
    let spec = RunSpec::new(1, DAY - 120_000, DAY - 3_600_000);
    let (records, events, truth) = collector_records(&spec, views, now - DAY, common::enrich());
    eprintln!("generated {views} views: {events} events, {} records; truth: {} attempts", records.len(), truth.sums[schemas::measures::Measure::Attempt]);
    let total = records.len() as u64;
    for chunk in records.chunks(10_000) {
        log.append(chunk.to_vec()).await?;
    }
    drop(records);

    // The pipeline, cutting `epochs` epochs over the day (a live pipeline cuts one a second: 86,400).
    let per_epoch = (total / epochs).max(1) as usize;
    let config = PipelineConfig { flush_interval_ms: 10, max_records_per_epoch: per_epoch, compact_after_ms: 0, ..PipelineConfig::default() };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let task = tokio::spawn(pipeline::local::run(
        log.clone(),
        data.clone(),
        objstore::Location::local(data.join("parquet")),
        config.clone(),
        Default::default(),
        common::status(),
        stop_rx,
    ));
    while common::checkpoint(&data).1 < total {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    task.await??;
    let (last_epoch, _) = common::checkpoint(&data);
    eprintln!("wrote {views} views ({total} records) in {last_epoch} epochs in {:.1} s", t.elapsed().as_secs_f64());

    let backend = Backend::open(
        &Default::default(),
        &objstore::Location::local(data.join("parquet")),
        &Default::default(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, query::api::router(backend, Default::default(), &Default::default(), axum::Router::new(), query::api::RequestMetrics::new(&prometheus::Registry::new()))).await });

    let window_files = count_files(&data.join("parquet/qoe_window"));
    eprintln!("timing the API over {} Parquet files ({window_files} of qoe_window), as written", count_files(&data.join("parquet")));
    let as_written = time_requests(&url, runs).await?;

    let t = Instant::now();
    let sink = ParquetSink::new(
        objstore::Location::local(data.join("parquet")),
        "local",
        config.dims.clone(),
    );
    let done = sink
        .compact(last_epoch, now - 10 * 60_000, 2, 128 << 20)
        .await?;
    let compacted_files = count_files(&data.join("parquet/qoe_window"));
    eprintln!("compacted {} partitions ({} files) in {:.1} s", done.partitions, done.files_in, t.elapsed().as_secs_f64());
    let compacted = time_requests(&url, runs).await?;

    println!("dashboard API over a day ({views} views, {events} events, {total} records), Parquet backend, {runs} timed runs each");
    println!("{:<44} {:>22} {:>22}", "request", format!("as written ({window_files} f)"), format!("compacted ({compacted_files} f)"));
    println!("{:<44} {:>22} {:>22}", "", "median / p95 ms", "median / p95 ms");
    for ((r, m1, p1), (_, m2, p2)) in as_written.iter().zip(&compacted) {
        println!("{:<44} {:>22} {:>22}", format!("GET /api/v1/{r}"), format!("{m1:.1} / {p1:.1}"), format!("{m2:.1} / {p2:.1}"));
    }
    Ok(())
}
