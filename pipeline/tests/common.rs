//! Shared by the golden and differential tests: building records, and turning outputs into comparable
//! JSON (only non-default measures; times relative to T0).
#![allow(dead_code)]

use std::collections::BTreeMap;

use pipeline::window::WindowDelta;
use schemas::measures::{HISTOGRAM_MEASURE, MEASURES, Measure, window_sums};
use schemas::tables::ColType;
use pipeline::{Output, ViewRow};
use schemas::record::EventsRecord;
use schemas::{ClientInfo, Record};
use serde_json::{Map, Value, json};

pub const T0: i64 = 1_700_000_000_000;

/// A record from relative times: events get `view_id` and `T0 + ts`.
pub fn record(view_id: &str, recv: i64, sent_at: i64, client: ClientInfo, events: &[Value]) -> Record {
    let events = events
        .iter()
        .map(|e| {
            let mut m = e.as_object().cloned().unwrap_or_default();
            m.insert("view_id".into(), json!(view_id));
            if let Some(ts) = m.get("ts").and_then(Value::as_i64) {
                m.insert("ts".into(), json!(T0 + ts));
            }
            m
        })
        .collect();
    Record::Events(EventsRecord {
        recv_ms: T0 + recv,
        sent_at: T0 + sent_at,
        key: None,
        view_id: view_id.to_owned(),
        client,
        events,
    })
}

fn nonzero(m: &mut Map<String, Value>, k: &str, v: Value) {
    let keep = match &v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        _ => true,
    };
    if keep {
        m.insert(k.to_owned(), v);
    }
}

pub fn view_json(v: &ViewRow) -> Value {
    let t = &v.totals;
    let mut m = Map::new();
    m.insert("view_id".into(), json!(v.view_id));
    m.insert("end_reason".into(), json!(v.end_reason));
    m.insert("start_ms".into(), json!(v.start_ms - T0));
    m.insert("end_ms".into(), json!(v.end_ms - T0));
    // Every per-view measure (`schemas::measures`), flags as booleans; the start time when started.
    for def in &MEASURES {
        let Some((name, ty)) = def.view else { continue };
        let value = t[def.measure];
        if def.measure == HISTOGRAM_MEASURE {
            if t.flag(Measure::Started) {
                m.insert(name.into(), json!(value));
            }
        } else if ty == ColType::Bool {
            nonzero(&mut m, name, json!(value != 0));
        } else {
            nonzero(&mut m, name, json!(value));
        }
    }
    nonzero(&mut m, "duplicates", json!(v.duplicates));
    nonzero(&mut m, "gaps", json!(v.gaps));
    Value::Object(m)
}

pub fn delta_json(window_start: i64, dims: &[String], d: &WindowDelta) -> Value {
    let mut m = Map::new();
    m.insert("window_start".into(), json!(window_start - T0));
    m.insert("dims".into(), json!(dims));
    for (measure, name) in window_sums() {
        nonzero(&mut m, name, json!(d.sums[measure]));
    }
    Value::Object(m)
}

/// Accumulates flushed outputs: views in order, window deltas merged per (window, dims).
#[derive(Default)]
pub struct Collected {
    pub views: Vec<ViewRow>,
    pub windows: BTreeMap<(i64, Vec<String>), WindowDelta>,
    pub window_rows: usize,
    pub events: usize,
}

impl Collected {
    pub fn add(&mut self, out: Output) {
        self.views.extend(out.views);
        self.events += out.events.len();
        for row in out.windows {
            self.window_rows += 1;
            self.windows.entry((row.window_start, row.dims.to_vec())).or_default().merge(&row.delta);
        }
    }

    pub fn views_json(&self) -> Vec<Value> {
        let mut v: Vec<_> = self.views.iter().collect();
        v.sort_by(|a, b| a.view_id.cmp(&b.view_id));
        v.into_iter().map(view_json).collect()
    }

    pub fn windows_json(&self) -> Vec<Value> {
        self.windows.iter().map(|((w, dims), d)| delta_json(*w, dims, d)).collect()
    }
}
