//! What the benchmark programs share (each includes this file with `#[path]`).

use std::path::Path;

/// The local pipeline's committed (epoch, log position), or (0, 0) before its first checkpoint, from
/// its progress file, which starts with `{"epoch":N,"position":M,` (only that prefix is read: the
/// benchmarks poll it every few milliseconds).
pub fn checkpoint(data: &Path) -> (u64, u64) {
    let Ok(bytes) = std::fs::read(data.join("pipeline/checkpoint-local.json")) else { return (0, 0) };
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    let field = |name: &str| {
        head.split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("epoch"), field("position"))
}

/// A pipeline status for a benchmark's pipeline (its metrics are not exported).
pub fn status() -> std::sync::Arc<pipeline::PipelineStatus> {
    std::sync::Arc::new(pipeline::PipelineStatus::new(&prometheus::Registry::new(), 60_000, 300_000))
}

/// The collector's own enrichment of a client (anonymised address, user agent parsed, no GeoIP).
pub fn enrich() -> impl Fn(std::net::IpAddr, &str) -> schemas::ClientInfo {
    let enricher = ingest::enrich::Enricher::new(true, None).expect("an enricher without a GeoIP database");
    move |ip, user_agent| enricher.client_info(ip, Some(user_agent))
}
