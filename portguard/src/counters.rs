//! Counter snapshots and the rates between two of them.

use std::time::Duration;

use portguard_common::Totals;

/// Per-second rates between two snapshots of the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub seen: f64,
    pub matched: f64,
    pub dropped: f64,
}

pub fn rates(prev: &Totals, cur: &Totals, dt: Duration) -> Rates {
    let s = dt.as_secs_f64().max(1e-9);
    let r = |a: u64, b: u64| b.saturating_sub(a) as f64 / s;
    Rates {
        seen: r(prev.seen, cur.seen),
        matched: r(prev.matched, cur.matched),
        dropped: r(prev.dropped, cur.dropped),
    }
}
