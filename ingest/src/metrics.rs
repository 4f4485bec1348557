//! Prometheus metrics of the collector and its sinks (`GET /metrics`). Names follow
//! `qoeflow_<component>_<name>_<unit>[_total]`; every label has a bounded set of values.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by HTTP status code.
    pub requests: IntCounterVec,
    pub events_accepted: IntCounter,
    /// Rejected events by reason tag (validation tags, `body_*` for whole bodies).
    pub events_rejected: IntCounterVec,
    pub received_bytes: IntCounter,
    pub decoded_bytes: IntCounter,
    /// Time from handing records to the sink to their durability (fsync or PutRecords success).
    pub sink_latency: Histogram,
    pub request_duration: Histogram,
    pub in_flight: IntGauge,
    pub kinesis_put_calls: IntCounter,
    /// Records sent again after a failed or partially failed PutRecords.
    pub kinesis_retries: IntCounter,
    /// Records refused with ProvisionedThroughputExceededException (entry-level or whole call).
    pub kinesis_throttles: IntCounter,
    /// Requests answered 503 because some record ran out of attempts.
    pub kinesis_exhausted: IntCounter,
    /// Connections being served.
    pub connections: IntGauge,
    /// Connections answered 503 at `max_connections`.
    pub connections_refused: IntCounter,
}

fn buckets() -> Vec<f64> {
    vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric name");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets())).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let in_flight = gauge("qoeflow_ingest_in_flight_requests", "Beacon requests being handled");
        let metrics = Metrics {
            requests: counter_vec("qoeflow_ingest_requests_total", "Beacon requests by HTTP status", "status"),
            events_accepted: counter("qoeflow_ingest_events_accepted_total", "Events durably accepted"),
            events_rejected: counter_vec(
                "qoeflow_ingest_events_rejected_total",
                "Events rejected, by reason",
                "reason",
            ),
            received_bytes: counter("qoeflow_ingest_received_bytes_total", "Body bytes received on the wire"),
            decoded_bytes: counter("qoeflow_ingest_decoded_bytes_total", "Body bytes after decompression"),
            sink_latency: histogram(
                "qoeflow_ingest_sink_latency_seconds",
                "Time for the sink to make a request's records durable",
            ),
            request_duration: histogram(
                "qoeflow_ingest_request_duration_seconds",
                "Beacon request handling time",
            ),
            in_flight,
            kinesis_put_calls: counter("qoeflow_ingest_kinesis_put_records_calls_total", "PutRecords calls"),
            kinesis_retries: counter(
                "qoeflow_ingest_kinesis_retried_records_total",
                "Records sent again after a failed attempt",
            ),
            kinesis_throttles: counter(
                "qoeflow_ingest_kinesis_throttled_records_total",
                "Records refused with ProvisionedThroughputExceededException",
            ),
            kinesis_exhausted: counter(
                "qoeflow_ingest_kinesis_exhausted_requests_total",
                "Requests answered 503 because a record ran out of attempts",
            ),
            connections: gauge("qoeflow_ingest_open_connections", "Connections being served"),
            connections_refused: counter(
                "qoeflow_ingest_connections_refused_total",
                "Connections answered 503 at ingest.max_connections",
            ),
            registry,
        };
        // The whole-body reasons start at 0, so a rejection rate has a series before the first one (the
        // per-event reasons are the validation's open vocabulary: they appear when they happen).
        for reason in ["body_invalid", "too_many_values"] {
            metrics.events_rejected.with_label_values(&[reason]);
        }
        metrics
    }

    /// The text exposition format.
    /// The listener's gauges, registered here.
    pub fn conn_metrics(&self) -> service::ConnMetrics {
        service::ConnMetrics { connections: self.connections.clone(), refused: self.connections_refused.clone() }
    }

    pub fn render(&self) -> String {
        service::render_metrics(&self.registry)
    }
}

