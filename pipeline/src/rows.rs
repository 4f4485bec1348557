//! Output rows as cells in the column order of `schemas::tables` (shared by every sink).

use schemas::record::RejectedRecord;
use schemas::measures::{HISTOGRAM_MEASURE, MEASURES, Measure, WINDOW_QUANTILES};
pub use schemas::cells::{Cell, encode_rowbinary};
use schemas::tables::{self, ColType, Column, DIM_COLUMNS};
use schemas::{CacheStatus, Payload};

use crate::sessionizer::{Dim, EventRow, Output, ViewRow, stream_type_str};
use crate::window::WindowRow;

fn s(v: &str) -> Cell<'_> {
    Cell::Str(v.into())
}
fn opt_s(v: &Option<String>) -> Cell<'_> {
    v.as_deref().map_or(Cell::Null, s)
}
/// An optional string where the table has `''` for none.
fn or_empty(v: &Option<String>) -> Cell<'_> {
    s(v.as_deref().unwrap_or_default())
}
fn opt_f(v: Option<f64>) -> Cell<'static> {
    v.map_or(Cell::Null, Cell::F64)
}

pub fn window_row<'a>(w: &'a WindowRow, dims: &[Dim], source: &'a str, epoch: u64, row: usize) -> Vec<Cell<'a>> {
    let d = &w.delta;
    let mut cells = vec![Cell::Ts(w.window_start), Cell::I64(w.window_ms)];
    for name in DIM_COLUMNS {
        let value = dims.iter().position(|dim| dim.name() == name).and_then(|i| w.dims.get(i));
        cells.push(s(value.map_or("", String::as_str)));
    }
    for def in &MEASURES {
        let Some((_, ty)) = def.window else { continue };
        cells.push(measure_cell(d.sums[def.measure], ty));
        if def.measure == HISTOGRAM_MEASURE {
            cells.push(Cell::Bin(d.startup_hist.serialize().into()));
            // Empty bytes when the row retracts no start (most rows).
            cells.push(Cell::Bin(d.startup_retract.serialize_or_nothing().into()));
            cells.extend(WINDOW_QUANTILES.iter().map(|(_, q)| d.startup_quantile(*q).map_or(Cell::Null, |v| Cell::F64(v as f64))));
        }
    }
    cells.extend([s(source), Cell::U64(epoch), Cell::U64(row as u64)]);
    cells
}

/// A measure's value in a column of type `ty` (flags are 0 or 1, counts never negative).
fn measure_cell(v: i64, ty: ColType) -> Cell<'static> {
    match ty {
        ColType::Bool => Cell::Bool(v != 0),
        ColType::UInt64 => Cell::U64(v as u64),
        _ => Cell::I64(v),
    }
}

pub fn view_row<'a>(v: &'a ViewRow, source: &'a str, epoch: u64, row: usize) -> Vec<Cell<'a>> {
    let t = &v.totals;
    let d = &v.dims;
    let custom: serde_json::Map<String, serde_json::Value> =
        d.custom.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let mut cells = vec![
        s(&v.view_id),
        opt_s(&v.key),
        Cell::Ts(v.start_ms),
        Cell::Ts(v.end_ms),
        s(v.end_reason),
        or_empty(&d.video_id),
        or_empty(&d.video_title),
        s(stream_type_str(d.stream_type)),
        or_empty(&d.player_name),
        or_empty(&d.player_version),
        or_empty(&d.page_url),
        or_empty(&d.cdn),
        Cell::Str(serde_json::Value::Object(custom).to_string().into()),
        s(&v.client.country),
        s(&v.client.device_type),
        s(&v.client.os),
        s(&v.client.os_version),
        s(&v.client.browser),
        s(&v.client.browser_version),
        or_empty(&v.client.ip),
        Cell::Bool(v.client.bot),
    ];
    for def in &MEASURES {
        let Some((_, ty)) = def.view else { continue };
        // The start time of a view that did not start is NULL, not 0.
        let unset = def.measure == HISTOGRAM_MEASURE && !t.flag(Measure::Started);
        cells.push(if unset { Cell::Null } else { measure_cell(t[def.measure], ty) });
    }
    cells.extend([
        Cell::U64(v.events),
        Cell::U64(v.duplicates),
        Cell::U64(v.gaps),
        Cell::U64(v.version),
        s(source),
        Cell::U64(epoch),
        Cell::U64(row as u64),
    ]);
    cells
}

pub fn event_row(e: &EventRow) -> Vec<Cell<'_>> {
    let r = &*e.received;
    let c = &*r.client;
    let (mut bitrate, mut width, mut height, mut codec) = (Cell::Null, Cell::Null, Cell::Null, Cell::Null);
    let (mut host, mut bytes, mut duration, mut ttfb, mut cache) = (Cell::Null, Cell::Null, Cell::Null, Cell::Null, Cell::Null);
    let (mut code, mut message, mut fatal) = (Cell::Null, Cell::Null, Cell::Null);
    match &e.payload {
        Payload::QualityChange { bitrate_kbps, width: w, height: h, codec: cd } => {
            bitrate = Cell::F64(*bitrate_kbps);
            width = w.map_or(Cell::Null, |v| Cell::I64(v.into()));
            height = h.map_or(Cell::Null, |v| Cell::I64(v.into()));
            codec = opt_s(cd);
        }
        Payload::Segment { host: hs, bytes: b, duration_ms, ttfb_ms, cache: ch } => {
            host = opt_s(hs);
            bytes = Cell::U64(*b);
            duration = opt_f(*duration_ms);
            ttfb = opt_f(*ttfb_ms);
            cache = s(match ch {
                CacheStatus::Hit => "hit",
                CacheStatus::Miss => "miss",
                CacheStatus::Unknown => "unknown",
            });
        }
        Payload::Error { code: cd, message: m, fatal: f } => {
            code = opt_s(cd);
            message = opt_s(m);
            fatal = Cell::Bool(*f);
        }
        Payload::Viewstart(_) | Payload::None => {}
    }
    vec![
        s(&r.view_id),
        Cell::U64(e.seq),
        s(e.kind.as_str()),
        Cell::Ts(e.ts),
        Cell::Ts(e.event_ms),
        Cell::Ts(r.recv_ms),
        Cell::Ts(r.sent_at),
        opt_f(e.playhead_ms),
        opt_s(&r.key),
        or_empty(&c.ip),
        s(&c.device_type),
        s(&c.os),
        s(&c.browser),
        s(&c.country),
        Cell::Bool(c.bot),
        bitrate,
        width,
        height,
        codec,
        host,
        bytes,
        duration,
        ttfb,
        cache,
        code,
        message,
        fatal,
        s(&e.raw),
    ]
}

pub fn rejected_row<'a>(r: &'a RejectedRecord, source: &'a str, epoch: u64, row: usize) -> Vec<Cell<'a>> {
    vec![
        Cell::Ts(r.recv_ms),
        opt_s(&r.key),
        r.index.map_or(Cell::Null, |i| Cell::I64(i.into())),
        s(&r.tag),
        s(&r.reason),
        s(&r.payload),
        s(source),
        Cell::U64(epoch),
        Cell::U64(row as u64),
    ]
}

/// One table's rows of an epoch, made as they are read (so a sink need not hold them all as cells).
pub struct TableRows<'a> {
    pub table: &'static str,
    pub columns: &'static [Column],
    /// (partition timestamp, cells) of each row; its `size_hint` is exact.
    pub rows: Box<dyn Iterator<Item = (i64, Vec<Cell<'a>>)> + Send + 'a>,
}

/// One epoch's output as the rows of each table.
pub fn tables_of<'a>(out: &'a Output, dims: &'a [Dim], source: &'a str, epoch: u64) -> [TableRows<'a>; 4] {
    [
        TableRows { table: "events", columns: tables::EVENTS, rows: Box::new(out.events.iter().map(|e| (e.event_ms, event_row(e)))) },
        TableRows {
            table: "views",
            columns: tables::views(),
           
            rows: Box::new(out.views.iter().enumerate().map(move |(i, v)| (v.end_ms, view_row(v, source, epoch, i)))),
        },
        TableRows {
            table: "qoe_window",
            columns: tables::qoe_window(),
           
            rows: Box::new(out.windows.iter().enumerate().map(move |(i, w)| (w.window_start, window_row(w, dims, source, epoch, i)))),
        },
        TableRows {
            table: "rejected",
            columns: tables::REJECTED,
           
            rows: Box::new(out.rejected.iter().enumerate().map(move |(i, r)| (r.recv_ms, rejected_row(r, source, epoch, i)))),
        },
    ]
}
