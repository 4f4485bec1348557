//! A validated beacon event, its typed payload, and the collector's enrichment of the request.
//!
//! An [`Event`] holds what validation guaranteed, typed. The event's original JSON object travels beside it
//! in the record (`EventsRecord::events`), so fields this version does not know reach storage unchanged.

use serde::{Deserialize, Serialize};

/// The event types of beacon protocol v1 (`schemas/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Viewstart,
    Playrequest,
    Playing,
    Pause,
    Seeking,
    Seeked,
    StallStart,
    StallEnd,
    QualityChange,
    Segment,
    Error,
    Heartbeat,
    Viewend,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::Viewstart,
        EventKind::Playrequest,
        EventKind::Playing,
        EventKind::Pause,
        EventKind::Seeking,
        EventKind::Seeked,
        EventKind::StallStart,
        EventKind::StallEnd,
        EventKind::QualityChange,
        EventKind::Segment,
        EventKind::Error,
        EventKind::Heartbeat,
        EventKind::Viewend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Viewstart => "viewstart",
            EventKind::Playrequest => "playrequest",
            EventKind::Playing => "playing",
            EventKind::Pause => "pause",
            EventKind::Seeking => "seeking",
            EventKind::Seeked => "seeked",
            EventKind::StallStart => "stall_start",
            EventKind::StallEnd => "stall_end",
            EventKind::QualityChange => "quality_change",
            EventKind::Segment => "segment",
            EventKind::Error => "error",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Viewend => "viewend",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamType {
    Vod,
    Live,
}

/// CDN cache status of a media request, from `X-Cache` / `CF-Cache-Status` / `Age` as the SDK saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    Hit,
    Miss,
    #[default]
    Unknown,
}

/// The dimensions a `viewstart` carries. Every field is optional: SDKs send what they know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewDims {
    pub video_id: Option<String>,
    pub video_title: Option<String>,
    pub stream_type: Option<StreamType>,
    pub player_name: Option<String>,
    pub player_version: Option<String>,
    pub page_url: Option<String>,
    pub cdn: Option<String>,
    /// Custom dimensions (`custom` object of the viewstart), values as strings.
    pub custom: Vec<(String, String)>,
}

/// The typed, validated part of an event that depends on its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    Viewstart(Box<ViewDims>),
    QualityChange {
        bitrate_kbps: f64,
        width: Option<u32>,
        height: Option<u32>,
        codec: Option<String>,
    },
    Segment {
        host: Option<String>,
        bytes: u64,
        duration_ms: Option<f64>,
        ttfb_ms: Option<f64>,
        cache: CacheStatus,
    },
    Error {
        code: Option<String>,
        message: Option<String>,
        fatal: bool,
    },
    /// Event types without type-specific fields.
    None,
}

/// One validated event of a beacon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub view_id: String,
    pub seq: u64,
    pub kind: EventKind,
    /// Client epoch milliseconds.
    pub ts: i64,
    pub playhead_ms: Option<f64>,
    pub payload: Payload,
}

/// What the collector learned about the client from the request itself (`schemas/README.md`).
/// Fixed for a view by its first beacon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Client IP, anonymised unless the operator turned that off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// desktop | mobile | tablet | tv | console | bot | other
    #[serde(default)]
    pub device_type: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub os_version: String,
    #[serde(default)]
    pub browser: String,
    #[serde(default)]
    pub browser_version: String,
    /// ISO 3166-1 alpha-2 from the GeoIP database, empty when unknown or none is configured.
    #[serde(default)]
    pub country: String,
    #[serde(default)]
    pub bot: bool,
}
