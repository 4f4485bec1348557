//! Process plumbing shared by qoeflow's servers (the collector, the pipeline's health listener, the
//! query server): nothing here knows about beacons, views or tables.
//!
//! - [`conn`]: the HTTP listener: a cap on connections, header and idle timeouts, graceful drain.
//! - [`health`]: `/healthz`, `/readyz` (every [`Readiness`] asked) and `/metrics` (Prometheus text).
//! - [`error`]: the JSON error body every HTTP API answers with ([`ApiError`]).
//! - [`memory`]: the allocators (jemalloc for Rust, glibc for C libraries) and how they hand memory back.
//! - [`priority`]: a thread's CPU priority (`serve`'s pipeline runs below its collector).
//! - [`shutdown_signal`], [`bind`] and [`panic_message`].

pub mod conn;
pub mod error;
pub mod health;
pub mod memory;
pub mod priority;

pub use conn::{ConnLimits, ConnMetrics, serve};
pub use error::ApiError;
pub use health::{Readiness, health_router, metrics_router, render_metrics};

/// Errors of this crate's start-up helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

/// The message of a caught panic: `panicked: <message>`, or `panicked` when it carries none.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".to_owned(),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (not when first
/// polled), so a signal arriving right after start-up still shuts down cleanly.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down: finishing requests in flight");
    }
}

/// A stop flag every task of a process watches: set once, by a signal or by the caller.
#[derive(Clone)]
pub struct Stop {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Stop {
    /// A flag set when `trigger` resolves (typically [`shutdown_signal`]).
    pub fn on(trigger: impl std::future::Future<Output = ()> + Send + 'static) -> Stop {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        Stop { rx }
    }

    /// The underlying receiver (what the pipeline's loop polls).
    pub fn receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Resolves once the flag is set.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}
