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
    /// Lease mode: the lineage's shared history no longer holds what this run planned to replay (a
    /// worker that had just lost the lease pruned it after shipping a snapshot). Retrying cannot bring
    /// it back: the run ends, and its worker starts it over, restoring from the newest snapshot.
    #[error("the lineage's history moved: {0}")]
    HistoryMoved(String),
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
        matches!(self.root(), Error::Fenced(_))
    }

    /// The run must start over from its restore, under any context (see [`Error::HistoryMoved`]).
    pub fn is_history_moved(&self) -> bool {
        matches!(self.root(), Error::HistoryMoved(_))
    }

    /// The error under every context wrapped around it.
    fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            other => other,
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
