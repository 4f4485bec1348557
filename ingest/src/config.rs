//! Configuration of the collector (`[ingest]`; the `[kinesis]` section is `kinesis::KinesisConfig`). Defaults live here, in `Default` impls;
//! the binary layers the TOML file, `QOEFLOW_*` env vars and flags on top.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[ingest]`: the HTTP collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Ingest keys. Empty: the collector is open (anyone may post) and says so at start-up.
    pub keys: Vec<KeyConfig>,
    /// Largest body on the wire, compressed or not (413 above it).
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression (413 above it).
    pub max_decoded_bytes: usize,
    /// Time allowed to receive a whole body (408 after it).
    pub body_timeout_ms: u64,
    /// Beacon requests handled at once; more get 503 + Retry-After instead of queueing.
    pub max_in_flight: usize,
    /// Memory all requests' bodies may hold together (decoded); over it, 503 + Retry-After.
    pub max_buffered_bytes: usize,
    /// Requests per second allowed per client IP (0: no limit), with `per_ip_burst` in one burst.
    pub per_ip_rps: u32,
    pub per_ip_burst: u32,
    /// Requests per second allowed per ingest key (0: no limit), with `per_key_burst` in one burst.
    pub per_key_rps: u32,
    pub per_key_burst: u32,
    /// Zero the last IPv4 octet / last 80 bits of IPv6 before anything is stored.
    pub anonymize_ip: bool,
    /// Proxies (CIDRs, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` is believed: the client is the
    /// right-most hop that is not one of them. Empty: the header is ignored, the socket address counts.
    pub trusted_proxies: Vec<String>,
    /// MaxMind (GeoIP2 / GeoLite2 Country or City) database for the `country` dimension.
    pub geoip_db: Option<PathBuf>,
    /// `Retry-After` seconds sent with 503 and 429.
    pub retry_after_secs: u32,
    /// Events whose skew-corrected time (`ts + recv - sent_at`) is more than this after the receive
    /// time are rejected (`future_ts`): no client sends what it has not yet seen.
    pub max_event_future_ms: i64,
    /// JSON values one body may hold (counted while parsing; 413 `too_many_values` above it).
    pub max_json_values: usize,
    /// Open connections at most; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this of its first byte (of the connection, for the first).
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            keys: Vec::new(),
            max_body_bytes: 1 << 20,
            max_decoded_bytes: 10 << 20,
            body_timeout_ms: 10_000,
            max_in_flight: 1024,
            max_buffered_bytes: 512 << 20,
            per_ip_rps: 0,
            per_ip_burst: 100,
            per_key_rps: 0,
            per_key_burst: 10_000,
            anonymize_ip: true,
            trusted_proxies: Vec::new(),
            geoip_db: None,
            retry_after_secs: 1,
            max_event_future_ms: 3_600_000,
            max_json_values: schemas::beacon::MAX_JSON_VALUES,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
        }
    }
}

/// One ingest key and the browser origins allowed to use it (empty: any origin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub key: String,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl IngestConfig {
    /// The listener's bounds from these settings.
    pub fn conn_limits(&self) -> service::ConnLimits {
        use std::time::Duration;
        service::ConnLimits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            retry_after_secs: self.retry_after_secs.max(1),
        }
    }
}
