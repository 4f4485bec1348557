//! `[query]`: the configuration of the metrics API and the dashboard, shared by the backends and the
//! HTTP API. Defaults live here.

/// `[query]`: where the metrics API and the dashboard read, where they listen and how they are bounded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `parquet` (the data directory's dataset, the default) or `clickhouse` (the `[clickhouse]` server).
    pub backend: BackendKind,
    /// `qoeflow serve`: serve the API and dashboard on this address instead of the beacon listener.
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token every `/api/` route requires; None: open.
    pub api_token: Option<String>,
    /// Memory the queries' operators may hold together (DataFusion's pool); over it a query fails.
    pub memory_limit_bytes: usize,
    /// Longest a metrics API query may run.
    pub timeout_ms: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            backend: BackendKind::default(),
            listen: None,
            api_token: None,
            memory_limit_bytes: 1 << 30,
            timeout_ms: 30_000,
        }
    }
}

/// `[query] backend`: which store the metrics API reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The Parquet dataset under the data directory, through DataFusion.
    #[default]
    Parquet,
    /// The ClickHouse tables the pipeline writes (`[clickhouse]` url and database).
    #[value(name = "clickhouse")]
    ClickHouse,
}
