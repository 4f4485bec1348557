//! The metrics HTTP API over the dataset (served by `qoeflow serve`):
//!
//! - `GET /api/v1/metrics?from=&to=&step=&group_by=&filter=`: time series of every metric in
//!   [`crate::metrics::METRICS`], bucketed by `step`, optionally one series per value of a dimension;
//! - `GET /api/v1/breakdown?dimension=&from=&to=&filter=&limit=`: the top values of a dimension (by
//!   attempts) with every metric.
//!
//! - `POST /api/v1/sql` with `{"sql": "SELECT …"}` and `Authorization: Bearer <admin token>`: read-only
//!   SQL (no DDL, DML or statements such as SET; no URL/file tables), with a timeout and a row limit;
//!   disabled unless an admin token is configured.
//!
//! Times are epoch milliseconds, `now`, or `now-<n><s|m|h|d>`; `step` is `<n><s|m|h|d>` (a multiple of
//! the 10 s window is sensible); `filter` is `dimension:value[,dimension:value…]` (AND). A bad parameter
//! gets 400 with a message naming it. Queries use the hive partition `dt` to prune files.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datafusion::arrow::record_batch::RecordBatch;
use ingest::error::ApiError;
use schemas::tables::DIM_COLUMNS;
use serde_json::{Value, json};

use crate::Engine;
use crate::metrics::select_list;

const MAX_POINTS: i64 = 10_000;

/// Limits of `POST /api/v1/sql`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Bearer token required by `POST /api/v1/sql`; None disables the endpoint.
    pub admin_token: Option<String>,
    pub timeout_ms: u64,
    pub max_rows: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig { admin_token: None, timeout_ms: 10_000, max_rows: 10_000 }
    }
}

#[derive(Clone)]
struct ApiState {
    engine: Arc<Engine>,
    sql: Arc<SqlConfig>,
}

pub fn router(engine: Arc<Engine>, sql: SqlConfig) -> axum::Router {
    let state = ApiState { engine, sql: Arc::new(sql) };
    axum::Router::new()
        .route("/api/v1/metrics", get(metrics))
        .route("/api/v1/breakdown", get(breakdown))
        .route("/api/v1/sql", axum::routing::post(sql_endpoint))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(state)
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

async fn sql_endpoint(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    sql_inner(&state, &headers, &body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn sql_inner(state: &ApiState, headers: &axum::http::HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let Some(token) = &state.sql.admin_token else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "sql_disabled", "the SQL endpoint is disabled (start with --admin-token)"));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token.as_str()) {
        return Err(ApiError::unauthorized("missing or wrong admin token (Authorization: Bearer <token>)"));
    }
    let req: SqlRequest = serde_json::from_slice(body).map_err(|e| bad("sql", format!("body must be {{\"sql\": \"SELECT …\"}}: {e}")))?;
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = state
        .engine
        .context()
        .sql_with_options(&req.sql, options)
        .await
        .map_err(|e| ApiError::bad_request("invalid_sql", format!("{e}")))?;
    let max = state.sql.max_rows;
    let df = df.limit(0, Some(max + 1)).map_err(|e| ApiError::bad_request("invalid_sql", format!("{e}")))?;
    let timeout = std::time::Duration::from_millis(state.sql.timeout_ms);
    let batches = match tokio::time::timeout(timeout, df.collect()).await {
        Err(_) => {
            return Err(ApiError::bad_request(
                "query_timeout",
                format!("the query ran longer than the {} ms limit", state.sql.timeout_ms),
            ));
        }
        Ok(r) => r.map_err(|e| ApiError::bad_request("query_failed", format!("{e}")))?,
    };
    let mut rows = json_rows(&batches)?;
    let truncated = rows.len() > max;
    rows.truncate(max);
    let columns: Vec<String> = batches.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    Ok(Json(json!({"columns": columns, "rows": rows, "truncated": truncated})).into_response())
}

fn bad(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("parameter `{parameter}`: {message}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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

struct Range {
    from: i64,
    to: i64,
    where_sql: String,
}

/// Time range and filters as a WHERE clause (with partition pruning on `dt`).
fn range(q: &HashMap<String, String>) -> Result<Range, ApiError> {
    let now = now_ms();
    let time = |name: &str, default: i64| -> Result<i64, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => parse_time(v, now).ok_or_else(|| bad(name, format!("{v:?} is not epoch ms, `now` or `now-<n><s|m|h|d>`"))),
        }
    };
    let (from, to) = (time("from", now - 3_600_000)?, time("to", now)?);
    if from >= to {
        return Err(bad("from", "must be before `to`"));
    }
    let day = |ms: i64| crate::partition_date(ms);
    let mut clauses = vec![
        format!("window_start >= to_timestamp_millis({from})"),
        format!("window_start < to_timestamp_millis({to})"),
        format!("dt >= '{}' AND dt <= '{}'", day(from), day(to)),
    ];
    if let Some(filter) = q.get("filter").filter(|f| !f.is_empty()) {
        for part in filter.split(',') {
            let (dim, value) = part.split_once(':').ok_or_else(|| bad("filter", format!("{part:?} is not dimension:value")))?;
            if !DIM_COLUMNS.contains(&dim) {
                return Err(bad("filter", format!("unknown dimension {dim:?} (one of {})", DIM_COLUMNS.join(", "))));
            }
            clauses.push(format!("{dim} = '{}'", value.replace('\'', "''")));
        }
    }
    Ok(Range { from, to, where_sql: clauses.join(" AND ") })
}

fn dimension(q: &HashMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(d) if DIM_COLUMNS.contains(&d.as_str()) => Ok(Some(d.clone())),
        Some(d) => Err(bad(name, format!("unknown dimension {d:?} (one of {})", DIM_COLUMNS.join(", ")))),
    }
}

async fn rows(engine: &Engine, sql: &str) -> Result<Vec<serde_json::Map<String, Value>>, ApiError> {
    let batches: Vec<RecordBatch> = engine.sql(sql).await.map_err(|e| {
        tracing::error!(error = format!("{e:#}"), sql, "metrics query failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query_failed", "the query failed")
    })?;
    json_rows(&batches)
}

/// Record batches as JSON objects, one per row.
fn json_rows(batches: &[RecordBatch]) -> Result<Vec<serde_json::Map<String, Value>>, ApiError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed", "could not encode rows"))?;
        }
        w.finish().map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed", "could not encode rows"))?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&buf).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed", "could not encode rows"))
}

async fn metrics(State(state): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    metrics_inner(&state.engine, &q).await.unwrap_or_else(IntoResponse::into_response)
}

async fn metrics_inner(engine: &Engine, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let r = range(q)?;
    let step = match q.get("step") {
        Some(s) => parse_duration(s).ok_or_else(|| bad("step", format!("{s:?} is not <n><s|m|h|d>")))?,
        None => (((r.to - r.from) / 240).max(10_000) + 9_999) / 10_000 * 10_000,
    };
    if (r.to - r.from) / step > MAX_POINTS {
        return Err(bad("step", format!("too small for the range: at most {MAX_POINTS} points")));
    }
    let group = dimension(q, "group_by")?;
    let group_sql = group.as_deref().map(|g| format!(", {g} AS grp")).unwrap_or_default();
    let sql = format!(
        "SELECT (CAST(window_start AS BIGINT) / {step}) * {step} AS t{group_sql},\n    {}\nFROM qoe_window WHERE {}\nGROUP BY 1{}\nORDER BY 1{}",
        select_list(),
        r.where_sql,
        if group.is_some() { ", 2" } else { "" },
        if group.is_some() { ", 2" } else { "" },
    );
    let mut series: Vec<(Value, Vec<Value>)> = Vec::new();
    for mut row in rows(engine, &sql).await? {
        let key = row.remove("grp").unwrap_or(Value::Null);
        let point = Value::Object(row);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, points)) => points.push(point),
            None => series.push((key, vec![point])),
        }
    }
    let series: Vec<Value> = series.into_iter().map(|(k, points)| json!({"group": k, "points": points})).collect();
    Ok(Json(json!({"from": r.from, "to": r.to, "step": step, "group_by": group, "series": series})).into_response())
}

async fn breakdown(State(state): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    breakdown_inner(&state.engine, &q).await.unwrap_or_else(IntoResponse::into_response)
}

async fn breakdown_inner(engine: &Engine, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let dim = dimension(q, "dimension")?.ok_or_else(|| bad("dimension", "required"))?;
    let r = range(q)?;
    let limit = match q.get("limit") {
        None => 10,
        Some(l) => l.parse::<u32>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| bad("limit", "must be 1 to 1000"))?,
    };
    let sql = format!(
        "SELECT {dim} AS value,\n    {}\nFROM qoe_window WHERE {}\nGROUP BY {dim}\nORDER BY attempts DESC, value\nLIMIT {limit}",
        select_list(),
        r.where_sql
    );
    let rows = rows(engine, &sql).await?;
    Ok(Json(json!({"from": r.from, "to": r.to, "dimension": dim, "rows": rows})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

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
