//! Rendering counters: a table for people at a terminal, one `key=value` line per interval for
//! journald and pipes.

use std::fmt::Write as _;

use portguard_common::{DIR_DST, DIR_SRC, PROTO_TCP, PROTO_UDP, Totals};

use crate::{clock, counters::Rates, guard::Source};

/// What one interface looks like at one instant.
pub struct View {
    pub iface: String,
    pub attached: &'static str,
    pub summary: String,
    pub totals: Totals,
    pub rates: Rates,
    pub sources: Vec<Source>,
}

/// "probing 2745", "answering from 2745", or both.
pub fn what(stats: &portguard_common::SourceStats) -> String {
    let port = stats.last_port;
    match (stats.directions & DIR_DST != 0, stats.directions & DIR_SRC != 0) {
        (true, true) => format!("probing and answering from {port}"),
        (false, true) => format!("answering from {port}"),
        _ => format!("probing {port}"),
    }
}

fn protocols(p: u8) -> &'static str {
    match (p & PROTO_TCP != 0, p & PROTO_UDP != 0) {
        (true, true) => "tcp+udp",
        (true, false) => "tcp",
        (false, true) => "udp",
        _ => "-",
    }
}

/// Sorts the sources by packets, most first, and keeps `top`.
pub fn top(mut sources: Vec<Source>, top: usize) -> Vec<Source> {
    sources.sort_by(|a, b| b.stats.packets.cmp(&a.stats.packets).then(a.addr.cmp(&b.addr)));
    sources.truncate(top);
    sources
}

/// The table shown on a terminal.
pub fn table(views: &[View], top_n: usize) -> String {
    let now = clock::monotonic_ns();
    let mut s = String::new();
    for v in views {
        let t = &v.totals;
        let _ = writeln!(s, "{} ({} XDP): {}", v.iface, v.attached, v.summary);
        let _ = writeln!(
            s,
            "  seen {} ({:.0}/s)  matched {} ({:.0}/s)  dropped {} ({:.0}/s)  allowed {}  malformed {}  \
             fragments followed {}  untracked {}",
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
            "  {:<39} {:>9} {:>11} {:>6} {:<7} {:>9} {:>10}  WHAT",
            "SOURCE", "PACKETS", "BYTES", "SYNS", "PROTO", "LAST", "FIRST"
        );
        for src in top(v.sources.clone(), top_n) {
            let st = &src.stats;
            let _ = writeln!(
                s,
                "  {:<39} {:>9} {:>11} {:>6} {:<7} {:>9} {:>10}  {}",
                src.addr.to_string(),
                st.packets,
                st.bytes,
                st.tcp_syns,
                protocols(st.protocols),
                format!("{} ago", clock::short(clock::age(st.last_seen_ns, now))),
                format!("{} ago", clock::short(clock::age(st.first_seen_ns, now))),
                what(st)
            );
        }
        if v.sources.len() > top_n {
            let _ = writeln!(s, "  ... and {} more sources", v.sources.len() - top_n);
        }
    }
    s
}

/// One line per interface: stable `key=value` pairs, sources as `addr:packets`.
pub fn line(v: &View, top_n: usize) -> String {
    let t = &v.totals;
    let mut s = format!(
        "iface={} xdp={} seen={} matched={} dropped={} allowed={} malformed={} fragments_followed={} \
         untracked={} sources={} drop_rate={:.1}",
        v.iface,
        v.attached,
        t.seen,
        t.matched,
        t.dropped,
        t.allowed,
        t.malformed,
        t.fragments_followed,
        t.untracked,
        v.sources.len(),
        v.rates.dropped
    );
    let tops: Vec<String> = top(v.sources.clone(), top_n)
        .iter()
        .map(|x| format!("{}:{}", x.addr, x.stats.packets))
        .collect();
    if !tops.is_empty() {
        s.push_str(" top=");
        s.push_str(&tops.join(","));
    }
    s
}
