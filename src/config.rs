//! `qoeflow`'s configuration: one TOML file (`--config`), overridden by `QOEFLOW_*` environment variables
//! (nested keys with `__`, e.g. `QOEFLOW_INGEST__MAX_BODY_BYTES=2097152`), overridden by flags.
//! Unknown keys anywhere fail start-up with the key named. Defaults live in the `Default` impls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ingest::IngestConfig;
use kinesis::KinesisConfig;
use query::config::{DashboardConfig, SqlConfig};
use schemas::tables::ClickHouseConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server (collector, health, metrics).
    pub listen: SocketAddr,
    /// Local state: `serve`'s log, the pipeline's state store and checkpoint, the instance id; and the
    /// Parquet dataset (`<data_dir>/parquet`) unless `dataset` says otherwise.
    pub data_dir: PathBuf,
    /// Where the Parquet dataset lives: a directory or `s3://bucket/prefix` (S3 settings from the
    /// standard AWS environment: `AWS_REGION`, `AWS_ENDPOINT_URL`, credentials chain). Default:
    /// `<data_dir>/parquet`.
    pub dataset: Option<String>,
    /// `tracing` filter, e.g. `info` or `qoeflow=debug,ingest=debug`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    pub ingest: IngestConfig,
    pub kinesis: KinesisConfig,
    pub local_log: LocalLogConfig,
    pub pipeline: pipeline::PipelineConfig,
    pub clickhouse: ClickHouseConfig,
    /// `[sql]`: the `POST /api/v1/sql` endpoint of `qoeflow serve`.
    pub sql: SqlConfig,
    /// `[query]`: where the metrics API and the dashboard read from, listen, and their bounds.
    pub query: query::QueryConfig,
    /// `[dashboard]`: the live dashboard's refresh period and KPI targets.
    pub dashboard: DashboardConfig,
    /// `[alerts]`: QoE alert rules and where their notifications go (`serve`, `query-server`).
    pub alerts: alerts::AlertsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalLogConfig {
    /// Segment size at which the log rolls to a new file.
    pub segment_bytes: u64,
    /// Under concurrent beacons (the last group commit held more than one), wait this many
    /// microseconds for more before the next write + fsync, so one fsync acknowledges more beacons.
    /// 0 (the default): never wait. At most [`MAX_GROUP_COMMIT_WAIT_US`].
    pub group_commit_wait_us: u64,
}

/// A longer wait would only add latency.
pub const MAX_GROUP_COMMIT_WAIT_US: u64 = 100_000;

impl Default for LocalLogConfig {
    fn default() -> Self {
        LocalLogConfig {
            segment_bytes: locallog::DEFAULT_SEGMENT_BYTES,
            group_commit_wait_us: locallog::DEFAULT_GROUP_COMMIT_WAIT.as_micros() as u64,
        }
    }
}

impl LocalLogConfig {
    pub fn log_config(&self, dir: std::path::PathBuf) -> locallog::LogConfig {
        locallog::LogConfig {
            dir,
            segment_bytes: self.segment_bytes,
            group_commit_wait: std::time::Duration::from_micros(self.group_commit_wait_us),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.group_commit_wait_us <= MAX_GROUP_COMMIT_WAIT_US,
            "local_log.group_commit_wait_us: at most {MAX_GROUP_COMMIT_WAIT_US} (microseconds), got {}",
            self.group_commit_wait_us
        );
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            dataset: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            ingest: IngestConfig::default(),
            kinesis: KinesisConfig::default(),
            local_log: LocalLogConfig::default(),
            pipeline: pipeline::PipelineConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            sql: SqlConfig::default(),
            query: query::QueryConfig::default(),
            dashboard: DashboardConfig::default(),
            alerts: alerts::AlertsConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if given; it must exist), then `QOEFLOW_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(path.is_file(), "config file {} does not exist", path.display());
            figment = figment.merge(Toml::file_exact(path));
        }
        // QOEFLOW_CONFIG (the file itself), QOEFLOW_ADMIN_TOKEN and QOEFLOW_API_TOKEN (the variables of
        // the --admin-token and --api-token flags) and QOEFLOW_FAILPOINT (test fault injection) are not
        // settings.
        const NOT_SETTINGS: [&str; 4] = ["config", "failpoint", "admin_token", "api_token"];
        figment = figment.merge(Env::prefixed("QOEFLOW_").split("__").filter(|k| !NOT_SETTINGS.iter().any(|n| k.as_str().eq_ignore_ascii_case(n))));
        let config: Config = figment.extract().context("invalid configuration")?;
        config.pipeline.validate().map_err(anyhow::Error::msg).context("invalid configuration")?;
        config.local_log.validate().context("invalid configuration")?;
        // Before anything starts: a bad target fails start-up, not the API after the pipeline is running.
        config.dashboard.validate()?;
        config.alerts.validate()?;
        Ok(config)
    }

    /// The Parquet dataset's location: `dataset`, or `<data_dir>/parquet`.
    pub fn dataset(&self) -> anyhow::Result<objstore::Location> {
        match &self.dataset {
            Some(url) => {
                objstore::Location::parse(url).with_context(|| format!("invalid dataset {url:?}"))
            }
            None => Ok(objstore::Location::local(self.data_dir.join("parquet"))),
        }
    }

    /// What the metrics API and the dashboard need of the configuration.
    pub fn api_settings(&self) -> anyhow::Result<query::server::ApiSettings> {
        Ok(query::server::ApiSettings {
            query: self.query.clone(),
            sql: self.sql.clone(),
            dashboard: self.dashboard.clone(),
            dataset: self.dataset()?,
            clickhouse: self.clickhouse.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_env_and_unknown_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "q.toml",
                r#"
                listen = "0.0.0.0:9000"
                [ingest]
                max_body_bytes = 2048
                [[ingest.keys]]
                key = "k1"
                allowed_origins = ["https://a.example"]
                "#,
            )?;
            jail.set_env("QOEFLOW_INGEST__PER_IP_RPS", "50");
            let c = Config::load(Some(Path::new("q.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.ingest.max_body_bytes, 2048);
            assert_eq!(c.ingest.per_ip_rps, 50);
            assert_eq!(c.ingest.keys[0].allowed_origins, vec!["https://a.example".to_string()]);
            assert_eq!(c.ingest.max_decoded_bytes, IngestConfig::default().max_decoded_bytes);

            jail.create_file("bad.toml", "[ingest]\nmax_body_byte = 1\n")?;
            let err = format!("{:#}", Config::load(Some(Path::new("bad.toml"))).unwrap_err());
            assert!(err.contains("max_body_byte"), "{err}");

            jail.create_file("wait.toml", "[local_log]\ngroup_commit_wait_us = 100001\n")?;
            let err = format!("{:#}", Config::load(Some(Path::new("wait.toml"))).unwrap_err());
            assert!(err.contains("local_log.group_commit_wait_us"), "{err}");
            jail.create_file("somewait.toml", "[local_log]\ngroup_commit_wait_us = 50\n")?;
            let c = Config::load(Some(Path::new("somewait.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.local_log.log_config("d".into()).group_commit_wait, std::time::Duration::from_micros(50));

            assert_eq!(c.pipeline.nice, pipeline::config::DEFAULT_NICE, "serve's pipeline runs below its collector by default");
            jail.create_file("nice.toml", "[pipeline]\nnice = 20\n")?;
            let err = format!("{:#}", Config::load(Some(Path::new("nice.toml"))).unwrap_err());
            assert!(err.contains("pipeline.nice = 20"), "{err}");

            jail.set_env("QOEFLOW_CONFIG", "q.toml");
            assert!(Config::load(None).is_ok(), "QOEFLOW_CONFIG names the file, it is not a key");
            jail.set_env("QOEFLOW_LISTN", "1");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }
}
