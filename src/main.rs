//! `qoeflow`: one binary, subcommands. This file parses the command line and the configuration and
//! dispatches to the crates' run functions (`src/cli.rs` declares the flags; `src/embedded.rs` puts
//! the crates together for `qoeflow serve`; `src/production.rs` starts the Kinesis roles).

mod analytics;
mod cli;
mod config;
mod embedded;
mod production;

use anyhow::Context;
use clap::Parser;
use service::Stop;

use crate::cli::{Apply, Cli, Command};
use crate::config::{Config, LogFormat};

/// jemalloc (`service::memory`): the collector's many short-lived allocations were about 15 % of its
/// CPU under glibc's malloc.
#[global_allocator]
static ALLOC: service::memory::Allocator = service::memory::Allocator;

fn main() -> anyhow::Result<()> {
    service::memory::pin_mmap_threshold();
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Query(args) => {
            // A one-shot command: results on stdout, nothing else.
            args.data_dir.apply(&mut config);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let dataset = config.dataset()?;
            let run = query::server::run_sql(
                &dataset,
                config.query.memory_limit_bytes,
                &args.sql,
                args.format,
                &mut out,
            );
            Ok(runtime.block_on(run)?)
        }
        Command::Loadgen(args) => {
            init_tracing(&config)?;
            let report = runtime.block_on(loadgen::run(args.options()))?;
            report.print(&mut std::io::stdout().lock())?;
            anyhow::ensure!(
                report.complete(),
                "{} beacons were not delivered and {} events were rejected: the truth does not describe what qoeflow holds",
                report.failed_beacons,
                report.rejected_events
            );
            Ok(())
        }
        Command::Serve(args) => {
            args.listen.apply(&mut config);
            args.keys.apply(&mut config);
            args.data_dir.apply(&mut config);
            args.clickhouse.apply(&mut config);
            args.tokens.apply(&mut config);
            if let Some(listen) = args.api_listen {
                config.query.listen = Some(listen);
            }
            let config = start(config)?;
            runtime.block_on(async { embedded::run(config, !args.no_pipeline, Stop::on(service::shutdown_signal())).await })
        }
        Command::Ingest(args) => {
            args.listen.apply(&mut config);
            args.keys.apply(&mut config);
            args.kinesis.apply(&mut config);
            anyhow::ensure!(config.kinesis.stream.is_some(), "qoeflow ingest needs --kinesis-stream (or kinesis.stream in the config)");
            runtime.block_on(production::ingest(start(config)?))
        }
        Command::Pipeline(args) => {
            args.kinesis.apply(&mut config);
            args.data_dir.apply(&mut config);
            args.clickhouse.apply(&mut config);
            config.kinesis.lease_table = args.lease_table.or(config.kinesis.lease_table.take());
            anyhow::ensure!(config.kinesis.stream.is_some(), "qoeflow pipeline needs --kinesis-stream (or kinesis.stream in the config)");
            let worker = (args.worker_index, args.worker_count, args.listen);
            runtime.block_on(production::pipeline(start(config)?, worker))
        }
        Command::QueryServer(args) => {
            args.listen.apply(&mut config);
            args.data_dir.apply(&mut config);
            args.clickhouse.apply(&mut config);
            args.tokens.apply(&mut config);
            if let Some(backend) = args.backend {
                config.query.backend = backend;
            }
            let config = start(config)?;
            runtime.block_on(async {
                let stop = Stop::on(service::shutdown_signal());
                let registry = prometheus::Registry::new();
                let (api, evaluator) = analytics::start(&config, &registry, &stop).await?;
                let app = api.merge(service::metrics_router(registry));
                query::server::run(app, config.listen, config.ingest.conn_limits(), stop).await?;
                evaluator.stopped().await;
                Ok(())
            })
        }
    }
}

/// What every long-running command does first: logging, and room for connections.
fn start(mut config: Config) -> anyhow::Result<Config> {
    init_tracing(&config)?;
    raise_open_files_limit(&mut config.ingest);
    Ok(config)
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
