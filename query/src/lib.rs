//! The query side of qoeflow: SQL over the Parquet dataset with DataFusion ([`engine`]: the four tables
//! as hive-partitioned listing tables, the `hdr_quantile` aggregate, helper views that spell out the
//! ratios of `docs/metrics.md` §15), the ClickHouse reader, the metrics API ([`api`], [`backend`],
//! [`metrics`]), the live dashboard ([`dashboard`]), and the processes built from them ([`server`]).
//!
//! Tables get their schema from `schemas::tables` (the same one the pipeline writes), so a fresh data
//! directory with no files yet still answers queries (with no rows).

pub mod api;
pub mod backend;
pub mod clickhouse;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod hdr;
pub mod hours;
pub mod metrics;
pub mod output;
pub mod server;
pub mod sql;
pub mod superseded;

pub use config::QueryConfig;
pub use engine::{Engine, HELPER_VIEWS, helper_view_statements, is_resources_exhausted};
pub use error::{Error, Result};
