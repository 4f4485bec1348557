//! The evaluator's own Prometheus metrics (`qoeflow_alerts_*`), in the process's registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct AlertMetrics {
    pub evaluations: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    pub active: IntGaugeVec,
    pub delivered: IntCounterVec,
    pub outbox: IntGaugeVec,
    pub dropped: IntCounterVec,
}

impl AlertMetrics {
    pub fn new(registry: &Registry) -> AlertMetrics {
        let m = AlertMetrics {
            evaluations: IntCounter::new("qoeflow_alerts_evaluations_total", "Evaluations of every rule").expect("valid metric"),
            failures: IntCounterVec::new(
                Opts::new("qoeflow_alerts_evaluation_failures_total", "Rule evaluations whose query failed (the rule's alerts stay as they were)"),
                &["rule"],
            )
            .expect("valid metric"),
            duration: Histogram::with_opts(
                HistogramOpts::new("qoeflow_alerts_evaluation_duration_seconds", "Time to evaluate every rule once")
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )
            .expect("valid metric"),
            active: IntGaugeVec::new(Opts::new("qoeflow_alerts_active", "Alerts pending or firing"), &["state"]).expect("valid metric"),
            delivered: IntCounterVec::new(
                Opts::new("qoeflow_alerts_deliveries_total", "Transitions delivered to a destination, or attempts that failed"),
                &["destination", "outcome"],
            )
            .expect("valid metric"),
            outbox: IntGaugeVec::new(Opts::new("qoeflow_alerts_outbox", "Transitions waiting for a destination"), &["destination"])
                .expect("valid metric"),
            dropped: IntCounterVec::new(
                Opts::new("qoeflow_alerts_dropped_total", "Transitions dropped because a destination's outbox was full (alerts.max_outbox)"),
                &["destination"],
            )
            .expect("valid metric"),
        };
        // A second registration (tests that start two evaluators on one registry) keeps the first.
        let _ = registry.register(Box::new(m.evaluations.clone()));
        let _ = registry.register(Box::new(m.failures.clone()));
        let _ = registry.register(Box::new(m.duration.clone()));
        let _ = registry.register(Box::new(m.active.clone()));
        let _ = registry.register(Box::new(m.delivered.clone()));
        let _ = registry.register(Box::new(m.outbox.clone()));
        let _ = registry.register(Box::new(m.dropped.clone()));
        m
    }
}
