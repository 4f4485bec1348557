//! QoE alerts: rules over the metrics of the metrics API, evaluated where the metrics live
//! (`qoeflow serve`, `qoeflow query-server`, over either backend), with notifications through
//! Prometheus Alertmanager and plain webhooks, and the alert history in the dataset.
//!
//! - [`config`]: `[alerts]`, the shipped rules (the platforms' thresholds), checks;
//! - [`rule`]: a checked rule: its aggregation, how it reads a metric and a volume, its labels;
//! - [`state`]: the pure state machine inactive → pending → firing → resolved, and its transitions;
//! - [`run`]: the evaluator's tasks and the state file that makes restarts and outages lose nothing;
//! - [`deliver`]: Alertmanager, webhooks, and the `alerts` table (Parquet and ClickHouse);
//! - [`api`]: `GET /api/v1/alerts` and `GET /api/v1/alerts/rules`;
//! - [`metrics`]: the evaluator's `qoeflow_alerts_*`.
//!
//! **Limits.** A rule judges at most `max_groups` groups (the busiest); at most 200 rules; every query
//! within `timeout_ms`; each destination's outbox holds at most `max_outbox` transitions. Run one
//! evaluator per dataset: two would each notify (Alertmanager deduplicates, webhooks would not).

pub mod api;
pub mod config;
pub mod deliver;
pub mod error;
pub mod metrics;
pub mod rule;
pub mod run;
pub mod state;

pub use config::{AlertsConfig, RuleConfig};
pub use error::{Error, Result};
pub use run::{Evaluator, Options};
