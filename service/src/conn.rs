//! The HTTP listener: accepts connections under a cap and serves each with hyper's HTTP/1.1 under two
//! timeouts, so idle or slow sockets cannot pile up until the process runs out of file descriptors.
//!
//! - **Cap.** At most `max_connections` are served at once; one more is answered `503` with
//!   `Retry-After` straight from the accept loop (a write that never blocks) and closed. An accept
//!   error (`EMFILE` when the descriptors run out anyway) pauses accepting for a moment instead of
//!   spinning.
//! - **Header timeout.** A request's head must arrive within `header_read_timeout` of its first byte
//!   (of the accept, for a connection's first request): a client trickling headers is cut off.
//! - **Idle timeout.** A kept-alive connection with no request for `idle_timeout` is closed. Longer than
//!   a load balancer's own idle timeout (60 s on AWS ALB), so the balancer never reuses a connection we
//!   are closing.
//!
//! While a request is being handled neither timeout runs: the handler bounds its own work (the beacon
//! body timeout, query timeouts); a backstop closes a connection whose request has not finished within
//! 5 minutes. A response the client does not read is given the idle timeout from the last byte it took.
//! Shutdown stops accepting, lets every connection finish its request in flight, and waits for them (at
//! most 30 s).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The listener's own gauges (the collector registers them; other listeners pass none).
#[derive(Clone)]
pub struct ConnMetrics {
    /// Connections being served.
    pub connections: prometheus::IntGauge,
    /// Connections answered 503 at `max_connections`.
    pub refused: prometheus::IntCounter,
}

/// How connections are bounded.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry_after_secs: u32,
}

/// How long shutdown waits for connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(30);
/// Longest a request may take from its head to its response, whatever its handler does.
const REQUEST_BACKSTOP: Duration = Duration::from_secs(300);

/// Serves `app` on `listener` until `shutdown` resolves, then drains the connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    metrics: Option<ConnMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let refusal = refusal(limits.retry_after_secs);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; pausing accepts for 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never blocks: a few hundred bytes fit any socket buffer; if not, the client gets a reset.
            let _ = stream.try_write(&refusal);
            if let Some(m) = &metrics {
                m.refused.inc();
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, limits, stop, metrics) = (app.clone(), limits.clone(), stop_rx.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Some(m) = &metrics {
                m.connections.inc();
            }
            connection(stream, peer, app, &limits, stop).await;
            if let Some(m) = &metrics {
                m.connections.dec();
            }
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("connections still open {} s after shutdown began; closing them", DRAIN.as_secs());
    }
    Ok(())
}

/// The answer to a connection over the cap.
fn refusal(retry_after_secs: u32) -> Vec<u8> {
    let body = r#"{"error":"too_many_connections","message":"the server is at its connection limit, retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry_after_secs}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn connection(stream: TcpStream, peer: SocketAddr, app: Router, limits: &ConnLimits, mut stop: watch::Receiver<bool>) {
    let phase = Arc::new(Mutex::new(Phase::Head { since: Instant::now() }));
    let io = TokioIo::new(Guarded {
        io: stream,
        phase: phase.clone(),
        limits: limits.clone(),
        sleep: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
        last_write: Instant::now(),
        write_sleep: Box::pin(tokio::time::sleep(limits.idle_timeout)),
    });
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        set(&phase, Phase::InRequest { since: Instant::now() });
        let (app, phase) = (app.clone(), phase.clone());
        async move {
            let response = app.oneshot(req.map(Body::new)).await;
            set(&phase, Phase::Idle { since: Instant::now() });
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service);
    let mut conn = pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        }
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Where a connection is in its request cycle, which decides which timeout runs.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head that began at `since` (the accept, for the first request).
    Head { since: Instant },
    /// A request is being handled since `since`: only the backstop runs.
    InRequest { since: Instant },
    /// Between requests since `since` (the last byte written).
    Idle { since: Instant },
}

fn set(phase: &Mutex<Phase>, to: Phase) {
    *phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = to;
}

/// The socket, with the header and idle timeouts enforced on its reads, and the idle timeout on
/// writes the client does not take.
struct Guarded {
    io: TcpStream,
    phase: Arc<Mutex<Phase>>,
    limits: ConnLimits,
    sleep: Pin<Box<Sleep>>,
    /// When a write last made progress.
    last_write: Instant,
    write_sleep: Pin<Box<Sleep>>,
}

impl Guarded {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the timer to the current phase's deadline and registers the task to wake at it; true once
    /// the deadline has passed. Called from reads and from flushes: after a response is flushed hyper
    /// may not read again until the socket wakes it, so the flush arms the idle timer.
    fn arm(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = match *self.phase() {
            Phase::Head { since } => since + self.limits.header_read_timeout,
            Phase::Idle { since } => since + self.limits.idle_timeout,
            Phase::InRequest { since } => since + REQUEST_BACKSTOP,
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }

    /// After a write: progress keeps the connection from counting as idle; a write the client has not
    /// taken for the idle timeout fails.
    fn wrote(&mut self, cx: &mut Context<'_>, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) if n > 0 => {
                let now = Instant::now();
                self.last_write = now;
                if let Phase::Idle { since } = &mut *self.phase() {
                    *since = now;
                }
                written
            }
            Poll::Pending => {
                let deadline = self.last_write + self.limits.idle_timeout;
                if self.write_sleep.deadline() != deadline {
                    self.write_sleep.as_mut().reset(deadline);
                }
                match self.write_sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading"))),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let mut phase = this.phase();
                if buf.filled().len() > before && matches!(*phase, Phase::Idle { .. }) {
                    *phase = Phase::Head { since: Instant::now() };
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if this.arm(cx) {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out")));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.wrote(cx, written)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if flushed.is_ready() {
            this.arm(cx);
        }
        flushed
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, written)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
