//! The qoeflow collector: `POST /v1/beacon` and the sinks that make beacons durable before they are
//! acknowledged.
//!
//! - [`server`]: the axum routes and the beacon handler (limits, keys, CORS, validation, enrichment).
//! - [`body`]: streaming body reading with wire, decoded and memory limits.
//! - [`sink`]: the local log and Kinesis sinks behind one `append` that resolves on durability (the
//!   Kinesis sink with the `kinesis` feature).
//! - [`run`]: the collector process: state, listener, rate-limiter pruning, until stopped.
//! - [`enrich`], [`metrics`], [`config`], [`error`].
//!
//! The listener, health routes and JSON errors come from `service`; the local log from `locallog`.

pub mod body;
pub mod config;
pub mod enrich;
pub mod error;
pub mod metrics;
pub mod server;
pub mod run;
pub mod sink;

pub use config::{IngestConfig, KeyConfig};
pub use error::{Error, Result};
#[cfg(feature = "kinesis")]
pub use run::kinesis_sink;
pub use run::{Bound, Collector, bind, run};
pub use metrics::Metrics;
pub use server::{AppState, router};
pub use sink::{Sink, SinkError, SinkRecord};
