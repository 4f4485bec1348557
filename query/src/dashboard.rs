//! The live dashboard at `/`: `dashboards/web/src` and the charting library (uPlot, installed from npm
//! by `dashboards/build.rs`) embedded in the binary, and `/dashboard/config.json` with the KPI targets.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::DashboardConfig;

const INDEX: &str = include_str!("../../dashboards/web/src/index.html");
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript", include_bytes!("../../dashboards/web/src/app.js")),
    ("style.css", "text/css", include_bytes!("../../dashboards/web/src/style.css")),
    ("uPlot.iife.min.js", "text/javascript", include_bytes!(concat!(env!("OUT_DIR"), "/web/uPlot.iife.min.js"))),
    ("uPlot.min.css", "text/css", include_bytes!(concat!(env!("OUT_DIR"), "/web/uPlot.min.css"))),
];

pub fn router(config: DashboardConfig) -> axum::Router {
    let config = serde_json::to_vec(&config).unwrap_or_default();
    axum::Router::new()
        .route("/", get(|| async { ([(header::CACHE_CONTROL, "no-cache")], axum::response::Html(INDEX)) }))
        .route("/assets/{file}", get(asset))
        .route(
            "/dashboard/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], config) }
            }),
        )
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => {
            let mut r = body.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
