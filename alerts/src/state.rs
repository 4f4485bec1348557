//! The alert state machine, pure: no clock, no I/O. One alert per (rule, group); each evaluation's
//! observations move it
//!
//! ```text
//!   inactive ──breach──► pending ──breach for `for`──► firing ──no breach──► resolved (inactive)
//!                          └──no breach──► inactive
//! ```
//!
//! and every move is a [`Transition`]: a numbered record of what changed, with everything a notifier or
//! the history table needs (so they never depend on the configuration at delivery time). A group the
//! evaluation did not see (no traffic in the range, or out of the `max_groups` busiest) does not
//! breach. A rule that failed to evaluate (backend down) is not stepped: its alerts stay as they were.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rule::{Observation, Rule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
}

/// A pending or firing alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    /// The value of the rule's `group_by` ("" without one).
    pub group: String,
    pub state: State,
    /// When the condition started to hold (epoch ms).
    pub active_since: i64,
    pub fired_at: Option<i64>,
    /// The latest evaluation's value and volume.
    pub value: Option<f64>,
    pub volume: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Pending,
    Firing,
    Resolved,
    /// A pending alert whose condition ended before it fired.
    Inactive,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Pending => "pending",
            Change::Firing => "firing",
            Change::Resolved => "resolved",
            Change::Inactive => "inactive",
        }
    }

    /// Whether people are told (firing and resolved); the others go to the history only.
    pub fn notifies(self) -> bool {
        matches!(self, Change::Firing | Change::Resolved)
    }
}

/// One state change of one alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Numbered in order by the evaluator that made it (with its source, the history row's identity).
    pub seq: u64,
    /// When (the evaluation's time, epoch ms).
    pub at: i64,
    pub change: Change,
    pub rule: String,
    pub group_by: String,
    pub group: String,
    pub metric: String,
    pub op: String,
    pub threshold: f64,
    pub severity: String,
    pub value: Option<f64>,
    pub volume: i64,
    pub active_since: i64,
    pub fired_at: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Every pending and firing alert, and the next transition number. Bounded: at most `max_groups`
/// alerts per rule (the groups an evaluation sees).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    pub next_seq: u64,
    #[serde(with = "as_list")]
    pub alerts: BTreeMap<(String, String), Alert>,
}

/// The alerts map as a JSON list (its keys are tuples).
mod as_list {
    use super::*;

    pub fn serialize<S: serde::Serializer>(m: &BTreeMap<(String, String), Alert>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.values())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<(String, String), Alert>, D::Error> {
        let list: Vec<Alert> = Vec::deserialize(d)?;
        Ok(list.into_iter().map(|a| ((a.rule.clone(), a.group.clone()), a)).collect())
    }
}

impl Alerts {
    /// Steps `rule`'s alerts with one evaluation's observations at `now`; returns the transitions.
    pub fn step(&mut self, rule: &Rule, observed: &[Observation], now: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for o in observed {
            seen.insert(o.group.as_str());
            self.judge(rule, &o.group, o.value, o.volume, rule.breaches(o), now, &mut out);
        }
        let unseen: Vec<String> =
            self.alerts.keys().filter(|(r, g)| *r == rule.name && !seen.contains(g.as_str())).map(|(_, g)| g.clone()).collect();
        for group in unseen {
            self.judge(rule, &group, None, 0, false, now, &mut out);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(&mut self, rule: &Rule, group: &str, value: Option<f64>, volume: i64, breach: bool, now: i64, out: &mut Vec<Transition>) {
        let key = (rule.name.clone(), group.to_owned());
        match (self.alerts.get_mut(&key), breach) {
            (None, false) => {}
            (None, true) => {
                let alert = Alert {
                    rule: rule.name.clone(),
                    group: group.to_owned(),
                    state: State::Pending,
                    active_since: now,
                    fired_at: None,
                    value,
                    volume,
                    labels: rule.labels(group),
                    annotations: rule.annotations(group, value),
                };
                out.push(self.record(rule, &alert, Change::Pending, now));
                self.alerts.insert(key.clone(), alert);
                self.maybe_fire(rule, &key, now, out);
            }
            (Some(alert), true) => {
                alert.value = value;
                alert.volume = volume;
                alert.annotations = rule.annotations(group, value);
                self.maybe_fire(rule, &key, now, out);
            }
            (Some(alert), false) => {
                alert.value = value;
                alert.volume = volume;
                alert.annotations = rule.annotations(group, value);
                let change = if alert.state == State::Firing { Change::Resolved } else { Change::Inactive };
                let alert = alert.clone();
                self.alerts.remove(&key);
                out.push(self.record(rule, &alert, change, now));
            }
        }
    }

    /// A pending alert whose condition has held for the rule's `for` fires.
    fn maybe_fire(&mut self, rule: &Rule, key: &(String, String), now: i64, out: &mut Vec<Transition>) {
        let Some(alert) = self.alerts.get_mut(key) else { return };
        if alert.state == State::Pending && now - alert.active_since >= rule.for_ms {
            alert.state = State::Firing;
            alert.fired_at = Some(now);
            let alert = alert.clone();
            out.push(self.record(rule, &alert, Change::Firing, now));
        }
    }

    /// Alerts of rules no longer configured end: firing ones resolve, pending ones go inactive.
    pub fn retire(&mut self, rules: &[Rule], now: i64) -> Vec<Transition> {
        let gone: Vec<(String, String)> = self.alerts.keys().filter(|(r, _)| !rules.iter().any(|rule| &rule.name == r)).cloned().collect();
        let mut out = Vec::new();
        for key in gone {
            if let Some(alert) = self.alerts.remove(&key) {
                let change = if alert.state == State::Firing { Change::Resolved } else { Change::Inactive };
                out.push(self.transition(&alert, change, now, Default::default()));
            }
        }
        out
    }

    fn record(&mut self, rule: &Rule, alert: &Alert, change: Change, now: i64) -> Transition {
        let c = &rule.config;
        let of_rule = RuleFacts {
            group_by: c.group_by.clone().unwrap_or_default(),
            metric: rule.metric.clone(),
            op: rule.op.as_str().to_owned(),
            threshold: rule.threshold,
            severity: c.severity.clone(),
        };
        self.transition(alert, change, now, of_rule)
    }

    fn transition(&mut self, alert: &Alert, change: Change, now: i64, rule: RuleFacts) -> Transition {
        self.next_seq += 1;
        // A retired rule's facts are gone from the configuration; its labels still carry them.
        let label = |k: &str| alert.labels.get(k).cloned().unwrap_or_default();
        Transition {
            seq: self.next_seq,
            at: now,
            change,
            rule: alert.rule.clone(),
            group_by: rule.group_by,
            group: alert.group.clone(),
            metric: if rule.metric.is_empty() { label("metric") } else { rule.metric },
            op: rule.op,
            threshold: rule.threshold,
            severity: if rule.severity.is_empty() { label("severity") } else { rule.severity },
            value: alert.value,
            volume: alert.volume,
            active_since: alert.active_since,
            fired_at: alert.fired_at,
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
        }
    }

    /// How many alerts are pending and firing.
    pub fn counts(&self) -> (usize, usize) {
        let firing = self.alerts.values().filter(|a| a.state == State::Firing).count();
        (self.alerts.len() - firing, firing)
    }
}

#[derive(Default)]
struct RuleFacts {
    group_by: String,
    metric: String,
    op: String,
    threshold: f64,
    severity: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_rules;

    fn rule(for_: &str) -> Rule {
        let mut c = default_rules().remove(0);
        c.for_ = for_.into();
        c.min_volume = 10;
        Rule::compile(&c).expect("valid")
    }

    fn obs(group: &str, value: f64, volume: i64) -> Observation {
        Observation { group: group.into(), value: Some(value), volume }
    }

    fn changes(t: &[Transition]) -> Vec<(&str, Change)> {
        t.iter().map(|t| (t.group.as_str(), t.change)).collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule("1m");
        let mut a = Alerts::default();
        assert_eq!(changes(&a.step(&r, &[obs("fastly", 20.0, 50), obs("akamai", 1.0, 50)], 0)), [("fastly", Change::Pending)]);
        assert!(a.step(&r, &[obs("fastly", 25.0, 50)], 30_000).is_empty(), "still pending within `for`");
        let fired = a.step(&r, &[obs("fastly", 30.0, 50)], 60_000);
        assert_eq!(changes(&fired), [("fastly", Change::Firing)]);
        assert_eq!((fired[0].value, fired[0].active_since, fired[0].fired_at), (Some(30.0), 0, Some(60_000)));
        assert_eq!(fired[0].labels["cdn"], "fastly");
        assert!(a.step(&r, &[obs("fastly", 40.0, 50)], 70_000).is_empty(), "firing stays firing without a new transition");
        assert_eq!(a.counts(), (0, 1));
        let resolved = a.step(&r, &[obs("fastly", 2.0, 50)], 80_000);
        assert_eq!(changes(&resolved), [("fastly", Change::Resolved)]);
        assert_eq!((resolved[0].fired_at, resolved[0].value), (Some(60_000), Some(2.0)));
        assert_eq!(a.alerts.len(), 0);
        assert_eq!(a.next_seq, 3, "pending, firing, resolved");
    }

    #[test]
    fn low_volume_never_fires_and_a_short_breach_goes_inactive() {
        let r = rule("1m");
        let mut a = Alerts::default();
        for t in 0..10 {
            assert!(a.step(&r, &[obs("tiny", 100.0, 3)], t * 10_000).is_empty(), "3 attempts: not judged");
        }
        a.step(&r, &[obs("fastly", 20.0, 50)], 0);
        assert_eq!(changes(&a.step(&r, &[], 10_000)), [("fastly", Change::Inactive)], "unseen: no breach");
        assert!(a.alerts.is_empty());
    }

    #[test]
    fn for_zero_fires_at_once_and_a_retired_rule_resolves() {
        let r = rule("0s");
        let mut a = Alerts::default();
        assert_eq!(changes(&a.step(&r, &[obs("", 20.0, 50)], 5)), [("", Change::Pending), ("", Change::Firing)]);
        let gone = a.retire(&[], 10);
        assert_eq!(changes(&gone), [("", Change::Resolved)]);
        assert_eq!((gone[0].metric.as_str(), gone[0].severity.as_str()), ("vsf_pct", "critical"), "from the alert's labels");
    }

    #[test]
    fn the_state_survives_json() {
        let r = rule("1m");
        let mut a = Alerts::default();
        a.step(&r, &[obs("fastly", 20.0, 50)], 0);
        let back: Alerts = serde_json::from_str(&serde_json::to_string(&a).expect("json")).expect("back");
        assert_eq!(back, a);
    }
}
