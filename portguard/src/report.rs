//! Rendering counters: a table for people at a terminal, one `key=value` line per interval for
//! journald and pipes, and JSON with stable field names for scripts. The JSON fields are
//! documented in README.md ("JSON output"); change them only by adding.

use std::{collections::HashMap, fmt::Write as _, net::IpAddr, time::Duration};

use anyhow::Result;
use portguard_common::Totals;
use serde::Serialize;

use crate::{
    clock,
    counters::{Rates, Source},
    daemon::Tick,
    guard::{Attached, Health},
    settings::Settings,
};

/// New-source lines printed per interface per interval; the rest are summed up in one line.
const NEW_SOURCE_LINES: usize = 10;

/// How the source table is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Packets,
    Rate,
    LastSeen,
}

/// A source with its rate.
#[derive(Clone, Debug)]
pub struct Ranked {
    pub source: Source,
    /// Packets per second over the last interval, or since first seen when there is no
    /// previous sample.
    pub rate: f64,
}

/// One interface at one instant.
pub struct Snapshot {
    pub iface: String,
    /// The network namespace of the interface, when it is not this process's own.
    pub netns: Option<String>,
    /// The XDP mode the kernel runs the program in (None: not guarded, or not known).
    pub attached: Option<Attached>,
    /// What the kernel says of the guard now.
    pub health: Health,
    pub settings: Settings,
    pub totals: Totals,
    pub rates: Rates,
    /// How many sources the table holds, of how many it can.
    pub tracked: usize,
    pub capacity: u32,
    /// The top sources, ordered.
    pub sources: Vec<Ranked>,
}

/// Rates per source (from `prev`, packets per address `dt` ago), ordered by `sort`, cut to
/// `top`.
pub fn rank(
    sources: &[Source],
    prev: Option<(&HashMap<IpAddr, u64>, Duration)>,
    now_ns: u64,
    sort: SortBy,
    top: usize,
) -> Vec<Ranked> {
    let mut out: Vec<Ranked> = sources
        .iter()
        .map(|s| {
            let rate = match prev {
                Some((p, dt)) => {
                    let before = p.get(&s.addr).copied().unwrap_or(0);
                    s.stats.packets.saturating_sub(before) as f64 / dt.as_secs_f64().max(1e-3)
                }
                None => {
                    let span = now_ns.saturating_sub(s.stats.first_seen_ns) as f64 / 1e9;
                    s.stats.packets as f64 / span.max(1.0)
                }
            };
            Ranked { source: *s, rate }
        })
        .collect();
    match sort {
        SortBy::Packets => out.sort_by(|a, b| {
            b.source
                .stats
                .packets
                .cmp(&a.source.stats.packets)
                .then(a.source.addr.cmp(&b.source.addr))
        }),
        SortBy::Rate => out.sort_by(|a, b| {
            b.rate.total_cmp(&a.rate).then(b.source.stats.packets.cmp(&a.source.stats.packets))
        }),
        SortBy::LastSeen => out.sort_by(|a, b| {
            b.source
                .stats
                .last_seen_ns
                .cmp(&a.source.stats.last_seen_ns)
                .then(a.source.addr.cmp(&b.source.addr))
        }),
    }
    out.truncate(top);
    out
}

fn attached_str(a: Option<Attached>) -> &'static str {
    a.map_or("unknown", Attached::as_str)
}

/// The table shown on a terminal.
pub fn table(snaps: &[Snapshot]) -> String {
    let now = clock::monotonic_ns();
    let mut s = String::new();
    for v in snaps {
        let t = &v.totals;
        let _ = writeln!(
            s,
            "{}{} ({} XDP): {}",
            v.iface,
            v.netns.as_ref().map(|n| format!(" (namespace {n})")).unwrap_or_default(),
            attached_str(v.attached),
            v.settings.summary()
        );
        let _ = writeln!(
            s,
            "  seen {} ({:.0}/s)  matched {} ({:.0}/s)  dropped {} ({:.0}/s)  allowed {}  \
             malformed {}  fragments followed {}  untracked {}",
            t.seen,
            v.rates.seen,
            t.matched,
            v.rates.matched,
            t.dropped,
            v.rates.dropped,
            t.allowed,
            t.malformed,
            t.fragments_followed,
            t.untracked
        );
        if v.sources.is_empty() {
            let _ = writeln!(s, "  no sources yet");
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<39} {:>9} {:>8} {:>11} {:>5} {:<7} {:>9} {:>9}  WHAT",
            "SOURCE", "PACKETS", "RATE/s", "BYTES", "SYNS", "PROTO", "LAST", "FIRST"
        );
        for r in &v.sources {
            let st = &r.source.stats;
            let _ = writeln!(
                s,
                "  {:<39} {:>9} {:>8.1} {:>11} {:>5} {:<7} {:>9} {:>9}  {}",
                r.source.addr.to_string(),
                st.packets,
                r.rate,
                st.bytes,
                st.tcp_syns,
                st.protocols.to_string(),
                format!("{} ago", clock::short(clock::age(st.last_seen_ns, now))),
                format!("{} ago", clock::short(clock::age(st.first_seen_ns, now))),
                st.directions.describe(st.last_port)
            );
        }
        if v.tracked > v.sources.len() {
            let _ = writeln!(s, "  ... and {} more sources", v.tracked - v.sources.len());
        }
    }
    s
}

/// One line per interface: stable `key=value` pairs, the top sources as `addr:packets`.
pub fn line(v: &Snapshot) -> String {
    let t = &v.totals;
    let mut s = format!(
        "iface={}{} xdp={} mode={} seen={} matched={} dropped={} allowed={} malformed={} \
         fragments_followed={} untracked={} sources={} drop_rate={:.1}",
        v.iface,
        v.netns.as_ref().map(|n| format!(" (namespace {n})")).unwrap_or_default(),
        attached_str(v.attached),
        v.settings.mode.as_str(),
        t.seen,
        t.matched,
        t.dropped,
        t.allowed,
        t.malformed,
        t.fragments_followed,
        t.untracked,
        v.tracked,
        v.rates.dropped
    );
    let tops: Vec<String> =
        v.sources.iter().map(|x| format!("{}:{}", x.source.addr, x.source.stats.packets)).collect();
    if !tops.is_empty() {
        s.push_str(" top=");
        s.push_str(&tops.join(","));
    }
    s
}

/// The line logged the first time a source appears.
pub fn new_source_line(iface: &str, s: &Source) -> String {
    format!(
        "new source on {iface}: {} {} ({}), {} packets",
        s.addr,
        s.stats.directions.describe(s.stats.last_port),
        s.stats.protocols,
        s.stats.packets
    )
}

/// One source in JSON.
#[derive(Serialize)]
pub struct SourceJson {
    pub address: String,
    pub packets: u64,
    pub bytes: u64,
    pub rate_pps: f64,
    pub first_seen: String,
    pub first_seen_unix: f64,
    pub last_seen: String,
    pub last_seen_unix: f64,
    pub last_seen_age_seconds: f64,
    pub tcp_syns: u32,
    pub last_port: u16,
    /// "probing" (sent to a guarded port), "answering" (sent from one), or "both".
    pub direction: &'static str,
    pub protocols: Vec<&'static str>,
}

impl SourceJson {
    pub fn new(r: &Ranked, now_ns: u64) -> SourceJson {
        let st = &r.source.stats;
        let first = clock::wall(st.first_seen_ns, now_ns);
        let last = clock::wall(st.last_seen_ns, now_ns);
        SourceJson {
            address: r.source.addr.to_string(),
            packets: st.packets,
            bytes: st.bytes,
            rate_pps: (r.rate * 1000.0).round() / 1000.0,
            first_seen: clock::rfc3339(first),
            first_seen_unix: clock::unix(first).floor(),
            last_seen: clock::rfc3339(last),
            last_seen_unix: clock::unix(last).floor(),
            last_seen_age_seconds: (clock::age(st.last_seen_ns, now_ns).as_secs_f64() * 10.0)
                .round()
                / 10.0,
            tcp_syns: st.tcp_syns,
            last_port: st.last_port,
            direction: st.directions.word(),
            protocols: st.protocols.names(),
        }
    }
}

/// One interface's counters in JSON (`stats --json`, and each line of `run --json`).
#[derive(Serialize)]
pub struct InterfaceJson {
    pub iface: String,
    pub xdp_mode: &'static str,
    pub mode: &'static str,
    pub ports: Vec<u16>,
    pub totals: Totals,
    pub drop_rate_pps: f64,
    pub sources_tracked: usize,
    pub sources: Vec<SourceJson>,
}

impl InterfaceJson {
    pub fn new(v: &Snapshot) -> InterfaceJson {
        let now = clock::monotonic_ns();
        InterfaceJson {
            iface: v.iface.clone(),
            xdp_mode: attached_str(v.attached),
            mode: v.settings.mode.as_str(),
            ports: v.settings.ports.clone(),
            totals: v.totals,
            drop_rate_pps: (v.rates.dropped * 10.0).round() / 10.0,
            sources_tracked: v.tracked,
            sources: v.sources.iter().map(|r| SourceJson::new(r, now)).collect(),
        }
    }
}

/// One tick's output: on a terminal the table, redrawn in place; otherwise a line (or a JSON
/// line) per new source and per interface.
pub fn print_tick(out: &mut impl std::io::Write, tick: &Tick, tty: bool, json: bool) -> Result<()> {
    if tty {
        // Home, clear screen.
        let _ = write!(out, "\x1b[H\x1b[2J{}", table(&tick.snaps));
        return Ok(());
    }
    for (iface, fresh) in &tick.news {
        print_new_sources(out, iface, fresh, json);
    }
    for v in &tick.snaps {
        let line = if json {
            let mut j = serde_json::to_value(InterfaceJson::new(v))?;
            j["event"] = "interval".into();
            j.to_string()
        } else {
            line(v)
        };
        let _ = writeln!(out, "{line}");
    }
    Ok(())
}

fn print_new_sources(out: &mut impl std::io::Write, iface: &str, fresh: &[Source], json: bool) {
    let now = clock::monotonic_ns();
    for s in fresh.iter().take(NEW_SOURCE_LINES) {
        let line = if json {
            let r = Ranked { source: *s, rate: 0.0 };
            let mut j = serde_json::to_value(SourceJson::new(&r, now)).unwrap_or_default();
            j["event"] = "new_source".into();
            j["iface"] = iface.into();
            j.to_string()
        } else {
            new_source_line(iface, s)
        };
        let _ = writeln!(out, "{line}");
    }
    if fresh.len() > NEW_SOURCE_LINES {
        let more = fresh.len() - NEW_SOURCE_LINES;
        let line = if json {
            serde_json::json!({"event": "new_sources_suppressed", "iface": iface, "count": more})
                .to_string()
        } else {
            format!("... and {more} more new sources on {iface}")
        };
        let _ = writeln!(out, "{line}");
    }
}
