//! `/healthz`, `/readyz` and `/metrics` for any process.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Something `/readyz` vouches for (a sink, the pipeline of `qoeflow serve`).
pub trait Readiness: Send + Sync {
    /// `Err(why)` when not ready.
    fn check(&self) -> Result<(), String>;
}

/// The Prometheus text exposition of `registry`.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    let mut buf = Vec::new();
    let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// `/healthz`, `/readyz` and `/metrics` of a process without a collector (`qoeflow pipeline --listen`):
/// ready while every one of `readiness` is; metrics from `registry`.
pub fn health_router(readiness: Vec<Arc<dyn Readiness>>, registry: prometheus::Registry) -> Router {
    let readiness = Arc::new(readiness);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.iter().try_for_each(|r| r.check()) {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()).into_response(),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
                    }
                }
            }),
        )
        .merge(metrics_router(registry))
}

/// `/metrics` alone: the Prometheus text exposition of `registry`.
pub fn metrics_router(registry: prometheus::Registry) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = render_metrics(&registry);
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response() }
        }),
    )
}
