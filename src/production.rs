//! The production roles on Kinesis: `qoeflow ingest` and `qoeflow pipeline`. They need the `kinesis`
//! feature (on by default); a build without it (`--no-default-features`, the embedded default alone)
//! says so instead of starting.

use std::net::SocketAddr;

use crate::config::Config;

/// `qoeflow pipeline`'s worker flags: index, count, health listener.
pub type WorkerArgs = (u32, u32, Option<SocketAddr>);

#[cfg(feature = "kinesis")]
pub async fn ingest(config: Config) -> anyhow::Result<()> {
    let metrics = ingest::Metrics::new();
    let sink = ingest::kinesis_sink(&config.kinesis, &metrics).await?;
    let collector =
        ingest::Collector { listen: config.listen, config: config.ingest, sink, metrics, readiness: Vec::new(), extra_routes: None };
    ingest::run(collector, service::Stop::on(service::shutdown_signal())).await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(feature = "kinesis")]
pub async fn pipeline(
    config: Config,
    (worker_index, worker_count, listen): WorkerArgs,
) -> anyhow::Result<()> {
    let dataset = config.dataset()?;
    let worker = pipeline::kinesis::Worker {
        health: listen.map(|addr| (addr, config.ingest.conn_limits())),
        kinesis: config.kinesis,
        worker_index,
        worker_count,
        dataset,
        data_dir: config.data_dir,
        config: config.pipeline,
        clickhouse: config.clickhouse,
    };
    Ok(pipeline::kinesis::run_worker(worker, service::Stop::on(service::shutdown_signal())).await?)
}

#[cfg(not(feature = "kinesis"))]
pub async fn ingest(_: Config) -> anyhow::Result<()> {
    anyhow::bail!(WITHOUT_KINESIS)
}

#[cfg(not(feature = "kinesis"))]
pub async fn pipeline(_: Config, _: WorkerArgs) -> anyhow::Result<()> {
    anyhow::bail!(WITHOUT_KINESIS)
}

#[cfg(not(feature = "kinesis"))]
const WITHOUT_KINESIS: &str = "this qoeflow was built without Kinesis support (--no-default-features): build it with the \
                               `kinesis` feature (the default) to run ingest or pipeline";
