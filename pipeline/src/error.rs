//! The pipeline's error type: what stops a run or fails an epoch (which the runner retries).

/// An error of the pipeline; its message names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work, named.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] locallog::LogError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    Encode(#[from] schemas::cells::EncodeError),
    #[error("object storage: {0}")]
    Storage(#[from] objstore::Error),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Service(#[from] service::Error),
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A record whose processing failed (it panicked); quarantined after `poison_attempts` in a row.
    #[error("processing the record at {label} failed: {reason}")]
    Poison { label: String, reason: String },
    /// Another worker holds the lineage's lease (lease mode): the run stops without committing.
    #[error("fenced: {0}")]
    Fenced(String),
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

    /// The run was fenced (the lease is lost), under any context.
    pub fn is_fenced(&self) -> bool {
        match self {
            Error::Fenced(_) => true,
            Error::Context { inner, .. } => inner.is_fenced(),
            _ => false,
        }
    }
}

service::define_context!(Error);

/// Returns `Error::Other(format!(…))` unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Error::Other(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;
