//! Pipeline benchmark: events/s (wall and per CPU core) from the local log through sessionization and
//! windows to Parquet, with the real runner (`pipeline::local::run`), over `qoeflow loadgen`'s simulated
//! traffic (the same viewers, flushed into records as the SDK would send them). Next to it, measured in
//! the same run: reading and decoding the same log only (the floor for any consumer). The dataset of the
//! last round stays in DIR for the DuckDB baseline (`deploy/bench/duckdb_pipeline.py DIR`). Then memory
//! per active view: RSS growth and state-store size with M views open and playing, each in a process of
//! its own: with every open view in memory, and with a tenth of them (`max_cached_views`). Then the cost of
//! corrections: the same traffic sessionized on a state store on disk in order, and with 5 % of the
//! beacons overtaken by the next one of their view by 60 s (beyond the reorder wait): CPU per event, and
//! the events re-derived per late event.
//!
//! cargo run --release -p bench --bin bench_pipeline -- DIR [VIEWS=20000] [ROUNDS=3] [OPEN_VIEWS=100000]

/// The allocator of the `qoeflow` binary, so the benchmark runs the code as the binary does.
#[global_allocator]
static ALLOC: service::memory::Allocator = service::memory::Allocator;

#[path = "common.rs"]
mod common;

use std::time::{Duration, Instant};

use locallog::{LocalLog, LogConfig, LogReader};
use pipeline::{PipelineConfig, Sessionizer};
use loadgen::sim::{RunSpec, ViewSim};
use loadgen::{Flushes, collector_records};
use schemas::{Checked, Record};

/// Sim time 0 of the generated traffic.
const T0: i64 = 1_700_000_000_000;

/// The pipeline's epoch length: its default (an epoch commits Parquet files and a checkpoint).
const FLUSH_MS: u64 = 1_000;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `bench_pipeline memory DIR OPEN_VIEWS MAX_CACHED_VIEWS` and returns what it printed.
fn memory_in_child(out: &std::path::Path, open_views: u64, cached: usize) -> anyhow::Result<String> {
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["memory".as_ref(), out.as_os_str(), open_views.to_string().as_ref(), cached.to_string().as_ref()])
        .output()?;
    anyhow::ensure!(child.status.success(), "memory benchmark failed: {}", String::from_utf8_lossy(&child.stderr));
    Ok(String::from_utf8(child.stdout)?)
}

/// Memory per active view: `open_views` loadgen views that started playing and have not ended, each
/// fed the records of its first flushes up to the first frame, on a state store on disk as the runner
/// keeps it (an epoch commits every 5,000 views opened), with at most `cached` views in memory.
fn memory(out: &std::path::Path, open_views: u64, cached: usize) -> anyhow::Result<()> {
    let spec = RunSpec::new(2, 3_600_000, 1);
    let client = schemas::ClientInfo { device_type: "mobile".into(), os: "iPhone".into(), browser: "Safari".into(), country: "DE".into(), ip: Some("203.0.113.0".into()), ..Default::default() };
    std::fs::create_dir_all(out)?;
    let state_path = out.join(format!("open-views-{cached}.state.redb"));
    let _ = std::fs::remove_file(&state_path);
    let config = PipelineConfig { max_cached_views: cached, ..PipelineConfig::default() };
    let before = rss_bytes();
    let store = pipeline::StateStore::open(&state_path, config.state_cache_mb << 20)?;
    let (mut s, _) = Sessionizer::open(config.session(), store.clone())?;
    let commit = |s: &mut Sessionizer| -> anyhow::Result<()> {
        s.advance();
        drop(s.flush());
        let forgotten = store.commit(s.take_commit(None)?)?;
        s.committed(forgotten);
        Ok(())
    };
    let mut opened = 0u64;
    let mut index = 0u64;
    while opened < open_views {
        let sim = ViewSim::new(&spec, index, T0);
        index += 1;
        let view_id = sim.view_id().to_owned();
        let mut first = Vec::new();
        let mut playing = false;
        for f in Flushes::new(sim) {
            playing = f.events.iter().any(|e| e["type"] == "playing");
            let last = f.last;
            first.push(f);
            if playing || last {
                break;
            }
        }
        if !playing || first.last().is_some_and(|f| f.last) {
            continue;
        }
        for f in first {
            // As the runner takes it: written by the collector, decoded from the log.
            s.process_checked("", Record::decode_checked(&Record::Events(f.record(&view_id, &client, T0)).encode())?);
        }
        opened += 1;
        if opened % 5_000 == 0 {
            commit(&mut s)?;
        }
    }
    commit(&mut s)?;
    let grown = rss_bytes().saturating_sub(before);
    let sizes = s.sizes();
    anyhow::ensure!(sizes.open_views as u64 == open_views, "{} views open, expected {open_views}", sizes.open_views);
    println!(
        "active views: {open_views} open and playing, {} in memory (max_cached_views {cached}); RSS growth {:.0} bytes/view; \
         state store on disk {:.0} bytes/view",
        sizes.cached_views,
        grown as f64 / open_views as f64,
        store.disk_bytes() as f64 / open_views as f64
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The allocator as `qoeflow` runs it.
    service::memory::pin_mmap_threshold();
    if std::env::args().nth(1).as_deref() == Some("memory") {
        let a: Vec<String> = std::env::args().skip(2).collect();
        let (Some(dir), Some(open), Some(cached)) = (a.first(), a.get(1).and_then(|n| n.parse().ok()), a.get(2).and_then(|n| n.parse().ok())) else {
            anyhow::bail!("usage: bench_pipeline memory DIR OPEN_VIEWS MAX_CACHED_VIEWS");
        };
        return memory(std::path::Path::new(dir), open, cached);
    }
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: bench_pipeline DIR [VIEWS] [ROUNDS] [OPEN_VIEWS]"))?);
    let nums: Vec<u64> = args.filter_map(|a| a.parse().ok()).collect();
    let views = *nums.first().unwrap_or(&20_000);
    let rounds = *nums.get(1).unwrap_or(&3);
    let open_views = *nums.get(2).unwrap_or(&100_000);
    // An hour of traffic: `views` viewers arriving over the first 50 minutes.
    let spec = RunSpec::new(1, 3_600_000, 3_000_000);
    let (records, events, truth) = collector_records(&spec, views, T0, common::enrich());
    let total = records.len() as u64;

    let (mut base_rate, mut base_core, mut pipe_rate, mut pipe_core) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let log = LocalLog::open(LogConfig::new(out.join("log")))?;
        for chunk in records.chunks(10_000) {
            log.append(chunk.to_vec()).await?;
        }

        // Baseline: read and decode every record.
        let (t, c) = (Instant::now(), cpu_seconds());
        let mut reader = LogReader::open(&out.join("log"), 0)?;
        let mut n = 0u64;
        loop {
            let batch = reader.read_batch(100_000, u64::MAX)?;
            if batch.is_empty() {
                break;
            }
            for e in batch {
                if let Checked::Events(r) = Record::decode_checked(&e.data)? {
                    n += r.events.len() as u64;
                }
            }
        }
        anyhow::ensure!(n == events, "decoded {n} of {events} events");
        base_rate.push(events as f64 / t.elapsed().as_secs_f64());
        base_core.push(events as f64 / (cpu_seconds() - c).max(0.01));

        // qoeflow pipeline: the real runner until its checkpoint covers the whole log.
        let config = PipelineConfig { flush_interval_ms: FLUSH_MS, ..PipelineConfig::default() };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (t, c) = (Instant::now(), cpu_seconds());
        let task = tokio::spawn(pipeline::local::run(
            log.clone(),
            out.clone(),
            objstore::Location::local(out.join("parquet")),
            config,
            Default::default(),
            common::status(),
            stop_rx,
        ));
        while common::checkpoint(&out).1 < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c;
        let _ = stop_tx.send(true);
        task.await??;
        pipe_rate.push(events as f64 / wall);
        pipe_core.push(events as f64 / cpu.max(0.01));
    }
    std::fs::write(out.join("truth.json"), serde_json::to_vec_pretty(&truth)?)?;

    // Memory per active view, each measured in a process of its own (memory freed by one measurement
    // would be reused by the next): all open views in memory (the default cache), and a tenth of them.
    let all = PipelineConfig::default().max_cached_views.max(open_views as usize);
    let memory_default = memory_in_child(&out, open_views, all)?;
    let memory_tenth = memory_in_child(&out, open_views, (open_views as usize / 10).max(1))?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_owned();
    println!(
        "machine: {} cores, {model}; loadgen traffic: {views} views, {events} events in {total} records, median of {rounds} rounds",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("{:<52} {:>12} {:>16}", "stage", "events/s", "events/s/core");
    println!("{:<52} {:>12.0} {:>16.0}", "baseline: read + decode the local log", median(base_rate.clone()), median(base_core.clone()));
    println!("{:<52} {:>12.0} {:>16.0}", "qoeflow pipeline: log -> sessionize -> Parquet", median(pipe_rate.clone()), median(pipe_core.clone()));
    println!("ratio pipeline / read+decode (per core): {:.2}", median(pipe_core) / median(base_core));
    print!("{memory_default}{memory_tenth}");
    corrections(&records, &out)?;
    println!("dataset kept in {} (events table for the DuckDB baseline; truth.json beside it)", out.display());
    Ok(())
}

/// Sessionizes `records` on a state store at `path`, committing every 10,000 records (an epoch);
/// returns the CPU seconds, the counters and the store's size on disk at the end.
fn sessionize(records: &[Checked], path: &std::path::Path) -> anyhow::Result<(f64, pipeline::Stats, u64)> {
    let _ = std::fs::remove_file(path);
    let store = pipeline::StateStore::open(path, pipeline::store::DEFAULT_CACHE_BYTES)?;
    let (mut s, _) = Sessionizer::open(PipelineConfig::default().session(), store.clone())?;
    let c = cpu_seconds();
    let epoch = |s: &mut Sessionizer| -> anyhow::Result<()> {
        drop(s.flush());
        let forgotten = store.commit(s.take_commit(None)?)?;
        s.committed(forgotten);
        Ok(())
    };
    for chunk in records.chunks(10_000) {
        for r in chunk {
            s.process_checked("", r.clone());
        }
        s.advance();
        epoch(&mut s)?;
    }
    s.end_all();
    epoch(&mut s)?;
    Ok((cpu_seconds() - c, s.stats.clone(), store.disk_bytes()))
}

/// The cost of corrections (see the module header).
fn corrections(encoded: &[impl AsRef<[u8]>], out: &std::path::Path) -> anyhow::Result<()> {
    let records: Vec<schemas::record::CheckedEvents> = encoded
        .iter()
        .filter_map(|b| match Record::decode_checked(b.as_ref()) {
            Ok(Checked::Events(e)) => Some(e),
            _ => None,
        })
        .collect();
    let events: u64 = records.iter().map(|r| r.events.len() as u64).sum();
    // Every 20th beacon of a view that is not its last is sent 60 s later (sent_at and receipt).
    let mut last_of_view = std::collections::HashMap::new();
    for (i, r) in records.iter().enumerate() {
        last_of_view.insert(r.view_id.as_str(), i);
    }
    let mut late = records.clone();
    for (i, r) in late.iter_mut().enumerate() {
        if i % 20 == 7 && last_of_view.get(r.view_id.as_str()) != Some(&i) {
            r.sent_at += 60_000;
            r.recv_ms += 60_000;
        }
    }
    late.sort_by_key(|r| r.recv_ms);
    let in_order: Vec<Checked> = records.into_iter().map(Checked::Events).collect();
    let late: Vec<Checked> = late.into_iter().map(Checked::Events).collect();
    let (cpu_a, stats_a, disk_a) = sessionize(&in_order, &out.join("corrections-in-order.redb"))?;
    let (cpu_b, stats_b, disk_b) = sessionize(&late, &out.join("corrections-overtaken.redb"))?;
    println!(
        "state store, in order: {:.0} events/s/core, {} corrections, store {:.1} MB at the end",
        events as f64 / cpu_a.max(0.01),
        stats_a.corrections,
        disk_a as f64 / 1e6
    );
    println!(
        "state store, 5% of beacons overtaken by 60 s: {:.0} events/s/core (ratio {:.2}), {} late events corrected {} views, \
         {} events re-derived ({:.1} per late event), store {:.1} MB",
        events as f64 / cpu_b.max(0.01),
        cpu_a / cpu_b.max(0.01),
        stats_b.stragglers,
        stats_b.corrections,
        stats_b.rederived_events,
        stats_b.rederived_events as f64 / stats_b.stragglers.max(1) as f64,
        disk_b as f64 / 1e6
    );
    Ok(())
}
