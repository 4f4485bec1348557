//! Replaying a view: the per-view state a history derives ([`ViewCore`]), where its contributions go
//! ([`Place`], the window emitter), and [`derive`], which replays a view's complete history from scratch
//! for a correction (`docs/metrics.md` §12). The sessionizer's in-order path steps the same
//! [`ViewCore`] one event at a time, so a re-derivation follows exactly the rules of in-order processing.

use schemas::dims::Dim;
use schemas::event::ViewDims;
use schemas::measures::Measure;
use schemas::{ClientInfo, Event, EventKind, Payload};
use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use crate::view::{Emit, Span, ViewMachine};
use crate::window::{DimValues, Windows};

/// What a view's events derive, besides its totals: the machine, the viewstart's dimensions, the
/// dimension values its contributions go to, and the last window it was counted active in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ViewCore {
    pub(crate) machine: ViewMachine,
    pub(crate) view_dims: Option<ViewDims>,
    dims: Option<DimValues>,
    last_active: Option<i64>,
}

/// Where a view's contributions are placed: its clock offset and client, the dimension set, the late
/// horizon's cutoff (`i64::MIN` when re-deriving) and the inactivity timeout.
pub(crate) struct Place<'a> {
    offset: i64,
    client: &'a ClientInfo,
    dim_set: &'a [Dim],
    cutoff: i64,
    inactivity: i64,
}

impl<'a> Place<'a> {
    pub(crate) fn new(config: &'a SessionConfig, offset: i64, client: &'a ClientInfo, cutoff: i64) -> Place<'a> {
        Place { offset, client, dim_set: &config.dims, cutoff, inactivity: config.inactivity_timeout_ms }
    }
}

impl ViewCore {
    /// Makes the view's dimension values (once computed) the shared copy `windows` keeps.
    pub(crate) fn share_dims(&mut self, windows: &mut Windows) {
        if let Some(dims) = &mut self.dims {
            windows.share_dims(dims);
        }
    }

    #[cfg(test)]
    pub(crate) fn dims(&self) -> Option<&DimValues> {
        self.dims.as_ref()
    }

    /// Applies the next event in `seq` order. Returns false when the event comes more than the
    /// inactivity timeout after the previous one: the view then ended at the previous one, and this
    /// event changes nothing (`docs/metrics.md` §5).
    pub(crate) fn step(&mut self, event: &Event, place: &Place, windows: &mut Windows) -> bool {
        if let Some(last) = self.machine.last_ts
            && event.ts.saturating_sub(last) > place.inactivity
        {
            self.end(place, windows);
            return false;
        }
        if event.kind == EventKind::Viewstart
            && self.view_dims.is_none()
            && let Payload::Viewstart(d) = &event.payload
        {
            self.view_dims = Some((**d).clone());
        }
        let (machine, mut emit) = self.split(windows, place);
        machine.apply(event, &mut emit);
        true
    }

    /// Ends the view at its last event: closes what is open (an exit before start if it never started).
    pub(crate) fn end(&mut self, place: &Place, windows: &mut Windows) {
        let last = self.machine.last_ts.unwrap_or_default();
        let (machine, mut emit) = self.split(windows, place);
        machine.end(last, &mut emit);
    }

    /// The state machine, and an emitter routing its contributions to `windows`.
    fn split<'a>(&'a mut self, windows: &'a mut Windows, place: &'a Place) -> (&'a mut ViewMachine, WindowEmit<'a>) {
        let emit = WindowEmit {
            windows,
            dims: &mut self.dims,
            view_dims: &self.view_dims,
            client: place.client,
            dim_set: place.dim_set,
            offset: place.offset,
            cutoff: place.cutoff,
            last_active: &mut self.last_active,
        };
        (&mut self.machine, emit)
    }
}

/// What a view's complete history derives.
pub(crate) struct Derived {
    pub(crate) core: ViewCore,
    /// The view's whole contribution to the windows.
    pub(crate) windows: Windows,
    /// How it ended, if it did.
    pub(crate) ended: Option<&'static str>,
    /// It ended by `close`, not by its own events.
    pub(crate) closed: bool,
}

/// Derives a view from its history (events in `seq` order) from scratch: what in-order arrival would
/// have computed. `close`: the view was ended from outside (a timeout, an eviction), with this reason,
/// unless its history ends it first.
pub(crate) fn derive(config: &SessionConfig, history: &[Event], offset: i64, client: &ClientInfo, close: Option<&'static str>) -> Derived {
    let place = Place::new(config, offset, client, i64::MIN);
    let mut core = ViewCore::default();
    let mut windows = Windows::new(config.window_ms);
    let mut ended = None;
    let mut closed = false;
    for event in history {
        if !core.step(event, &place, &mut windows) {
            ended = Some("timeout");
            break;
        }
        if core.machine.is_ended() {
            ended = Some("viewend");
            break;
        }
    }
    if ended.is_none()
        && let Some(reason) = close
    {
        core.end(&place, &mut windows);
        ended = Some(reason);
        closed = true;
    }
    Derived { core, windows, ended, closed }
}


/// Routes one view's contributions to the windows, placing client time at event time.
struct WindowEmit<'a> {
    windows: &'a mut Windows,
    dims: &'a mut Option<DimValues>,
    view_dims: &'a Option<ViewDims>,
    client: &'a ClientInfo,
    dim_set: &'a [Dim],
    offset: i64,
    cutoff: i64,
    last_active: &'a mut Option<i64>,
}

impl WindowEmit<'_> {
    fn dims(&mut self) -> DimValues {
        if let Some(dims) = self.dims {
            return dims.clone();
        }
        let empty = ViewDims::default();
        let v = self.view_dims.as_ref().unwrap_or(&empty);
        let mut dims: DimValues = self.dim_set.iter().map(|d| d.value(v, self.client)).collect::<Vec<_>>().into();
        self.windows.share_dims(&mut dims);
        *self.dims = Some(dims.clone());
        dims
    }
}

impl Emit for WindowEmit<'_> {
    fn add(&mut self, at: i64, adds: &[(Measure, i64)]) {
        let at = at + self.offset;
        if at >= self.cutoff {
            let dims = self.dims();
            self.windows.add(at, &dims, adds);
        }
    }
    fn span(&mut self, from: i64, to: i64, span: Span) {
        let (from, to) = ((from + self.offset).max(self.cutoff), to + self.offset);
        if from < to {
            let dims = self.dims();
            self.windows.span(from, to, &dims, span, self.last_active);
        }
    }
}

