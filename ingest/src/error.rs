//! Errors at the collector's boundary: start-up (configuration, GeoIP database, sinks) and serving.
//! Errors answered to HTTP clients are `service::ApiError`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of `[ingest]` or `[kinesis]` that cannot work, named.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open GeoIP database {path}: {message}")]
    GeoIp { path: std::path::PathBuf, message: String },
    #[error(transparent)]
    Service(#[from] service::Error),
    #[error("collector listener: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
