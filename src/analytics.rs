//! The analytics side of `qoeflow serve` and `qoeflow query-server`: the metrics API and dashboard over
//! the configured backend, and the alert evaluator reading the same backend, its routes merged into
//! the API's (behind the same token).

use anyhow::Context;
use service::Stop;

use crate::config::Config;

/// The API router (metrics API, alerts API, dashboard) and the running alert evaluator.
pub async fn start(config: &Config, registry: &prometheus::Registry, stop: &Stop) -> anyhow::Result<(axum::Router, alerts::Evaluator)> {
    let settings = config.api_settings()?;
    let api = query::server::Api::open(&settings, registry).await?;
    let evaluator = alerts::Evaluator::start(
        alerts::Options {
            config: config.alerts.clone(),
            backend: api.backend(),
            dataset: settings.dataset.clone(),
            clickhouse: config.clickhouse.clone(),
            data_dir: &config.data_dir,
            registry,
        },
        stop,
    )
    .await
    .context("starting the alert evaluator")?;
    Ok((api.router(evaluator.router()), evaluator))
}
