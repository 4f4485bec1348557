//! Benchmark baseline: the smallest useful axum handler — read the whole body, answer 204. Its
//! throughput is the HTTP ceiling of the machine that the collector is compared against
//! (`deploy/bench/collector.sh`).
//!
//! cargo run --release -p bench --bin baseline_server -- 127.0.0.1:8081

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    let app = axum::Router::new().route("/v1/beacon", post(|body: Bytes| async move {
        std::hint::black_box(body.len());
        StatusCode::NO_CONTENT
    }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
