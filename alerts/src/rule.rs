//! A rule checked and compiled from its configuration: the aggregation it asks the backend for, how it
//! reads a metric and a volume from each group's row, and the labels and annotations its alerts carry.

use std::collections::BTreeMap;

use query::backend::{AggQuery, AggRow};
use query::metrics::sums;
use schemas::tables::DIM_COLUMNS;
use serde::{Deserialize, Serialize};

/// One rule as written in the configuration (`[[alerts.rules]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique; the alert's `alertname` (letters, digits and `_`).
    pub name: String,
    /// A metric of the metrics API: a window sum (`attempts`, `errors`…), a start-up percentile
    /// (`startup_p95`…), a ratio (`vsf_pct`, `rebuffer_ratio`, `cache_hit_ratio`…) or
    /// `concurrent_viewers` (the latest window's).
    pub metric: String,
    /// `dimension:value[,dimension:value…]`, as the API's `filter`.
    #[serde(default)]
    pub filter: String,
    /// One alert per value of this dimension (`cdn`, `country`…); none: one alert for all traffic.
    #[serde(default)]
    pub group_by: Option<String>,
    /// The metric is computed over the last `range` (`5m`).
    #[serde(default = "default_range")]
    pub range: String,
    /// `>`, `>=`, `<` or `<=`: the alert condition is `metric <op> threshold`.
    pub op: String,
    pub threshold: f64,
    /// What must reach `min_volume` for the rule to judge a group: a window sum, or several joined by
    /// `+` (`segments_hit+segments_miss`).
    #[serde(default = "default_volume")]
    pub volume: String,
    #[serde(default = "default_min_volume")]
    pub min_volume: i64,
    /// The condition must hold this long before the alert fires (`0s`: at once).
    #[serde(default = "default_for", rename = "for")]
    pub for_: String,
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Extra labels of the alert (Alertmanager routes on labels).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations; `{{ group }}`, `{{ value }}`, `{{ threshold }}` and `{{ metric }}` are filled in. A
    /// `summary` is made when none is given.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

pub(crate) fn default_range() -> String {
    "5m".into()
}
fn default_volume() -> String {
    "attempts".into()
}
fn default_min_volume() -> i64 {
    100
}
fn default_for() -> String {
    "1m".into()
}
fn default_severity() -> String {
    "warning".into()
}

/// The one metric that is not a column of the aggregation's row.
pub const CONCURRENT_VIEWERS: &str = "concurrent_viewers";

/// Labels a rule's own `labels` may not set: qoeflow sets them.
const RESERVED_LABELS: [&str; 4] = ["alertname", "severity", "metric", "group"];
const MAX_LABELS: usize = 20;
const MAX_LABEL_VALUE: usize = 256;
const MAX_ANNOTATION: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As configured (served by `GET /api/v1/alerts/rules`).
    pub config: RuleConfig,
    pub name: String,
    pub metric: String,
    pub filters: Vec<(String, String)>,
    pub group_by: Option<String>,
    pub range_ms: i64,
    pub op: Op,
    pub threshold: f64,
    /// Positions in [`query::metrics::sums`] of the sums that make the volume.
    volume: Vec<usize>,
    pub min_volume: i64,
    pub for_ms: i64,
}

/// What a rule saw of one group: the metric (None: undefined, e.g. a ratio over nothing) and the volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The group's value of `group_by`; empty for a rule without one.
    pub group: String,
    pub value: Option<f64>,
    pub volume: i64,
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `<n><s|m|h|d>` in ms; `0` or `0s` is 0.
fn duration(s: &str) -> Option<i64> {
    if s == "0" || s == "0s" {
        return Some(0);
    }
    query::api::parse_duration(s)
}

impl Rule {
    /// Checks a configured rule; the error names the rule and the field.
    pub fn compile(c: &RuleConfig) -> crate::Result<Rule> {
        let bad = |field: &str, why: String| crate::Error::Config(format!("alerts rule {:?}: `{field}` {why}", c.name));
        if c.name.len() > 64 || !is_label_name(&c.name) {
            return Err(bad("name", "must be 1 to 64 letters, digits or `_`, not starting with a digit".into()));
        }
        let known = query::metrics::names().chain([CONCURRENT_VIEWERS]).any(|m| m == c.metric);
        if !known {
            let names: Vec<&str> = query::metrics::names().chain([CONCURRENT_VIEWERS]).collect();
            return Err(bad("metric", format!("{:?} is not a metric of the API (one of {})", c.metric, names.join(", "))));
        }
        let filters = query::api::parse_filter(&c.filter).map_err(|e| bad("filter", e))?;
        if let Some(g) = &c.group_by
            && !DIM_COLUMNS.contains(&g.as_str())
        {
            return Err(bad("group_by", format!("{g:?} is not a dimension (one of {})", DIM_COLUMNS.join(", "))));
        }
        let range_ms = duration(&c.range)
            .filter(|r| (10_000..=7 * 86_400_000).contains(r))
            .ok_or_else(|| bad("range", format!("{:?} must be a duration from 10s to 7d", c.range)))?;
        let op = match c.op.as_str() {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            other => return Err(bad("op", format!("{other:?} is not one of >, >=, <, <="))),
        };
        if !c.threshold.is_finite() {
            return Err(bad("threshold", "must be a finite number".into()));
        }
        let mut volume = Vec::new();
        for term in c.volume.split('+').map(str::trim) {
            let at = sums().position(|s| s == term).ok_or_else(|| bad("volume", format!("{term:?} is not a window sum (attempts, starts, segments_hit…)")))?;
            volume.push(at);
        }
        if c.min_volume < 0 {
            return Err(bad("min_volume", "must not be negative".into()));
        }
        let for_ms = duration(&c.for_).filter(|f| *f <= 86_400_000).ok_or_else(|| bad("for", format!("{:?} must be a duration up to 1d", c.for_)))?;
        if c.severity.is_empty() || c.severity.len() > 32 {
            return Err(bad("severity", "must be 1 to 32 characters".into()));
        }
        if c.labels.len() > MAX_LABELS || c.annotations.len() > MAX_LABELS {
            return Err(bad("labels", format!("at most {MAX_LABELS} labels and {MAX_LABELS} annotations")));
        }
        for (k, v) in &c.labels {
            let taken = RESERVED_LABELS.contains(&k.as_str()) || DIM_COLUMNS.contains(&k.as_str()) || k.starts_with("__");
            if !is_label_name(k) || taken {
                return Err(bad("labels", format!("{k:?} is not a label name of its own (letters, digits, `_`; not {} or a dimension)", RESERVED_LABELS.join(", "))));
            }
            if v.len() > MAX_LABEL_VALUE {
                return Err(bad("labels", format!("{k}: at most {MAX_LABEL_VALUE} bytes")));
            }
        }
        for (k, v) in &c.annotations {
            if !is_label_name(k) || v.len() > MAX_ANNOTATION {
                return Err(bad("annotations", format!("{k:?}: a label-like name and at most {MAX_ANNOTATION} bytes")));
            }
        }
        Ok(Rule {
            config: c.clone(),
            name: c.name.clone(),
            metric: c.metric.clone(),
            filters,
            group_by: c.group_by.clone(),
            range_ms,
            op,
            threshold: c.threshold,
            volume,
            min_volume: c.min_volume,
            for_ms,
        })
    }

    /// The aggregation this rule judges at `now`: its range up to now, its filter, one row per group
    /// (at most `max_groups`, those with the most attempts).
    pub fn query(&self, now: i64, max_groups: u32) -> AggQuery {
        AggQuery {
            from: now - self.range_ms,
            to: now,
            filters: self.filters.clone(),
            bucket_ms: None,
            group_by: self.group_by.clone(),
            top: self.group_by.as_ref().map(|_| max_groups),
        }
    }

    /// The observation of one row; `concurrent` is the group's viewers in the latest window (only read
    /// for the `concurrent_viewers` metric).
    pub fn observe(&self, row: &AggRow, concurrent: Option<i64>) -> Observation {
        let value = if self.metric == CONCURRENT_VIEWERS {
            Some(concurrent.unwrap_or(0) as f64)
        } else {
            row.metrics().get(&self.metric).and_then(serde_json::Value::as_f64)
        };
        let volume = self.volume.iter().map(|i| row.sums.get(*i).copied().unwrap_or(0)).sum();
        Observation { group: row.group.clone().unwrap_or_default(), value, volume }
    }

    /// Whether the rule's condition holds for an observation: judged (volume reached), defined, and
    /// past the threshold. A group below the volume, or without a value, does not breach.
    pub fn breaches(&self, o: &Observation) -> bool {
        o.volume >= self.min_volume && o.value.is_some_and(|v| self.op.holds(v, self.threshold))
    }

    /// The labels of this rule's alert for `group`: `alertname`, `severity`, `metric`, the filter's
    /// dimensions, the group's dimension, then the rule's own.
    pub fn labels(&self, group: &str) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            ("alertname".to_owned(), self.name.clone()),
            ("severity".to_owned(), self.config.severity.clone()),
            ("metric".to_owned(), self.metric.clone()),
        ]);
        for (dim, value) in &self.filters {
            l.insert(dim.clone(), value.clone());
        }
        if let Some(dim) = &self.group_by {
            l.insert(dim.clone(), group.to_owned());
        }
        l.extend(self.config.labels.clone());
        l
    }

    /// The annotations with `{{ group }}`, `{{ value }}`, `{{ threshold }}`, `{{ metric }}` filled in,
    /// and a `summary` when the rule has none.
    pub fn annotations(&self, group: &str, value: Option<f64>) -> BTreeMap<String, String> {
        let value = value.map_or_else(|| "n/a".to_owned(), format_value);
        let group = if self.group_by.is_some() { group } else { "all" };
        let fill = |t: &str| {
            let mut s = t.to_owned();
            for (k, v) in [("group", group), ("value", &value), ("threshold", &format_value(self.threshold)), ("metric", &self.metric)] {
                s = s.replace(&format!("{{{{ {k} }}}}"), v).replace(&format!("{{{{{k}}}}}"), v);
            }
            s
        };
        let mut a: BTreeMap<String, String> = self.config.annotations.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
        a.entry("summary".into()).or_insert_with(|| {
            let scope = self.group_by.as_ref().map(|d| format!(" for {d} {group}")).unwrap_or_default();
            format!("{} {} {}{scope}: {value}", self.metric, self.op.as_str(), format_value(self.threshold))
        });
        a
    }
}

/// A metric value for people: up to 4 significant decimals.
pub fn format_value(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AlertsConfig, default_rules};

    fn rule(f: impl FnOnce(&mut RuleConfig)) -> crate::Result<Rule> {
        let mut c = default_rules().remove(0);
        f(&mut c);
        Rule::compile(&c)
    }

    #[test]
    fn the_shipped_rules_compile() {
        let rules = AlertsConfig::default().rules().expect("shipped rules");
        assert_eq!(rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["VideoStartFailures", "Rebuffering", "PlaybackErrors", "CdnCacheHits"]);
        let cache = &rules[3];
        assert_eq!((cache.op, cache.threshold, cache.for_ms, cache.range_ms), (Op::Lt, 0.95, 120_000, 300_000));
    }

    #[test]
    fn each_bad_field_is_named() {
        for (edit, field) in [
            (Box::new(|c: &mut RuleConfig| c.metric = "vsf_rate".into()) as Box<dyn FnOnce(&mut RuleConfig)>, "`metric`"),
            (Box::new(|c: &mut RuleConfig| c.name = "9 lives".into()), "`name`"),
            (Box::new(|c: &mut RuleConfig| c.filter = "planet:mars".into()), "`filter`"),
            (Box::new(|c: &mut RuleConfig| c.group_by = Some("planet".into())), "`group_by`"),
            (Box::new(|c: &mut RuleConfig| c.range = "1s".into()), "`range`"),
            (Box::new(|c: &mut RuleConfig| c.op = "==".into()), "`op`"),
            (Box::new(|c: &mut RuleConfig| c.threshold = f64::NAN), "`threshold`"),
            (Box::new(|c: &mut RuleConfig| c.volume = "attempts+views".into()), "`volume`"),
            (Box::new(|c: &mut RuleConfig| c.for_ = "soon".into()), "`for`"),
            (Box::new(|c: &mut RuleConfig| drop(c.labels.insert("alertname".into(), "x".into()))), "`labels`"),
            (Box::new(|c: &mut RuleConfig| drop(c.labels.insert("cdn".into(), "x".into()))), "`labels`"),
        ] {
            let err = rule(edit).expect_err(field).to_string();
            assert!(err.starts_with("invalid configuration: alerts rule \"") && err.contains(field), "{field}: {err}");
        }
        assert_eq!(rule(|c| c.for_ = "0s".into()).expect("valid").for_ms, 0);
    }

    #[test]
    fn configured_rules_replace_shipped_ones_and_names_are_unique() {
        let mut mine = default_rules().remove(1);
        mine.threshold = 0.1;
        let config = AlertsConfig { rules: vec![mine.clone()], ..AlertsConfig::default() };
        let rules = config.rules().expect("valid");
        assert_eq!(rules.len(), 4);
        assert_eq!(rules.iter().find(|r| r.name == "Rebuffering").map(|r| r.threshold), Some(0.1));
        let twice = AlertsConfig { rules: vec![mine.clone(), mine.clone()], ..AlertsConfig::default() };
        assert!(twice.rules().unwrap_err().to_string().contains("two rules are named"));
        let only = AlertsConfig { default_rules: false, rules: vec![mine], ..AlertsConfig::default() };
        assert_eq!(only.rules().expect("valid").len(), 1);
    }

    #[test]
    fn observations_volume_and_breach() {
        let r = rule(|c| {
            c.volume = "segments_hit+segments_miss".into();
            c.min_volume = 10;
        })
        .expect("valid");
        let mut row = AggRow { bucket: None, group: Some("fastly".into()), sums: vec![0; query::metrics::sum_count()], quantiles: vec![], windows: None };
        let at = |n: &str| sums().position(|s| s == n).expect("a sum");
        row.sums[at("attempts")] = 20;
        row.sums[at("vsf")] = 4;
        row.sums[at("segments_hit")] = 6;
        row.sums[at("segments_miss")] = 3;
        let o = r.observe(&row, None);
        assert_eq!(o, Observation { group: "fastly".into(), value: Some(20.0), volume: 9 });
        assert!(!r.breaches(&o), "9 segments: below the volume");
        row.sums[at("segments_miss")] = 4;
        assert!(r.breaches(&r.observe(&row, None)), "20 % > 5 % with 10 segments");
        let labels = r.labels("fastly");
        assert_eq!(labels.get("cdn").map(String::as_str), Some("fastly"));
        assert_eq!(labels.get("alertname").map(String::as_str), Some("VideoStartFailures"));
        let a = r.annotations("fastly", Some(20.0));
        assert_eq!(a["summary"], "Video start success below 95 % on CDN fastly: 20 % of starts fail");
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(23.456), "23.46");
        assert_eq!(format_value(0.03), "0.03");
        assert_eq!(format_value(0.912345), "0.9123");
        assert_eq!(format_value(1500.0), "1500");
    }
}
