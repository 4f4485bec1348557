//! Beacon protocol v1 (`schemas/README.md`): decoding of the body and validation of each event, with
//! precise reasons.
//!
//! A beacon is `{"key": ..., "sent_at": <client epoch ms>, "events": [...]}`. Envelope problems make the
//! whole beacon unusable ([`BeaconError`], answered with 400); a bad event only rejects that event
//! ([`EventRejection`], kept in the dead-letter output with its reason) while the others are accepted.
//!
//! The rules here and `schemas/beacon.v1.schema.json` describe the same contract; `tests/json_schema.rs`
//! checks that both accept and reject the same example files. Integers follow JSON Schema's meaning: a
//! number with a zero fractional part (`3.0`) is an integer.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::event::{CacheStatus, Event, EventKind, Payload, StreamType, ViewDims};

mod dom;
mod scan;

/// Earliest accepted client timestamp: 2000-01-01T00:00:00Z.
pub const TS_MIN_MS: i64 = 946_684_800_000;
/// Latest accepted client timestamp: 2100-01-01T00:00:00Z.
pub const TS_MAX_MS: i64 = 4_102_444_800_000;
/// Largest `seq` (2^53 - 1, the largest integer every JSON implementation keeps exactly).
pub const SEQ_MAX: u64 = 9_007_199_254_740_991;
pub const MAX_EVENTS_PER_BEACON: usize = 1000;
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_VIEW_ID_LEN: usize = 128;
const MAX_SHORT_STRING: usize = 256;
const MAX_TITLE_LEN: usize = 1024;
const MAX_URL_LEN: usize = 2048;
const MAX_CUSTOM_DIMS: usize = 32;
/// Most JSON values (objects, arrays, strings, numbers, …) one body may hold. A parsed value costs
/// 32 to 100 bytes of memory however few bytes of text it took (`0,` is two), so the count is enforced
/// before the tree grows: while parsing, or by the body's length before the fast parse
/// ([`parse_beacon_limited`]). 10 MiB of `[0,0,0,…]` (a few KiB of gzip) stops here.
pub const MAX_JSON_VALUES: usize = 100_000;
/// What one parsed value is charged against the caller's memory budget.
pub const JSON_VALUE_COST: usize = 64;

/// Why a whole beacon could not be used (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("field `{field}`: {problem}")]
    Field { field: &'static str, problem: String },
    #[error("body holds more than {0} JSON values")]
    TooManyValues(usize),
    #[error("parsing the body would exceed the collector's memory budget")]
    OverBudget,
}

/// Why one event was rejected. `tag` is stable (a metric label); the display form is the reason sent to
/// the client and stored in the dead-letter output, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventRejection {
    pub field: String,
    pub tag: &'static str,
    pub message: String,
}

impl EventRejection {
    fn new(field: impl Into<String>, tag: &'static str, message: impl Into<String>) -> Self {
        EventRejection { field: field.into(), tag, message: message.into() }
    }
    fn missing(field: &str) -> Self {
        Self::new(field, "missing_field", "required field is missing")
    }
    fn wrong_type(field: &str, expected: &str) -> Self {
        Self::new(field, "wrong_type", format!("must be {expected}"))
    }
}

/// The envelope of a beacon and its events: as parsed, or validated already where the fast parse read
/// them ([`RawEvent`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBeacon<'a> {
    pub key: Option<String>,
    pub sent_at: i64,
    pub events: Vec<RawEvent<'a>>,
}

/// One event of a beacon as parsed: its JSON text exactly as the beacon carried it, and its fields when
/// it is an object (any other JSON value, which validation rejects, is kept whole), or, when the fast
/// parse read it, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent<'a> {
    text: &'a str,
    parsed: Parsed<'a>,
}

#[derive(Debug, Clone, PartialEq)]
enum Parsed<'a> {
    Object(EventObject<'a>),
    /// An object the fast parse read from its document and validated there ([`dom`]): the document
    /// is gone once the parse returns (events that held a shared pointer to it kept it until the
    /// request was answered, and looked themselves up in it again to be validated: BENCHMARKS.md §28).
    Validated(Result<Event, EventRejection>),
    Other(Value),
}

impl<'a> RawEvent<'a> {
    /// [`validate_event`] of the event's JSON value.
    pub fn validate(&self) -> Result<Event, EventRejection> {
        match &self.parsed {
            Parsed::Object(obj) => validate_fields(&obj.slots()),
            Parsed::Validated(event) => event.clone(),
            Parsed::Other(v) => validate_event(v),
        }
    }

    /// [`RawEvent::validate`], taking the event: what the fast parse validated is moved out, not copied.
    pub fn into_validated(self) -> Result<Event, EventRejection> {
        match self.parsed {
            Parsed::Validated(event) => event,
            _ => self.validate(),
        }
    }

    /// The event parsed from its text by the exact parse (never [`Parsed::Validated`]). Its values are
    /// not counted: the fast parse reads only events of at most [`dom::EVENT_MAX_BYTES`], so this tree
    /// is small whatever the body.
    fn reparsed(&self) -> Result<RawEvent<'a>, EventRejection> {
        match uncounted(|counter| parse_event(counter, &mut Vec::new(), self.text)) {
            Ok(parsed) => Ok(RawEvent { text: self.text, parsed }),
            // Never: the fast parse took this event's text only where the exact parse accepts it.
            Err(e) => Err(EventRejection::new("event", "invalid_json", e.to_string())),
        }
    }

    /// The event's JSON text exactly as the beacon carried it: a slice of the body, the player's key
    /// order and spacing included. What the `events` table's `raw` column and a dead letter's
    /// `payload` keep.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The event as a `serde_json::Value`.
    pub fn into_value(self) -> Value {
        match self.parsed {
            Parsed::Object(obj) => Value::Object(obj.into_map()),
            Parsed::Validated(_) => match self.reparsed() {
                Ok(event) => event.into_value(),
                Err(_) => Value::Null,
            },
            Parsed::Other(v) => v,
        }
    }
}

/// An event object as its beacon's parse left it: the fields in the order sent, keys and string values
/// borrowed from the body where they hold no escapes. Building a `serde_json::Map` per event (a B-tree
/// node and a key string per field, then dropping them) was a sixth of the collector's CPU, and a
/// `String` per string value most of what remained of parsing; this is a list of borrowed fields.
/// Validation files them in [`Slots`], the last of repeated keys counting, as in a map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventObject<'a> {
    fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
}

/// A field's value as parsed: a string borrowed from the body unless it holds escapes, anything else
/// (numbers, literals, nested arrays and objects) as a value.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue<'a> {
    Str(Cow<'a, str>),
    Json(Value),
}

impl FieldValue<'_> {
    fn as_json(&self) -> JsonRef<'_> {
        match self {
            FieldValue::Str(s) => JsonRef::String(s),
            FieldValue::Json(v) => JsonRef::from(v),
        }
    }

    fn into_value(self) -> Value {
        match self {
            FieldValue::Str(s) => Value::String(s.into_owned()),
            FieldValue::Json(v) => v,
        }
    }
}

/// An event's fields as validation reads them: each key it reads in a slot of its own (the last of
/// repeated keys), filed in one pass over the fields. Validation asks for a dozen keys of each event;
/// a search of the fields for each was most of its time.
struct Slots<'v>([Option<JsonRef<'v>>; KEYS_READ.len()]);

/// The keys validation reads, each at the index of its slot ([`slot`] is this table as a `match`).
const KEYS_READ: [&str; 25] = [
    "view_id", "seq", "type", "ts", "playhead_ms", "bitrate_kbps", "width", "height", "codec", "bytes", "cache",
    "host", "duration_ms", "ttfb_ms", "code", "fatal", "message", "stream_type", "custom", "video_id",
    "video_title", "player_name", "player_version", "page_url", "cdn",
];

/// The slot of a key validation reads: its index in [`KEYS_READ`].
fn slot(key: &str) -> Option<usize> {
    Some(match key {
        "view_id" => 0,
        "seq" => 1,
        "type" => 2,
        "ts" => 3,
        "playhead_ms" => 4,
        "bitrate_kbps" => 5,
        "width" => 6,
        "height" => 7,
        "codec" => 8,
        "bytes" => 9,
        "cache" => 10,
        "host" => 11,
        "duration_ms" => 12,
        "ttfb_ms" => 13,
        "code" => 14,
        "fatal" => 15,
        "message" => 16,
        "stream_type" => 17,
        "custom" => 18,
        "video_id" => 19,
        "video_title" => 20,
        "player_name" => 21,
        "player_version" => 22,
        "page_url" => 23,
        "cdn" => 24,
        _ => return None,
    })
}

impl Default for Slots<'_> {
    fn default() -> Self {
        Slots([None; KEYS_READ.len()])
    }
}

impl<'v> Slots<'v> {
    /// The slot of `key`, if validation reads it.
    fn at(&mut self, key: &str) -> Option<&mut Option<JsonRef<'v>>> {
        slot(key).and_then(|i| self.0.get_mut(i))
    }
}

impl Fields for Slots<'_> {
    fn field(&self, key: &str) -> Option<JsonRef<'_>> {
        let i = slot(key);
        debug_assert!(i.is_some(), "validation reads `{key}`, which has no slot");
        i.and_then(|i| self.0.get(i).copied().flatten())
    }
}

impl EventObject<'_> {
    fn slots(&self) -> Slots<'_> {
        let mut slots = Slots::default();
        for (key, value) in &self.fields {
            if let Some(slot) = slots.at(key) {
                *slot = Some(value.as_json());
            }
        }
        slots
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.fields.into_iter().map(|(k, v)| (k.into_owned(), v.into_value())).collect()
    }
}

/// A JSON value as validation reads it, borrowed from wherever it was parsed into (a `serde_json`
/// value, an [`EventObject`]'s field, the fast parse's document); numbers by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JsonRef<'v> {
    Null,
    Bool(bool),
    Number(Num),
    String(&'v str),
    Array(&'v [Value]),
    Object(&'v Map<String, Value>),
}

impl<'v> From<&'v Value> for JsonRef<'v> {
    fn from(v: &'v Value) -> JsonRef<'v> {
        match v {
            Value::Null => JsonRef::Null,
            Value::Bool(b) => JsonRef::Bool(*b),
            Value::Number(n) => JsonRef::Number(n.into()),
            Value::String(s) => JsonRef::String(s),
            Value::Array(a) => JsonRef::Array(a),
            Value::Object(m) => JsonRef::Object(m),
        }
    }
}

impl JsonRef<'_> {
    fn as_f64(self) -> Option<f64> {
        match self {
            JsonRef::Number(n) => Some(n.as_f64()),
            _ => None,
        }
    }
}

/// A JSON number as validation reads it, whichever parser read it: serde_json's three kinds (a
/// non-negative integer, a negative one, anything else as the nearest double).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    PosInt(u64),
    NegInt(i64),
    Float(f64),
}

impl Num {
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Num::PosInt(u) => i64::try_from(u).ok(),
            Num::NegInt(i) => Some(i),
            Num::Float(_) => None,
        }
    }
    pub fn as_u64(self) -> Option<u64> {
        match self {
            Num::PosInt(u) => Some(u),
            _ => None,
        }
    }
    pub fn as_f64(self) -> f64 {
        match self {
            Num::PosInt(u) => u as f64,
            Num::NegInt(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

impl From<&serde_json::Number> for Num {
    fn from(n: &serde_json::Number) -> Num {
        match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Num::PosInt(u),
            (None, Some(i)) => Num::NegInt(i),
            // Without arbitrary precision every other number is a finite double.
            (None, None) => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        }
    }
}

/// Decodes a (decompressed) body and checks the envelope, with at most [`MAX_JSON_VALUES`] values.
pub fn parse_beacon(body: &[u8]) -> Result<ParsedBeacon<'_>, BeaconError> {
    parse_beacon_limited(body, MAX_JSON_VALUES, &mut |_| true)
}

/// [`parse_beacon`] with at most `max_values` JSON values. Before the tree grows past `n` values,
/// `charge(n)` is asked and may refuse: the caller's memory budget ([`JSON_VALUE_COST`] bytes a value
/// is a fair price).
///
/// A body of at most [`FAST_PARSE_MAX_BYTES`] whose length proves its values within `max_values` takes
/// the fast parse ([`dom`]), charged ahead for twice the values the length allows (its document, and
/// the exact trees of what it leaves to the exact parse). Any other body, or one that parse leaves
/// whole to the exact parse (an error, …), is parsed by serde_json alone with its values counted as they
/// are built, `charge` asked every 1024 values. Both parses answer alike.
pub fn parse_beacon_limited<'a>(
    body: &'a [u8],
    max_values: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<ParsedBeacon<'a>, BeaconError> {
    let most = most_values(body.len());
    if body.len() <= FAST_PARSE_MAX_BYTES
        && most <= max_values
        && charge(2 * most)
        && let Some(beacon) = dom::parse(body)
    {
        return Ok(beacon);
    }
    parse_exact(body, max_values, charge)
}

/// The largest body the fast parse takes. Players' beacons are far smaller (200 events are about
/// 27 KB); its memory is charged up front for what the length allows, which for larger bodies would
/// hold far more of the budget than the exact parse's charge as it grows.
pub const FAST_PARSE_MAX_BYTES: usize = 64 * 1024;

/// The most JSON values a text of `len` bytes can hold: each value takes at least a byte, and each but
/// the first a comma, colon or opening bracket before it besides.
fn most_values(len: usize) -> usize {
    len / 2 + 1
}

/// [`parse_beacon_limited`] by serde_json alone: every value counted and charged as it is built.
fn parse_exact<'a>(
    body: &'a [u8],
    max_values: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<ParsedBeacon<'a>, BeaconError> {
    let counter = Counter::new(max_values, charge);
    let (obj, events) = read_body(body, &counter)?;
    let (key, sent_at, events) = envelope(obj, events)?;
    let events = events.texts.into_iter().zip(events.parsed).map(|(text, parsed)| RawEvent { text, parsed });
    Ok(ParsedBeacon { key, sent_at, events: events.collect() })
}

/// Parses a body: its envelope's fields as values, and its events' texts and fields.
fn read_body<'a>(
    body: &'a [u8],
    counter: &Counter<'_>,
) -> Result<(Map<String, Value>, Option<Events<'a>>), BeaconError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Body(counter).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Top::Object(obj, events)) => Ok((obj, events)),
        Ok(Top::NotObject) => Err(BeaconError::NotAnObject),
        Err(e) => Err(counter.failure.take().unwrap_or_else(|| BeaconError::InvalidJson(e.to_string()))),
    }
}

/// A beacon's `key`, `sent_at` and events, checked.
fn envelope<'a>(
    obj: Map<String, Value>,
    events: Option<Events<'a>>,
) -> Result<(Option<String>, i64, EventList<'a>), BeaconError> {
    let (key, sent_at) = envelope_fields(obj.field("key"), obj.field("sent_at"))?;
    let events = match events {
        None => return Err(BeaconError::Field { field: "events", problem: "required field is missing".into() }),
        Some(Events::Array(events)) => events,
        Some(Events::Other) => return Err(BeaconError::Field { field: "events", problem: "must be an array".into() }),
    };
    check_event_count(events.texts.len())?;
    Ok((key, sent_at, events))
}

/// A beacon's `key` and `sent_at` fields, checked, whichever parser read them.
fn envelope_fields(key: Option<JsonRef<'_>>, sent_at: Option<JsonRef<'_>>) -> Result<(Option<String>, i64), BeaconError> {
    let key = match key {
        None | Some(JsonRef::Null) => None,
        Some(JsonRef::String(s)) if !s.is_empty() && within_chars(s, MAX_KEY_LEN) => Some(s.to_owned()),
        Some(_) => {
            return Err(BeaconError::Field {
                field: "key",
                problem: format!("must be a non-empty string of at most {MAX_KEY_LEN} characters"),
            });
        }
    };
    let sent_at = match sent_at {
        None => return Err(BeaconError::Field { field: "sent_at", problem: "required field is missing".into() }),
        Some(v) => epoch_ms(v).map_err(|problem| BeaconError::Field { field: "sent_at", problem })?,
    };
    Ok((key, sent_at))
}

/// A beacon's number of events, checked.
fn check_event_count(events: usize) -> Result<(), BeaconError> {
    if events > MAX_EVENTS_PER_BEACON {
        return Err(BeaconError::Field {
            field: "events",
            problem: format!("at most {MAX_EVENTS_PER_BEACON} events per beacon, got {events}"),
        });
    }
    Ok(())
}

/// `f` with a counter that limits nothing: for parses whose values were bounded and charged before.
fn uncounted<R>(f: impl FnOnce(&Counter<'_>) -> R) -> R {
    let mut granted = |_| true;
    f(&Counter::new(usize::MAX, &mut granted))
}

/// Counts the values a parse builds (see [`parse_beacon_limited`]).
struct Counter<'c> {
    count: Cell<usize>,
    max: usize,
    charge: RefCell<&'c mut dyn FnMut(usize) -> bool>,
    /// Why the parse was stopped, when the counter stopped it.
    failure: Cell<Option<BeaconError>>,
}

const CHARGE_EVERY: usize = 1024;

impl<'c> Counter<'c> {
    fn new(max: usize, charge: &'c mut dyn FnMut(usize) -> bool) -> Self {
        Counter { count: Cell::new(0), max, charge: RefCell::new(charge), failure: Cell::new(None) }
    }

    fn tick<E: de::Error>(&self) -> Result<(), E> {
        let n = self.count.get() + 1;
        self.count.set(n);
        let failure = if n > self.max {
            BeaconError::TooManyValues(self.max)
        } else if n % CHARGE_EVERY == 1 && !(self.charge.borrow_mut())(n + CHARGE_EVERY) {
            BeaconError::OverBudget
        } else {
            return Ok(());
        };
        let message = failure.to_string();
        self.failure.set(Some(failure));
        Err(E::custom(message))
    }
}

/// Builds a `serde_json::Value` exactly as its own `Deserialize` would, ticking the counter per value.
#[derive(Clone, Copy)]
struct Counted<'a, 'c>(&'a Counter<'c>);

impl<'de> DeserializeSeed<'de> for Counted<'_, '_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counted<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.tick()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.tick()?;
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.tick()?;
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.tick()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.tick()?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.tick()?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.tick()?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.tick()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.tick()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The visitor methods of a scalar that is not a string: counted and built as [`Counted`] does, then
/// mapped (`$other` of the built value); and what the visitor expects.
macro_rules! counted_scalars {
    ($other:expr) => {
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Counted(self.0).visit_bool(v).map($other)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Counted(self.0).visit_i64(v).map($other)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Counted(self.0).visit_u64(v).map($other)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Counted(self.0).visit_f64(v).map($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Counted(self.0).visit_unit().map($other)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.visit_unit()
        }
    };
}

/// The visitor methods of a value that is not the kind a parse is looking for: [`counted_scalars`],
/// and strings counted and built as [`Counted`] does.
macro_rules! counted_otherwise {
    ($other:expr) => {
        counted_scalars!($other);
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Counted(self.0).visit_str(v).map($other)
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Counted(self.0).visit_string(v).map($other)
        }
    };
}

/// A seed that reads any JSON value with its own visitor.
macro_rules! seed_of_any {
    ($seed:ty => $value:ident) => {
        impl<'de> DeserializeSeed<'de> for $seed {
            type Value = $value<'de>;
            fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<$value<'de>, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// A body: an object whose `events` are read by [`EventsSeed`] and other fields as values; anything
/// else is counted and is not an object.
struct Body<'a, 'c>(&'a Counter<'c>);

enum Top<'de> {
    Object(Map<String, Value>, Option<Events<'de>>),
    NotObject,
}

seed_of_any!(Body<'_, '_> => Top);

impl<'de> Visitor<'de> for Body<'_, '_> {
    type Value = Top<'de>;

    counted_otherwise!(|_| Top::NotObject);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        Counted(self.0).visit_seq(seq).map(|_| Top::NotObject)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        self.0.tick()?;
        let (mut out, mut events) = (Map::new(), None);
        while let Some(key) = map.next_key::<String>()? {
            if key == EVENTS {
                // As a map would, the last of repeated keys counts.
                events = Some(map.next_value_seed(EventsSeed(self.0))?);
            } else {
                let v = map.next_value_seed(Counted(self.0))?;
                out.insert(key, v);
            }
        }
        Ok(Top::Object(out, events))
    }
}

/// A body's `events`: an array of events, or anything else (counted, refused by the caller).
enum Events<'de> {
    Array(EventList<'de>),
    Other,
}

/// The events of a body: each one's text, and each one parsed.
struct EventList<'de> {
    texts: Vec<&'de str>,
    parsed: Vec<Parsed<'de>>,
}

/// The key of a body's events.
const EVENTS: &str = "events";

/// Reads `events`: each event's text, then its fields from that text.
struct EventsSeed<'a, 'c>(&'a Counter<'c>);

seed_of_any!(EventsSeed<'_, '_> => Events);

impl<'de> Visitor<'de> for EventsSeed<'_, '_> {
    type Value = Events<'de>;

    counted_otherwise!(|_| Events::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Events<'de>, A::Error> {
        self.0.tick()?;
        let (mut texts, mut parsed) = (Vec::new(), Vec::new());
        // Fields are gathered here, then copied into a list of their exact size: one allocation per
        // event instead of a list regrown field by field.
        let mut scratch = Vec::new();
        // Each event is first taken as its text (a slice of the body: the `raw` column keeps the event
        // as sent, not re-serialized), then its fields are parsed from that text, counted as they go.
        while let Some(text) = seq.next_element::<&'de RawValue>()? {
            let text = text.get();
            let event = parse_event(self.0, &mut scratch, text).map_err(|e| {
                // The position within the event's own text would mislead: the body's, where the
                // event ends, is added by the outer parse.
                let message = e.to_string();
                let bare = if e.line() == 0 { &message[..] } else { message.rsplit_once(" at line ").map_or(&message[..], |(m, _)| m) };
                de::Error::custom(format_args!("events[{}]: {bare}", texts.len()))
            })?;
            parsed.push(event);
            texts.push(text);
        }
        Ok(Events::Array(EventList { texts, parsed }))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Events<'de>, A::Error> {
        Counted(self.0).visit_map(map).map(|_| Events::Other)
    }
}

/// Parses one event's text (see [`EventSeed`]).
fn parse_event<'de>(
    counter: &Counter<'_>,
    scratch: &mut Vec<(Cow<'de, str>, FieldValue<'de>)>,
    text: &'de str,
) -> Result<Parsed<'de>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    EventSeed(counter, scratch).deserialize(&mut de)
}

/// One event's text: an object as an [`EventObject`] (its fields gathered in the scratch list), anything
/// else as a counted value.
struct EventSeed<'a, 'c, 's, 'de>(&'a Counter<'c>, &'s mut Vec<(Cow<'de, str>, FieldValue<'de>)>);

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_, '_, 'de> {
    type Value = Parsed<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parsed<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, '_, '_, 'de> {
    type Value = Parsed<'de>;

    counted_otherwise!(Parsed::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parsed<'de>, A::Error> {
        Counted(self.0).visit_seq(seq).map(Parsed::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
        self.0.tick()?;
        let scratch = self.1;
        scratch.clear();
        while let Some(key) = map.next_key_seed(Key)? {
            let v = map.next_value_seed(FieldSeed(self.0))?;
            scratch.push((key, v));
        }
        Ok(Parsed::Object(EventObject { fields: scratch.drain(..).collect() }))
    }
}

/// An event field's value: a string borrowed from the text unless it holds escapes, anything else as
/// [`Counted`] builds it.
struct FieldSeed<'a, 'c>(&'a Counter<'c>);

seed_of_any!(FieldSeed<'_, '_> => FieldValue);

impl<'de> Visitor<'de> for FieldSeed<'_, '_> {
    type Value = FieldValue<'de>;

    counted_scalars!(FieldValue::Json);
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<FieldValue<'de>, E> {
        self.0.tick()?;
        Ok(FieldValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue<'de>, E> {
        self.0.tick()?;
        Ok(FieldValue::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue<'de>, E> {
        self.0.tick()?;
        Ok(FieldValue::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<FieldValue<'de>, A::Error> {
        Counted(self.0).visit_seq(seq).map(FieldValue::Json)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldValue<'de>, A::Error> {
        Counted(self.0).visit_map(map).map(FieldValue::Json)
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Validates one event of a beacon.
pub fn validate_event(value: &Value) -> Result<Event, EventRejection> {
    let Value::Object(obj) = value else {
        return Err(EventRejection::new("event", "not_object", "must be a JSON object"));
    };
    validate_event_map(obj)
}

/// Validates one event given as a JSON object.
pub fn validate_event_map(obj: &Map<String, Value>) -> Result<Event, EventRejection> {
    validate_fields(obj)
}

/// Validation reads an event's fields through this: a `serde_json` map, or the slots an event's fields
/// were filed in however the beacon's parse left them ([`Slots`]). Both answer a key with the value a
/// map would hold for it.
pub trait Fields {
    fn field(&self, key: &str) -> Option<JsonRef<'_>>;
}

impl Fields for Map<String, Value> {
    fn field(&self, key: &str) -> Option<JsonRef<'_>> {
        self.get(key).map(JsonRef::from)
    }
}

fn validate_fields<F: Fields>(obj: &F) -> Result<Event, EventRejection> {
    let view_id = match obj.field("view_id") {
        None => return Err(EventRejection::missing("view_id")),
        Some(JsonRef::String(s)) if !s.is_empty() && within_chars(s, MAX_VIEW_ID_LEN) => s.to_owned(),
        Some(_) => {
            return Err(EventRejection::new(
                "view_id",
                "invalid_value",
                format!("must be a non-empty string of at most {MAX_VIEW_ID_LEN} characters"),
            ));
        }
    };
    let seq = match obj.field("seq") {
        None => return Err(EventRejection::missing("seq")),
        Some(v) => match integer(v) {
            Some(n) if (0..=SEQ_MAX as i128).contains(&n) => n as u64,
            _ => {
                return Err(EventRejection::new(
                    "seq",
                    "out_of_range",
                    format!("must be an integer from 0 to {SEQ_MAX}"),
                ));
            }
        },
    };
    let kind = match obj.field("type") {
        None => return Err(EventRejection::missing("type")),
        Some(JsonRef::String(s)) => EventKind::parse(s).ok_or_else(|| {
            EventRejection::new("type", "unknown_type", format!("unknown event type {s:?}"))
        })?,
        Some(_) => return Err(EventRejection::wrong_type("type", "a string")),
    };
    let ts = match obj.field("ts") {
        None => return Err(EventRejection::missing("ts")),
        Some(v) => epoch_ms(v).map_err(|m| EventRejection::new("ts", "out_of_range", m))?,
    };
    let playhead_ms = opt_number(obj, "playhead_ms", 0.0, None)?;
    let payload = match kind {
        EventKind::Viewstart => Payload::Viewstart(Box::new(view_dims(obj)?)),
        EventKind::QualityChange => {
            let bitrate_kbps = match obj.field("bitrate_kbps") {
                None => return Err(EventRejection::missing("bitrate_kbps")),
                Some(v) => match v.as_f64() {
                    Some(b) if b > 0.0 && b <= 1_000_000.0 => b,
                    _ => {
                        return Err(EventRejection::new(
                            "bitrate_kbps",
                            "out_of_range",
                            "must be a number greater than 0 and at most 1000000",
                        ));
                    }
                },
            };
            Payload::QualityChange {
                bitrate_kbps,
                width: opt_u32(obj, "width")?,
                height: opt_u32(obj, "height")?,
                codec: opt_string(obj, "codec", 64)?,
            }
        }
        EventKind::Segment => {
            let bytes = match obj.field("bytes") {
                None => return Err(EventRejection::missing("bytes")),
                Some(v) => match integer(v) {
                    Some(n) if (0..=SEQ_MAX as i128).contains(&n) => n as u64,
                    _ => {
                        return Err(EventRejection::new(
                            "bytes",
                            "out_of_range",
                            "must be a non-negative integer",
                        ));
                    }
                },
            };
            let cache = match obj.field("cache") {
                None | Some(JsonRef::Null) => CacheStatus::Unknown,
                Some(JsonRef::String(s)) => match s {
                    "hit" => CacheStatus::Hit,
                    "miss" => CacheStatus::Miss,
                    "unknown" => CacheStatus::Unknown,
                    _ => {
                        return Err(EventRejection::new(
                            "cache",
                            "invalid_value",
                            "must be one of \"hit\", \"miss\", \"unknown\"",
                        ));
                    }
                },
                Some(_) => return Err(EventRejection::wrong_type("cache", "a string")),
            };
            Payload::Segment {
                host: opt_string(obj, "host", MAX_SHORT_STRING)?,
                bytes,
                duration_ms: opt_number(obj, "duration_ms", 0.0, None)?,
                ttfb_ms: opt_number(obj, "ttfb_ms", 0.0, None)?,
                cache,
            }
        }
        EventKind::Error => {
            let code = match obj.field("code") {
                None | Some(JsonRef::Null) => None,
                Some(JsonRef::String(s)) if within_chars(s, 128) => Some(s.to_owned()),
                Some(v @ JsonRef::Number(_)) if integer(v).is_some() => integer(v).map(|n| n.to_string()),
                Some(_) => {
                    return Err(EventRejection::wrong_type(
                        "code",
                        "a string of at most 128 characters or an integer",
                    ));
                }
            };
            let fatal = match obj.field("fatal") {
                None | Some(JsonRef::Null) => false,
                Some(JsonRef::Bool(b)) => b,
                Some(_) => return Err(EventRejection::wrong_type("fatal", "a boolean")),
            };
            Payload::Error { code, message: opt_string(obj, "message", MAX_TITLE_LEN)?, fatal }
        }
        _ => Payload::None,
    };
    Ok(Event { view_id, seq, kind, ts, playhead_ms, payload })
}

/// Checks that a typed event keeps the bounds [`validate_event_map`] enforces on its JSON: for events
/// that reach the pipeline already typed (record version 2), written by a collector that validated them.
/// A record from a broken or hostile writer is refused event by event here, as version 1 records are by
/// validation, so no value the pipeline's arithmetic and tables rely on can be out of range.
pub fn check_event(e: &Event) -> Result<(), EventRejection> {
    let string = |field: &str, s: &Option<String>, max: usize| match s {
        Some(s) if !within_chars(s, max) => Err(EventRejection::new(field, "too_long", format!("must be at most {max} characters"))),
        _ => Ok(()),
    };
    let number = |field: &str, v: Option<f64>| match v {
        Some(f) if !(f >= 0.0 && f.is_finite()) => {
            Err(EventRejection::new(field, "out_of_range", "must be a number of at least 0"))
        }
        _ => Ok(()),
    };
    if e.view_id.is_empty() || !within_chars(&e.view_id, MAX_VIEW_ID_LEN) {
        return Err(EventRejection::new(
            "view_id",
            "invalid_value",
            format!("must be a non-empty string of at most {MAX_VIEW_ID_LEN} characters"),
        ));
    }
    if e.seq > SEQ_MAX {
        return Err(EventRejection::new("seq", "out_of_range", format!("must be an integer from 0 to {SEQ_MAX}")));
    }
    if !(TS_MIN_MS..=TS_MAX_MS).contains(&e.ts) {
        return Err(EventRejection::new("ts", "out_of_range", TS_RANGE));
    }
    number("playhead_ms", e.playhead_ms)?;
    let kind_matches = match &e.payload {
        Payload::Viewstart(d) => {
            string("video_id", &d.video_id, MAX_SHORT_STRING)?;
            string("video_title", &d.video_title, MAX_TITLE_LEN)?;
            string("player_name", &d.player_name, MAX_SHORT_STRING)?;
            string("player_version", &d.player_version, MAX_SHORT_STRING)?;
            string("page_url", &d.page_url, MAX_URL_LEN)?;
            string("cdn", &d.cdn, MAX_SHORT_STRING)?;
            if d.custom.len() > MAX_CUSTOM_DIMS {
                return Err(EventRejection::new("custom", "too_long", format!("at most {MAX_CUSTOM_DIMS} custom dimensions")));
            }
            if let Some((name, _)) = d.custom.iter().find(|(_, v)| !within_chars(v, MAX_SHORT_STRING)) {
                return Err(EventRejection::wrong_type(&format!("custom.{name}"), "a string (at most 256 characters), number or boolean"));
            }
            e.kind == EventKind::Viewstart
        }
        Payload::QualityChange { bitrate_kbps, width, height, codec } => {
            if !(*bitrate_kbps > 0.0 && *bitrate_kbps <= 1_000_000.0) {
                return Err(EventRejection::new("bitrate_kbps", "out_of_range", "must be a number greater than 0 and at most 1000000"));
            }
            for (field, v) in [("width", width), ("height", height)] {
                if v.is_some_and(|n| n > 100_000) {
                    return Err(EventRejection::new(field, "out_of_range", "must be an integer from 0 to 100000"));
                }
            }
            string("codec", codec, 64)?;
            e.kind == EventKind::QualityChange
        }
        Payload::Segment { host, bytes, duration_ms, ttfb_ms, cache: _ } => {
            if *bytes > SEQ_MAX {
                return Err(EventRejection::new("bytes", "out_of_range", "must be a non-negative integer"));
            }
            string("host", host, MAX_SHORT_STRING)?;
            number("duration_ms", *duration_ms)?;
            number("ttfb_ms", *ttfb_ms)?;
            e.kind == EventKind::Segment
        }
        Payload::Error { code, message, fatal: _ } => {
            string("code", code, 128)?;
            string("message", message, MAX_TITLE_LEN)?;
            e.kind == EventKind::Error
        }
        Payload::None => !matches!(e.kind, EventKind::Viewstart | EventKind::QualityChange | EventKind::Segment | EventKind::Error),
    };
    if !kind_matches {
        return Err(EventRejection::new("type", "invalid_value", format!("{:?} does not match its fields", e.kind)));
    }
    Ok(())
}

fn view_dims<F: Fields>(obj: &F) -> Result<ViewDims, EventRejection> {
    let stream_type = match obj.field("stream_type") {
        None | Some(JsonRef::Null) => None,
        Some(JsonRef::String("vod")) => Some(StreamType::Vod),
        Some(JsonRef::String("live")) => Some(StreamType::Live),
        Some(_) => {
            return Err(EventRejection::new("stream_type", "invalid_value", "must be \"vod\" or \"live\""));
        }
    };
    let custom = match obj.field("custom") {
        None | Some(JsonRef::Null) => Vec::new(),
        Some(JsonRef::Object(m)) => {
            if m.len() > MAX_CUSTOM_DIMS {
                return Err(EventRejection::new(
                    "custom",
                    "too_long",
                    format!("at most {MAX_CUSTOM_DIMS} custom dimensions"),
                ));
            }
            let mut out = Vec::with_capacity(m.len());
            for (name, v) in m {
                let value = match v {
                    Value::String(s) if within_chars(s, MAX_SHORT_STRING) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(EventRejection::wrong_type(
                            &format!("custom.{name}"),
                            "a string (at most 256 characters), number or boolean",
                        ));
                    }
                };
                out.push((name.clone(), value));
            }
            out
        }
        Some(_) => return Err(EventRejection::wrong_type("custom", "an object")),
    };
    Ok(ViewDims {
        video_id: opt_string(obj, "video_id", MAX_SHORT_STRING)?,
        video_title: opt_string(obj, "video_title", MAX_TITLE_LEN)?,
        stream_type,
        player_name: opt_string(obj, "player_name", MAX_SHORT_STRING)?,
        player_version: opt_string(obj, "player_version", MAX_SHORT_STRING)?,
        page_url: opt_string(obj, "page_url", MAX_URL_LEN)?,
        cdn: opt_string(obj, "cdn", MAX_SHORT_STRING)?,
        custom,
    })
}

/// A JSON integer in JSON Schema's sense (`3` and `3.0`), widened so range checks cannot overflow.
fn integer(v: JsonRef) -> Option<i128> {
    let JsonRef::Number(n) = v else { return None };
    if let Some(i) = n.as_i64() {
        return Some(i as i128);
    }
    if let Some(u) = n.as_u64() {
        return Some(u as i128);
    }
    let f = n.as_f64();
    (f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
}

/// Whether `s` has at most `max` characters; counted only when its bytes are more (a character takes at
/// least one).
fn within_chars(s: &str, max: usize) -> bool {
    s.len() <= max || s.chars().count() <= max
}

/// Why a `ts` out of range is refused (by validation and by [`check_event`]).
const TS_RANGE: &str = "must be epoch milliseconds between 946684800000 (2000-01-01) and 4102444800000 (2100-01-01)";

fn epoch_ms(v: JsonRef) -> Result<i64, String> {
    match integer(v) {
        Some(n) if (TS_MIN_MS as i128..=TS_MAX_MS as i128).contains(&n) => Ok(n as i64),
        Some(_) => Err(TS_RANGE.into()),
        None => Err("must be an integer (epoch milliseconds)".into()),
    }
}

fn opt_string<F: Fields>(obj: &F, field: &str, max_chars: usize) -> Result<Option<String>, EventRejection> {
    match obj.field(field) {
        None | Some(JsonRef::Null) => Ok(None),
        Some(JsonRef::String(s)) if within_chars(s, max_chars) => Ok(Some(s.to_owned())),
        Some(JsonRef::String(_)) => {
            Err(EventRejection::new(field, "too_long", format!("must be at most {max_chars} characters")))
        }
        Some(_) => Err(EventRejection::wrong_type(field, "a string")),
    }
}

fn opt_number<F: Fields>(
    obj: &F,
    field: &str,
    min: f64,
    max: Option<f64>,
) -> Result<Option<f64>, EventRejection> {
    match obj.field(field) {
        None | Some(JsonRef::Null) => Ok(None),
        Some(JsonRef::Number(n)) => match n.as_f64() {
            f if f >= min && max.is_none_or(|m| f <= m) => Ok(Some(f)),
            _ => Err(EventRejection::new(field, "out_of_range", format!("must be a number of at least {min}"))),
        },
        Some(_) => Err(EventRejection::wrong_type(field, "a number")),
    }
}

fn opt_u32<F: Fields>(obj: &F, field: &str) -> Result<Option<u32>, EventRejection> {
    match obj.field(field) {
        None | Some(JsonRef::Null) => Ok(None),
        Some(v) => match integer(v) {
            Some(n) if (0..=100_000).contains(&n) => Ok(Some(n as u32)),
            _ => Err(EventRejection::new(field, "out_of_range", "must be an integer from 0 to 100000")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ev(extra: Value) -> Value {
        let mut base = json!({"view_id": "v1", "seq": 0, "type": "playing", "ts": 1_700_000_000_000i64});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    }

    #[test]
    fn envelope_errors_name_the_field() {
        assert!(matches!(parse_beacon(b"{"), Err(BeaconError::InvalidJson(_))));
        assert_eq!(parse_beacon(b"[1]"), Err(BeaconError::NotAnObject));
        let e = parse_beacon(br#"{"events":[]}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `sent_at`: required field is missing");
        let e = parse_beacon(br#"{"sent_at":1700000000000,"events":{}}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `events`: must be an array");
        let e = parse_beacon(br#"{"sent_at":"x","events":[]}"#).unwrap_err();
        assert!(e.to_string().starts_with("field `sent_at`: must be an integer"));
        let e = parse_beacon(br#"{"key":5,"sent_at":1700000000000,"events":[]}"#).unwrap_err();
        assert!(e.to_string().starts_with("field `key`"));
    }

    #[test]
    fn json_values_are_counted_while_parsing() {
        let body = |n: usize| format!(r#"{{"sent_at":1700000000000,"events":[{}]}}"#, vec!["0"; n].join(","));
        // The envelope object, `sent_at`, the events array: 3 values besides the elements.
        assert!(parse_beacon_limited(body(97).as_bytes(), 100, &mut |_| true).is_ok());
        assert_eq!(parse_beacon_limited(body(98).as_bytes(), 100, &mut |_| true), Err(BeaconError::TooManyValues(100)));
        let mut asked = Vec::new();
        let mut budget = |n: usize| {
            asked.push(n);
            n < 10_000
        };
        let text = body(20_000);
        assert_eq!(parse_beacon_limited(text.as_bytes(), 1 << 20, &mut budget), Err(BeaconError::OverBudget));
        let exact = (1..=10).map(|k| k * 1024 + 1);
        let fast = 2 * most_values(text.len());
        assert_eq!(asked, [fast].into_iter().chain(exact).collect::<Vec<_>>(), "the fast parse asks for what the length allows, refused; the exact parse charges ahead, every 1024 values, until refused");
        // What is parsed is exactly serde_json's own tree.
        let text = r#"{"key":"k","sent_at":1700000000000,"events":[{"a":[1,-2,3.5,"x",null,true,{"b":{}}]}]}"#;
        let ours = parse_beacon(text.as_bytes()).unwrap();
        let theirs: Value = serde_json::from_str(text).unwrap();
        let ours: Vec<Value> = ours.events.into_iter().map(RawEvent::into_value).collect();
        assert_eq!(ours, theirs["events"].as_array().unwrap().clone());
        assert!(matches!(parse_beacon(br#"{"sent_at":1} x"#), Err(BeaconError::InvalidJson(_))), "trailing data");
    }

    #[test]
    fn events_keep_their_text_as_sent_and_borrow_their_strings() {
        let first = r#"{ "type" : "viewstart", "ts":1700000000000, "view_id":"v\u00e9", "seq":0, "cdn":"c" }"#;
        let body = format!("{{\"sent_at\":1700000000000, \"events\": [\n  {first} , 7 ]}}");
        let parsed = parse_exact(body.as_bytes(), MAX_JSON_VALUES, &mut |_| true).unwrap();
        assert_eq!(parsed.events.iter().map(RawEvent::text).collect::<Vec<_>>(), [first, "7"]);
        let event = parsed.events[0].validate().unwrap();
        assert_eq!((event.view_id.as_str(), event.kind), ("vé", EventKind::Viewstart), "escapes are decoded");
        let Parsed::Object(obj) = &parsed.events[0].parsed else { panic!("an object") };
        let borrowed = |key: &str| obj.fields.iter().any(|(k, v)| k == key && matches!(v, FieldValue::Str(Cow::Borrowed(_))));
        assert!(borrowed("type") && borrowed("cdn"), "strings without escapes are borrowed from the body");
        assert!(!borrowed("view_id"), "a string with escapes is decoded into its own");
        // A problem inside an event names the event.
        let e = parse_beacon(br#"{"sent_at":1700000000000,"events":[{},{"a":"\ud800"}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "body is not valid JSON: events[1]: unexpected end of hex escape at line 1 column 53");
    }

    /// What a parse answers, in full: `Debug` keeps what `==` forgets (the sign of a zero).
    fn answer(parsed: Result<ParsedBeacon<'_>, BeaconError>) -> String {
        let events = |b: &ParsedBeacon| b.events.iter().map(|e| (e.text().to_owned(), e.validate(), e.clone().into_value())).collect::<Vec<_>>();
        format!("{:?}", parsed.map(|b| (b.key.clone(), b.sent_at, events(&b))))
    }

    fn exact(body: &[u8]) -> Result<ParsedBeacon<'_>, BeaconError> {
        parse_exact(body, MAX_JSON_VALUES, &mut |_| true)
    }

    /// Which parse read each event.
    fn readers(b: &ParsedBeacon) -> Vec<&'static str> {
        let reader = |e: &RawEvent| match e.parsed {
            Parsed::Validated(_) => "fast",
            Parsed::Object(_) => "exact",
            Parsed::Other(_) => "exact, not an object",
        };
        b.events.iter().map(reader).collect()
    }

    #[test]
    fn players_beacons_take_the_fast_parse_and_read_as_the_exact_one() {
        // As wrk's and the SDK's beacons are: objects of scalar fields. A repeated key, a number in
        // exponent form, escapes, a null.
        let body = br#"{"key":"k1","sent_at":1700000010000,"events":[
            {"view_id":"v1","seq":0,"type":"viewstart","ts":1700000000000,"video_id":"v\u00e9","cdn":"fastly","stream_type":"vod","player_name":"hls.js"},
            {"view_id":"v1","seq":1,"type":"segment","ts":1700000000500,"playhead_ms":500.25,"host":"cdn.example.com","bytes":1048576,"duration_ms":120,"ttfb_ms":3e1,"cache":"hit"},
            {"view_id":"v1","seq":2,"type":"quality_change","ts":1700000001000,"bitrate_kbps":2500.0,"width":1280,"height":720,"seq":3},
            {"view_id":"v1","seq":4,"type":"error","ts":1700000002000,"code":-4001,"fatal":true,"message":null},
            {"view_id":"v1","seq":5,"type":"heartbeat","ts":17e11,"playhead_ms":0}]}"#;
        let fast = parse_beacon(body).unwrap();
        assert_eq!(readers(&fast), ["fast"; 5]);
        assert!(fast.events.iter().all(|e| e.validate().is_ok()));
        assert_eq!(fast.events[2].validate().unwrap().seq, 3, "the last of repeated keys");
        assert_eq!(answer(Ok(fast)), answer(exact(body)));
    }

    #[test]
    fn the_fast_parse_steps_aside_where_it_would_not_answer_exactly() {
        let ev = |extra: &str| format!(r#"{{"view_id":"v","seq":1,"type":"viewstart","ts":1700000000000{extra}}}"#);
        // A field validation reads that the document does not hold exactly (an object, as `custom`
        // is; a zero written as a fraction, whose sign sonic-rs drops): the event is parsed exactly
        // from its text. Fields validation does not read do not matter. An event that is not an
        // object is parsed exactly.
        for (odd, exactly) in [
            (r#","custom":{"plan":"pro","n":-0.0}"#, true),
            (r#","playhead_ms":-0.0"#, true),
            (r#","x":[1],"y":-0.0"#, false),
        ] {
            let body = format!(r#"{{"sent_at":1700000000000,"events":[{},{},7]}}"#, ev(""), ev(odd));
            let fast = parse_beacon(body.as_bytes()).unwrap();
            let second = if exactly { "exact" } else { "fast" };
            assert_eq!(readers(&fast), ["fast", second, "exact, not an object"], "{odd}");
            assert_eq!(answer(Ok(fast)), answer(exact(body.as_bytes())));
        }
        assert!(answer(parse_beacon(format!(r#"{{"sent_at":1700000000000,"events":[{}]}}"#, ev(r#","playhead_ms":-0.0"#)).as_bytes())).contains("-0.0"));
        // An event longer than the fast parse reads is parsed exactly; one nested as deep as
        // serde_json's limit (127 levels below the event, and 200: sonic-rs allows 254) sends the body
        // to the exact parse, which refuses it.
        let long = format!(r#"{{"sent_at":1700000000000,"events":[{},{}]}}"#, ev(&format!(r#","x":"{}""#, "y".repeat(dom::EVENT_MAX_BYTES))), ev(""));
        assert_eq!(readers(&parse_beacon(long.as_bytes()).unwrap()), ["exact", "fast"]);
        for depth in [126, 127, 200] {
            let nested = format!(r#","x":{}{}"#, "[".repeat(depth), "]".repeat(depth));
            let body = format!(r#"{{"sent_at":1700000000000,"events":[{},{}]}}"#, ev(&nested), ev(""));
            assert_eq!(answer(parse_beacon(body.as_bytes())), answer(exact(body.as_bytes())), "{depth} levels");
            assert_eq!(parse_beacon(body.as_bytes()).is_ok(), depth < 127, "{depth} levels");
        }
        // Repeated `events` (the last counts) or more keys than a player sends (every event parsed
        // exactly from its text), a body past the fast parse's size or values the length cannot
        // prove within the limit (the whole body parsed exactly): no event is read from a document.
        let two = format!("{},{}", ev(""), ev(""));
        let twice = format!(r#"{{"sent_at":1700000000000,"events":[7],"events":[{two}]}}"#);
        let keys = format!(r#"{{"sent_at":1700000000000,{}"events":[{two}]}}"#, r#""":0,"#.repeat(dom::MAX_TOP_KEYS));
        let big = format!(r#"{{"sent_at":1700000000000,"pad":"{}","events":[{two}]}}"#, "x".repeat(FAST_PARSE_MAX_BYTES));
        for body in [&twice, &keys, &big] {
            let fast = parse_beacon(body.as_bytes()).unwrap();
            assert_eq!(readers(&fast), ["exact", "exact"]);
            assert_eq!(answer(Ok(fast)), answer(exact(body.as_bytes())));
        }
        let both = format!(r#"{{"sent_at":1700000000000,"events":[{two}]}}"#);
        assert_eq!(readers(&parse_beacon(both.as_bytes()).unwrap()), ["fast", "fast"]);
        assert_eq!(readers(&parse_beacon_limited(both.as_bytes(), 40, &mut |_| true).unwrap()), ["exact", "exact"]);
        // Keys written with an escape, `events` among them, are read as the exact parse reads them (the
        // scan finds `events` by its place among the body's arrays and objects, from the document).
        for escaped in [
            format!(r#"{{"sent_at":1700000000000,"k\u0065y":"k","events":[{two}]}}"#),
            format!(r#"{{"x\"":[{two}],"sent_at":1700000000000,"ev\u0065nts":[{two},7],"events\u0000":[]}}"#),
        ] {
            let fast = parse_beacon(escaped.as_bytes()).unwrap();
            assert_eq!(readers(&fast)[..2], ["fast", "fast"], "{escaped}");
            assert_eq!(answer(Ok(fast)), answer(exact(escaped.as_bytes())));
        }
        // Repeated keys (the exact parse takes the last, the document's lookup the first), nesting of
        // 100 levels or more in the envelope: every event parsed exactly.
        let repeated = format!(r#"{{"sent_at":1,"sent_at":1700000000000,"events":[{two}]}}"#);
        let deep = |levels: usize| format!(r#"{{"sent_at":1700000000000,"x":{}{},"events":[{two}]}}"#, "[".repeat(levels), "]".repeat(levels));
        for body in [&repeated, &deep(99)] {
            let fast = parse_beacon(body.as_bytes()).unwrap();
            assert_eq!(readers(&fast), ["exact", "exact"], "{body}");
            assert_eq!(answer(Ok(fast)), answer(exact(body.as_bytes())));
        }
        assert_eq!(readers(&parse_beacon(deep(98).as_bytes()).unwrap()), ["fast", "fast"], "98 levels below the body");
        // Numbers whose exponent a thousand digits of mantissa make up for: sonic-rs reads at most
        // about four digits of an exponent, so they go to the exact parse, in the envelope or an event.
        let zeros = "0".repeat(999);
        let long_numbers = [
            format!(r#"{{"sent_at":0.{zeros}1e10120,"events":[{two}]}}"#),
            format!(r#"{{"sent_at":1700000000000,"x":0.{zeros}1e10000,"events":[{two}]}}"#),
            format!(r#"{{"sent_at":17{zeros}000000000000e-10000,"events":[{two}]}}"#),
            format!(r#"{{"sent_at":1700000000000,"events":[{},{}]}}"#, ev(&format!(r#","playhead_ms":17{zeros}000000000000e-10000"#)), ev("")),
        ];
        for body in &long_numbers {
            assert_eq!(answer(parse_beacon(body.as_bytes())), answer(exact(body.as_bytes())), "{}", &body[..60]);
        }
        // One event: read from the document too.
        let one = format!(r#"{{"sent_at":1700000000000,"events":[{}]}}"#, ev(""));
        assert_eq!(readers(&parse_beacon(one.as_bytes()).unwrap()), ["fast"]);
        // Errors are the exact parse's, word for word.
        let bad: [&[u8]; 7] = [
            br#"{"sent_at":1700000000000,"events":[{},{"a":"\ud800"}]}"#,
            br#"{"sent_at":1700000000000,"events":[{"a":1e400}]}"#,
            br#"{"sent_at":1700000000000,"events":[{"a":1,}]}"#,
            br#"{"sent_at":1,"events":[]}"#,
            br#"{"key":"","sent_at":1700000000000,"events":[]}"#,
            b"[1]",
            b"{",
        ];
        for body in bad {
            assert!(parse_beacon(body).is_err());
            assert_eq!(answer(parse_beacon(body)), answer(exact(body)));
        }
    }

    /// A JSON value's text: the numbers, strings and nesting on which parsers are known to differ.
    fn value_text() -> impl Strategy<Value = String> {
        let literals = prop::sample::select(vec![
            "0", "-0", "0.0", "-0.0", "0e5", "-0E-2", "1", "1.0", "-5", "2.5", "1e3", "1E-2", "123.456e-7",
            "9007199254740993", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
            "-9223372036854775809", "1e400", "4.9e-324", "2.2250738585072011e-308", "1700000000000", "1.7e12",
            "1700000000000.5", "true", "false", "null", r#""v1""#, r#""v\u00e9""#, r#""\ud800""#,
            r#""\ud83d\ude00""#, r#""a\"b""#, r#""segment""#, r#""viewstart""#, r#""quality_change""#,
            r#""error""#, r#""hit""#, r#""vod""#, r#""é""#, "[]", "[1,-0.0]", "{}", r#"{"plan":"pro","n":2.50}"#,
        ])
        .prop_map(str::to_owned);
        prop_oneof![
            4 => literals,
            1 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:e}") } else { "1".into() }),
            1 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f}") } else { "2".into() }),
            1 => any::<i64>().prop_map(|i| i.to_string()),
            1 => "-?[0-9]{1,22}(\\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?",
            1 => any::<String>().prop_map(|s| Value::String(s).to_string()),
            1 => (120usize..135).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
            // Long numbers whose exponent a thousand digits of mantissa make up for (sonic-rs reads
            // at most about four digits of an exponent).
            1 => (prop::sample::select(vec!["0.", "17", "-0.", "1."]), 990usize..1020, prop::sample::select(vec!["1e10120", "e-10000", "1e10000", "5E+1015", "e-1000"]))
                .prop_map(|(head, zeros, tail)| format!("{head}{}{tail}", "0".repeat(zeros))),
        ]
    }

    /// A body of events in the shape players send, with fields of any of those values; sometimes one
    /// byte changed to one JSON cares about.
    fn body_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "view_id", "seq", "type", "ts", "playhead_ms", "bitrate_kbps", "bytes", "cache", "host", "code", "fatal",
            "message", "custom", "width", "stream_type", "x",
        ]);
        let kind = prop::sample::select(vec!["viewstart", "playing", "segment", "quality_change", "error", "heartbeat"]);
        let fields = prop::collection::vec((key, value_text()), 0..6);
        let event = (kind, value_text(), fields, any::<bool>()).prop_map(|(kind, ts, fields, base)| {
            let mut out: Vec<String> = fields.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            if base {
                out.splice(0..0, [r#""view_id":"v""#.to_owned(), r#""seq":1"#.to_owned(), format!(r#""type":"{kind}""#), format!(r#""ts":{ts}"#)]);
            }
            format!("{{{}}}", out.join(","))
        });
        let events = prop::collection::vec(prop_oneof![8 => event, 1 => value_text()], 0..6);
        // The envelope: `key` and `sent_at` of any value sometimes, other keys (escaped, repeated, or
        // spelling a key the envelope reads), whitespace wherever JSON allows it.
        let name = prop::sample::select(vec!["x", "key", "sent_at", "events", r"k\u0065y", r"ev\u0065nts", r"\u0078"]);
        let others = prop::collection::vec((name, value_text()), 0..3);
        let space = || prop::sample::select(vec!["", "", " ", "\n", "\t", "\r\n "]);
        let envelope = (value_text(), value_text(), any::<(bool, bool)>(), others);
        // `events` written with an escape sometimes, the other keys after it sometimes.
        let layout = any::<(bool, bool)>();
        let body = (events, envelope, space(), space(), layout).prop_map(
            |(events, (key, sent_at, (plain_key, plain_sent_at), others), a, b, (escaped_events, others_after))| {
                let key = if plain_key { r#""k""#.to_owned() } else { key };
                let sent_at = if plain_sent_at { "1700000000000".to_owned() } else { sent_at };
                let others: Vec<String> = others.into_iter().map(|(k, v)| format!(r#"{a}"{k}"{b}:{a}{v}{b}"#)).collect();
                let (before, after) = match others_after {
                    false => (others.iter().map(|o| format!("{o},")).collect::<String>(), String::new()),
                    true => (String::new(), others.iter().map(|o| format!(",{o}")).collect()),
                };
                let events_key = if escaped_events { r"ev\u0065nts" } else { "events" };
                let list = events.join(&format!("{a},{b}"));
                format!(r#"{a}{{{b}"key":{key},"sent_at"{a}:{b}{sent_at},{before} "{events_key}"{b}:{a}[{b}{list}{a}]{b}{after}}}{a}"#)
            },
        );
        let damage = prop::option::of((any::<prop::sample::Index>(), prop::sample::select(vec![',', ':', '{', '}', '[', ']', '"', '\\', ' ', '0', '-', '.', 'e'])));
        (body, damage).prop_map(|(mut body, damage)| {
            if let Some((at, c)) = damage {
                let at = at.index(body.len());
                if body.is_char_boundary(at) && body.is_char_boundary(at + 1) {
                    body.replace_range(at..at + 1, &c.to_string());
                }
            }
            body
        })
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn the_fast_parse_answers_as_the_exact_one(body in body_text()) {
            prop_assert_eq!(answer(parse_beacon(body.as_bytes())), answer(exact(body.as_bytes())), "{}", body);
            // The two scans of the events' texts answer alike on any valid JSON, wherever `events` is.
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            if sonic_rs::from_str::<sonic_rs::Value>(&body).is_ok() {
                for events_at in 0..3 {
                    prop_assert_eq!(scan::blocks::event_texts(&body, events_at), scan::bytes::event_texts(&body, events_at), "{}", body);
                }
            }
            // Validation through the slots answers as through serde_json's map of the event, taking
            // the event or not.
            for event in parse_beacon(body.as_bytes()).map(|b| b.events).unwrap_or_default() {
                prop_assert_eq!(event.validate(), validate_event(&event.clone().into_value()), "{}", event.text());
                prop_assert_eq!(event.clone().into_validated(), event.validate(), "{}", event.text());
            }
        }
    }

    #[test]
    fn every_key_validation_reads_has_its_own_slot() {
        for (i, key) in KEYS_READ.iter().enumerate() {
            assert_eq!(slot(key), Some(i), "{key}");
        }
        assert_eq!(slot("x"), None);
    }

    #[test]
    fn the_ts_reason_names_the_bounds_it_checks() {
        assert!(TS_RANGE.contains(&TS_MIN_MS.to_string()) && TS_RANGE.contains(&TS_MAX_MS.to_string()));
    }

    #[test]
    fn event_reasons_name_the_field() {
        let reason = |v: Value| validate_event(&v).unwrap_err().to_string();
        assert_eq!(reason(json!(3)), "event: must be a JSON object");
        assert_eq!(reason(json!({"seq": 1})), "view_id: required field is missing");
        assert!(reason(ev(json!({"seq": -1}))).starts_with("seq: must be an integer from 0"));
        assert!(reason(ev(json!({"seq": 1.5}))).starts_with("seq: must be an integer"));
        assert_eq!(reason(ev(json!({"type": "jump"}))), "type: unknown event type \"jump\"");
        assert!(reason(ev(json!({"ts": 12}))).starts_with("ts: must be epoch milliseconds"));
        assert_eq!(reason(ev(json!({"type": "quality_change"}))), "bitrate_kbps: required field is missing");
        assert!(reason(ev(json!({"type": "segment", "bytes": 10, "cache": "HIT"}))).starts_with("cache:"));
        assert!(reason(ev(json!({"type": "error", "fatal": "yes"}))).starts_with("fatal: must be a boolean"));
        assert!(reason(ev(json!({"type": "viewstart", "stream_type": "tv"}))).starts_with("stream_type:"));
        assert!(reason(ev(json!({"playhead_ms": -5}))).starts_with("playhead_ms:"));
    }

    #[test]
    fn typed_payloads() {
        let e = validate_event(&ev(json!({"type": "segment", "bytes": 2048.0, "cache": "hit", "x_custom": [1]})))
            .unwrap();
        assert_eq!(e.seq, 0);
        assert!(matches!(e.payload, Payload::Segment { bytes: 2048, cache: CacheStatus::Hit, .. }));
        let e = validate_event(&ev(json!({"type": "error", "code": 4001, "fatal": true}))).unwrap();
        assert_eq!(e.payload, Payload::Error { code: Some("4001".into()), message: None, fatal: true });
    }
}
