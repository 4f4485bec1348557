//! Dashboard API latency over a day of data. Writes a day of `qoeflow loadgen` viewers (ending now,
//! flushed into records as the SDK would send them) through the real pipeline into DATA_DIR, then times the dashboard's requests against the HTTP API on the Parquet
//! backend: with the files as the pipeline wrote them (one per epoch and partition), after compacting
//! the closed hours (which writes their minute rollups, `qoe_minute`; the open hour by levels, as
//! `serve` does) with and without the closed
//! hours' cache (`query.hour_cache_bytes`), and over the same compacted files with the rollups moved
//! away (what the API read before them), checking first that the answers over a fixed day are the same
//! every way. Prints a table of medians and p95s (and the cache's first, filling request);
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

/// Per request: its median and p95 over `runs` timed runs, and the untimed first run's time.
async fn time_requests(url: &str, runs: usize) -> anyhow::Result<Vec<(String, f64, f64, f64)>> {
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
        let (mut times, mut first) = (Vec::new(), 0.0);
        for i in 0..runs + 1 {
            let t = Instant::now();
            let resp = client.get(format!("{url}/api/v1/{r}")).send().await?;
            anyhow::ensure!(resp.status().is_success(), "{r}: {}", resp.status());
            let body: Value = resp.json().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if i > 0 {
                // The first run warms the OS page cache (and fills the hours' cache: reported apart);
                // the rest are timed.
                times.push(ms);
            } else {
                first = ms;
            }
            if r.starts_with("summary?from=now-24h") && i == 0 {
                eprintln!("  24h attempts: {}", body["metrics"]["attempts"]);
            }
        }
        out.push((r.to_owned(), percentile(times.clone(), 0.5), percentile(times, 0.95), first));
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

    // The API as configured by default (with the closed hours' cache), and without the cache.
    let serve_api = async |config: query::QueryConfig| -> anyhow::Result<String> {
        let backend = Backend::open(&config, &objstore::Location::local(data.join("parquet")), &Default::default()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, query::api::router(backend, Default::default(), &config, axum::Router::new(), query::api::RequestMetrics::new(&prometheus::Registry::new()))).await });
        Ok(url)
    };
    let url = serve_api(Default::default()).await?;
    let uncached_url = serve_api(query::QueryConfig { hour_cache_bytes: 0, ..Default::default() }).await?;

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
    // The closed hours merged (with their rollups), and the open hour as `serve` keeps it: compacted
    // by levels (`compact_open_files`), not one file per epoch.
    let policy = pipeline::parquet::Compaction {
        closed_before: now - 10 * 60_000,
        min_files: 2,
        open_files: config.compact_open_files,
        target_bytes: 128 << 20,
        open_target_bytes: config.compact_open_target_bytes,
        roll_up: true,
    };
    let done = sink.compact_while(last_epoch, policy, || true).await?;
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
    // The cached API first, so that each request's first run finds the cache empty for its shapes.
    eprintln!("timing the API over the compacted files with their minute rollups and the hours' cache");
    let cached = time_requests(&url, runs).await?;
    eprintln!("timing the API over the compacted files with their minute rollups, without the hours' cache");
    let rolled = time_requests(&uncached_url, runs).await?;
    let from_rollups = answers(&url).await?;
    anyhow::ensure!(answers(&uncached_url).await? == from_rollups, "the API answers differently without the hours' cache");
    // The same files without the rollups: what the API read before them.
    let aside = data.join("qoe_minute.aside");
    std::fs::rename(&minute_dir, &aside)?;
    anyhow::ensure!(answers(&url).await? == from_rollups, "the API answers differently from the rollups and from qoe_window");
    eprintln!("the API's answers over the fixed day are the same from the rollups and from qoe_window");
    eprintln!("timing the API over the compacted files without rollups");
    let compacted = time_requests(&url, runs).await?;
    std::fs::rename(&aside, &minute_dir)?;

    println!("dashboard API over a day ({views} views, {events} events, {total} records), Parquet backend, {runs} timed runs each");
    let head = [format!("as written ({window_files} f)"), format!("compacted ({compacted_files} f)"), format!("+ rollups ({rollup_files} f)"), "+ hours' cache".to_owned()];
    println!("{:<44} {:>20} {:>20} {:>20} {:>28}", "request", head[0], head[1], head[2], head[3]);
    println!("{:<44} {:>20} {:>20} {:>20} {:>28}", "", "median / p95 ms", "median / p95 ms", "median / p95 ms", "median / p95 (first) ms");
    for (i, (((r, m2, p2, _), (_, m3, p3, _)), (_, m4, p4, f4))) in compacted.iter().zip(&rolled).zip(&cached).enumerate() {
        let first = as_written.as_ref().map_or_else(|| "-".to_owned(), |a| format!("{:.1} / {:.1}", a[i].1, a[i].2));
        println!("{:<44} {:>20} {:>20} {:>20} {:>28}", format!("GET /api/v1/{r}"), first, format!("{m2:.1} / {p2:.1}"), format!("{m3:.1} / {p3:.1}"), format!("{m4:.1} / {p4:.1} ({f4:.1})"));
    }
    Ok(())
}
