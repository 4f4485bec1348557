//! The collector as a process: its state, the listener, the periodic pruning of rate-limiter state,
//! until the stop flag is set. `qoeflow serve` passes the local log as its sink (and the metrics API as
//! extra routes); `qoeflow ingest` passes a Kinesis sink.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use service::{Readiness, Stop};

use crate::sink::Sink;
use crate::{AppState, IngestConfig, Metrics};

/// What one collector needs.
pub struct Collector {
    pub listen: SocketAddr,
    pub config: IngestConfig,
    pub sink: Sink,
    pub metrics: Metrics,
    /// Asked by `/readyz` besides the sink (the pipeline of `qoeflow serve`).
    pub readiness: Vec<Arc<dyn Readiness>>,
    /// Routes served on the same listener (the metrics API and dashboard of `qoeflow serve`).
    pub extra_routes: Option<Router>,
}

/// A collector with its state made and its listener bound (and announced in the log).
pub struct Bound {
    listener: tokio::net::TcpListener,
    app: Router,
    state: Arc<AppState>,
    limits: service::ConnLimits,
    metrics: Metrics,
}

/// Makes the collector's state and binds its listener: configuration errors and a taken address fail
/// here, before anything is served.
pub async fn bind(collector: Collector) -> crate::Result<Bound> {
    let Collector { listen, config, sink, metrics, readiness, extra_routes } = collector;
    let limits = config.conn_limits();
    let state = AppState::new(config, sink, metrics.clone(), readiness)?;
    let listener = service::bind(listen).await?;
    let mut app = crate::router(Arc::clone(&state));
    if let Some(extra) = extra_routes {
        app = app.merge(extra);
    }
    tracing::info!("collector listening on http://{}", listener.local_addr()?);
    Ok(Bound { listener, app, state, limits, metrics })
}

impl Bound {
    /// Serves until `stop` is set, then drains the connections.
    pub async fn run(self, stop: Stop) -> crate::Result<()> {
        let Bound { listener, app, state, limits, metrics } = self;
        let pruner = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                state.prune_rate_limiters();
            }
        });
        let served = service::serve(listener, app, limits, Some(metrics.conn_metrics()), stop.stopped()).await;
        pruner.abort();
        Ok(served?)
    }
}

/// Binds and serves the collector until `stop` is set.
pub async fn run(collector: Collector, stop: Stop) -> crate::Result<()> {
    bind(collector).await?.run(stop).await
}

#[cfg(feature = "kinesis")]
/// The Kinesis sink of `qoeflow ingest`, on a client from `config` and the AWS environment. An
/// unreachable stream is logged, not fatal: `/readyz` reports it and beacons get 503 until it is reachable.
pub async fn kinesis_sink(config: &::kinesis::KinesisConfig, metrics: &Metrics) -> crate::Result<Sink> {
    let client = ::kinesis::client(config).await;
    let sink = crate::sink::KinesisSink::new(client, config.clone(), metrics.clone()).map_err(crate::Error::Config)?;
    if let Err(why) = sink.ready().await {
        tracing::warn!(%why, "Kinesis stream not reachable yet; /readyz reports it and beacons get 503 until it is");
    }
    Ok(Sink::Kinesis(sink))
}
