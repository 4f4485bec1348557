//! Where transitions go, and how each destination takes them:
//!
//! - **Alertmanager** (`POST <url>/api/v2/alerts`): firing and resolved transitions as Alertmanager
//!   alerts (labels, annotations, `startsAt`, `endsAt`, `generatorURL`); Alertmanager groups, routes
//!   (Slack, PagerDuty, e-mail…), silences and deduplicates them. Firing alerts are also re-sent every
//!   `resend_ms` with an end four periods ahead, the way Prometheus keeps its alerts alive.
//! - **Webhooks**: one JSON POST per firing or resolved transition (its `id` is unique, for receivers
//!   that deduplicate a delivery retried after a crash).
//! - **The alert history**: every transition as a row of the `alerts` table, in the Parquet dataset (one
//!   file per transition, named by its number, so a retry rewrites the same file) and in ClickHouse
//!   (ReplacingMergeTree on (`source`, `seq`), so a retry converges to one row).
//!
//! A destination that fails keeps its transitions (the caller retries with backoff); success means the
//! destination answered 2xx for every transition of the batch.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use schemas::cells::{Cell, encode_rowbinary, parquet_file, record_batch};
use schemas::tables::{ALERTS, ClickHouseConfig, clickhouse_ddl};
use serde_json::{Value, json};

use crate::error::Context as _;
use crate::state::{Alert, Change, Transition};

/// One destination of transitions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    Alertmanager(String),
    Webhook(String),
    Parquet,
    ClickHouse,
}

impl Destination {
    /// Its key in the outbox (stable across restarts).
    pub fn key(&self) -> String {
        match self {
            Destination::Alertmanager(url) => format!("alertmanager {url}"),
            Destination::Webhook(url) => format!("webhook {url}"),
            Destination::Parquet => "parquet".into(),
            Destination::ClickHouse => "clickhouse".into(),
        }
    }

    /// Its kind, the metrics' label.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Alertmanager(_) => "alertmanager",
            Destination::Webhook(_) => "webhook",
            Destination::Parquet => "parquet",
            Destination::ClickHouse => "clickhouse",
        }
    }

    /// Whether it gets transitions of this kind: people hear of firing and resolved, the history
    /// records everything.
    pub fn wants(&self, change: Change) -> bool {
        match self {
            Destination::Alertmanager(_) | Destination::Webhook(_) => change.notifies(),
            Destination::Parquet | Destination::ClickHouse => true,
        }
    }
}

/// Delivers to every kind of destination.
pub struct Deliverer {
    http: reqwest::Client,
    /// `alerts-<instance id>`: the history rows' source, and the webhooks' id prefix.
    pub source: String,
    dataset: objstore::Location,
    clickhouse: Option<(clickhouse::Client, String)>,
    webhook_token: Option<String>,
    external_url: Option<String>,
    /// How long ahead a firing alert's end is set for Alertmanager.
    firing_horizon_ms: i64,
}

fn rfc3339(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl Deliverer {
    pub fn new(
        source: String,
        dataset: objstore::Location,
        clickhouse: &ClickHouseConfig,
        webhook_token: Option<String>,
        external_url: Option<String>,
        resend_ms: u64,
        timeout: Duration,
    ) -> crate::Result<Deliverer> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(timeout).build()?;
        let clickhouse = clickhouse.url.as_ref().map(|url| {
            let mut client = clickhouse::Client::default().with_url(url).with_validation(false);
            if let Some(u) = &clickhouse.user {
                client = client.with_user(u);
            }
            if let Some(p) = &clickhouse.password {
                client = client.with_password(p);
            }
            (client, clickhouse.database.clone())
        });
        Ok(Deliverer { http, source, dataset, clickhouse, webhook_token, external_url, firing_horizon_ms: 4 * resend_ms as i64 })
    }

    /// The destinations of a configuration: the notifiers, and the history (ClickHouse when configured).
    pub fn destinations(&self, alertmanagers: &[String], webhooks: &[String]) -> Vec<Destination> {
        let mut d: Vec<Destination> = alertmanagers.iter().map(|u| Destination::Alertmanager(u.clone())).collect();
        d.extend(webhooks.iter().map(|u| Destination::Webhook(u.clone())));
        d.push(Destination::Parquet);
        if self.clickhouse.is_some() {
            d.push(Destination::ClickHouse);
        }
        d
    }

    /// Delivers a batch (in order); Ok once the destination took all of it.
    pub async fn deliver(&self, to: &Destination, batch: &[Transition]) -> crate::Result<()> {
        match to {
            Destination::Alertmanager(url) => {
                let alerts: Vec<Value> = batch.iter().map(|t| self.alertmanager_alert(t, t.at)).collect();
                self.post_alertmanager(url, &alerts).await
            }
            Destination::Webhook(url) => {
                for t in batch {
                    self.post_webhook(url, t).await?;
                }
                Ok(())
            }
            Destination::Parquet => {
                for t in batch {
                    self.write_parquet(t).await?;
                }
                Ok(())
            }
            Destination::ClickHouse => self.insert_clickhouse(batch).await,
        }
    }

    /// Re-sends the firing alerts to Alertmanager so it keeps them active.
    pub async fn keep_alive(&self, url: &str, firing: &[Alert], now: i64) -> crate::Result<()> {
        if firing.is_empty() {
            return Ok(());
        }
        let alerts: Vec<Value> = firing
            .iter()
            .map(|a| {
                json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_since)),
                    "endsAt": rfc3339(now + self.firing_horizon_ms),
                    "generatorURL": self.link(),
                })
            })
            .collect();
        self.post_alertmanager(url, &alerts).await
    }

    fn link(&self) -> String {
        self.external_url.as_deref().map_or_else(String::new, |u| format!("{}/", u.trim_end_matches('/')))
    }

    /// A transition as an Alertmanager alert: a resolved one ends when it resolved; a firing one a few
    /// resend periods ahead.
    fn alertmanager_alert(&self, t: &Transition, now: i64) -> Value {
        let ends = if t.change == Change::Resolved { t.at } else { now + self.firing_horizon_ms };
        json!({
            "labels": t.labels,
            "annotations": t.annotations,
            "startsAt": rfc3339(t.fired_at.unwrap_or(t.active_since)),
            "endsAt": rfc3339(ends),
            "generatorURL": self.link(),
        })
    }

    async fn post_alertmanager(&self, url: &str, alerts: &[Value]) -> crate::Result<()> {
        let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
        let resp = self.http.post(&endpoint).json(alerts).send().await.with_context(|| format!("POST {endpoint}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(crate::Error::msg(format!("POST {endpoint}: {status} {}", body.chars().take(200).collect::<String>())));
        }
        Ok(())
    }

    /// The webhook body of one transition.
    pub fn webhook_body(&self, t: &Transition) -> Value {
        json!({
            "version": "1",
            "id": format!("{}-{}", self.source, t.seq),
            "status": t.change.as_str(),
            "rule": t.rule,
            "severity": t.severity,
            "metric": t.metric,
            "op": t.op,
            "threshold": t.threshold,
            "group_by": (!t.group_by.is_empty()).then_some(&t.group_by),
            "group": (!t.group_by.is_empty()).then_some(&t.group),
            "value": t.value,
            "volume": t.volume,
            "labels": t.labels,
            "annotations": t.annotations,
            "active_since": t.active_since,
            "fired_at": t.fired_at,
            "at": t.at,
            "url": self.external_url.as_ref().map(|_| self.link()),
        })
    }

    async fn post_webhook(&self, url: &str, t: &Transition) -> crate::Result<()> {
        let mut req = self.http.post(url).json(&self.webhook_body(t));
        if let Some(token) = &self.webhook_token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.with_context(|| format!("POST {url}"))?;
        if !resp.status().is_success() {
            return Err(crate::Error::msg(format!("POST {url}: {}", resp.status())));
        }
        Ok(())
    }

    /// The `alerts` row of a transition, in `schemas::tables::ALERTS` order.
    pub fn row<'a>(&'a self, t: &'a Transition) -> Vec<Cell<'a>> {
        let labels = serde_json::to_string(&t.labels).unwrap_or_else(|_| "{}".into());
        vec![
            Cell::Ts(t.at),
            Cell::Str(t.rule.as_str().into()),
            Cell::Str(t.change.as_str().into()),
            Cell::Str(t.severity.as_str().into()),
            Cell::Str(t.metric.as_str().into()),
            Cell::Str(t.group_by.as_str().into()),
            Cell::Str(t.group.as_str().into()),
            t.value.filter(|v| v.is_finite()).map_or(Cell::Null, Cell::F64),
            Cell::Str(t.op.as_str().into()),
            Cell::F64(t.threshold),
            Cell::I64(t.volume),
            Cell::Str(labels.into()),
            Cell::Ts(t.active_since),
            Cell::Str(self.source.as_str().into()),
            Cell::U64(t.seq),
        ]
    }

    /// `alerts/dt=…/hour=…/part-<source>-e<seq>.parquet`: one file per transition, so a retry
    /// rewrites the same name.
    async fn write_parquet(&self, t: &Transition) -> crate::Result<()> {
        let rows = [self.row(t)];
        let Some((bytes, _)) = parquet_file([record_batch(ALERTS, &rows).map_err(crate::Error::from)])? else {
            return Ok(());
        };
        let key = format!("alerts/{}/{}", schemas::dataset::partition_of(t.at), schemas::dataset::file_name(&self.source, t.seq));
        self.dataset.put(&key, bytes).await.with_context(|| format!("writing {key}"))?;
        Ok(())
    }

    async fn insert_clickhouse(&self, batch: &[Transition]) -> crate::Result<()> {
        let Some((client, database)) = &self.clickhouse else { return Ok(()) };
        client.query(&format!("CREATE DATABASE IF NOT EXISTS {database}")).execute().await?;
        if let Some(ddl) = clickhouse_ddl(database, "alerts") {
            client.query(&ddl).execute().await?;
        }
        let mut data = Vec::new();
        for t in batch {
            encode_rowbinary(&self.row(t), ALERTS, &mut data);
        }
        let names: Vec<&str> = ALERTS.iter().map(|c| c.name).collect();
        let mut insert = client.insert_formatted_with(format!("INSERT INTO {database}.alerts ({}) FORMAT RowBinary", names.join(", ")));
        insert.send(Bytes::from(data)).await?;
        insert.end().await?;
        Ok(())
    }
}
