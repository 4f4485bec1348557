//! The dimension vocabulary: what windows can be keyed by and the API can filter and group on, each
//! with its column name and its value for a view (`docs/metrics.md` §7).

use serde::{Deserialize, Serialize};

use crate::event::{ClientInfo, StreamType, ViewDims};

/// A dimension windows can be keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    Cdn,
    Country,
    DeviceType,
    Os,
    Browser,
    PlayerName,
    PlayerVersion,
    StreamType,
    VideoId,
}

impl Dim {
    /// Every dimension, in the column order of `qoe_window`.
    pub const ALL: [Dim; 9] = [
        Dim::Cdn,
        Dim::Country,
        Dim::DeviceType,
        Dim::Os,
        Dim::Browser,
        Dim::PlayerName,
        Dim::PlayerVersion,
        Dim::StreamType,
        Dim::VideoId,
    ];

    /// The dimensions windows are keyed by unless configured otherwise.
    pub const DEFAULT: [Dim; 7] =
        [Dim::Cdn, Dim::Country, Dim::DeviceType, Dim::Os, Dim::Browser, Dim::PlayerName, Dim::StreamType];

    /// Its column name (in `qoe_window`, the API's `group_by` and filters).
    pub const fn name(self) -> &'static str {
        match self {
            Dim::Cdn => "cdn",
            Dim::Country => "country",
            Dim::DeviceType => "device_type",
            Dim::Os => "os",
            Dim::Browser => "browser",
            Dim::PlayerName => "player_name",
            Dim::PlayerVersion => "player_version",
            Dim::StreamType => "stream_type",
            Dim::VideoId => "video_id",
        }
    }

    /// This dimension's value for a view with these viewstart fields and enrichment.
    pub fn value(self, v: &ViewDims, c: &ClientInfo) -> String {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        match self {
            Dim::Cdn => s(&v.cdn),
            Dim::Country => c.country.clone(),
            Dim::DeviceType => c.device_type.clone(),
            Dim::Os => c.os.clone(),
            Dim::Browser => c.browser.clone(),
            Dim::PlayerName => s(&v.player_name),
            Dim::PlayerVersion => s(&v.player_version),
            Dim::StreamType => stream_type_str(v.stream_type).to_owned(),
            Dim::VideoId => s(&v.video_id),
        }
    }
}

pub fn stream_type_str(t: Option<StreamType>) -> &'static str {
    match t {
        Some(StreamType::Vod) => "vod",
        Some(StreamType::Live) => "live",
        None => "",
    }
}

/// The dimension columns of `qoe_window`, in [`Dim::ALL`] order; unconfigured ones are "".
pub const DIM_COLUMNS: [&str; 9] = {
    let mut out = [""; 9];
    let mut i = 0;
    while i < out.len() {
        out[i] = Dim::ALL[i].name();
        i += 1;
    }
    out
};
