//! The query side as a process: the metrics API and dashboard over the configured backend
//! (`qoeflow query-server`, and the API part of `qoeflow serve`), and one-shot SQL (`qoeflow query`).

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use schemas::tables::ClickHouseConfig;
use service::{ConnLimits, Stop};

use crate::backend::Backend;
use crate::config::{DashboardConfig, SqlConfig};
use crate::output::Format;
use crate::{Engine, QueryConfig};

/// Everything the metrics API and the dashboard read and answer with.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub query: QueryConfig,
    pub sql: SqlConfig,
    pub dashboard: DashboardConfig,
    /// The Parquet dataset (the parquet backend).
    pub dataset: objstore::Location,
    pub clickhouse: ClickHouseConfig,
}

/// The metrics API and the dashboard over the configured backend, before it is served: its
/// [`Backend`] can be shared (the alert evaluator reads the same one).
pub struct Api {
    backend: Backend,
    settings: ApiSettings,
    metrics: crate::api::RequestMetrics,
}

impl Api {
    /// Opens the configured backend; request metrics (`qoeflow_query_*`) go to `registry`.
    pub async fn open(settings: &ApiSettings, registry: &prometheus::Registry) -> crate::Result<Api> {
        let backend = Backend::open(&settings.query, &settings.dataset, &settings.clickhouse).await?;
        tracing::info!(backend = backend.name(), "metrics API and dashboard ready");
        Ok(Api { backend, settings: settings.clone(), metrics: crate::api::RequestMetrics::new(registry) })
    }

    pub fn backend(&self) -> Backend {
        self.backend.clone()
    }

    /// The metrics API with `more` API routes (behind the same token, measured the same way), and the
    /// dashboard at `/`.
    pub fn router(&self, more: Router) -> Router {
        let s = &self.settings;
        crate::api::router(self.backend.clone(), s.sql.clone(), &s.query, more, self.metrics.clone())
            .merge(crate::dashboard::router(s.dashboard.clone()))
    }
}

/// Serves `router` (and `/healthz`) on a listener of its own until `stop` is set: `qoeflow query-server`,
/// or the API listener of `qoeflow serve --api-listen`.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, limits: ConnLimits, stop: Stop) -> crate::Result<()> {
    let app = router.route("/healthz", get(|| async { "ok" }));
    tracing::info!("metrics API listening on http://{}", listener.local_addr()?);
    service::serve(listener, app, limits, None, stop.stopped()).await?;
    Ok(())
}

/// `qoeflow query-server`: serves `router` (the API, the dashboard, `/metrics`) until `stop` is set.
pub async fn run(router: Router, listen: SocketAddr, limits: ConnLimits, stop: Stop) -> crate::Result<()> {
    serve(service::bind(listen).await?, router, limits, stop).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `qoeflow query`: one statement over the dataset, its rows written to `out`.
pub async fn run_sql(
    dataset: &objstore::Location,
    memory_limit: usize,
    sql: &str,
    format: Format,
    out: &mut impl std::io::Write,
) -> crate::Result<()> {
    let engine = Engine::open_with_memory_limit(dataset, memory_limit).await?;
    let batches = engine.sql(sql).await?;
    crate::output::write(&batches, format, out)?;
    out.flush()?;
    Ok(())
}
