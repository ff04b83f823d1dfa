//! `portguard top`: a live full-screen view of the guarded interfaces, read from their pinned
//! maps so that it runs beside the service and never attaches anything itself.
//!
//! - `model`: what is known about each guarded interface, refreshed once per tick.
//! - `ui`: what the person at the keyboard chose (sort, filter, prompts) and the keys for it.
//! - `view`: drawing the model with ratatui (which diffs frames, so nothing flickers).
//! - `term`: entering and leaving the full-screen terminal, also on panic and on signals.
//! - `fmt`: compact numbers for narrow columns.

pub mod fmt;
pub mod model;
pub mod term;
pub mod ui;
pub mod view;

/// Shown, on a terminal or not, when there is nothing to look at.
pub const NOTHING_GUARDED: &str = "nothing is guarded: start `portguard run --iface IFACE`";
/// The smallest terminal the view fits in.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 15;
