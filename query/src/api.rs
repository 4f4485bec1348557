//! The metrics HTTP API over the dataset (served by `qoeflow serve` and `qoeflow query-server`), on
//! either backend ([`Backend`]: Parquet through DataFusion, or ClickHouse):
//!
//! - `GET /api/v1/metrics?from=&to=&step=&group_by=&filter=`: time series of every metric of
//!   [`crate::metrics`], bucketed by `step`, optionally one series per value of a dimension; each point
//!   also has `concurrent_viewers`, the most views active in one window of the bucket;
//! - `GET /api/v1/summary?from=&to=&filter=`: every metric over the whole range, with the concurrent
//!   viewers of the latest window that had any and the peak;
//! - `GET /api/v1/breakdown?dimension=&from=&to=&filter=&limit=`: the top values of a dimension (by
//!   attempts) with every metric;
//! - `POST /api/v1/sql` with `{"sql": "SELECT …"}` and `Authorization: Bearer <admin token>`: read-only
//!   SQL with a timeout and a row limit; disabled unless an admin token is configured.
//!
//! Times are epoch milliseconds, `now`, or `now-<n><s|m|h|d>`, from 1970 to 2100; `step` is
//! `<n><s|m|h|d>` (a multiple of the 10 s window is sensible); `filter` is
//! `dimension:value[,dimension:value…]` (AND). A bad or out-of-range parameter gets 400 with a message
//! naming it.
//!
//! **Bounds.** Every query runs within `[query] timeout_ms` (503 `query_timeout`) and the engine's
//! memory limit (`memory_limit_bytes`: 503 `query_resources_exhausted`, 400 for ad-hoc SQL), so one
//! request cannot take the process down. With `[query] api_token` (`--api-token`) every `/api/` route
//! wants `Authorization: Bearer <token>` (the admin token also passes); the dashboard page sends the
//! token it finds in its URL fragment (`/#token=…`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use service::ApiError;
use schemas::tables::DIM_COLUMNS;
use serde_json::{Value, json};

use crate::backend::{AggQuery, AggRow, Backend};
use crate::config::SqlConfig;
use crate::sql::SqlError;
use crate::metrics::{derive, sum_count};

const MAX_POINTS: i64 = 10_000;
/// Latest time a parameter may name (2100-01-01, the end of the beacon protocol's range).
const MAX_TIME_MS: i64 = schemas::beacon::TS_MAX_MS;

#[derive(Clone)]
struct ApiState {
    backend: Backend,
    sql: Arc<SqlConfig>,
    timeout: std::time::Duration,
}

/// `qoeflow_query_request_duration_seconds{endpoint}` and `qoeflow_query_requests_total{endpoint,
/// status}`: every API request, by route (bounded: the routes) and status class.
#[derive(Clone)]
pub struct RequestMetrics {
    duration: prometheus::HistogramVec,
    requests: prometheus::IntCounterVec,
    /// Where the router's backend adds its own (the closed hours' cache).
    registry: prometheus::Registry,
}

impl RequestMetrics {
    pub fn new(registry: &prometheus::Registry) -> RequestMetrics {
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("qoeflow_query_request_duration_seconds", "Metrics API request latency, by endpoint")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new("qoeflow_query_requests_total", "Metrics API requests, by endpoint and status class"),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(duration.clone()));
        let _ = registry.register(Box::new(requests.clone()));
        RequestMetrics { duration, requests, registry: registry.clone() }
    }

    fn layer(&self, router: axum::Router) -> axum::Router {
        let m = self.clone();
        router.route_layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let m = m.clone();
            async move {
                let endpoint = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
                let started = std::time::Instant::now();
                let resp = next.run(req).await;
                m.duration.with_label_values(&[&endpoint]).observe(started.elapsed().as_secs_f64());
                let class = format!("{}xx", resp.status().as_u16() / 100);
                m.requests.with_label_values(&[&endpoint, &class]).inc();
                resp
            }
        }))
    }
}

/// The metrics API and `more` routes (the alerts API) under one token check and the request metrics.
pub fn router(backend: Backend, sql: SqlConfig, query: &crate::QueryConfig, more: axum::Router, metrics: RequestMetrics) -> axum::Router {
    let tokens: Arc<Vec<String>> = Arc::new(query.api_token.iter().chain(&sql.admin_token).cloned().collect());
    if let Backend::DataFusion(engine) = &backend {
        engine.hour_cache().register(&metrics.registry);
    }
    let state = ApiState { backend, sql: Arc::new(sql), timeout: std::time::Duration::from_millis(query.timeout_ms.max(1)) };
    let router = axum::Router::new()
        .route("/api/v1/metrics", get(metrics_endpoint))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/breakdown", get(breakdown))
        .route("/api/v1/sql", axum::routing::post(sql_endpoint))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(state)
        .merge(more);
    let router = metrics.layer(router);
    if query.api_token.is_none() {
        return router;
    }
    router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let tokens = tokens.clone();
        async move {
            if bearer(req.headers()).is_some_and(|g| tokens.iter().any(|t| token_matches(g, t))) {
                next.run(req).await
            } else {
                ApiError::unauthorized("missing or wrong API token (Authorization: Bearer <token>)").into_response()
            }
        }
    }))
}

/// The OpenAPI description of this API, kept in the repository as `query/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(serde::Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql_endpoint(State(state): State<ApiState>, headers: axum::http::HeaderMap, body: axum::body::Body) -> Response {
    sql_inner(&state, &headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

/// Largest `POST /api/v1/sql` body, and how long it may take to arrive.
const SQL_BODY_MAX: usize = 64 << 10;
const SQL_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The bearer token of a request, if any.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// Compares a given token with an expected one in time that does not depend on where they differ.
fn token_matches(given: &str, expected: &str) -> bool {
    let (g, e) = (given.as_bytes(), expected.as_bytes());
    let diff = (0..g.len().max(e.len())).fold(g.len() ^ e.len(), |acc, i| {
        acc | usize::from(g.get(i).copied().unwrap_or(0) ^ e.get(i).copied().unwrap_or(0))
    });
    diff == 0
}

async fn sql_inner(state: &ApiState, headers: &axum::http::HeaderMap, body: axum::body::Body) -> Result<Response, ApiError> {
    let Some(token) = &state.sql.admin_token else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "sql_disabled", "the SQL endpoint is disabled (start with --admin-token)"));
    };
    // The token is checked before the body is read: nobody without it can hold a connection open by
    // sending a body slowly.
    if !bearer(headers).is_some_and(|g| token_matches(g, token)) {
        return Err(ApiError::unauthorized("missing or wrong admin token (Authorization: Bearer <token>)"));
    }
    let body = match tokio::time::timeout(SQL_BODY_TIMEOUT, axum::body::to_bytes(body, SQL_BODY_MAX)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(ApiError::too_large(format!("body: at most {SQL_BODY_MAX} bytes ({e})"))),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("body not received within {} s", SQL_BODY_TIMEOUT.as_secs()),
            ));
        }
    };
    let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| bad("sql", format!("body must be {{\"sql\": \"SELECT …\"}}: {e}")))?;
    let max = state.sql.max_rows;
    let mut out = state.backend.sql(&req.sql, max, state.sql.timeout_ms).await.map_err(|e| match e {
        SqlError::Timeout(_) => ApiError::bad_request("query_timeout", e.to_string()),
        SqlError::ResourcesExhausted(_) => ApiError::bad_request("query_resources_exhausted", e.to_string()),
        SqlError::Invalid(m) => ApiError::bad_request("query_failed", m),
    })?;
    let truncated = out.rows.len() > max;
    out.rows.truncate(max);
    Ok(Json(json!({"columns": out.columns, "rows": out.rows, "truncated": truncated})).into_response())
}

fn bad(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("parameter `{parameter}`: {message}"))
}


/// `<n><s|m|h|d>` in milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).filter(|v| *v > 0)
}

/// Epoch ms, `now`, or `now-<duration>`.
pub fn parse_time(s: &str, now: i64) -> Option<i64> {
    if s == "now" {
        return Some(now);
    }
    if let Some(d) = s.strip_prefix("now-") {
        return parse_duration(d).map(|d| now - d);
    }
    s.parse().ok()
}

/// The time range and filters of a request (default: the last hour).
fn range(q: &HashMap<String, String>) -> Result<AggQuery, ApiError> {
    let now = schemas::now_ms();
    let time = |name: &str, default: i64| -> Result<i64, ApiError> {
        let t = match q.get(name) {
            None => default,
            Some(v) => parse_time(v, now).ok_or_else(|| bad(name, format!("{v:?} is not epoch ms, `now` or `now-<n><s|m|h|d>`")))?,
        };
        if !(0..=MAX_TIME_MS).contains(&t) {
            return Err(bad(name, format!("{t} is out of range: epoch ms from 0 to {MAX_TIME_MS} (1970 to 2100)")));
        }
        Ok(t)
    };
    let (from, to) = (time("from", now - 3_600_000)?, time("to", now)?);
    if from >= to {
        return Err(bad("from", "must be before `to`"));
    }
    let filters = parse_filter(q.get("filter").map_or("", String::as_str)).map_err(|e| bad("filter", e))?;
    Ok(AggQuery { from, to, filters, ..AggQuery::default() })
}

/// `dimension:value[,dimension:value…]` (AND; empty: no filter) as (dimension, value) pairs.
pub fn parse_filter(filter: &str) -> Result<Vec<(String, String)>, String> {
    let mut filters = Vec::new();
    if filter.is_empty() {
        return Ok(filters);
    }
    for part in filter.split(',') {
        let (dim, value) = part.split_once(':').ok_or_else(|| format!("{part:?} is not dimension:value"))?;
        if !DIM_COLUMNS.contains(&dim) {
            return Err(format!("unknown dimension {dim:?} (one of {})", DIM_COLUMNS.join(", ")));
        }
        filters.push((dim.to_owned(), value.to_owned()));
    }
    Ok(filters)
}

fn dimension(q: &HashMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(d) if DIM_COLUMNS.contains(&d.as_str()) => Ok(Some(d.clone())),
        Some(d) => Err(bad(name, format!("unknown dimension {d:?} (one of {})", DIM_COLUMNS.join(", ")))),
    }
}

fn failed(e: crate::Error) -> ApiError {
    if e.is_resources_exhausted() {
        tracing::warn!(error = format!("{e:#}"), "metrics query over the memory limit");
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "query_resources_exhausted", "the query needs more memory than query.memory_limit_bytes allows");
    }
    tracing::error!(error = format!("{e:#}"), "metrics query failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query_failed", "the query failed")
}

/// Runs a metrics query within `[query] timeout_ms`.
async fn bounded<T>(state: &ApiState, query: impl std::future::Future<Output = crate::Result<T>>) -> Result<T, ApiError> {
    match tokio::time::timeout(state.timeout, query).await {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "query_timeout",
            format!("the query ran longer than query.timeout_ms ({} ms)", state.timeout.as_millis()),
        )),
    }
}

async fn metrics_endpoint(State(state): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    metrics_inner(&state, &q).await.unwrap_or_else(IntoResponse::into_response)
}

async fn metrics_inner(state: &ApiState, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let backend = &state.backend;
    let mut agg = range(q)?;
    let step = match q.get("step") {
        Some(s) => parse_duration(s).ok_or_else(|| bad("step", format!("{s:?} is not <n><s|m|h|d>")))?,
        None => (((agg.to - agg.from) / 240).max(10_000) + 9_999) / 10_000 * 10_000,
    };
    if (agg.to - agg.from) / step > MAX_POINTS {
        return Err(bad("step", format!("too small for the range: at most {MAX_POINTS} points")));
    }
    agg.bucket_ms = Some(step);
    agg.group_by = dimension(q, "group_by")?;
    let (rows, active) = bounded(state, backend.aggregate_with_active(&agg)).await?;
    // Concurrent viewers of a bucket: the most views active in one of its windows.
    let mut peak: HashMap<(i64, Option<String>), i64> = HashMap::new();
    for (window, group, n) in active {
        let e = peak.entry((window.div_euclid(step) * step, group)).or_default();
        *e = (*e).max(n);
    }
    let mut series: Vec<(Option<String>, Vec<Value>)> = Vec::new();
    for row in &rows {
        let t = row.bucket.unwrap_or_default();
        let mut point = serde_json::Map::new();
        point.insert("t".into(), t.into());
        point.extend(row.metrics());
        point.insert("concurrent_viewers".into(), peak.get(&(t, row.group.clone())).copied().unwrap_or(0).into());
        match series.iter_mut().find(|(k, _)| *k == row.group) {
            Some((_, points)) => points.push(Value::Object(point)),
            None => series.push((row.group.clone(), vec![Value::Object(point)])),
        }
    }
    let series: Vec<Value> = series.into_iter().map(|(k, points)| json!({"group": k, "points": points})).collect();
    Ok(Json(json!({"from": agg.from, "to": agg.to, "step": step, "group_by": agg.group_by, "series": series})).into_response())
}

async fn summary(State(state): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    summary_inner(&state, &q).await.unwrap_or_else(IntoResponse::into_response)
}

async fn summary_inner(state: &ApiState, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let backend = &state.backend;
    let agg = range(q)?;
    let (rows, active) = bounded(state, async { tokio::try_join!(backend.aggregate(&agg), backend.active_per_window(&agg)) }).await?;
    // An aggregation without keys answers one row on both backends, zeros when nothing matched.
    let metrics = rows.first().map(AggRow::metrics).unwrap_or_else(|| derive(&vec![0; sum_count()], &[]));
    let (concurrent, window) = active.last().map_or((0, None), |(w, _, n)| (*n, Some(*w)));
    let peak = active.iter().map(|(_, _, n)| *n).max().unwrap_or(0);
    Ok(Json(json!({
        "from": agg.from,
        "to": agg.to,
        "metrics": metrics,
        "concurrent_viewers": concurrent,
        "concurrent_window_start": window,
        "peak_concurrent_viewers": peak,
    }))
    .into_response())
}

async fn breakdown(State(state): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    breakdown_inner(&state, &q).await.unwrap_or_else(IntoResponse::into_response)
}

async fn breakdown_inner(state: &ApiState, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let dim = dimension(q, "dimension")?.ok_or_else(|| bad("dimension", "required"))?;
    let mut agg = range(q)?;
    agg.top = Some(match q.get("limit") {
        None => 10,
        Some(l) => l.parse::<u32>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| bad("limit", "must be 1 to 1000"))?,
    });
    agg.group_by = Some(dim.clone());
    let rows: Vec<Value> = bounded(state, state.backend.aggregate(&agg))
        .await?
        .iter()
        .map(|row| {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), row.group.clone().into());
            m.extend(row.metrics());
            Value::Object(m)
        })
        .collect();
    Ok(Json(json!({"from": agg.from, "to": agg.to, "dimension": dim, "rows": rows})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3crett", "S3cret", "x3cret"] {
            assert!(!token_matches(wrong, "s3cret"), "{wrong}");
        }
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_time("now", 1000), Some(1000));
        assert_eq!(parse_time("now-1s", 5000), Some(4000));
        assert_eq!(parse_time("1700000000000", 0), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday", 0), None);
    }
}
