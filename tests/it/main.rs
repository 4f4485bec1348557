//! End-to-end tests of the `qoeflow` binary against real services (the Kinesis emulator, ClickHouse,
//! DuckDB). One test binary for all of them: each binary links the whole workspace, and several copies
//! cost gigabytes of disk and minutes of linking on a 2-core CI machine.

mod common;

mod abuse;
mod api;
mod api_backends;
mod chaos;
mod clickhouse_sink;
mod collector;
mod crash_local_log;
mod dashboard;
mod grafana;
mod kinesis_sink;
mod loadgen;
mod pipeline_kinesis;
mod pipeline_local;
