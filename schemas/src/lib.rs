//! qoeflow's data contracts, shared by every other crate (this crate depends on nothing of ours).
//!
//! - [`beacon`]: the beacon protocol v1 that player SDKs post (`POST /v1/beacon`), and its validation with
//!   precise per-field reasons. `schemas/beacon.v1.schema.json` is the same contract as JSON Schema; a test
//!   keeps the two in agreement over the examples in `schemas/examples/`.
//! - [`event`]: a validated event and its typed payload, and the enrichment the collector adds.
//! - [`record`]: the versioned, compressed record format written to Kinesis and to the local log
//!   (documented in `schemas/README.md`).
//! - [`tables`]: the output tables' columns (Arrow and ClickHouse), and where ClickHouse is.
//! - [`cells`]: a row as cells, and its encodings (Arrow, Parquet, ClickHouse RowBinary).
//! - [`measures`]: the QoE measures, declared once (`docs/metrics.md`).
//! - [`dataset`]: the Parquet dataset's layout: partitions, file names, the in-process swap lock.
//! - [`hist`]: the start-time histogram codec.
//! - [`dims`]: the dimension vocabulary.

pub mod beacon;
pub mod cells;
pub mod column;
pub mod dataset;
pub mod dims;
pub mod event;
pub mod hist;
pub mod measures;
pub mod record;
pub mod tables;

pub use beacon::{
    BeaconError, EventRejection, Fields, JsonRef, Num, ParsedBeacon, RawEvent, check_event, parse_beacon, parse_beacon_limited,
    validate_event, validate_event_map,
};
pub use event::{CacheStatus, ClientInfo, Event, EventKind, Payload, StreamType};
pub use record::{Checked, CheckedEvent, CheckedEvents, Envelope, EventsRecord, Record, RecordError, RejectedRecord};

/// The wall clock in epoch milliseconds (the unit of every timestamp in beacons and records).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
