//! The fast parse of a beacon body: sonic-rs's SIMD parser builds the body's document, and validation
//! reads each event's fields from it. serde_json still reads the envelope and slices out each event's
//! text (the `raw` column keeps the event as sent), which sonic-rs cannot give.
//!
//! It answers exactly as [`super::parse_exact`] would, and leaves to that parse whatever it could not
//! answer so:
//! - a body either parser refuses, with repeated `events` keys, or whose envelope is wrong: the whole
//!   body is parsed again exactly, which names the problem as it always did;
//! - an event that is not an object: parsed exactly from its text;
//! - a field validation reads whose value the document does not hold as serde_json would (an object,
//!   as `custom` is; a zero written as a fraction, whose sign sonic-rs drops): the event is parsed
//!   exactly from its text when it is validated.
//!
//! The two parsers agree on every other value to the bit (floats parse to the nearest double in both);
//! a property test checks them against each other on generated bodies. A wrk beacon of 20 events is
//! parsed and validated this way in about 7 µs against 10 (BENCHMARKS.md §25).

use std::sync::Arc;

use sonic_rs::{JsonContainerTrait, JsonNumberTrait, JsonType, JsonValueTrait};

use super::{Counter, JsonRef, Num, Parsed, ParsedBeacon, RawEvent, Slots, envelope, parse_event, read_body};

/// Parses `body`, or `None` where the exact parse must decide (see the module's documentation). The
/// caller has bounded and charged the values `body` can hold.
pub(super) fn parse(body: &[u8]) -> Option<ParsedBeacon<'_>> {
    // serde_json's read first: its syntax is the contract's, and its nesting limit holds before
    // sonic-rs parses. The envelope's few values are counted against nothing: the caller's bound holds.
    let mut granted = |_| true;
    let counter = Counter::new(usize::MAX, &mut granted);
    let (obj, events) = read_body(body, &counter, false).ok()?;
    let (key, sent_at, events) = envelope(obj, events).ok()?;
    let doc = Arc::new(sonic_rs::from_slice::<sonic_rs::Value>(body).ok()?);
    let top = doc.as_object()?;
    if top.iter().filter(|(k, _)| *k == EVENTS).take(2).count() != 1 {
        return None;
    }
    let array = top.get(&EVENTS)?.as_array()?;
    if array.len() != events.texts.len() {
        return None;
    }
    let mut scratch = Vec::new();
    let mut out = Vec::with_capacity(array.len());
    for (index, (text, value)) in events.texts.into_iter().zip(array.iter()).enumerate() {
        let parsed = if value.is_object() {
            Parsed::Dom(DomEvent { doc: Arc::clone(&doc), index })
        } else {
            parse_event(&counter, &mut scratch, text).ok()?
        };
        out.push(RawEvent { text, parsed });
    }
    Some(ParsedBeacon { key, sent_at, events: out })
}

const EVENTS: &str = "events";

/// An event the fast parse read: the body's document and the event's index in its `events`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DomEvent {
    doc: Arc<sonic_rs::Value>,
    index: usize,
}

impl DomEvent {
    /// The event's fields as validation reads them, or `None` when one of them is a value the document
    /// does not hold exactly as serde_json would (see [`scalar`]).
    pub(super) fn slots(&self) -> Option<Slots<'_>> {
        let object = self.doc.get(EVENTS).and_then(|events| events.get(self.index)).and_then(|e| e.as_object());
        let mut slots = Slots::default();
        for (key, value) in object?.iter() {
            if let Some(slot) = slots.at(key) {
                *slot = Some(scalar(value)?);
            }
        }
        Some(slots)
    }
}

/// A value of the document as validation reads it, when the document holds it exactly as serde_json
/// would: not an array or object (only `custom` is one, and validation reads it as serde_json's map),
/// nor a zero written as a fraction (sonic-rs keeps no sign of a zero: `-0.0`).
fn scalar(v: &sonic_rs::Value) -> Option<JsonRef<'_>> {
    Some(match v.get_type() {
        JsonType::String => JsonRef::String(v.as_str()?),
        JsonType::Number => {
            let n = v.as_number()?;
            JsonRef::Number(match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Num::PosInt(u),
                (None, Some(i), _) => Num::NegInt(i),
                (None, None, Some(f)) if f != 0.0 => Num::Float(f),
                _ => return None,
            })
        }
        JsonType::Boolean => JsonRef::Bool(v.is_true()),
        JsonType::Null => JsonRef::Null,
        JsonType::Array | JsonType::Object => return None,
    })
}
