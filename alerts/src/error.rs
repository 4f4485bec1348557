//! The alerts crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule or setting that cannot work, named.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("object storage: {0}")]
    Storage(#[from] objstore::Error),
    #[error(transparent)]
    Encode(#[from] schemas::cells::EncodeError),
    #[error(transparent)]
    Query(#[from] query::Error),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
    /// An error with what was being done when it happened.
    #[error("{context}: {inner}")]
    Context { context: String, inner: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(message: impl Into<String>) -> Error {
        Error::Other(message.into())
    }
}

service::define_context!(Error);
