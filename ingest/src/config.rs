//! Configuration of the collector and of its Kinesis sink. Defaults live here, in `Default` impls;
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
    /// Take the client IP from the first `X-Forwarded-For` entry (only behind a trusted proxy).
    pub trust_x_forwarded_for: bool,
    /// MaxMind (GeoIP2 / GeoLite2 Country or City) database for the `country` dimension.
    pub geoip_db: Option<PathBuf>,
    /// `Retry-After` seconds sent with 503 and 429.
    pub retry_after_secs: u32,
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
            trust_x_forwarded_for: false,
            geoip_db: None,
            retry_after_secs: 1,
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

/// `[kinesis]`: the Kinesis sink of `qoeflow ingest` (and the source of `qoeflow pipeline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    pub stream: Option<String>,
    /// Endpoint override (the local emulator, a VPC endpoint). Default: the region's AWS endpoint.
    pub endpoint: Option<String>,
    /// Region; default from the standard AWS environment/profile, else us-east-1.
    pub region: Option<String>,
    /// How long a PutRecords batch waits to fill up with records of concurrent requests.
    pub linger_ms: u64,
    /// PutRecords calls in flight at once.
    pub max_concurrent_puts: usize,
    /// Attempts per record (the first try included) before its request gets 503.
    pub max_attempts: u32,
    /// Backoff between attempts: exponential from `retry_base_ms`, capped at `retry_max_ms`, full jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Timeout of one PutRecords call.
    pub call_timeout_ms: u64,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            stream: None,
            endpoint: None,
            region: None,
            linger_ms: 5,
            max_concurrent_puts: 16,
            max_attempts: 8,
            retry_base_ms: 25,
            retry_max_ms: 1000,
            call_timeout_ms: 5000,
        }
    }
}
