//! `qoeflow`: one binary, subcommands. This file only parses the command line and configuration and
//! calls the library crates' run functions.

mod config;
mod dashboard;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ingest::log::{LocalLog, LogConfig};
use ingest::sink::KinesisSink;
use ingest::{AppState, KeyConfig, Metrics, Sink};

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "qoeflow", version, about = "Real-time video Quality-of-Experience analytics")]
struct Cli {
    /// TOML configuration file (see README "Configuration").
    #[arg(long, global = true, env = "QOEFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collector on the embedded durable local log: one process, no external services.
    Serve(ServeArgs),
    /// Collector alone, writing to a Kinesis stream (production, behind a load balancer).
    Ingest(IngestArgs),
    /// Pipeline alone, reading a Kinesis stream into Parquet (and ClickHouse).
    Pipeline(PipelineArgs),
    /// SQL over the Parquet dataset (tables events, views, qoe_window, rejected; helper views
    /// qoe_ratios, view_ratios; aggregate hdr_quantile(startup_hist, q)).
    Query(QueryArgs),
    /// The metrics API and dashboard alone, over the Parquet dataset or ClickHouse (production).
    QueryServer(QueryServerArgs),
    /// Simulated viewers posting real beacons to a collector, with the ground truth of what they did.
    Loadgen(LoadgenArgs),
}

#[derive(Args)]
struct LoadgenArgs {
    /// Collector base URL; beacons go to `<target>/v1/beacon`.
    #[arg(long)]
    target: String,
    /// Number of viewers (one view each).
    #[arg(long, default_value_t = 100)]
    viewers: u64,
    /// Length of the run; every view ends by then (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Viewers arrive uniformly over this first part of the run [default: half the duration].
    #[arg(long, value_parser = humantime::parse_duration)]
    ramp_up: Option<Duration>,
    /// Seed of the simulation: the same seed gives the same viewers and the same truth.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ingest key to send.
    #[arg(long)]
    key: Option<String>,
    /// Write the ground-truth totals here (JSON), and the per-view truth beside it (`<stem>.views.jsonl`).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// At most this many events posted per second, over all viewers (retries and duplicates included).
    #[arg(long, value_name = "EV/S")]
    rate_limit: Option<u32>,
    /// Simulated time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Share of beacons sent twice (duplicates).
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// Share of beacons with shuffled events, and of beacons overtaken by the next (out-of-order `seq`).
    #[arg(long, default_value_t = 0.0)]
    reorder_rate: f64,
    /// Client clocks are off by up to ± this (e.g. 2m).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    skew: Duration,
    /// Share of views whose beacons, from one on, are delivered `--late-by` late.
    #[arg(long, default_value_t = 0.0)]
    late_rate: f64,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    late_by: Duration,
    /// Share of beacons (all but the final `text/plain` one) sent gzip-compressed.
    #[arg(long, default_value_t = 0.3)]
    gzip_rate: f64,
    /// The target pipeline's `reorder_wait_ms`: an overtaken beacon must be acknowledged within it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    reorder_wait: Duration,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

impl LoadgenArgs {
    fn options(self) -> qoeflow::loadgen::Options {
        qoeflow::loadgen::Options {
            target: self.target,
            viewers: self.viewers,
            duration: self.duration,
            ramp: self.ramp_up.unwrap_or(self.duration / 2),
            seed: self.seed,
            key: self.key,
            truth: self.truth,
            rate_limit: self.rate_limit,
            speed: self.speed,
            max_in_flight: self.max_in_flight,
            knobs: qoeflow::loadgen::Knobs {
                duplicate_rate: self.duplicate_rate,
                reorder_rate: self.reorder_rate,
                skew_ms: self.skew.as_millis() as i64,
                late_rate: self.late_rate,
                late_ms: self.late_by.as_millis() as i64,
                gzip_rate: self.gzip_rate,
                reorder_wait: self.reorder_wait,
            },
            progress: !self.quiet,
        }
    }
}

#[derive(Args)]
struct QueryServerArgs {
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free port.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory holding `parquet/` (the parquet backend) [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Which store to read [default: parquet].
    #[arg(long, value_enum)]
    backend: Option<query::backend::BackendKind>,
    /// ClickHouse HTTP URL (the clickhouse backend).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Enables `POST /api/v1/sql` for requests bearing this token.
    #[arg(long, env = "QOEFLOW_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct ApiArgs {
    /// Every `/api/` route requires `Authorization: Bearer <token>` (the dashboard: open `/#token=…`).
    #[arg(long, env = "QOEFLOW_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
}

impl ApiArgs {
    fn apply(self, q: &mut query::QueryConfig) {
        if let Some(t) = self.api_token {
            q.api_token = Some(t);
        }
    }
}

#[derive(Args)]
struct QueryArgs {
    /// Data directory holding `parquet/` [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: query::output::Format,
    /// The SQL statement.
    sql: String,
}

#[derive(Args)]
struct KinesisArgs {
    /// Kinesis stream name.
    #[arg(long)]
    kinesis_stream: Option<String>,
    /// Kinesis endpoint override (e.g. the local emulator http://127.0.0.1:4568).
    #[arg(long)]
    kinesis_endpoint: Option<String>,
    /// AWS region [default: from the AWS environment, else us-east-1].
    #[arg(long)]
    kinesis_region: Option<String>,
}

impl KinesisArgs {
    /// Flags over config; the stream is required.
    fn apply(self, k: &mut ingest::KinesisConfig, command: &str) -> anyhow::Result<()> {
        k.stream = self.kinesis_stream.or(k.stream.take());
        k.endpoint = self.kinesis_endpoint.or(k.endpoint.take());
        k.region = self.kinesis_region.or(k.region.take());
        anyhow::ensure!(k.stream.is_some(), "qoeflow {command} needs --kinesis-stream (or kinesis.stream in the config)");
        Ok(())
    }
}

#[derive(Args)]
struct PipelineArgs {
    #[command(flatten)]
    kinesis: KinesisArgs,
    /// Data directory: Parquet dataset and checkpoints [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the tables to this ClickHouse server (HTTP URL).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// This worker's index among `--worker-count` workers (each owns a disjoint, stable set of shards).
    #[arg(long, default_value_t = 0)]
    worker_index: u32,
    #[arg(long, default_value_t = 1)]
    worker_count: u32,
    /// Serve `/healthz`, `/readyz` (stalled or far behind: 503) and `/metrics` on this address.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct CommonArgs {
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free port.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Accepted ingest key (repeatable). With none configured the collector is open to anyone.
    #[arg(long = "ingest-key", value_name = "KEY")]
    ingest_keys: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Data directory [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the tables to this ClickHouse server (HTTP URL, e.g. http://127.0.0.1:8123).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Enables `POST /api/v1/sql` for requests bearing this token.
    #[arg(long, env = "QOEFLOW_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve the metrics API and the dashboard on this address instead of the beacon listener.
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    api: ApiArgs,
    /// Collector and local log only, no pipeline (the log is never trimmed): measures the collector
    /// alone in the collector benchmark.
    #[arg(long, hide = true)]
    no_pipeline: bool,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    kinesis: KinesisArgs,
}

impl CommonArgs {
    fn apply(self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        for key in self.ingest_keys {
            if !config.ingest.keys.iter().any(|k| k.key == key) {
                config.ingest.keys.push(KeyConfig { key, allowed_origins: Vec::new() });
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    // Before anything starts: a bad target fails start-up, not the API after the pipeline is running.
    config.dashboard.validate()?;
    if let Command::Query(args) = cli.command {
        // A one-shot command: results on stdout, nothing else.
        let data_dir = args.data_dir.unwrap_or(config.data_dir);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return runtime.block_on(async {
            let engine = query::Engine::open_with_memory_limit(&data_dir, config.query.memory_limit_bytes).await?;
            let batches = engine.sql(&args.sql).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            query::output::write(&batches, args.format, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        });
    }
    if let Command::Loadgen(args) = cli.command {
        init_tracing(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let report = runtime.block_on(qoeflow::loadgen::run(args.options()))?;
        report.print(&mut std::io::stdout().lock())?;
        anyhow::ensure!(
            report.complete(),
            "{} beacons were not delivered, {} events were rejected and {} overtaken beacons came too late: the truth \
             does not describe what qoeflow holds",
            report.failed_beacons,
            report.rejected_events,
            report.reorder_overdue
        );
        return Ok(());
    }
    let command = match cli.command {
        Command::Serve(args) => {
            args.common.apply(&mut config);
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            if let Some(url) = args.clickhouse_url {
                config.clickhouse.url = Some(url);
            }
            if let Some(token) = args.admin_token {
                config.sql.admin_token = Some(token);
            }
            if let Some(listen) = args.api_listen {
                config.query.listen = Some(listen);
            }
            args.api.apply(&mut config.query);
            Mode::Serve { pipeline: !args.no_pipeline }
        }
        Command::Ingest(args) => {
            args.common.apply(&mut config);
            args.kinesis.apply(&mut config.kinesis, "ingest")?;
            Mode::Ingest
        }
        Command::Pipeline(args) => {
            args.kinesis.apply(&mut config.kinesis, "pipeline")?;
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            if let Some(url) = args.clickhouse_url {
                config.clickhouse.url = Some(url);
            }
            anyhow::ensure!(
                args.worker_index < args.worker_count,
                "--worker-index {} must be below --worker-count {}",
                args.worker_index,
                args.worker_count
            );
            Mode::Pipeline { worker_index: args.worker_index, worker_count: args.worker_count, listen: args.listen }
        }
        Command::QueryServer(args) => {
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            if let Some(backend) = args.backend {
                config.query.backend = backend;
            }
            if let Some(url) = args.clickhouse_url {
                config.clickhouse.url = Some(url);
            }
            if let Some(token) = args.admin_token {
                config.sql.admin_token = Some(token);
            }
            args.api.apply(&mut config.query);
            Mode::QueryServer
        }
        Command::Query(_) | Command::Loadgen(_) => unreachable!("handled above"),
    };
    init_tracing(&config)?;
    raise_open_files_limit(&mut config.ingest);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(command, config))
}

/// Raises the soft limit of open files to the hard one (servers need more than the usual 1024), and
/// keeps `ingest.max_connections` below what is left for connections.
fn raise_open_files_limit(ingest: &mut ingest::IngestConfig) {
    /// Descriptors kept for everything but client connections: log segments, Parquet files, sockets
    /// to ClickHouse and Kinesis.
    const RESERVED: u64 = 128;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = limit.saturating_sub(RESERVED).max(16) as usize;
    if ingest.max_connections > room {
        tracing::warn!(
            configured = ingest.max_connections,
            open_files_limit = limit,
            using = room,
            "ingest.max_connections is above what the open-files limit allows; lowering it"
        );
        ingest.max_connections = room;
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Serve { pipeline: bool },
    Ingest,
    Pipeline { worker_index: u32, worker_count: u32, listen: Option<std::net::SocketAddr> },
    QueryServer,
}

fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log_level {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    Ok(())
}

async fn run(mode: Mode, config: Config) -> anyhow::Result<()> {
    if let Mode::Pipeline { worker_index, worker_count, listen } = mode {
        return run_pipeline(config, worker_index, worker_count, listen).await;
    }
    if let Mode::QueryServer = mode {
        return run_query_server(config).await;
    }
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pipeline_task = None;
    let mut readiness: Vec<Arc<dyn ingest::Readiness>> = Vec::new();
    let sink = match mode {
        Mode::Serve { pipeline } => {
            let dir = config.data_dir.join("log");
            let log = LocalLog::open(LogConfig { dir: dir.clone(), segment_bytes: config.local_log.segment_bytes })
                .with_context(|| format!("cannot open the local log in {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), durable_end = log.durable_end(), "local log open");
            if pipeline {
                let status = Arc::new(pipeline_status(&config, &metrics.registry));
                readiness.push(status.clone());
                let (log2, data_dir, pcfg, stop) = (log.clone(), config.data_dir.clone(), config.pipeline.clone(), stop_rx.clone());
                let ch = config.clickhouse.clone();
                pipeline_task = Some(tokio::spawn(async move { pipeline::local::run(log2, data_dir, pcfg, ch, status, stop).await }));
            } else {
                tracing::warn!("--no-pipeline: collector and local log only; nothing reads or trims the log");
            }
            Sink::Local(log)
        }
        Mode::Pipeline { .. } | Mode::QueryServer => unreachable!("handled above"),
        Mode::Ingest => {
            let client = ingest::sink::kinesis::client(&config.kinesis).await;
            let sink = KinesisSink::new(client, config.kinesis.clone(), metrics.clone()).map_err(anyhow::Error::msg)?;
            if let Err(why) = sink.ready().await {
                tracing::warn!(%why, "Kinesis stream not reachable yet; /readyz reports it and beacons get 503 until it is");
            }
            Sink::Kinesis(sink)
        }
    };
    let limits = ingest::ConnLimits::from_config(&config.ingest);
    let state = AppState::new(config.ingest.clone(), sink, metrics.clone(), readiness)?;
    let pruner = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                state.prune_rate_limiters();
            }
        })
    };
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut app = ingest::router(state);
    // `qoeflow serve`: the metrics API over the dataset this process writes, on the beacon listener
    // or on a listener of its own.
    let mut api = None;
    if matches!(mode, Mode::Serve { .. }) {
        let router = api_router(&config).await?;
        match config.query.listen {
            Some(api_addr) => api = Some((bind(api_addr).await?, router.route("/healthz", axum::routing::get(|| async { "ok" })))),
            None => app = app.merge(router),
        }
    }
    let signals = shutdown_signal();
    tokio::spawn(async move {
        signals.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tracing::info!("collector listening on http://{addr}");
    let api_task = match api {
        Some((listener, router)) => {
            tracing::info!("metrics API listening on http://{}", listener.local_addr()?);
            let (limits, stop) = (limits.clone(), stopped(stop_rx.clone()));
            Some(tokio::spawn(ingest::serve(listener, router, limits, None, stop)))
        }
        None => None,
    };
    ingest::serve(listener, app, limits, Some(metrics), stopped(stop_rx.clone())).await?;
    pruner.abort();
    if let Some(task) = api_task {
        task.await.context("metrics API listener")??;
    }
    if let Some(task) = pipeline_task {
        task.await.context("pipeline task")??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The pipeline's status (metrics in `registry`, readiness for `/readyz`).
fn pipeline_status(config: &Config, registry: &prometheus::Registry) -> pipeline::PipelineStatus {
    pipeline::PipelineStatus::new(registry, config.pipeline.stall_after_ms, config.pipeline.max_lag_ms)
}

/// The metrics API on the configured backend, and the dashboard at `/`.
async fn api_router(config: &Config) -> anyhow::Result<axum::Router> {
    let backend = query::backend::Backend::open(&config.query, &config.data_dir, &config.clickhouse).await?;
    tracing::info!(backend = backend.name(), "metrics API and dashboard ready");
    Ok(query::api::router(backend, config.sql.clone(), &config.query).merge(dashboard::router(config.dashboard.clone())))
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// `qoeflow query-server`: the metrics API until SIGTERM/Ctrl-C.
async fn run_query_server(config: Config) -> anyhow::Result<()> {
    let app = api_router(&config).await?.route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = bind(config.listen).await?;
    tracing::info!("query server listening on http://{}", listener.local_addr()?);
    let signals = shutdown_signal();
    ingest::serve(listener, app, ingest::ConnLimits::from_config(&config.ingest), None, signals).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `qoeflow pipeline`: the Kinesis source into Parquet (and ClickHouse) until SIGTERM/Ctrl-C.
async fn run_pipeline(config: Config, worker_index: u32, worker_count: u32, listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let client = ingest::sink::kinesis::client(&config.kinesis).await;
    let stream = config.kinesis.stream.clone().unwrap_or_default();
    tracing::info!(%stream, worker_index, worker_count, data_dir = %config.data_dir.display(), "pipeline reading Kinesis");
    let source = pipeline::kinesis::KinesisSource::new(client, stream, worker_index, worker_count);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = shutdown_signal();
    tokio::spawn(async move {
        signals.await;
        let _ = stop_tx.send(true);
    });
    let registry = prometheus::Registry::new();
    let status = Arc::new(pipeline_status(&config, &registry));
    if let Some(addr) = listen {
        let listener = bind(addr).await?;
        tracing::info!("pipeline health listening on http://{}", listener.local_addr()?);
        let app = ingest::health_router(vec![status.clone()], registry);
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::spawn(ingest::serve(listener, app, ingest::ConnLimits::from_config(&config.ingest), None, stopped));
    }
    pipeline::runner::run(source, config.data_dir, config.pipeline, config.clickhouse, status, stop_rx).await
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (not when first
/// polled), so a signal arriving right after start-up still shuts down cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down: finishing requests in flight");
    }
}
