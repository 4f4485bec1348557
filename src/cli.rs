//! The command line: subcommands and their flags. Flags shared by several subcommands are declared once
//! (each group below) and flattened into the commands that take them; each group applies itself over
//! the configuration (flags win over the file and the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "qoeflow", version, about = "Real-time video Quality-of-Experience analytics")]
pub struct Cli {
    /// TOML configuration file (see README "Configuration").
    #[arg(long, global = true, env = "QOEFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Collector on the embedded durable local log: one process, no external services.
    Serve(ServeArgs),
    /// Collector alone, writing to a Kinesis stream (production, behind a load balancer).
    Ingest(IngestArgs),
    /// Pipeline alone, reading a Kinesis stream into Parquet (and ClickHouse).
    Pipeline(PipelineArgs),
    /// SQL over the Parquet dataset (tables events, views, qoe_window, rejected; helper views
    /// qoe_ratios, view_ratios; aggregate hdr_quantile(startup_hist, startup_hist_retract, q)).
    Query(QueryArgs),
    /// The metrics API and dashboard alone, over the Parquet dataset or ClickHouse (production).
    QueryServer(QueryServerArgs),
    /// Simulated viewers posting real beacons to a collector, with the ground truth of what they did.
    Loadgen(LoadgenArgs),
}

/// A group of flags that overrides part of the configuration.
pub trait Apply {
    fn apply(self, config: &mut Config);
}

#[derive(Args)]
pub struct ListenArgs {
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

impl Apply for ListenArgs {
    fn apply(self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
    }
}

#[derive(Args)]
pub struct DataDirArgs {
    /// Data directory: local log, pipeline state and checkpoints, and the Parquet dataset (`parquet/`)
    /// unless --dataset moves it [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Parquet dataset: a directory or s3://bucket/prefix (AWS settings from the environment)
    /// [default: <data-dir>/parquet].
    #[arg(long)]
    dataset: Option<String>,
}

impl Apply for DataDirArgs {
    fn apply(self, config: &mut Config) {
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(dataset) = self.dataset {
            config.dataset = Some(dataset);
        }
    }
}

#[derive(Args)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP URL (e.g. http://127.0.0.1:8123): the pipeline also writes the tables there; the
    /// clickhouse backend reads them.
    #[arg(long)]
    clickhouse_url: Option<String>,
}

impl Apply for ClickHouseArgs {
    fn apply(self, config: &mut Config) {
        if let Some(url) = self.clickhouse_url {
            config.clickhouse.url = Some(url);
        }
    }
}

#[derive(Args)]
pub struct TokenArgs {
    /// Enables `POST /api/v1/sql` for requests bearing this token.
    #[arg(long, env = "QOEFLOW_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Every `/api/` route requires `Authorization: Bearer <token>` (the dashboard: open `/#token=…`).
    #[arg(long, env = "QOEFLOW_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
}

impl Apply for TokenArgs {
    fn apply(self, config: &mut Config) {
        if let Some(token) = self.admin_token {
            config.sql.admin_token = Some(token);
        }
        if let Some(token) = self.api_token {
            config.query.api_token = Some(token);
        }
    }
}

#[derive(Args)]
pub struct IngestKeyArgs {
    /// Accepted ingest key (repeatable). With none configured the collector is open to anyone.
    #[arg(long = "ingest-key", value_name = "KEY")]
    ingest_keys: Vec<String>,
}

impl Apply for IngestKeyArgs {
    fn apply(self, config: &mut Config) {
        for key in self.ingest_keys {
            if !config.ingest.keys.iter().any(|k| k.key == key) {
                config.ingest.keys.push(ingest::KeyConfig { key, allowed_origins: Vec::new() });
            }
        }
    }
}

#[derive(Args)]
pub struct KinesisArgs {
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

impl Apply for KinesisArgs {
    fn apply(self, config: &mut Config) {
        let k = &mut config.kinesis;
        k.stream = self.kinesis_stream.or(k.stream.take());
        k.endpoint = self.kinesis_endpoint.or(k.endpoint.take());
        k.region = self.kinesis_region.or(k.region.take());
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub keys: IngestKeyArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// Serve the metrics API and the dashboard on this address instead of the beacon listener.
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// Collector and local log only, no pipeline (the log is never trimmed): measures the collector
    /// alone in the collector benchmark.
    #[arg(long, hide = true)]
    pub no_pipeline: bool,
}

#[derive(Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub keys: IngestKeyArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
}

#[derive(Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// DynamoDB table of shard-lineage leases (created if missing): run as an elastic worker that
    /// shares the stream's lineages with any number of others and takes over dead ones. Without it,
    /// `--worker-index/--worker-count` divide the lineages statically.
    #[arg(long)]
    pub lease_table: Option<String>,
    /// Static assignment (no lease table): this worker's index among `--worker-count` workers (each
    /// owns a disjoint, stable set of shards).
    #[arg(long, default_value_t = 0, conflicts_with = "lease_table")]
    pub worker_index: u32,
    #[arg(long, default_value_t = 1, conflicts_with = "lease_table")]
    pub worker_count: u32,
    /// Serve `/healthz`, `/readyz` (stalled or far behind: 503) and `/metrics` on this address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    /// Output format: table, csv, json or parquet.
    #[arg(long, default_value = "table")]
    pub format: query::output::Format,
    /// The SQL statement.
    pub sql: String,
}

#[derive(Args)]
pub struct QueryServerArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    /// Which store to read: parquet or clickhouse [default: parquet].
    #[arg(long)]
    pub backend: Option<query::config::BackendKind>,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub tokens: TokenArgs,
}

#[derive(Args)]
pub struct LoadgenArgs {
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
    /// An overtaken beacon is sent between a quarter of this and this after the one that overtook it
    /// (0: right after). The pipeline corrects its views however late it comes (within the late horizon).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    overtake_by: Duration,
    /// A CDN degrades for a while, to exercise alerts: `CDN:FROM-TO:vsf=P[,stalls=F]` (times since the
    /// run's start, sim time), e.g. `fastly:30s-90s:vsf=0.5` (half its starts fail) or
    /// `akamai:1m-3m:stalls=20` (stalls 20 times as likely). Repeatable.
    #[arg(long, value_name = "SPEC")]
    degrade: Vec<loadgen::sim::Degrade>,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

impl LoadgenArgs {
    pub fn options(self) -> loadgen::Options {
        loadgen::Options {
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
            knobs: loadgen::Knobs {
                duplicate_rate: self.duplicate_rate,
                reorder_rate: self.reorder_rate,
                skew_ms: self.skew.as_millis() as i64,
                late_rate: self.late_rate,
                late_ms: self.late_by.as_millis() as i64,
                gzip_rate: self.gzip_rate,
                overtake_ms: self.overtake_by.as_millis() as i64,
            },
            degrade: self.degrade,
            progress: !self.quiet,
        }
    }
}
