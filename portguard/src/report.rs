//! Rendering counters: a table for people at a terminal, one `key=value` line per interval for
//! journald and pipes, and JSON with stable field names for scripts. The JSON fields are
//! documented in README.md ("JSON output"); change them only by adding.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::Result;
use portguard_common::Totals;
use schemars::JsonSchema;
use serde::Serialize;

use crate::{
    clock,
    counters::{Rates, Source, SourceAddr},
    daemon::Tick,
    fingerprint::{Class, Label},
    guard::{Attached, Health},
    json::Document,
    notices,
    settings::Settings,
    text,
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

/// A source with its rate and fingerprint.
#[derive(Clone, Debug)]
pub struct Ranked {
    pub source: Source,
    /// Packets per second over the last interval, or since first seen when there is no
    /// previous sample.
    pub rate: f64,
    /// What its packets say it is, as the owner published it; None before any was classified
    /// (no SYN or datagram read yet, or nobody reads the guard's features).
    pub fingerprint: Option<Label>,
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
    /// Rates since the previous reading; None after a single reading.
    pub rates: Option<Rates>,
    /// How many sources the table holds, of how many it can.
    pub tracked: usize,
    pub capacity: u32,
    /// The top sources, ordered.
    pub sources: Vec<Ranked>,
}

/// Rates per source (from `prev`, packets per address `dt` ago), ordered by `sort`, cut to
/// `top`, each with its fingerprint from `labels`.
pub fn rank(
    sources: &[Source],
    prev: Option<(&HashMap<SourceAddr, u64>, Duration)>,
    now_ns: u64,
    sort: SortBy,
    top: usize,
    labels: &HashMap<SourceAddr, Label>,
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
            Ranked { source: *s, rate, fingerprint: None }
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
    for r in &mut out {
        r.fingerprint = labels.get(&r.source.addr).cloned();
    }
    out
}

/// Tool labels a metric carries at most, per interface: the rule table (and p0f's tool
/// signatures) bound them already, but an admin's rule files could name many; past this, the
/// rest are counted as "other".
pub const MAX_TOOLS: usize = 32;
/// The label of a source not yet fingerprinted.
pub const NO_TOOL: &str = "none";

/// How many of `sources` carry each tool label ("masscan", "OS stack", "unknown", and "none"
/// for those not yet fingerprinted), most first: bounded cardinality for the metrics.
pub fn tools(sources: &[Source], labels: &HashMap<SourceAddr, Label>) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for s in sources {
        let l = labels.get(&s.addr).map_or(NO_TOOL, |l| l.label.as_str());
        *counts.entry(l).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().map(|(l, n)| (l.to_string(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if v.len() > MAX_TOOLS {
        let rest: u64 = v[MAX_TOOLS - 1..].iter().map(|(_, n)| n).sum();
        v.truncate(MAX_TOOLS - 1);
        v.push(("other".to_string(), rest));
    }
    v
}

fn attached_str(a: Option<Attached>) -> &'static str {
    a.map_or("unknown", Attached::as_str)
}

/// How much room a table has: unlimited in a pipe; a terminal's width (and, for the live
/// view, height) otherwise. Lines are cut to fit, never wrapped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Room {
    pub width: Option<usize>,
    pub height: Option<usize>,
}

impl Room {
    /// The size of the terminal on stdout, if it is one.
    pub fn terminal() -> Room {
        use std::io::IsTerminal as _;
        if !std::io::stdout().is_terminal() {
            return Room::default();
        }
        match ratatui::crossterm::terminal::size() {
            Ok((w, h)) if w > 0 && h > 0 => {
                Room { width: Some(w as usize), height: Some(h as usize) }
            }
            _ => Room::default(),
        }
    }
}

/// The table `stats` prints: every interface with as many sources as it was given, each line
/// cut to the width.
pub fn table(snaps: &[Snapshot], width: Option<usize>) -> String {
    let w = width.unwrap_or(usize::MAX);
    let mut out = String::new();
    for v in snaps {
        for l in block(v, w, None) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// One frame of `run`'s live view in `w`×`h`: the notices first, then each interface with as
/// many sources as fit, so that the totals never scroll away. Every line is cut to `w` and
/// cleared to its end, and the frame ends by clearing what is below it: redrawn in place, it
/// never flickers and never scrolls.
pub fn frame(snaps: &[Snapshot], notices: &[String], w: usize, h: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let shown_notices = notices.len().min(MAX_NOTICES);
    for n in &notices[..shown_notices] {
        // Wrapped rather than cut: what a warning asks of the reader is often at its end.
        let words: Vec<String> = n.split(' ').map(str::to_string).collect();
        let mut wrapped = flow(&words, " ", "  ", w);
        wrapped.truncate(NOTICE_LINES);
        if let Some(first) = wrapped.first_mut() {
            first.replace_range(..1, "!");
        }
        lines.extend(wrapped);
    }
    if notices.len() > shown_notices {
        let more = notices.len() - shown_notices;
        lines.push(text::fit(
            &format!("! … and {} (see the log)", text::plural(more as u64, "more warning")),
            w,
        ));
    }
    // The last line stays empty: a newline there would scroll the screen.
    let usable = h.saturating_sub(1);
    let fixed: usize = snaps.iter().map(|v| block(v, w, Some(0)).len() + 1).sum();
    let per = usable.saturating_sub(lines.len() + fixed) / snaps.len().max(1);
    for v in snaps {
        lines.extend(block(v, w, Some(per)));
    }
    lines.truncate(usable);
    let mut out = String::from("\x1b[H");
    for l in lines {
        out.push_str(&l);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// Notices drawn above the live table; more are summed up in one line.
const MAX_NOTICES: usize = 5;
/// Lines one notice may take.
const NOTICE_LINES: usize = 3;

/// One interface: its settings, its totals, and up to `rows` of its sources (all of them when
/// None), each line at most `w` characters.
fn block(v: &Snapshot, w: usize, rows: Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let ns = v.netns.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default();
    // What the kernel says first: a guard that is not running must not look like one.
    let state = match &v.health {
        Health::NotGuarded(why) => format!("NOT GUARDED: {why}"),
        Health::Guarded { shared: None, .. } => format!("{} XDP", attached_str(v.attached)),
        Health::Guarded { shared: Some(s), .. } => format!(
            "{} XDP, shared at priority {}, {}",
            attached_str(v.attached),
            s.priority,
            s.company()
        ),
    };
    out.push(text::fit(&format!("{}{ns} ({state}): {}", v.iface, v.settings.summary()), w));
    let t = &v.totals;
    // A rate is shown only when it is known: one reading has none.
    let rated = |name: &str, n: u64, r: Option<f64>| match r {
        Some(r) => format!("{name} {n} ({r:.0}/s)"),
        None => format!("{name} {n}"),
    };
    let items = [
        rated("seen", t.seen, v.rates.map(|r| r.seen)),
        rated("matched", t.matched, v.rates.map(|r| r.matched)),
        rated("dropped", t.dropped, v.rates.map(|r| r.dropped)),
        format!("allowed {}", t.allowed),
        format!("malformed {}", t.malformed),
        format!("fragments followed {}", t.fragments_followed),
        format!("untracked {}", t.untracked),
        format!("unjudged {}", t.unjudged),
    ];
    out.extend(flow(&items, "  ", "  ", w));
    if v.sources.is_empty() {
        out.push(text::fit("  no sources yet", w));
        return out;
    }
    let shown = rows.map_or(v.sources.len(), |r| r.min(v.sources.len()));
    if shown > 0 {
        let cols = columns(&v.sources, w.saturating_sub(2));
        out.push(format!("  {}", row(&cols, |c| c.head.to_string())));
        let now = clock::monotonic_ns();
        for r in &v.sources[..shown] {
            out.push(format!("  {}", row(&cols, |c| (c.cell)(r, now))));
        }
    }
    if v.tracked > shown {
        let more = text::plural((v.tracked - shown) as u64, "more source");
        let line = if shown == 0 {
            format!("  {}", text::plural(v.tracked as u64, "source"))
        } else {
            format!("  … and {more}")
        };
        out.push(text::fit(&line, w));
    }
    out
}

/// `items` joined by `sep`, in lines of at most `w` characters that start with `indent`.
fn flow(items: &[String], sep: &str, indent: &str, w: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for it in items {
        let len = cur.chars().count();
        if !cur.is_empty() && len + sep.len() + it.chars().count() > w {
            lines.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur = format!("{indent}{it}");
        } else {
            cur = format!("{cur}{sep}{it}");
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines.into_iter().map(|l| text::fit(&l, w)).collect()
}

/// A column of the source table.
struct Col {
    head: &'static str,
    width: usize,
    right: bool,
    cell: fn(&Ranked, u64) -> String,
}

fn row(cols: &[Col], cell: impl Fn(&Col) -> String) -> String {
    let mut s = String::new();
    for (i, c) in cols.iter().enumerate() {
        let text = text::fit_middle(&cell(c), c.width);
        if i + 1 == cols.len() {
            s.push_str(&text);
        } else if c.right {
            s.push_str(&format!("{text:>w$} ", w = c.width));
        } else {
            s.push_str(&format!("{text:<w$} ", w = c.width));
        }
    }
    s.trim_end().to_string()
}

/// The columns that fit in `w`, in display order. The address, the packets and what the source
/// did always show; then, as room allows and in this order: the rate, the last-seen age, a
/// wider address, bytes, protocols, SYNs, the first-seen age, and the full address. What is
/// left goes to the last column.
fn columns(sources: &[Ranked], w: usize) -> Vec<Col> {
    fn addr(r: &Ranked, _: u64) -> String {
        r.source.addr.to_string()
    }
    fn packets(r: &Ranked, _: u64) -> String {
        r.source.stats.packets.to_string()
    }
    fn rate(r: &Ranked, _: u64) -> String {
        format!("{:.1}", r.rate)
    }
    fn bytes(r: &Ranked, _: u64) -> String {
        r.source.stats.bytes.to_string()
    }
    fn syns(r: &Ranked, _: u64) -> String {
        r.source.stats.tcp_syns.to_string()
    }
    fn proto(r: &Ranked, _: u64) -> String {
        r.source.stats.protocols.to_string()
    }
    fn last(r: &Ranked, now: u64) -> String {
        format!("{} ago", clock::short(clock::age(r.source.stats.last_seen_ns, now)))
    }
    fn first(r: &Ranked, now: u64) -> String {
        format!("{} ago", clock::short(clock::age(r.source.stats.first_seen_ns, now)))
    }
    fn what(r: &Ranked, _: u64) -> String {
        let st = &r.source.stats;
        st.directions.describe(st.last_port)
    }
    fn tool(r: &Ranked, _: u64) -> String {
        r.fingerprint.as_ref().map_or_else(|| "-".to_string(), Label::tool)
    }
    // Each column costs its width and one space; the last column needs at least this much.
    const WHAT_MIN: usize = 12;
    const ADDR_MIN: usize = 15;
    const ADDR_MID: usize = 25;
    // The tool column: its labels' width, within TOOL_MIN..=TOOL_MAX ("OS stack (Linux 2.2.x-3.x)"
    // is cut in its middle on a narrow terminal).
    const TOOL_MIN: usize = 8;
    const TOOL_MAX: usize = 28;
    let longest = sources.iter().map(|r| r.source.addr.to_string().len()).max().unwrap_or(0);
    let tool_w = sources
        .iter()
        .map(|r| tool(r, 0).chars().count())
        .max()
        .unwrap_or(0)
        .clamp(TOOL_MIN, TOOL_MAX);
    let mut addr_w = ADDR_MIN.min(longest.max(6));
    let mut left = w.saturating_sub(addr_w + 1 + 9 + 1 + WHAT_MIN);
    // The tool next: what an admin asks after "who" is "what".
    let tool_w = if tool_w < left {
        left -= tool_w + 1;
        tool_w
    } else if TOOL_MIN < left {
        let t = left - 1;
        left = 0;
        t
    } else {
        0
    };
    let mut take = |n: usize| {
        if n <= left {
            left -= n;
            true
        } else {
            false
        }
    };
    let has_rate = take(9);
    let has_last = take(10);
    let grow = longest.min(ADDR_MID).saturating_sub(addr_w);
    if take(grow) {
        addr_w += grow;
    }
    let has_bytes = take(12);
    let has_proto = take(8);
    let has_syns = take(6);
    let has_first = take(10);
    let grow = longest.saturating_sub(addr_w);
    if take(grow) {
        addr_w += grow;
    }
    let col = |head, width, right, cell| Col { head, width, right, cell };
    let mut cols = vec![col("SOURCE", addr_w, false, addr as fn(&Ranked, u64) -> String)];
    cols.push(col("PACKETS", 9, true, packets));
    if tool_w > 0 {
        cols.push(col("TOOL", tool_w, false, tool));
    }
    if has_rate {
        cols.push(col("RATE/s", 8, true, rate));
    }
    if has_bytes {
        cols.push(col("BYTES", 11, true, bytes));
    }
    if has_syns {
        cols.push(col("SYNS", 5, true, syns));
    }
    if has_proto {
        cols.push(col("PROTO", 7, false, proto));
    }
    if has_last {
        cols.push(col("LAST", 9, true, last));
    }
    if has_first {
        cols.push(col("FIRST", 9, true, first));
    }
    cols.push(col("WHAT", WHAT_MIN + left, false, what));
    cols
}

/// One line per interface: stable `key=value` pairs, the top sources as `addr:packets`.
pub fn line(v: &Snapshot) -> String {
    let t = &v.totals;
    let mut s = format!(
        "iface={}{} xdp={} mode={} seen={} matched={} dropped={} allowed={} malformed={} \
         fragments_followed={} untracked={} unjudged={} sources={} drop_rate={:.1}",
        v.iface,
        // Its own key, only when the interface is in another namespace (the lab's).
        v.netns.as_ref().map(|n| format!(" netns={n}")).unwrap_or_default(),
        attached_str(v.attached),
        v.settings.mode.as_str(),
        t.seen,
        t.matched,
        t.dropped,
        t.allowed,
        t.malformed,
        t.fragments_followed,
        t.untracked,
        t.unjudged,
        v.tracked,
        v.rates.map_or(0.0, |r| r.dropped)
    );
    // addr:packets, IPv6 in brackets ("[2001:db8::4]:449", "[2001:db8:0:2::/64]:3") as in a
    // socket address, so that a script can split each entry at its last colon.
    let tops: Vec<String> = v
        .sources
        .iter()
        .map(|x| match x.source.addr.ip {
            IpAddr::V4(_) => format!("{}:{}", x.source.addr, x.source.stats.packets),
            IpAddr::V6(_) => format!("[{}]:{}", x.source.addr, x.source.stats.packets),
        })
        .collect();
    if !tops.is_empty() {
        s.push_str(" top=");
        s.push_str(&tops.join(","));
    }
    s
}

/// The line logged the first time a source appears: "new source on pg-wan: 198.18.0.7
/// probing 2745 (tcp), 1 packet: zmap (IP ID 54321)".
pub fn new_source_line(iface: &str, s: &Source, label: Option<&Label>) -> String {
    let mut line = format!(
        "new source on {iface}: {} {} ({}), {}",
        s.addr,
        s.stats.directions.describe(s.stats.last_port),
        s.stats.protocols,
        text::plural(s.stats.packets, "packet")
    );
    if let Some(l) = label {
        line.push_str(": ");
        line.push_str(&l.phrase());
    }
    line
}

/// A source's fingerprint in JSON.
#[derive(Serialize, JsonSchema)]
pub struct FingerprintJson {
    /// The most specific label its packets got: a tool ("nmap", "masscan", "zmap",
    /// "Mirai-like", "hping3", "unicornscan-like", or one from an admin's rule file), "OS
    /// stack", or "unknown".
    pub label: String,
    /// "scanner", "worm", "os", "misc", or null for unknown.
    #[schemars(extend("enum" = ["scanner", "worm", "os", "misc", null]))]
    pub class: Option<&'static str>,
    /// For an OS stack: which one (p0f's label when its database matched exactly).
    pub os: Option<String>,
    /// Why, in one sentence.
    pub evidence: String,
    /// The p0f signature of its latest TCP SYN; null for a source that sent only UDP.
    pub signature: Option<String>,
    /// The TTL (hop limit) of its latest packet classified...
    pub ttl: u8,
    /// ...and the hops that suggests it came (from the next initial TTL: 32, 64, 128, 255).
    pub ttl_distance: u8,
    /// Packets classified (its first SYNs and datagrams), and how many agreed with `label`.
    pub packets: u32,
    pub agreeing: u32,
}

impl FingerprintJson {
    pub fn new(l: &Label) -> FingerprintJson {
        FingerprintJson {
            label: l.label.clone(),
            class: l.class.map(Class::as_str),
            os: l.os.clone(),
            evidence: l.evidence.clone(),
            signature: l.signature.clone(),
            ttl: l.ttl,
            ttl_distance: l.distance,
            packets: l.packets,
            agreeing: l.agreeing,
        }
    }
}

/// One source in JSON.
#[derive(Serialize, JsonSchema)]
pub struct SourceJson {
    /// The source: an address, or the prefix it is counted under when sources are counted per
    /// prefix (IPv6 per /64 by default): "198.18.0.2", "2001:db8:0:2::/64".
    pub address: String,
    /// The prefix length `address` covers: 32 or 128 for one address.
    pub prefix_len: u8,
    pub packets: u64,
    /// Whole frames.
    pub bytes: u64,
    /// Packets per second: over the sampling interval, or the average since first seen.
    pub rate_pps: f64,
    /// RFC 3339, UTC.
    pub first_seen: String,
    /// Whole seconds since the Unix epoch.
    pub first_seen_unix: u64,
    /// RFC 3339, UTC.
    pub last_seen: String,
    /// Whole seconds since the Unix epoch.
    pub last_seen_unix: u64,
    pub last_seen_age_seconds: f64,
    pub tcp_syns: u32,
    pub last_port: u16,
    /// "probing" (sent to a guarded port), "answering" (sent from one), "both", or
    /// "unjudged" (sent only frames whose ports could not be read).
    #[schemars(extend("enum" = ["probing", "answering", "both", "unjudged"]))]
    pub direction: &'static str,
    /// Some of its frames could not be judged (their ports could not be read; dropped in drop
    /// mode).
    pub unjudged: bool,
    /// "tcp" and/or "udp".
    pub protocols: Vec<&'static str>,
    /// What its packets say it is; null until one of its SYNs or datagrams was classified.
    pub fingerprint: Option<FingerprintJson>,
}

impl SourceJson {
    pub fn new(r: &Ranked, now_ns: u64) -> SourceJson {
        let st = &r.source.stats;
        let first = clock::wall(st.first_seen_ns, now_ns);
        let last = clock::wall(st.last_seen_ns, now_ns);
        SourceJson {
            address: r.source.addr.to_string(),
            prefix_len: r.source.addr.prefix,
            packets: st.packets,
            bytes: st.bytes,
            rate_pps: (r.rate * 1000.0).round() / 1000.0,
            first_seen: clock::rfc3339(first),
            first_seen_unix: clock::unix(first),
            last_seen: clock::rfc3339(last),
            last_seen_unix: clock::unix(last),
            last_seen_age_seconds: (clock::age(st.last_seen_ns, now_ns).as_secs_f64() * 10.0)
                .round()
                / 10.0,
            tcp_syns: st.tcp_syns,
            last_port: st.last_port,
            direction: st.directions.word(),
            unjudged: st.directions.unjudged(),
            protocols: st.protocols.names(),
            fingerprint: r.fingerprint.as_ref().map(FingerprintJson::new),
        }
    }
}

/// One interface's counters in JSON (`stats --json`, and each line of `run --json`).
#[derive(Serialize, JsonSchema)]
pub struct InterfaceJson {
    pub iface: String,
    /// "native", "generic", or "unknown".
    pub xdp_mode: &'static str,
    /// "drop" or "count".
    #[schemars(extend("enum" = ["drop", "count"]))]
    pub mode: &'static str,
    pub ports: Vec<u16>,
    pub totals: Totals,
    /// Drops per second over the interval; 0 when there is none (`stats` without
    /// `--interval`).
    pub drop_rate_pps: f64,
    pub sources_tracked: usize,
    /// The top sources, in the order asked for.
    pub sources: Vec<SourceJson>,
}

/// `stats --json`: every guarded interface (an empty list when nothing is guarded).
#[derive(Serialize, JsonSchema)]
pub struct StatsJson {
    pub interfaces: Vec<InterfaceJson>,
}

/// One line of `run --json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One interface's counters, every interval.
    Interval(InterfaceJson),
    /// A source seen for the first time.
    NewSource {
        iface: String,
        #[serde(flatten)]
        source: SourceJson,
    },
    /// More new sources in one interval than are printed one by one.
    NewSourcesSuppressed { iface: String, count: usize },
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
            drop_rate_pps: (v.rates.map_or(0.0, |r| r.dropped) * 10.0).round() / 10.0,
            sources_tracked: v.tracked,
            sources: v.sources.iter().map(|r| SourceJson::new(r, now)).collect(),
        }
    }
}

/// One tick's output: on a terminal the table, redrawn in place; otherwise a line (or a JSON
/// line) per new source and per interface. On a terminal, a failed write is an error: the
/// terminal is gone (a closed window, a dropped ssh session), and the caller stops.
pub fn print_tick(out: &mut impl std::io::Write, tick: &Tick, tty: bool, json: bool) -> Result<()> {
    if tty {
        let room = Room::terminal();
        let (w, h) = (room.width.unwrap_or(80), room.height.unwrap_or(24));
        write!(out, "{}", frame(&tick.snaps, &notices::current(), w, h))?;
        out.flush()?;
        return Ok(());
    }
    for (iface, fresh) in &tick.news {
        print_new_sources(out, iface, fresh, json);
    }
    for v in &tick.snaps {
        let line = if json {
            Document::now(Event::Interval(InterfaceJson::new(v))).line()?
        } else {
            line(v)
        };
        let _ = writeln!(out, "{line}");
    }
    Ok(())
}

fn print_new_sources(
    out: &mut impl std::io::Write,
    iface: &str,
    fresh: &[crate::daemon::NewSource],
    json: bool,
) {
    let now = clock::monotonic_ns();
    for (s, label) in fresh.iter().take(NEW_SOURCE_LINES) {
        let line = if json {
            let r = Ranked { source: *s, rate: 0.0, fingerprint: label.clone() };
            let source = SourceJson::new(&r, now);
            Document::now(Event::NewSource { iface: iface.into(), source })
                .line()
                .unwrap_or_default()
        } else {
            new_source_line(iface, s, label.as_ref())
        };
        let _ = writeln!(out, "{line}");
    }
    if fresh.len() > NEW_SOURCE_LINES {
        let more = fresh.len() - NEW_SOURCE_LINES;
        let line = if json {
            Document::now(Event::NewSourcesSuppressed { iface: iface.into(), count: more })
                .line()
                .unwrap_or_default()
        } else {
            format!("… and {} on {iface}", text::plural(more as u64, "more new source"))
        };
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        counters::SourceStats,
        wire::{Directions, Protocols},
    };

    fn snapshot(netns: Option<&str>, rates: Option<Rates>) -> Snapshot {
        let now = clock::monotonic_ns();
        let addrs = ["198.18.0.6", "2001:db8:7:0:1234:5678:9abc:4", "2001:db8::6", "198.18.0.5"];
        let sources: Vec<Ranked> = (0..40)
            .map(|i| Ranked {
                source: Source {
                    addr: addrs[i % addrs.len()].parse().unwrap(),
                    stats: SourceStats {
                        packets: 449 - i as u64,
                        bytes: 64_000,
                        first_seen_ns: now - 30_000_000_000,
                        last_seen_ns: now,
                        tcp_syns: 3,
                        last_port: 2745,
                        directions: Directions(portguard_common::DIR_DST),
                        protocols: Protocols(
                            portguard_common::PROTO_TCP | portguard_common::PROTO_UDP,
                        ),
                    },
                },
                rate: 1.5,
                fingerprint: None,
            })
            .collect();
        Snapshot {
            iface: "pg-wan".into(),
            netns: netns.map(str::to_string),
            attached: Some(Attached::Native),
            health: Health::Guarded {
                mode: Attached::Native,
                prog_id: 7,
                pinned: true,
                shared: None,
            },
            settings: Settings::default(),
            totals: Totals { seen: 268, matched: 1, dropped: 1, ..Totals::default() },
            rates,
            tracked: 50,
            capacity: 65536,
            sources,
        }
    }

    /// The frame's lines, escape sequences removed.
    fn lines(frame: &str) -> Vec<String> {
        let plain = frame.replace("\x1b[H", "").replace("\x1b[K", "").replace("\x1b[J", "");
        plain.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_live_frame_fits_80x24_with_its_notices_and_totals() {
        let snap = snapshot(None, Some(Rates { seen: 12.0, matched: 1.0, dropped: 1.0 }));
        let notices = vec!["native XDP unavailable on pg-wan; running in generic mode".to_string()];
        let l = lines(&frame(std::slice::from_ref(&snap), &notices, 80, 24));
        assert!(l.len() <= 23, "one line is left free so that nothing scrolls: {l:#?}");
        assert!(l.iter().all(|l| l.chars().count() <= 80), "{l:#?}");
        assert!(l[0].starts_with("! native XDP unavailable"), "{l:#?}");
        assert!(l[1].starts_with("pg-wan (native XDP): drop"), "{l:#?}");
        assert!(l.iter().any(|l| l.contains("seen 268 (12/s)")), "{l:#?}");
        assert!(l.iter().any(|l| l.contains("untracked 0")), "the totals wrap, never cut: {l:#?}");
        // The long address is cut in its middle, with a mark; the last line says what is left.
        assert!(l.iter().any(|l| l.contains('…') && l.contains("2001:db8")), "{l:#?}");
        assert!(l.last().unwrap().contains("… and"), "{l:#?}");
        assert!(l.iter().any(|l| l.contains("SOURCE") && l.contains("WHAT")), "{l:#?}");
    }

    #[test]
    fn wide_terminals_show_every_column_and_full_addresses() {
        let snap = snapshot(Some("pglab1-gw"), None);
        let l = lines(&frame(&[snap], &[], 200, 50));
        assert!(l.len() <= 49);
        let head = l.iter().find(|l| l.contains("SOURCE")).unwrap();
        for col in ["PACKETS", "RATE/s", "BYTES", "SYNS", "PROTO", "LAST", "FIRST", "WHAT"] {
            assert!(head.contains(col), "{col}: {head}");
        }
        assert!(l.iter().any(|l| l.contains("2001:db8:7:0:1234:5678:9abc:4")), "{l:#?}");
        assert!(l[0].starts_with("pg-wan in namespace pglab1-gw"), "{l:#?}");
        // One reading has no rate: none is printed rather than "0/s".
        assert!(l.iter().any(|l| l.starts_with("  seen 268  matched 1")), "{l:#?}");
        assert!(!l.iter().any(|l| l.contains("(0/s)")), "{l:#?}");
    }

    #[test]
    fn narrow_terminals_drop_columns_rather_than_squeeze_them() {
        let snap = snapshot(None, None);
        let l = lines(&frame(&[snap], &[], 60, 15));
        assert!(l.iter().all(|l| l.chars().count() <= 60), "{l:#?}");
        let head = l.iter().find(|l| l.contains("SOURCE")).unwrap();
        assert!(!head.contains("FIRST") && !head.contains("SYNS"), "{head}");
        assert!(l.iter().any(|l| l.contains("probing 2745")), "{l:#?}");
    }

    #[test]
    fn the_line_is_key_value_all_through() {
        let mut snap = snapshot(Some("pglab1-gw"), None);
        snap.sources.truncate(2);
        let line = line(&snap);
        assert!(line.starts_with("iface=pg-wan netns=pglab1-gw xdp="), "{line}");
        let top = line.split(' ').find_map(|kv| kv.strip_prefix("top=")).unwrap();
        // Each entry splits at its last colon into an address and a count.
        for entry in top.split(',') {
            let (addr, n) = entry.rsplit_once(':').unwrap();
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            assert!(addr.parse::<SourceAddr>().is_ok() && n.parse::<u64>().is_ok(), "{entry}");
        }
        assert!(top.contains("[2001:db8:7:0:1234:5678:9abc:4]:448"), "{top}");
        // Every other word is key=value too.
        assert!(line.split(' ').all(|kv| kv.contains('=')), "{line}");
    }

    #[test]
    fn new_source_lines_count_in_words() {
        let mut s = snapshot(None, None).sources[0].source;
        s.stats.packets = 1;
        assert!(new_source_line("pg-wan", &s, None).ends_with(", 1 packet"));
        s.stats.packets = 2;
        assert!(new_source_line("pg-wan", &s, None).ends_with(", 2 packets"));
    }
}
