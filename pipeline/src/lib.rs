//! The qoeflow pipeline: rebuilds every view from the record stream and computes the QoE metrics of
//! DESIGN.md §4 as mergeable window deltas and per-view rows.
//!
//! - [`view`]: the per-view state machine (the metric definitions).
//! - [`window`]: event-time tumbling windows, accumulated as deltas, with start-time histograms.
//! - [`sessionizer`]: dedupe, reorder, view lifecycle, dimensions, watermark, late horizon.
//! - [`reference`]: a plain batch computation of the same definitions, for differential tests.

pub mod reference;
pub mod sessionizer;
pub mod view;
pub mod window;

pub use sessionizer::{Dim, Output, SessionConfig, Sessionizer, Stats, ViewRow};
