//! The alerts API, beside the metrics API (and behind its token):
//!
//! - `GET /api/v1/alerts?from=&to=&limit=`: the alerts pending and firing now (from the evaluator) and
//!   the alert history of the range (the `alerts` table, read from the backend: newest first, at most
//!   `limit`, default 100, up to 1000; the range defaults to the last 24 hours);
//! - `GET /api/v1/alerts/rules`: every rule as configured, with its alerts now.
//!
//! Both answer with `"enabled": false` and no alerts where the evaluator is off.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use query::backend::Backend;
use serde_json::{Value, json};
use service::ApiError;

use crate::run::{Evaluator, Shared};
use crate::state::Alert;

#[derive(Clone)]
struct ApiState {
    shared: Option<Arc<Shared>>,
    backend: Backend,
}

impl Evaluator {
    /// `/api/v1/alerts` and `/api/v1/alerts/rules` (to merge into the metrics API's router).
    pub fn router(&self) -> axum::Router {
        let state = ApiState { shared: self.shared.clone(), backend: self.backend.clone() };
        axum::Router::new().route("/api/v1/alerts", get(alerts)).route("/api/v1/alerts/rules", get(rules)).with_state(state)
    }
}

fn bad(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("parameter `{parameter}`: {message}"))
}

/// An alert as the API shows it.
fn alert_json(a: &Alert, shared: &Shared) -> Value {
    let rule = shared.rules.iter().find(|r| r.name == a.rule);
    json!({
        "rule": a.rule,
        "state": a.state,
        "metric": rule.map(|r| r.metric.as_str()),
        "op": rule.map(|r| r.op.as_str()),
        "threshold": rule.map(|r| r.threshold),
        "group_by": rule.and_then(|r| r.group_by.as_deref()),
        "group": a.group,
        "value": a.value,
        "volume": a.volume,
        "severity": a.labels.get("severity"),
        "active_since": a.active_since,
        "fired_at": a.fired_at,
        "labels": a.labels,
        "annotations": a.annotations,
    })
}

async fn active(shared: &Option<Arc<Shared>>) -> Vec<Value> {
    let Some(shared) = shared else { return Vec::new() };
    let s = shared.saved.lock().await;
    // Firing first, then by rule and group.
    let mut list: Vec<&Alert> = s.alerts.alerts.values().collect();
    list.sort_by_key(|a| (a.state != crate::state::State::Firing, a.rule.clone(), a.group.clone()));
    list.into_iter().map(|a| alert_json(a, shared)).collect()
}

async fn alerts(State(state): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    alerts_inner(&state, &q).await.unwrap_or_else(IntoResponse::into_response)
}

async fn alerts_inner(state: &ApiState, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let now = schemas::now_ms();
    let time = |name: &str, default: i64| -> Result<i64, ApiError> {
        let t = match q.get(name) {
            None => default,
            Some(v) => query::api::parse_time(v, now).ok_or_else(|| bad(name, format!("{v:?} is not epoch ms, `now` or `now-<n><s|m|h|d>`")))?,
        };
        if !(0..=schemas::beacon::TS_MAX_MS).contains(&t) {
            return Err(bad(name, format!("{t} is out of range (1970 to 2100)")));
        }
        Ok(t)
    };
    let (from, to) = (time("from", now - 86_400_000)?, time("to", now + 1)?);
    if from >= to {
        return Err(bad("from", "must be before `to`"));
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l.parse::<u32>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| bad("limit", "must be 1 to 1000"))?,
    };
    let history = state.backend.alert_history(from, to, limit).await.map_err(|e| {
        tracing::error!(error = format!("{e:#}"), "reading the alert history failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query_failed", "reading the alert history failed")
    })?;
    Ok(Json(json!({
        "enabled": state.shared.is_some(),
        "active": active(&state.shared).await,
        "from": from,
        "to": to,
        "history": history,
    }))
    .into_response())
}

async fn rules(State(state): State<ApiState>) -> Response {
    let Some(shared) = &state.shared else {
        return Json(json!({"enabled": false, "rules": []})).into_response();
    };
    let active = active(&state.shared).await;
    let rules: Vec<Value> = shared
        .rules
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.config).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                m.insert("alerts".into(), active.iter().filter(|a| a["rule"] == r.name.as_str()).cloned().collect());
            }
            v
        })
        .collect();
    Json(json!({
        "enabled": true,
        "interval_ms": shared.config.interval_ms,
        "alertmanager_urls": shared.config.alertmanager_urls,
        "webhooks": shared.config.webhook_urls.len(),
        "rules": rules,
    }))
    .into_response()
}
