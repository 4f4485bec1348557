//! The qoeflow collector: `POST /v1/beacon` and the sinks that make beacons durable.
pub mod log;
