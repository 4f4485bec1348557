//! The evaluator as tasks: one evaluates every rule each `interval_ms` and records the transitions;
//! one per destination delivers them. What links them is the **state file**
//! (`<data_dir>/alerts/state.json`, replaced atomically and durably): the pending and firing alerts
//! and, per destination, the transitions it has not taken yet (its outbox). A transition is in the
//! file before any destination sees it, and leaves a destination's outbox only once delivered, so a
//! restart neither notifies again (a firing alert is still firing in the file) nor forgets a firing
//! alert, and a destination that is down loses nothing (retries back off from 1 s to 60 s; at
//! `max_outbox` waiting transitions the oldest are dropped and counted). Delivery is at least once: a
//! crash between a delivery and the file's update repeats that delivery after the restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use query::backend::Backend;
use serde::{Deserialize, Serialize};
use service::Stop;

use crate::config::AlertsConfig;
use crate::deliver::{Deliverer, Destination};
use crate::error::Context as _;
use crate::metrics::AlertMetrics;
use crate::rule::{CONCURRENT_VIEWERS, Observation, Rule};
use crate::state::{Alert, Alerts, Change, State, Transition};

const STATE_FILE: &str = "state.json";
const MAX_BATCH: usize = 100;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    version: u32,
    /// `alerts-<id>`: this evaluator's name in the history rows, made once.
    pub source: String,
    #[serde(flatten)]
    pub alerts: Alerts,
    /// Per destination key, the transitions it has not taken yet, oldest first.
    pub outbox: BTreeMap<String, VecDeque<Transition>>,
}

pub(crate) struct Shared {
    pub config: AlertsConfig,
    pub rules: Vec<Rule>,
    pub backend: Backend,
    deliverer: Deliverer,
    destinations: Vec<Destination>,
    dir: objstore::Location,
    pub saved: tokio::sync::Mutex<Saved>,
    wake: tokio::sync::Notify,
    metrics: AlertMetrics,
}

/// A new evaluator name: the start time and process id, base 36.
fn new_source() -> String {
    let n = (schemas::now_ms() as u64).wrapping_mul(1_000_003) ^ u64::from(std::process::id());
    let mut s = String::new();
    let mut n = n;
    while n > 0 {
        let d = (n % 36) as u32;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    format!("alerts-{s}")
}

/// What [`start`] needs.
pub struct Options<'a> {
    pub config: AlertsConfig,
    pub backend: Backend,
    /// The Parquet dataset (the history's `alerts` table).
    pub dataset: objstore::Location,
    pub clickhouse: schemas::tables::ClickHouseConfig,
    /// Where the state file lives (`<data_dir>/alerts/`).
    pub data_dir: &'a Path,
    pub registry: &'a prometheus::Registry,
}

/// A running evaluator (or none, when `alerts.enabled` is false): its state for the API, and its tasks.
pub struct Evaluator {
    pub(crate) shared: Option<Arc<Shared>>,
    pub(crate) backend: Backend,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Evaluator {
    /// Starts evaluating (unless disabled) until `stop` is set: loads the state file, resolves the
    /// alerts of rules no longer configured, and starts the tasks.
    pub async fn start(o: Options<'_>, stop: &Stop) -> crate::Result<Evaluator> {
        if !o.config.enabled {
            return Ok(Evaluator { shared: None, backend: o.backend, tasks: Vec::new() });
        }
        o.config.validate()?;
        let rules = o.config.rules()?;
        let dir = objstore::Location::local(o.data_dir.join("alerts"));
        let mut saved = load(&dir).await?;
        if saved.source.is_empty() {
            saved.source = new_source();
        }
        let deliverer = Deliverer::new(
            saved.source.clone(),
            o.dataset,
            &o.clickhouse,
            o.config.webhook_token.clone(),
            o.config.external_url.clone(),
            o.config.resend_ms,
            Duration::from_millis(o.config.timeout_ms),
        )?;
        let destinations = deliverer.destinations(&o.config.alertmanager_urls, &o.config.webhook_urls);
        let keys: Vec<String> = destinations.iter().map(Destination::key).collect();
        saved.outbox.retain(|key, waiting| {
            let keep = keys.contains(key);
            if !keep && !waiting.is_empty() {
                tracing::warn!(destination = %key, transitions = waiting.len(), "alerts: a destination is no longer configured; its undelivered transitions are dropped");
            }
            keep
        });
        let metrics = AlertMetrics::new(o.registry);
        let retired = saved.alerts.retire(&rules, schemas::now_ms());
        let shared = Arc::new(Shared {
            config: o.config,
            rules,
            backend: o.backend.clone(),
            deliverer,
            destinations,
            dir,
            saved: tokio::sync::Mutex::new(saved),
            wake: tokio::sync::Notify::new(),
            metrics,
        });
        {
            let mut s = shared.saved.lock().await;
            shared.record(&mut s, retired);
            shared.save(&s).await?;
            let (pending, firing) = s.alerts.counts();
            tracing::info!(
                rules = shared.rules.len(),
                pending,
                firing,
                source = %s.source,
                destinations = ?shared.destinations.iter().map(Destination::key).collect::<Vec<_>>(),
                "alerts: evaluating"
            );
        }
        let mut tasks = vec![tokio::spawn(evaluate_loop(shared.clone(), stop.receiver()))];
        for d in shared.destinations.clone() {
            // Series from the start (at 0), so rates and alerts on them exist before the first delivery.
            for outcome in ["sent", "failed"] {
                shared.metrics.delivered.with_label_values(&[d.kind(), outcome]);
            }
            shared.metrics.outbox.with_label_values(&[d.kind()]);
            tasks.push(tokio::spawn(deliver_loop(shared.clone(), d, stop.receiver())));
        }
        Ok(Evaluator { shared: Some(shared), backend: o.backend, tasks })
    }

    /// Waits for the tasks to end (after `stop`).
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn load(dir: &objstore::Location) -> crate::Result<Saved> {
    let Some(bytes) = dir.get(STATE_FILE).await? else { return Ok(Saved::default()) };
    match serde_json::from_slice::<Saved>(&bytes) {
        Ok(saved) => Ok(saved),
        Err(e) => {
            // Kept for inspection; starting over may notify again of what was firing.
            let aside = format!("{STATE_FILE}.unreadable-{}", schemas::now_ms());
            dir.put(&aside, bytes).await?;
            tracing::error!(error = %e, kept_as = %aside, "alerts: the state file is unreadable; starting with no alerts");
            Ok(Saved::default())
        }
    }
}

impl Shared {
    async fn save(&self, s: &Saved) -> crate::Result<()> {
        let bytes = serde_json::to_vec(s)?;
        self.dir.put(STATE_FILE, bytes.into()).await.context("writing the alerts state file")
    }

    /// Puts transitions in the outbox of every destination that wants them (dropping the oldest past
    /// `max_outbox`), logs the ones people hear of, and updates the gauges.
    fn record(&self, s: &mut Saved, transitions: Vec<Transition>) {
        for t in &transitions {
            if t.change.notifies() {
                tracing::warn!(rule = %t.rule, group = %t.group, state = t.change.as_str(), value = ?t.value, threshold = t.threshold, "alert");
            }
            for d in &self.destinations {
                if !d.wants(t.change) {
                    continue;
                }
                let q = s.outbox.entry(d.key()).or_default();
                q.push_back(t.clone());
                while q.len() > self.config.max_outbox {
                    q.pop_front();
                    self.metrics.dropped.with_label_values(&[d.kind()]).inc();
                }
            }
        }
        for d in &self.destinations {
            let waiting = s.outbox.get(&d.key()).map_or(0, VecDeque::len);
            self.metrics.outbox.with_label_values(&[d.kind()]).set(waiting as i64);
        }
        let (pending, firing) = s.alerts.counts();
        self.metrics.active.with_label_values(&["pending"]).set(pending as i64);
        self.metrics.active.with_label_values(&["firing"]).set(firing as i64);
    }

    /// One rule's observations at `now`.
    async fn observe(&self, rule: &Rule, now: i64) -> crate::Result<Vec<Observation>> {
        let q = rule.query(now, self.config.max_groups);
        let rows = self.backend.aggregate(&q).await?;
        let mut concurrent: HashMap<Option<String>, i64> = HashMap::new();
        if rule.metric == CONCURRENT_VIEWERS {
            // Ascending by window: the last one of each group is its latest.
            for (_, group, n) in self.backend.active_per_window(&q).await? {
                concurrent.insert(group, n);
            }
        }
        Ok(rows.iter().map(|row| rule.observe(row, concurrent.get(&row.group).copied())).collect())
    }
}

async fn evaluate_loop(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(shared.config.timeout_ms);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = schemas::now_ms();
        let timer = shared.metrics.duration.start_timer();
        let mut observed = Vec::with_capacity(shared.rules.len());
        for rule in &shared.rules {
            match tokio::time::timeout(timeout, shared.observe(rule, now)).await {
                Ok(Ok(o)) => observed.push((rule, o)),
                Ok(Err(e)) => {
                    shared.metrics.failures.with_label_values(&[&rule.name]).inc();
                    tracing::warn!(rule = %rule.name, error = format!("{e:#}"), "alerts: evaluation failed; the rule's alerts stay as they are");
                }
                Err(_) => {
                    shared.metrics.failures.with_label_values(&[&rule.name]).inc();
                    tracing::warn!(rule = %rule.name, timeout_ms = shared.config.timeout_ms, "alerts: evaluation timed out");
                }
            }
        }
        timer.observe_duration();
        shared.metrics.evaluations.inc();
        let mut s = shared.saved.lock().await;
        let transitions: Vec<Transition> = observed.into_iter().flat_map(|(rule, o)| s.alerts.step(rule, &o, now)).collect();
        if transitions.is_empty() {
            continue;
        }
        shared.record(&mut s, transitions);
        if let Err(e) = shared.save(&s).await {
            // Kept in memory; the next change or delivery saves it again.
            tracing::error!(error = format!("{e:#}"), "alerts: could not save the state file");
        }
        drop(s);
        shared.wake.notify_waiters();
    }
}

async fn deliver_loop(shared: Arc<Shared>, to: Destination, mut stop: tokio::sync::watch::Receiver<bool>) {
    let key = to.key();
    let resend = Duration::from_millis(shared.config.resend_ms);
    let (mut backoff, mut next_try) = (FIRST_BACKOFF, Instant::now());
    let mut last_keep_alive: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Destination::Alertmanager(url) = &to
            && last_keep_alive.is_none_or(|t| t.elapsed() >= resend)
        {
            last_keep_alive = Some(Instant::now());
            let firing: Vec<Alert> = shared.saved.lock().await.alerts.alerts.values().filter(|a| a.state == State::Firing).cloned().collect();
            if let Err(e) = shared.deliverer.keep_alive(url, &firing, schemas::now_ms()).await {
                tracing::warn!(destination = %key, error = format!("{e:#}"), "alerts: re-sending the firing alerts failed");
            }
        }
        if Instant::now() < next_try {
            continue;
        }
        let batch: Vec<Transition> =
            shared.saved.lock().await.outbox.get(&key).map(|q| q.iter().take(MAX_BATCH).cloned().collect()).unwrap_or_default();
        if batch.is_empty() {
            continue;
        }
        match shared.deliverer.deliver(&to, &batch).await {
            Ok(()) => {
                let mut s = shared.saved.lock().await;
                if let Some(q) = s.outbox.get_mut(&key) {
                    // Only what was delivered leaves (the front may have been dropped meanwhile).
                    q.retain(|t| !batch.iter().any(|b| b.seq == t.seq));
                }
                shared.record(&mut s, Vec::new());
                if let Err(e) = shared.save(&s).await {
                    tracing::error!(error = format!("{e:#}"), "alerts: could not save the state file");
                }
                shared.metrics.delivered.with_label_values(&[to.kind(), "sent"]).inc_by(batch.len() as u64);
                let notified: Vec<String> = batch.iter().filter(|t| t.change != Change::Pending && t.change != Change::Inactive).map(|t| format!("{}:{}", t.rule, t.change.as_str())).collect();
                tracing::debug!(destination = %key, transitions = batch.len(), ?notified, "alerts: delivered");
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                shared.metrics.delivered.with_label_values(&[to.kind(), "failed"]).inc();
                tracing::warn!(destination = %key, error = format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "alerts: delivery failed; will retry");
                next_try = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
