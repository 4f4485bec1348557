//! The qoeflow collector: `POST /v1/beacon` and the sinks that make beacons durable before they are
//! acknowledged.
//!
//! - [`server`]: the axum routes and the beacon handler (limits, keys, CORS, validation, enrichment).
//! - [`conn`]: the listener: a cap on connections, header and idle timeouts, graceful shutdown.
//! - [`body`]: streaming body reading with wire, decoded and memory limits.
//! - [`sink`]: the local log and Kinesis sinks behind one `append` that resolves on durability.
//! - [`log`]: the embedded durable local log (also the pipeline's source in `qoeflow serve`).
//! - [`enrich`], [`metrics`], [`config`], [`error`].

pub mod body;
pub mod conn;
pub mod config;
pub mod enrich;
pub mod error;
pub mod log;
pub mod metrics;
pub mod server;
pub mod sink;

pub use config::{IngestConfig, KeyConfig, KinesisConfig};
pub use metrics::Metrics;
pub use conn::{ConnLimits, serve};
pub use server::{AppState, Readiness, health_router, router};
pub use sink::{Sink, SinkError, SinkRecord};
