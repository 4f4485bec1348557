//! End-to-end tests of the `qoeflow` binary against real services (the Kinesis emulator, ClickHouse,
//! DuckDB). One test binary for all of them: each binary links the whole workspace, and several copies
//! cost gigabytes of disk and minutes of linking on a 2-core CI machine.

mod common;

/// The test oracles of `pipeline/tests/oracle` (the batch reference computation, the KPL producer).
#[allow(dead_code)]
#[path = "../../pipeline/tests/oracle/reference.rs"]
pub mod reference;
#[allow(dead_code)]
#[path = "../../pipeline/tests/oracle/kpl.rs"]
pub mod kpl;
mod oracle {
    pub use super::{kpl, reference};
}

mod abuse;
mod alerts;
mod api;
mod api_backends;
mod chaos;
mod clickhouse_sink;
mod collector;
mod crash_local_log;
mod dashboard;
mod deploy;
mod elastic;
mod grafana;
mod kinesis_sink;
mod loadgen;
mod object_storage;
mod operator_metrics;
mod pipeline_kinesis;
mod pipeline_local;
mod rollups;
mod sdk;
mod slt;
