//! `[alerts]`: the rules and where their notifications go. Defaults live here, and [`AlertsConfig::rules`]
//! checks every rule at start-up, naming the rule and the field that cannot work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::rule::RuleConfig;
use crate::rule::{Rule, default_range};

/// `[alerts]` of `qoeflow serve` and `qoeflow query-server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate the rules in this process. Run it in one process per dataset: each evaluator notifies
    /// on its own (Alertmanager deduplicates identical alerts; webhooks would see each twice).
    pub enabled: bool,
    /// How often every rule is evaluated.
    pub interval_ms: u64,
    /// Include the rules qoeflow ships ([`default_rules`]); a rule of `rules` with the same name
    /// replaces one of them.
    pub default_rules: bool,
    pub rules: Vec<RuleConfig>,
    /// Prometheus Alertmanager base URLs (`http://alertmanager:9093`): alerts are posted to
    /// `/api/v2/alerts` of each, firing ones again every `resend_ms`.
    pub alertmanager_urls: Vec<String>,
    /// URLs that get one JSON POST per alert that fires or resolves.
    pub webhook_urls: Vec<String>,
    /// Sent to the webhooks as `Authorization: Bearer <token>`.
    pub webhook_token: Option<String>,
    /// Firing alerts are posted to Alertmanager again this often, with an end 4 periods ahead (so an
    /// alert whose evaluator died resolves by itself, as Prometheus does).
    pub resend_ms: u64,
    /// Base URL of the dashboard, for the alerts' links (`generatorURL`, `url`).
    pub external_url: Option<String>,
    /// Notifications (and history rows) kept per destination while it is unreachable; past it the
    /// oldest are dropped and counted.
    pub max_outbox: usize,
    /// Groups (values of `group_by`) a rule judges at most: the ones with the most attempts.
    pub max_groups: u32,
    /// How long one notification or history write may take.
    pub timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            interval_ms: 10_000,
            default_rules: true,
            rules: Vec::new(),
            alertmanager_urls: Vec::new(),
            webhook_urls: Vec::new(),
            webhook_token: None,
            resend_ms: 60_000,
            external_url: None,
            max_outbox: 10_000,
            max_groups: 1_000,
            timeout_ms: 10_000,
        }
    }
}

/// Most rules one process evaluates.
pub const MAX_RULES: usize = 200;

/// A shipped rule: `metric op threshold`, per CDN, judged from `min_volume` of the attempts (or
/// `volume`), with a summary.
fn shipped(name: &str, (metric, op, threshold): (&str, &str, f64), severity: &str, (volume, min_volume): (&str, i64), summary: &str) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        metric: metric.into(),
        filter: String::new(),
        group_by: Some("cdn".into()),
        range: default_range(),
        op: op.into(),
        threshold,
        volume: volume.into(),
        min_volume,
        for_: "2m".into(),
        severity: severity.into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([("summary".to_owned(), summary.to_owned())]),
    }
}

/// The rules qoeflow ships: the thresholds the platforms state (`docs/metrics.md` §19), per CDN, over
/// the last 5 minutes, judged from 100 attempts (1,000 segments for the cache) and firing after 2
/// minutes.
pub fn default_rules() -> Vec<RuleConfig> {
    vec![
        shipped("VideoStartFailures", ("vsf_pct", ">", 5.0), "critical", ("attempts", 100), "Video start success below 95 % on CDN {{ group }}: {{ value }} % of starts fail"),
        shipped("Rebuffering", ("rebuffer_ratio", ">", 0.03), "warning", ("attempts", 100), "Buffering above 3 % on CDN {{ group }}: {{ value }}"),
        shipped("PlaybackErrors", ("error_rate_pct", ">", 1.0), "critical", ("attempts", 100), "Fatal errors in more than 1 % of attempts on CDN {{ group }}: {{ value }} %"),
        shipped("CdnCacheHits", ("cache_hit_ratio", "<", 0.95), "warning", ("segments_hit+segments_miss", 1_000), "CDN {{ group }} serves only {{ value }} of segments from cache (target 95 %)"),
    ]
}

impl AlertsConfig {
    /// The rules to evaluate (the shipped ones unless turned off, then the configured ones), each checked.
    pub fn rules(&self) -> crate::Result<Vec<Rule>> {
        // A configured rule replaces a shipped one of its name; two configured rules may not share one.
        let shipped: Vec<RuleConfig> = if self.default_rules { default_rules() } else { Vec::new() };
        let shipped = shipped.into_iter().filter(|d| !self.rules.iter().any(|r| r.name == d.name));
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.rules {
            if !seen.insert(r.name.as_str()) {
                return Err(crate::Error::Config(format!("alerts.rules: two rules are named {:?}", r.name)));
            }
        }
        let rules: Vec<RuleConfig> = shipped.chain(self.rules.iter().cloned()).collect();
        if rules.len() > MAX_RULES {
            return Err(crate::Error::Config(format!("alerts.rules: at most {MAX_RULES} rules (got {})", rules.len())));
        }
        rules.iter().map(Rule::compile).collect()
    }

    /// Checks the settings and every rule.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
        if self.interval_ms < 1_000 || self.interval_ms > 3_600_000 {
            return bad(format!("alerts.interval_ms must be 1000 to 3600000 (got {})", self.interval_ms));
        }
        if self.resend_ms < 1_000 {
            return bad(format!("alerts.resend_ms must be at least 1000 (got {})", self.resend_ms));
        }
        if self.max_outbox == 0 || self.max_groups == 0 || self.timeout_ms == 0 {
            return bad("alerts.max_outbox, alerts.max_groups and alerts.timeout_ms must be above 0".into());
        }
        for url in self.alertmanager_urls.iter().chain(&self.webhook_urls).chain(&self.external_url) {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return bad(format!("alerts: {url:?} is not an http(s) URL")),
            }
        }
        self.rules().map(drop)
    }
}
