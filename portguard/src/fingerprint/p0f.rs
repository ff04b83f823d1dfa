//! p0f 3.09b's view of a SYN: its signature string, and its verdict from a p0f database.
//!
//! The signature is `ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass`, exactly as p0f's
//! `raw_sig` prints it (`4:64+0:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0`), so that an
//! admin can paste it into p0f.fp or compare it with p0f's own log. The matcher reads the
//! `[tcp:request]` section of a p0f.fp (Debian's p0f package ships `/etc/p0f/p0f.fp`) and
//! follows p0f's `tcp_find_match`: exact option layout, quirks with p0f's tolerances (`df`/`id+`
//! may vanish, `id-`/`ecn` may appear: a "fuzzy" match), TTL within 35 hops (or only a ceiling
//! for signatures marked `64-`), wildcards, and windows given as `mss*N`, `mtu*N` or `%N`. A
//! specific signature wins; a generic one (`g:`) only when no specific one matched; a fuzzy one
//! last, and never for userland tools (`!`), as in p0f.
//!
//! p0f's oddities are kept on purpose so the two agree (each is marked where it happens): the
//! `ack+` quirk tests one bit, and the IP version in a signature is not compared.

use std::{fmt, path::Path};

use super::features::{Features, opt, tcp_flags};

/// Where Debian's p0f package puts its database.
pub const DEFAULT_DB: &str = "/etc/p0f/p0f.fp";

/// p0f's MAX_DIST: a TTL more than this far below the signature's is a fuzzy match.
const MAX_DIST: u8 = 35;
/// IPv4 and IPv6 header plus a bare TCP header (p0f's MIN_TCP4 / MIN_TCP6).
const MIN_TCP4: i32 = 40;
const MIN_TCP6: i32 = 60;

/// p0f's quirk bits, in the order p0f prints them.
mod q {
    pub const DF: u32 = 1 << 0;
    pub const NZ_ID: u32 = 1 << 1;
    pub const ZERO_ID: u32 = 1 << 2;
    pub const ECN: u32 = 1 << 3;
    pub const NZ_MBZ: u32 = 1 << 4;
    pub const FLOW: u32 = 1 << 5;
    pub const ZERO_SEQ: u32 = 1 << 6;
    pub const NZ_ACK: u32 = 1 << 7;
    pub const ZERO_ACK: u32 = 1 << 8;
    pub const NZ_URG: u32 = 1 << 9;
    pub const URG: u32 = 1 << 10;
    pub const PUSH: u32 = 1 << 11;
    pub const OPT_ZERO_TS1: u32 = 1 << 12;
    pub const OPT_NZ_TS2: u32 = 1 << 13;
    pub const OPT_EOL_NZ: u32 = 1 << 14;
    pub const OPT_EXWS: u32 = 1 << 15;
    pub const OPT_BAD: u32 = 1 << 16;
    pub const NAMES: [(&str, u32); 17] = [
        ("df", DF),
        ("id+", NZ_ID),
        ("id-", ZERO_ID),
        ("ecn", ECN),
        ("0+", NZ_MBZ),
        ("flow", FLOW),
        ("seq-", ZERO_SEQ),
        ("ack+", NZ_ACK),
        ("ack-", ZERO_ACK),
        ("uptr+", NZ_URG),
        ("urgf+", URG),
        ("pushf+", PUSH),
        ("ts1-", OPT_ZERO_TS1),
        ("ts2+", OPT_NZ_TS2),
        ("opt+", OPT_EOL_NZ),
        ("exws", OPT_EXWS),
        ("bad", OPT_BAD),
    ];
}

/// The quirks p0f would note for this packet.
fn quirks(f: &Features) -> u32 {
    let mut k = 0;
    if f.version == 4 {
        if f.tos & 3 != 0 {
            k |= q::ECN;
        }
        if f.mbz {
            k |= q::NZ_MBZ;
        }
        if f.df {
            k |= q::DF;
            if f.ip_id != 0 {
                k |= q::NZ_ID;
            }
        } else if f.ip_id == 0 {
            k |= q::ZERO_ID;
        }
    } else {
        if f.flow {
            k |= q::FLOW;
        }
        if f.tos & 3 != 0 {
            k |= q::ECN;
        }
    }
    if f.flags & (tcp_flags::ECE | tcp_flags::CWR) != 0 || f.ns {
        k |= q::ECN;
    }
    if f.seq == 0 {
        k |= q::ZERO_SEQ;
    }
    if f.flags & tcp_flags::ACK != 0 {
        if f.ack == 0 {
            k |= q::ZERO_ACK;
        }
    } else {
        // p0f oddity: `RD32(tcp->ack) & !(tcp->flags & TCP_RST)` is a bitwise AND with 1, so
        // p0f notes ack+ only when the first byte of the field on the wire is odd (on the
        // little-endian machines it runs on). Kept so that signatures compare equal.
        if (f.ack >> 24) & 1 != 0 && f.flags & tcp_flags::RST == 0 {
            k |= q::NZ_ACK;
        }
    }
    if f.flags & tcp_flags::URG != 0 {
        k |= q::URG;
    } else if f.urg_nz {
        k |= q::NZ_URG;
    }
    if f.flags & tcp_flags::PSH != 0 {
        k |= q::PUSH;
    }
    let o = &f.options;
    if o.ts_val == Some(0) {
        k |= q::OPT_ZERO_TS1;
    }
    if o.ts_ecr_nz {
        k |= q::OPT_NZ_TS2;
    }
    if o.eol_nz {
        k |= q::OPT_EOL_NZ;
    }
    if o.wscale.is_some_and(|w| w > 14) {
        k |= q::OPT_EXWS;
    }
    if o.bad {
        k |= q::OPT_BAD;
    }
    k
}

/// p0f's guess of the hops travelled, from the TTL left (`guess_dist`).
pub fn guess_dist(ttl: u8) -> u8 {
    match ttl {
        0..=32 => 32 - ttl,
        33..=64 => 64 - ttl,
        65..=128 => 128 - ttl,
        _ => 255 - ttl,
    }
}

/// Whether the window is a multiple of the MSS or the MTU (`detect_win_multi`): the multiplier
/// and whether it is of the MTU.
fn win_multi(f: &Features) -> Option<(u16, bool)> {
    let win = f.window as i32;
    let mss = f.options.mss.unwrap_or(0) as i32;
    if win == 0 || mss < 100 {
        return None;
    }
    let v6 = f.version == 6;
    let ts1 = f.options.ts_val.unwrap_or(0) != 0;
    let mut tries: Vec<(i32, bool)> = vec![(mss, false)];
    if ts1 {
        tries.push((mss - 12, false));
    }
    tries.push((1500 - MIN_TCP4, false));
    tries.push((1500 - MIN_TCP4 - 12, false));
    if v6 {
        tries.push((1500 - MIN_TCP6, false));
        tries.push((1500 - MIN_TCP6 - 12, false));
    }
    tries.push((mss + MIN_TCP4, true));
    tries.push((mss + f.header_len() as i32, true));
    if v6 {
        tries.push((mss + MIN_TCP6, true));
    }
    tries.push((1500, true));
    tries.into_iter().find(|(d, _)| *d > 0 && win % d == 0).map(|(d, mtu)| ((win / d) as u16, mtu))
}

/// The option layout as p0f writes it.
fn layout(f: &Features) -> String {
    f.options.layout()
}

/// The p0f v3 signature of a TCP SYN, as p0f's `raw_sig` shows it.
pub fn signature(f: &Features) -> String {
    let dist = guess_dist(f.ttl);
    let ttl = if dist > MAX_DIST { format!("{}+?", f.ttl) } else { format!("{}+{dist}", f.ttl) };
    let win = match win_multi(f) {
        Some((n, true)) => format!("mtu*{n}"),
        Some((n, false)) => format!("mss*{n}"),
        None => f.window.to_string(),
    };
    let k = quirks(f);
    let quirks: Vec<&str> = q::NAMES.iter().filter(|(_, b)| k & b != 0).map(|(n, _)| *n).collect();
    format!(
        "{}:{ttl}:{}:{}:{win},{}:{}:{}:{}",
        f.version,
        f.ip_opt_len,
        f.options.mss.unwrap_or(0),
        f.options.wscale.unwrap_or(0),
        layout(f),
        quirks.join(","),
        if f.payload_len > 0 { "+" } else { "0" },
    )
}

// ---------------------------------------------------------------------------------------------
// The database

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Win {
    Any,
    Exact(u16),
    Mod(u16),
    Mss(u16),
    Mtu(u16),
}

#[derive(Clone, Debug)]
struct Sig {
    label: usize,
    line: usize,
    /// `None` for `*`.
    ver: Option<u8>,
    ttl: u8,
    /// `64-`: the TTL is randomised; only a ceiling.
    bad_ttl: bool,
    olen: u8,
    mss: Option<u16>,
    win: Win,
    scale: Option<u8>,
    layout: Vec<u8>,
    eol_pad: u8,
    quirks: u32,
    /// `Some(true)` payload, `Some(false)` none, `None` either.
    pclass: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Label {
    generic: bool,
    /// `None` for p0f's userland-tool class `!`.
    class: Option<String>,
    name: String,
    flavor: Option<String>,
}

/// The `[tcp:request]` signatures of a p0f.fp.
#[derive(Clone, Debug, Default)]
pub struct P0fDb {
    labels: Vec<Label>,
    sigs: Vec<Sig>,
}

/// What p0f would say about a SYN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P0fMatch {
    /// Name and flavor, as p0f prints them: "Linux 2.2.x-3.x", "NMap SYN scan".
    pub label: String,
    /// p0f's class ("unix", "win", ...); `None` for a userland tool (`!`).
    pub class: Option<String>,
    pub generic: bool,
    pub fuzzy: bool,
    /// Hops from the signature's initial TTL (a ceiling for randomised-TTL tools).
    pub dist: u8,
    /// The `sig =` line that matched.
    pub line: usize,
}

impl P0fMatch {
    /// A userland tool (p0f's `app=`), rather than an operating system (`os=`).
    pub fn is_tool(&self) -> bool {
        self.class.is_none()
    }
}

impl fmt::Display for P0fMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)?;
        let mut params = Vec::new();
        if self.generic {
            params.push("generic");
        }
        if self.fuzzy {
            params.push("fuzzy");
        }
        if !params.is_empty() {
            write!(f, " ({})", params.join(", "))?;
        }
        Ok(())
    }
}

/// A mistake in a p0f.fp: `FILE:LINE: what`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P0fError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for P0fError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.msg)
    }
}
impl std::error::Error for P0fError {}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {what} '{s}'"));
    }
    s.parse().map_err(|_| format!("{what} '{s}' out of range"))
}

fn parse_sig(val: &str) -> Result<Sig, String> {
    let parts: Vec<&str> = val.split(':').collect();
    if parts.len() != 8 {
        return Err(format!("a signature has 8 ':'-separated fields, this one {}", parts.len()));
    }
    let ver = match parts[0] {
        "4" => Some(4),
        "6" => Some(6),
        "*" => None,
        v => return Err(format!("bad IP version '{v}'")),
    };
    let (ttl, bad_ttl) = {
        let t = parts[1];
        if let Some(base) = t.strip_suffix('-') {
            (num::<u32>(base, "initial TTL")?, true)
        } else if let Some((a, b)) = t.split_once('+') {
            let sum = num::<u32>(a, "initial TTL")?.checked_add(num::<u32>(b, "TTL distance")?);
            (sum.ok_or_else(|| format!("bogus initial TTL '{t}'"))?, false)
        } else {
            (num::<u32>(t, "initial TTL")?, false)
        }
    };
    if !(1..=255).contains(&ttl) {
        return Err(format!("bogus initial TTL {ttl}"));
    }
    let olen: u8 = num(parts[2], "IP option length")?;
    let mss = match parts[3] {
        "*" => None,
        m => Some(num::<u16>(m, "MSS")?),
    };
    let (w, s) =
        parts[4].split_once(',').ok_or_else(|| format!("window '{}' lacks ',scale'", parts[4]))?;
    let win = if w == "*" {
        Win::Any
    } else if let Some(m) = w.strip_prefix('%') {
        let m: u16 = num(m, "window modulus")?;
        if m < 2 {
            return Err(format!("bogus window modulus {m}"));
        }
        Win::Mod(m)
    } else if let Some(m) = w.strip_prefix("mss*").or_else(|| w.strip_prefix("mtu*")) {
        let m: u16 = num(m, "window multiplier")?;
        if !(1..=1000).contains(&m) {
            return Err(format!("bogus window multiplier {m}"));
        }
        if w.starts_with("mss") { Win::Mss(m) } else { Win::Mtu(m) }
    } else {
        Win::Exact(num(w, "window")?)
    };
    let scale = match s {
        "*" => None,
        s => Some(num::<u8>(s, "window scale")?),
    };
    let mut layout = Vec::new();
    let mut eol_pad = 0u8;
    if !parts[5].is_empty() {
        let items: Vec<&str> = parts[5].split(',').collect();
        for (i, o) in items.iter().enumerate() {
            let kind = match *o {
                "nop" => opt::NOP,
                "mss" => opt::MSS,
                "ws" => opt::WS,
                "sok" => opt::SACK_PERM,
                "sack" => opt::SACK,
                "ts" => opt::TS,
                o if o.starts_with("eol+") => {
                    if i + 1 != items.len() {
                        return Err("EOL must be the last option".into());
                    }
                    eol_pad = num(&o[4..], "EOL padding")?;
                    opt::EOL
                }
                o if o.starts_with('?') => num(&o[1..], "option number")?,
                o => return Err(format!("unknown TCP option '{o}'")),
            };
            layout.push(kind);
        }
        if layout.len() > 24 {
            return Err("more than 24 TCP options".into());
        }
    }
    let mut quirks = 0;
    if !parts[6].is_empty() {
        for name in parts[6].split(',') {
            let bit = q::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| *b)
                .ok_or_else(|| format!("unknown quirk '{name}'"))?;
            if ver == Some(6) && bit & (q::DF | q::NZ_ID | q::ZERO_ID | q::NZ_MBZ) != 0 {
                return Err(format!("'{name}' is not valid for IPv6"));
            }
            if ver == Some(4) && bit == q::FLOW {
                return Err("'flow' is not valid for IPv4".into());
            }
            quirks |= bit;
        }
    }
    let pclass = match parts[7] {
        "*" => None,
        "0" => Some(false),
        "+" => Some(true),
        p => return Err(format!("bad payload class '{p}'")),
    };
    Ok(Sig {
        label: 0,
        line: 0,
        ver,
        ttl: ttl as u8,
        bad_ttl,
        olen,
        mss,
        win,
        scale,
        layout,
        eol_pad,
        quirks,
        pclass,
    })
}

fn parse_label(val: &str, classes: &[String]) -> Result<Label, String> {
    let mut it = val.splitn(4, ':');
    let generic = match it.next() {
        Some("s") => false,
        Some("g") => true,
        _ => return Err(format!("label '{val}' does not start with 's:' or 'g:'")),
    };
    let class = match it.next() {
        Some("!") => None,
        Some(c) if classes.iter().any(|k| k.eq_ignore_ascii_case(c)) => Some(c.to_string()),
        Some(c) => return Err(format!("unknown class '{c}' (not in 'classes')")),
        None => return Err(format!("malformed label '{val}'")),
    };
    let name = match it.next() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return Err(format!("label '{val}' has no name")),
    };
    let flavor = it.next().filter(|f| !f.is_empty()).map(str::to_string);
    Ok(Label { generic, class, name, flavor })
}

impl P0fDb {
    /// Reads a p0f.fp.
    pub fn load(path: &Path) -> Result<P0fDb, P0fError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| P0fError {
            file: name.clone(),
            line: 0,
            msg: e.to_string(),
        })?;
        P0fDb::parse(&text, &name)
    }

    /// Debian's database when it is installed (`None` when the file does not exist).
    pub fn load_default() -> Option<Result<P0fDb, P0fError>> {
        let p = Path::new(DEFAULT_DB);
        p.exists().then(|| P0fDb::load(p))
    }

    /// Parses p0f.fp text: the `classes` line and the `[tcp:request]` section (label, sys,
    /// sig); other sections are skipped. `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<P0fDb, P0fError> {
        let fail = |line: usize, msg: String| P0fError { file: file.to_string(), line, msg };
        let mut db = P0fDb::default();
        let mut classes: Vec<String> = Vec::new();
        let mut in_tcp_request = false;
        let mut label: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') {
                continue;
            }
            if let Some(sect) = line.strip_prefix('[') {
                let sect = sect
                    .strip_suffix(']')
                    .ok_or_else(|| fail(line_no, format!("malformed section '{line}'")))?;
                in_tcp_request = sect == "tcp:request";
                label = None;
                continue;
            }
            let (key, val) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| fail(line_no, format!("expected 'name = value', got '{line}'")))?;
            if key == "classes" {
                classes = val.split(',').map(|c| c.trim().to_string()).collect();
                continue;
            }
            if !in_tcp_request {
                continue;
            }
            match key {
                "label" => {
                    let l = parse_label(val, &classes).map_err(|m| fail(line_no, m))?;
                    db.labels.push(l);
                    label = Some(db.labels.len() - 1);
                }
                "sys" => {
                    if label.is_none() {
                        return Err(fail(line_no, "'sys' before any 'label'".into()));
                    }
                }
                "sig" => {
                    let l =
                        label.ok_or_else(|| fail(line_no, "'sig' before any 'label'".into()))?;
                    let mut s = parse_sig(val).map_err(|m| fail(line_no, m))?;
                    s.label = l;
                    s.line = line_no;
                    db.sigs.push(s);
                }
                other => return Err(fail(line_no, format!("unknown field '{other}'"))),
            }
        }
        Ok(db)
    }

    /// Signatures read.
    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    /// What p0f would say about this SYN (`tcp_find_match`), or `None` ("???").
    pub fn lookup(&self, f: &Features) -> Option<P0fMatch> {
        let quirks = quirks(f);
        let multi = win_multi(f);
        let kinds = f.options.kinds();
        let mss = f.options.mss.unwrap_or(0);
        let wscale = f.options.wscale.unwrap_or(0);
        let mut fmatch: Option<&Sig> = None;
        let mut gmatch: Option<&Sig> = None;
        for s in self.sigs.iter().filter(|s| s.layout == kinds) {
            let mut fuzzy = false;
            let mut ref_quirks = s.quirks;
            // p0f oddity: the signature's IP version is not compared; a `*` signature only
            // drops the quirks that cannot exist in the packet's version.
            if s.ver.is_none() {
                ref_quirks &=
                    if f.version == 4 { !q::FLOW } else { !(q::DF | q::NZ_ID | q::ZERO_ID) };
            }
            if ref_quirks != quirks {
                let deleted = (ref_quirks ^ quirks) & ref_quirks;
                let added = (ref_quirks ^ quirks) & quirks;
                if fmatch.is_some()
                    || deleted & !(q::DF | q::NZ_ID) != 0
                    || added & !(q::ZERO_ID | q::ECN) != 0
                {
                    continue;
                }
                fuzzy = true;
            }
            if s.eol_pad != f.options.eol_pad || s.olen != f.ip_opt_len {
                continue;
            }
            if s.bad_ttl {
                if s.ttl < f.ttl {
                    continue;
                }
            } else if s.ttl < f.ttl || s.ttl - f.ttl > MAX_DIST {
                fuzzy = true;
            }
            if s.mss.is_some_and(|m| m != mss)
                || s.scale.is_some_and(|w| w != wscale)
                || s.pclass.is_some_and(|p| p != (f.payload_len > 0))
            {
                continue;
            }
            let win_ok = match s.win {
                Win::Any => true,
                Win::Exact(w) => w == f.window,
                Win::Mod(m) => f.window.is_multiple_of(m),
                Win::Mss(n) => multi == Some((n, false)),
                Win::Mtu(n) => multi == Some((n, true)),
            };
            if !win_ok {
                continue;
            }
            let generic = self.labels[s.label].generic;
            if !fuzzy {
                if !generic {
                    return Some(self.answer(s, f, false));
                }
                gmatch.get_or_insert(s);
            } else {
                fmatch.get_or_insert(s);
            }
        }
        if let Some(s) = gmatch {
            return Some(self.answer(s, f, false));
        }
        let s = fmatch?;
        // No fuzzy matches for userland tools, as in p0f.
        self.labels[s.label].class.as_ref()?;
        Some(self.answer(s, f, true))
    }

    fn answer(&self, s: &Sig, f: &Features, fuzzy: bool) -> P0fMatch {
        let l = &self.labels[s.label];
        let dist = if s.ttl >= f.ttl && (s.bad_ttl || s.ttl - f.ttl <= MAX_DIST) {
            s.ttl - f.ttl
        } else {
            guess_dist(f.ttl)
        };
        P0fMatch {
            label: match &l.flavor {
                Some(fl) => format!("{} {fl}", l.name),
                None => l.name.clone(),
            },
            class: l.class.clone(),
            generic: l.generic,
            fuzzy,
            dist,
            line: s.line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::features::{tcp_flags::*, testframes::*};

    const DB: &str = "\
classes = win,unix,other
[mtu]
label = Ethernet or modem
sig   = 1500
[tcp:request]
label = s:unix:Linux:3.11 and newer
sig   = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0
label = g:unix:Linux:2.2.x-3.x
sig   = *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+:0
label = g:unix:Linux:2.2.x-3.x (barebone)
sig   = *:64:0:*:*,0:mss:df,id+:0
label = s:win:Windows:7 or 8
sig   = *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0
label = g:win:Windows:NT kernel
sig   = *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+:0
label = s:!:NMap:SYN scan
sys   = @unix,@win
sig   = *:64-:0:1460:1024,0:mss::0
label = s:unix:Odd:modulus
sig   = 4:64:0:*:%1000,0:nop::0
[tcp:response]
label = s:unix:Linux:whatever
sig   = *:64:0:*:bogus
";

    fn db() -> P0fDb {
        P0fDb::parse(DB, "test.fp").unwrap()
    }

    fn linux(ttl: u8, win: u16, ws: u8) -> Features {
        let mut o = linux_opts(1);
        *o.last_mut().unwrap() = ws;
        let f =
            tcp4([198, 18, 0, 2], [198, 18, 0, 1], ttl, 7, true, 40000, 2745, 1, 0, SYN, win, &o);
        Features::from_frame(&f).unwrap()
    }

    #[test]
    fn signatures_read_like_p0f() {
        assert_eq!(
            signature(&linux(64, 64240, 7)),
            "4:64+0:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0"
        );
        // A window that is not a multiple of anything stays a number; TTL far from any initial
        // value is '+?'.
        let nmap = Features::from_frame(&tcp4(
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            57,
            41416,
            false,
            34084,
            2745,
            5,
            0,
            SYN,
            1024,
            &[2, 4, 5, 0xb4],
        ))
        .unwrap();
        assert_eq!(signature(&nmap), "4:57+7:0:1460:1024,0:mss::0");
        let hping = Features::from_frame(&tcp4(
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            64,
            0,
            false,
            1,
            2745,
            5,
            0x0100_0000,
            SYN,
            512,
            &[],
        ))
        .unwrap();
        assert_eq!(signature(&hping), "4:64+0:0:0:512,0::id-,ack+:0");
        // p0f's oddity: an even first byte of the ack field is not `ack+`.
        let even = Features { ack: 0x0200_0001, ..hping };
        assert_eq!(signature(&even), "4:64+0:0:0:512,0::id-:0");
        let far = Features { ttl: 200, ..hping };
        assert!(signature(&far).starts_with("4:200+?:"));
    }

    #[test]
    fn matching_follows_tcp_find_match() {
        let db = db();
        assert_eq!(db.len(), 7);
        // Specific wins over generic.
        let m = db.lookup(&linux(64, 64240 / 44 * 20, 10)).unwrap();
        assert_eq!((m.label.as_str(), m.generic, m.fuzzy), ("Linux 3.11 and newer", false, false));
        // No specific match: the generic one.
        let m = db.lookup(&linux(60, 64240, 7)).unwrap();
        assert_eq!((m.label.as_str(), m.generic, m.dist), ("Linux 2.2.x-3.x", true, 4));
        // Windows 7 or 8 exactly; another window: the generic NT kernel.
        let win = |w| {
            let o = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
            Features::from_frame(&tcp4([1; 4], [2; 4], 120, 9, true, 1, 2745, 1, 0, SYN, w, &o))
                .unwrap()
        };
        assert_eq!(db.lookup(&win(8192)).unwrap().label, "Windows 7 or 8");
        assert_eq!(db.lookup(&win(64240)).unwrap().label, "Windows NT kernel");
        // nmap: a tool signature with a TTL ceiling ('64-'), never fuzzy.
        let nmap = |ttl| {
            Features::from_frame(&tcp4(
                [1; 4],
                [2; 4],
                ttl,
                99,
                false,
                1,
                2745,
                1,
                0,
                SYN,
                1024,
                &[2, 4, 5, 0xb4],
            ))
            .unwrap()
        };
        let m = db.lookup(&nmap(45)).unwrap();
        assert!(m.is_tool());
        assert_eq!((m.label.as_str(), m.dist), ("NMap SYN scan", 19));
        // Over IPv6 at hop limit 255 the tool signature's ceiling fails; the barebone Linux
        // signature then matches fuzzily (TTL), with df/id+ dropped for IPv6: p0f calls nmap's
        // IPv6 SYN scan "Linux".
        let mut v6 = nmap(255);
        v6.version = 6;
        v6.df = false;
        v6.ip_id = 0;
        let m = db.lookup(&v6).unwrap();
        assert_eq!((m.label.as_str(), m.fuzzy), ("Linux 2.2.x-3.x (barebone)", true));
        // Over IPv4 a missing DF is a tolerated difference too (df and id+ may vanish).
        let m = db.lookup(&nmap(200)).unwrap();
        assert_eq!(m.label, "Linux 2.2.x-3.x (barebone)");
        // Window modulus.
        let nop = |w| {
            Features::from_frame(&tcp4(
                [1; 4],
                [2; 4],
                64,
                9,
                false,
                1,
                2745,
                1,
                0,
                SYN,
                w,
                &[1, 1, 1, 1],
            ))
            .unwrap()
        };
        let mut f = nop(3000);
        f.options.count = 1;
        f.options.kinds = [opt::NOP; 14];
        assert_eq!(db.lookup(&f).unwrap().label, "Odd modulus");
        f.window = 3001;
        assert_eq!(db.lookup(&f), None);
    }

    #[test]
    fn database_mistakes_are_one_line_errors() {
        let cases = [
            ("[tcp:request]\nsig = *:64:0:*:*,*::df:0\n", 2, "before any 'label'"),
            ("[tcp:request]\nlabel = x:unix:L:\n", 2, "'s:' or 'g:'"),
            ("classes = unix\n[tcp:request]\nlabel = s:mac:L:\n", 3, "unknown class"),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 7:64:0:*:*,*:::0\n",
                4,
                "IP version",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:300:0:*:*,*:::0\n",
                4,
                "TTL",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:64:0:*:*,*:foo::0\n",
                4,
                "unknown TCP option",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:64:0:*:*,*::wat:0\n",
                4,
                "unknown quirk",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 6:64:0:*:*,*::df:0\n",
                4,
                "not valid for IPv6",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:64:0:*:mss*0,*:::0\n",
                4,
                "multiplier",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:64:0:*:*,*:eol+1,nop::0\n",
                4,
                "EOL must be the last",
            ),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:64:0\n",
                4,
                "8 ':'-separated",
            ),
            ("[tcp:request\n", 1, "malformed section"),
            ("[tcp:request]\nwhat\n", 2, "name = value"),
            ("[tcp:request]\nfoo = 1\n", 2, "unknown field"),
            (
                "classes = unix\n[tcp:request]\nlabel = s:unix:L:\nsig = 4:4000000000+4000000000:0:*:*,*:::0\n",
                4,
                "TTL",
            ),
        ];
        for (text, line, what) in cases {
            let e = P0fDb::parse(text, "p.fp").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("p.fp:{line}: ")) && e.contains(what),
                "{text:?} -> {e}"
            );
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn mangled_databases_and_frames_never_panic() {
        // Every line of the test database, cut and spliced at every byte: an error or a
        // database, never a panic; every database answers lookups.
        let probes = [linux(64, 64240, 7), linux(255, 1024, 0), linux(1, 0, 15)];
        let lines: Vec<&str> = DB.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            for cut in 0..=l.len() {
                for tail in ["", ":", ",", "*", "+9", "-", "?99"] {
                    let mut text = lines[..i].join("\n");
                    text.push('\n');
                    text.push_str(&l[..cut]);
                    text.push_str(tail);
                    if let Ok(db) = P0fDb::parse(&text, "m.fp") {
                        for p in &probes {
                            let _ = db.lookup(p);
                        }
                    }
                }
            }
        }
        // Signatures of odd packets: no panic, one line.
        for ttl in [0u8, 1, 32, 33, 64, 65, 128, 129, 255] {
            for win in [0u16, 1, 1448, 65535] {
                let s = signature(&linux(ttl, win, 14));
                assert!(!s.contains('\n') && s.split(':').count() == 8, "{s}");
            }
        }
    }

    #[test]
    fn debians_database_parses_when_installed() {
        let Some(db) = P0fDb::load_default() else {
            eprintln!("skipped: {DEFAULT_DB} is not installed (apt-get install p0f)");
            return;
        };
        let db = db.unwrap();
        // Every `sig` line of the section is read.
        let text = std::fs::read_to_string(DEFAULT_DB).unwrap();
        let section = text.split("[tcp:request]").nth(1).unwrap().split("\n[").next().unwrap();
        let sigs = section.lines().filter(|l| l.trim_start().starts_with("sig")).count();
        assert_eq!(db.len(), sigs);
        assert_eq!(db.lookup(&linux(64, 64240, 7)).unwrap().label, "Linux 2.2.x-3.x");
    }
}
