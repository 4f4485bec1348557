//! Kinesis connection settings (`[kinesis]`), the client built from them and the standard AWS
//! environment, and one-line descriptions of SDK errors: shared by the collector's Kinesis sink
//! (`ingest`) and the pipeline's Kinesis source (`pipeline`). The client needs the `client` feature.

use serde::{Deserialize, Serialize};

#[cfg(feature = "client")]
pub use client::{client, describe, sdk_config};

/// `[kinesis]`: the Kinesis sink of `qoeflow ingest` (and the source of `qoeflow pipeline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    pub stream: Option<String>,
    /// Endpoint override (the local emulator, a VPC endpoint). Default: the region's AWS endpoint.
    pub endpoint: Option<String>,
    /// Region; default from the standard AWS environment/profile, else us-east-1.
    pub region: Option<String>,
    /// How long a PutRecords batch waits to fill up with records of concurrent requests.
    pub linger_ms: u64,
    /// PutRecords calls in flight at once.
    pub max_concurrent_puts: usize,
    /// Attempts per record (the first try included) before its request gets 503.
    pub max_attempts: u32,
    /// Backoff between attempts: exponential from `retry_base_ms`, capped at `retry_max_ms`, full jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Timeout of one PutRecords call.
    pub call_timeout_ms: u64,
    /// `qoeflow pipeline`: the DynamoDB table of shard-lineage leases (created if missing). Set, the
    /// workers share the stream's lineages elastically (any number of workers, taking over dead ones);
    /// unset, `--worker-index/--worker-count` divide them statically. Its endpoint and credentials
    /// come from the standard AWS environment (`AWS_ENDPOINT_URL_DYNAMODB` for a compatible server).
    pub lease_table: Option<String>,
    /// A lease its owner has not renewed for this long is taken over by another worker.
    pub lease_timeout_ms: u64,
    /// How often an elastic worker ships each lineage's state store to object storage (a new owner
    /// restores it and replays the intents since).
    pub state_snapshot_ms: u64,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            stream: None,
            endpoint: None,
            region: None,
            linger_ms: 5,
            max_concurrent_puts: 16,
            max_attempts: 8,
            retry_base_ms: 25,
            retry_max_ms: 1000,
            call_timeout_ms: 5000,
            lease_table: None,
            lease_timeout_ms: 10_000,
            state_snapshot_ms: 60_000,
        }
    }
}

#[cfg(feature = "client")]
mod client {
    use aws_sdk_kinesis::Client;
    use aws_sdk_kinesis::config::retry::RetryConfig;

    use super::KinesisConfig;

    /// A one-line description of an SDK error: the service's code and message, or the transport failure.
    pub fn describe<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
    where
        E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match err.as_service_error() {
            Some(e) => format!("{}: {}", e.code().unwrap_or("unknown error"), e.message().unwrap_or("")),
            None => {
                let mut msg = err.to_string();
                let mut source = std::error::Error::source(err);
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                msg
            }
        }
    }

    /// The standard AWS environment (credentials, profile, region, endpoints) with the config's region
    /// (default us-east-1): what every AWS client of qoeflow is built from.
    pub async fn sdk_config(config: &KinesisConfig) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return shared.into_builder().region(aws_config::Region::new("us-east-1")).build();
        }
        shared
    }

    /// Builds a Kinesis client from the config and the standard AWS environment (credentials, profile,
    /// region). The SDK's retries are disabled: callers own their retry policy.
    pub async fn client(config: &KinesisConfig) -> Client {
        let shared = sdk_config(config).await;
        let mut builder = aws_sdk_kinesis::config::Builder::from(&shared).retry_config(RetryConfig::disabled());
        if shared.region().is_none() {
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Client::from_conf(builder.build())
    }
}
