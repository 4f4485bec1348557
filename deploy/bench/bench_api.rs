//! Dashboard API latency over a day of data. Writes a day of `qoeflow loadgen` viewers (ending now,
//! flushed into records as the SDK would send them) through the real pipeline into DATA_DIR, then times the dashboard's requests against the HTTP API on the Parquet
//! backend three times: with the files as the pipeline wrote them (one per epoch and partition), after
//! compacting the closed hours (which writes their minute rollups, `qoe_minute`), and over the same
//! compacted files with the rollups moved away (what the API read before them), checking first that the
//! answers over a fixed day are the same either way. Prints a table of medians and p95s;
//! `deploy/bench/api.sh` adds a DuckDB baseline over the same `qoe_window` files.
//!
//! cargo run --release -p bench --bin bench_api -- DATA_DIR [VIEWS=50000] [EPOCHS=8640] [RUNS=9] [AS_WRITTEN_RUNS=RUNS]

/// The allocator of the `qoeflow` binary, so the benchmark runs the code as the binary does.
#[global_allocator]
static ALLOC: service::memory::Allocator = service::memory::Allocator;

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
    // The allocator as `qoeflow` runs it.
    service::memory::pin_mmap_threshold();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().ok_or_else(|| anyhow::anyhow!("usage: bench_api DATA_DIR [VIEWS] [EPOCHS] [RUNS] [AS_WRITTEN_RUNS]"))?);
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (views, epochs, runs) = (num(1, 50_000), num(2, 8_640), num(3, 9) as usize);
    // Timing the files as written (one per epoch) takes minutes: 0 skips it.
    let as_written_runs = num(4, runs as u64) as usize;
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
    let as_written = if as_written_runs > 0 {
        eprintln!("timing the API over {} Parquet files ({window_files} of qoe_window), as written", count_files(&data.join("parquet")));
        Some(time_requests(&url, as_written_runs).await?)
    } else {
        None
    };

    let t = Instant::now();
    // The pipeline's files carry its identity, `local-<instance id>`.
    let source = format!("local-{}", pipeline::runner::instance_id(&data)?);
    let sink = ParquetSink::new(objstore::Location::local(data.join("parquet")), source, config.dims.clone());
    let done = sink
        .compact(last_epoch, now - 10 * 60_000, 2, 128 << 20)
        .await?;
    let compacted_files = count_files(&data.join("parquet/qoe_window"));
    let minute_dir = data.join("parquet").join(pipeline::rollup::ROLLUP_TABLE);
    let rollup_files = count_files(&minute_dir);
    eprintln!("compacted {} partitions ({} files) in {:.1} s: {compacted_files} qoe_window files, {rollup_files} minute rollups", done.partitions, done.files_in, t.elapsed().as_secs_f64());
    anyhow::ensure!(done.partitions > 0, "compaction merged nothing: the benchmark would time the files as written twice");
    // The day's fixed range, answered from the rollups and without them, must be the same.
    let day = format!("from={}&to={}", now - DAY, now);
    let fixed = [format!("summary?{day}"), format!("metrics?{day}"), format!("metrics?group_by=cdn&{day}"), format!("breakdown?dimension=country&{day}")];
    let answers = async |url: &str| -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        for r in &fixed {
            out.push(reqwest::get(format!("{url}/api/v1/{r}")).await?.error_for_status()?.json().await?);
        }
        Ok(out)
    };
    let from_rollups = answers(&url).await?;
    eprintln!("timing the API over the compacted files with their minute rollups");
    let rolled = time_requests(&url, runs).await?;
    // The same files without the rollups: what the API read before them.
    let aside = data.join("qoe_minute.aside");
    std::fs::rename(&minute_dir, &aside)?;
    anyhow::ensure!(answers(&url).await? == from_rollups, "the API answers differently from the rollups and from qoe_window");
    eprintln!("the API's answers over the fixed day are the same from the rollups and from qoe_window");
    eprintln!("timing the API over the compacted files without rollups");
    let compacted = time_requests(&url, runs).await?;
    std::fs::rename(&aside, &minute_dir)?;

    println!("dashboard API over a day ({views} views, {events} events, {total} records), Parquet backend, {runs} timed runs each");
    let head = [format!("as written ({window_files} f)"), format!("compacted ({compacted_files} f)"), format!("+ rollups ({rollup_files} f)")];
    println!("{:<44} {:>22} {:>22} {:>22}", "request", head[0], head[1], head[2]);
    println!("{:<44} {:>22} {:>22} {:>22}", "", "median / p95 ms", "median / p95 ms", "median / p95 ms");
    for (i, ((r, m2, p2), (_, m3, p3))) in compacted.iter().zip(&rolled).enumerate() {
        let first = as_written.as_ref().map_or_else(|| "-".to_owned(), |a| format!("{:.1} / {:.1}", a[i].1, a[i].2));
        println!("{:<44} {:>22} {:>22} {:>22}", format!("GET /api/v1/{r}"), first, format!("{m2:.1} / {p2:.1}"), format!("{m3:.1} / {p3:.1}"));
    }
    Ok(())
}
