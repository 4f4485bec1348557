//! `qoeflow serve`: the collector, the local log, the pipeline, the metrics API and the alert evaluator in
//! one process. The only place that puts the crates together; each part runs through its own crate's `run`.

use std::sync::Arc;

use anyhow::Context;
use service::{Readiness, Stop};

use crate::config::Config;

/// Runs the embedded default until `stop` is set. `pipeline: false` leaves the log unread (the
/// collector benchmark).
pub async fn run(config: Config, pipeline: bool, stop: Stop) -> anyhow::Result<()> {
    let dir = config.data_dir.join("log");
    let log = locallog::LocalLog::open(config.local_log.log_config(dir.clone()))
        .with_context(|| format!("cannot open the local log in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), durable_end = log.durable_end(), "local log open");
    let metrics = ingest::Metrics::new();
    let mut readiness: Vec<Arc<dyn Readiness>> = Vec::new();
    let pipeline_task = if pipeline {
        let status = Arc::new(pipeline::PipelineStatus::of(&config.pipeline, &metrics.registry));
        readiness.push(status.clone());
        let (log, data_dir, pcfg, ch) = (
            log.clone(),
            config.data_dir.clone(),
            config.pipeline.clone(),
            config.clickhouse.clone(),
        );
        let priority = Priority { nice: pcfg.nice, idle: pcfg.sched_idle };
        Some(on_own_thread(priority, pipeline::local::run(log, data_dir, config.dataset()?, pcfg, ch, status, stop.receiver()))?)
    } else {
        tracing::warn!("--no-pipeline: collector and local log only; nothing reads or trims the log");
        None
    };
    // The metrics API over the dataset this process writes: on the beacon listener, or its own.
    let (api, evaluator) = crate::analytics::start(&config, &metrics.registry, &stop).await?;
    let (extra_routes, own_listener) = match config.query.listen {
        None => (Some(api), None),
        Some(addr) => (None, Some((addr, api))),
    };
    let limits = config.ingest.conn_limits();
    let collector = ingest::Collector {
        listen: config.listen,
        config: config.ingest,
        sink: ingest::Sink::Local(log),
        metrics,
        readiness,
        extra_routes,
    };
    // The collector's listener first: its address is the first one the log announces.
    let collector = ingest::bind(collector).await?;
    let api_task = match own_listener {
        Some((addr, api)) => Some(tokio::spawn(query::server::serve(service::bind(addr).await?, api, limits, stop.clone()))),
        None => None,
    };
    collector.run(stop).await?;
    if let Some(task) = api_task {
        task.await.context("metrics API listener")??;
    }
    if let Some(task) = pipeline_task {
        joined(task).await?;
    }
    evaluator.stopped().await;
    tracing::info!("stopped");
    Ok(())
}

/// The CPU priority of the pipeline's threads, below the collector's.
#[derive(Clone, Copy)]
struct Priority {
    /// Nice steps below the collector's (`pipeline.nice`).
    nice: i32,
    /// Under `SCHED_IDLE` instead (`pipeline.sched_idle`).
    idle: bool,
}

/// Runs the pipeline on a thread and a runtime of its own, below the collector (`pipeline.nice`, or
/// `pipeline.sched_idle`); join the handle for its result.
///
/// An epoch's sessionizing is CPU-bound for as long as the epoch is big (hundreds of milliseconds when
/// the pipeline is behind): on the collector's runtime it held one of its workers for as long. On its
/// own threads (this one, and its runtime's blocking threads: Parquet encoding, log reads, compaction),
/// it also runs below the collector: when the cores are short, the collector gets them first and the
/// pipeline catches up from the log (BENCHMARKS.md §23).
fn on_own_thread(
    priority: Priority,
    run: impl std::future::Future<Output = pipeline::Result<()>> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    // The nice value `nice` steps below this thread's (the collector's), and the policy, which every
    // pipeline thread gets: its blocking threads inherit them from the thread that starts them, and
    // set them again.
    let target = service::priority::below_this_thread(priority.nice)?;
    let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lower = move || {
        let lowered = service::priority::set_this_thread_nice(target)
            .and_then(|()| if priority.idle { service::priority::set_this_thread_idle() } else { Ok(()) });
        if let Err(e) = lowered
            && !warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(nice = target, sched_idle = priority.idle, error = %e, "cannot lower the priority of the pipeline's threads; they run at the collector's");
        }
    };
    let thread = std::thread::Builder::new().name("qoeflow-pipeline".into()).spawn(move || {
        lower();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("qoeflow-pipeline")
            .on_thread_start(lower)
            .build()
            .context("cannot start the pipeline's runtime")?;
        Ok(runtime.block_on(run)?)
    });
    thread.context("cannot start the pipeline's thread")
}

/// Waits (off the runtime) for the pipeline's thread to end, with its result or its panic's message.
async fn joined(thread: std::thread::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match tokio::task::spawn_blocking(move || thread.join()).await? {
        Ok(result) => result,
        Err(panic) => anyhow::bail!("the pipeline's thread {}", service::panic_message(panic.as_ref())),
    }
}
