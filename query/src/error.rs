//! The query crate's error type (answers to HTTP clients are `service::ApiError`; ad-hoc SQL has its
//! own [`crate::sql::SqlError`]).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("DataFusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("Arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Service(#[from] service::Error),
    #[error(transparent)]
    Store(#[from] objstore::Error),
    /// A setting that cannot work, named.
    #[error("{0}")]
    Config(String),
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

    /// Whether the query failed for want of memory (the engine's limit).
    pub fn is_resources_exhausted(&self) -> bool {
        match self {
            Error::DataFusion(e) => crate::is_resources_exhausted(e),
            Error::Context { inner, .. } => inner.is_resources_exhausted(),
            _ => false,
        }
    }
}

service::define_context!(Error);

/// `Err(Error::Config(message))` unless `ok`.
pub(crate) fn ensure_config(ok: bool, message: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(Error::Config(message())) }
}
