//! The oracle's cases: a TCP SYN or UDP datagram to a guarded or a control port, shaped one of
//! the ways a filter can be evaded (plain; IPv4 options; IPv6 extension chains of 1 to 16
//! headers of every kind; IPv4 and IPv6 fragmentation in 2 to 4 pieces, every order, tiny
//! first fragments, overlaps that rewrite the ports, duplicates, missing pieces), wrapped in a
//! link layer (untagged, priority tags, VLAN and QinQ, tags no device takes), then now and
//! then mutated (broken checksums, truncation, bytes after the datagram as Ethernet padding, a
//! bit flipped or a value set in a length or next-header field, checksums left broken or fixed
//! up the way an attacker would).
//!
//! A case is a description; `Case::frames` builds it for the addresses of one phase, so every
//! phase sends the same bytes but for the source address (and the checksums that cover it).
//! Deterministic for a seed.
//!
//! PPPoE is not generated: this kernel has no PPP (CONFIG_PPP unset), so nothing in a PPPoE
//! session frame can be delivered here, whatever the guard does; the BPF_PROG_TEST_RUN fuzzer
//! covers portguard's PPPoE parsing against the reference.

use super::{
    netlab::sport,
    packet::{
        Datagram, Ext, L4, Layout, Net, Opts, Piece, Proto, Rewrite, V4Opt, Wire,
        fix_ipv4_checksum, fix_l4_checksum,
    },
};
use crate::fuzz::Rng;

/// What a case is, for the tables and for grouping violations.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    /// The shape family: "plain", "v4 options", "v6 ext 1-8", "v6 ext 9-16", "v4 frag",
    /// "v6 frag".
    pub shape: String,
    /// The link layer: "untagged", "prio x1", "vlan 100 (emulated)", ...
    pub link: String,
    /// The mutation: "none", "bad l4 checksum", "flip V6PayloadLen", ...
    pub mutation: String,
    /// Everything else worth knowing (chain, fragment plan and order, options).
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    V4Ihl,
    V4TotalLen,
    V4Proto,
    V4FragWord,
    V6PayloadLen,
    V6NextHeader,
    /// The next-header byte of the n-th extension header in the frame (the last if fewer).
    ExtNextHeader(usize),
    ExtLen(usize),
    TcpDataOffset,
    UdpLen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldOp {
    FlipBit(u8),
    Set(u16),
}

#[derive(Clone, Debug)]
pub enum Mutation {
    BadIpChecksum {
        frame: usize,
    },
    /// The transport checksum (or, in a fragment without the header, a payload byte) changed.
    BadL4Checksum {
        frame: usize,
    },
    Truncate {
        frame: usize,
        keep: usize,
    },
    Field {
        frame: usize,
        field: Field,
        op: FieldOp,
        fix_l4: bool,
    },
    /// Bytes after the datagram, inside the frame: Ethernet padding, which a NIC adds to short
    /// frames and a sender fills as it likes. The stack trims them.
    Trailer {
        frame: usize,
        bytes: Vec<u8>,
    },
}

/// One attempt: its frames are sent back to back, in order.
#[derive(Clone, Debug)]
pub struct Case {
    pub id: u32,
    pub dgram: Datagram,
    pub mutation: Option<Mutation>,
    pub labels: Labels,
    /// Some version of it (an overlapping rewrite included) is for a guarded port.
    pub for_guarded: bool,
}

/// A field's offset and width in a frame, if the frame has it.
fn locate(f: &[u8], l: &Layout, field: Field) -> Option<(usize, usize)> {
    let at = match field {
        Field::V4Ihl if !l.v6 => (l.l3, 1),
        Field::V4TotalLen if !l.v6 => (l.l3 + 2, 2),
        Field::V4Proto if !l.v6 => (l.l3 + 9, 1),
        Field::V4FragWord if !l.v6 => (l.l3 + 6, 2),
        Field::V6PayloadLen if l.v6 => (l.l3 + 4, 2),
        Field::V6NextHeader if l.v6 => (l.l3 + 6, 1),
        Field::ExtNextHeader(i) if !l.exts.is_empty() => (l.exts[i.min(l.exts.len() - 1)].0, 1),
        Field::ExtLen(i) if !l.exts.is_empty() => (l.exts[i.min(l.exts.len() - 1)].0 + 1, 1),
        Field::TcpDataOffset if l.proto == 6 => (l.l4? + 12, 1),
        Field::UdpLen if l.proto == 17 => (l.l4? + 4, 2),
        _ => return None,
    };
    (at.0 + at.1 <= f.len()).then_some(at)
}

impl Case {
    /// The same case under another id (the id is in its sequence number, source port, IP
    /// identification and payload).
    pub fn renumbered(&self, id: u32) -> Case {
        let mut c = self.clone();
        let old_sport = sport(self.id);
        c.id = id;
        c.dgram.id = id;
        c.dgram.l4.seq = id;
        if c.dgram.l4.sport == old_sport {
            c.dgram.l4.sport = sport(id);
        }
        c
    }

    /// The frames of this case for the addresses `w`, in send order.
    pub fn frames(&self, w: &Wire) -> Vec<Vec<u8>> {
        let built = self.dgram.build(w);
        let mut out = Vec::with_capacity(built.len());
        for (i, (mut f, l)) in built.into_iter().enumerate() {
            let mut fix_ip = !l.v6;
            match &self.mutation {
                Some(Mutation::BadIpChecksum { frame }) if *frame == i && !l.v6 => {
                    f[l.l3 + 10] ^= 0x5a;
                    fix_ip = false;
                }
                Some(Mutation::BadL4Checksum { frame }) if *frame == i => match (l.l4, l.proto) {
                    (Some(x), 6) if x + 18 <= f.len() => f[x + 17] ^= 0x01,
                    (Some(x), _) if x + 8 <= f.len() && (f[x + 6], f[x + 7]) != (0, 0) => {
                        f[x + 7] ^= 0x01
                    }
                    _ => {
                        let n = f.len();
                        f[n - 1] ^= 0x80;
                    }
                },
                Some(Mutation::Field { frame, field, op, fix_l4 }) if *frame == i => {
                    if let Some((at, width)) = locate(&f, &l, *field) {
                        let old = if width == 1 {
                            f[at] as u16
                        } else {
                            u16::from_be_bytes([f[at], f[at + 1]])
                        };
                        let new = match *op {
                            FieldOp::FlipBit(b) => old ^ (1 << (b as u32 % (8 * width as u32))),
                            FieldOp::Set(v) => v,
                        };
                        let new = match field {
                            // IHL: the version stays 4.
                            Field::V4Ihl => 0x40 | (new & 0x0f),
                            Field::TcpDataOffset => (new & 0xf0) | (old & 0x0f),
                            _ => new,
                        };
                        if width == 1 {
                            f[at] = new as u8;
                        } else {
                            f[at..at + 2].copy_from_slice(&new.to_be_bytes());
                        }
                        if *fix_l4 {
                            fix_l4_checksum(&mut f, &l);
                        }
                    }
                }
                _ => {}
            }
            if fix_ip {
                fix_ipv4_checksum(&mut f, l.l3);
            }
            if let Some(Mutation::Truncate { frame, keep }) = &self.mutation
                && *frame == i
            {
                f.truncate((*keep).max(14));
            }
            if let Some(Mutation::Trailer { frame, bytes }) = &self.mutation
                && *frame == i
            {
                f.extend_from_slice(bytes);
            }
            out.push(f);
        }
        out
    }
}

/// Generates cases for the guarded ports (the first is the main one) and a control port.
pub struct Generator {
    rng: Rng,
    next_id: u32,
    guarded: Vec<u16>,
    control: u16,
}

const TCP_SYN: u8 = 0x02;
/// MSS 1460, SACK permitted, timestamps, NOP, window scale 7: what Linux sends.
const FULL_OPTIONS: [u8; 20] = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];

impl Generator {
    pub fn new(seed: u64, guarded: &[u16], control: u16) -> Generator {
        Generator { rng: Rng::new(seed), next_id: 0, guarded: guarded.to_vec(), control }
    }

    fn weighted(&mut self, weights: &[usize]) -> usize {
        let total: usize = weights.iter().sum();
        let mut x = self.rng.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    pub fn case(&mut self) -> Case {
        let id = self.next_id;
        self.next_id += 1;
        let guarded = self.rng.below(10) < 6;
        let dport = if guarded {
            if self.guarded.len() > 1 && self.rng.one_in(4) {
                self.guarded[1 + self.rng.below(self.guarded.len() - 1)]
            } else {
                self.guarded[0]
            }
        } else {
            self.control
        };
        let proto = if self.rng.one_in(2) { Proto::Tcp } else { Proto::Udp };
        let tcp_options = match (proto, self.rng.below(10)) {
            (Proto::Udp, _) => vec![],
            (_, 0..=3) => vec![],
            (_, 4..=6) => FULL_OPTIONS[..4].to_vec(),
            _ => FULL_OPTIONS.to_vec(),
        };
        let l4 = L4 {
            proto,
            sport: sport(id),
            dport,
            seq: id,
            flags: TCP_SYN,
            tcp_options,
            udp_no_checksum: false,
        };
        let mut labels = Labels::default();
        let shape = self.weighted(&[15, 10, 25, 20, 20]);
        let v6 = match shape {
            0 => self.rng.one_in(2),
            1 | 3 => false,
            _ => true,
        };
        let net = match shape {
            1 => {
                let opts = self.v4_options();
                labels.detail = format!("options {opts:?}");
                Net::V4 { options: opts }
            }
            2 => {
                let depth = match self.rng.below(20) {
                    0..=6 => 1 + self.rng.below(7),
                    7..=9 => 8,
                    10..=16 => 9 + self.rng.below(4),
                    _ => 13 + self.rng.below(4),
                };
                let exts: Vec<Ext> = (0..depth).map(|i| self.ext(i)).collect();
                labels.detail =
                    format!("chain {}", exts.iter().map(Ext::name).collect::<Vec<_>>().join(","));
                Net::V6 { exts, frag_at: 0 }
            }
            4 => {
                // Headers before the fragment header (repeated in each piece) and after it.
                let mut before = Vec::new();
                if self.rng.one_in(3) {
                    before.push(Ext::HopByHop { units: 0, opts: Opts::Valid });
                }
                if self.rng.one_in(4) {
                    before.push(Ext::Routing { kind: 0, units: 0, segments_left: 0 });
                }
                let n_after = match self.rng.below(10) {
                    0..=4 => 0,
                    5..=7 => 1,
                    _ => 2 + self.rng.below(8),
                };
                let after: Vec<Ext> = (0..n_after)
                    .map(|_| Ext::DestOpts { units: self.rng.below(2) as u8, opts: Opts::Valid })
                    .collect();
                let frag_at = before.len();
                let exts: Vec<Ext> = before.into_iter().chain(after).collect();
                Net::V6 { exts, frag_at }
            }
            _ => {
                if v6 {
                    Net::V6 { exts: vec![], frag_at: 0 }
                } else {
                    Net::V4 { options: vec![] }
                }
            }
        };
        labels.shape = match (shape, &net) {
            (0, _) => "plain".into(),
            (1, _) => "v4 options".into(),
            (2, Net::V6 { exts, .. }) if exts.len() <= 8 => "v6 ext 1-8".into(),
            (2, _) => "v6 ext 9-16".into(),
            (3, _) => "v4 frag".into(),
            _ => "v6 frag".into(),
        };
        let fragmented = shape == 3 || shape == 4;
        let filler = if fragmented { 24 + self.rng.below(120) } else { self.rng.below(48) };
        let mut dgram = Datagram { net, l4, id, filler, pieces: None, tags: vec![] };
        let mut for_guarded = guarded;
        if fragmented {
            let (pieces, plan, rewrites_to_guarded) = self.plan(&dgram);
            labels.detail = format!("{} {plan}", labels.detail).trim().to_string();
            for_guarded |= rewrites_to_guarded;
            dgram.pieces = Some(pieces);
        }
        let (tags, link) = self.link();
        dgram.tags = tags;
        labels.link = link.into();
        let (mutation, mlabel) = self.mutation(&mut dgram);
        labels.mutation = mlabel;
        Case { id, dgram, mutation, labels, for_guarded }
    }

    fn v4_options(&mut self) -> Vec<V4Opt> {
        let mut opts = Vec::new();
        let mut len = 0;
        for _ in 0..1 + self.rng.below(6) {
            let o = match self.rng.below(20) {
                0..=4 => V4Opt::Nop,
                5..=7 => V4Opt::RecordRoute { slots: 1 + self.rng.below(8) as u8 },
                8..=10 => V4Opt::Timestamp { slots: 1 + self.rng.below(8) as u8 },
                11..=12 => V4Opt::RouterAlert,
                13 => V4Opt::LooseSourceRoute { hops: 1 + self.rng.below(2) as u8 },
                14..=15 => V4Opt::Unknown { copied: self.rng.one_in(2) },
                16 => V4Opt::BadLength,
                _ => V4Opt::Eol,
            };
            let n = match o {
                V4Opt::Nop | V4Opt::Eol => 1,
                V4Opt::RecordRoute { slots } => 3 + 4 * slots as usize,
                V4Opt::Timestamp { slots } => 4 + 4 * slots as usize,
                V4Opt::LooseSourceRoute { hops } => 3 + 4 * hops as usize,
                _ => 4,
            };
            if len + n > 40 {
                break;
            }
            len += n;
            opts.push(o);
        }
        opts
    }

    /// The `i`-th header of a chain: mostly the kinds the kernel walks, sometimes odd ones.
    fn ext(&mut self, i: usize) -> Ext {
        let units = match self.rng.below(10) {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2,
        };
        match self.rng.below(100) {
            0..=39 => Ext::DestOpts { units, opts: Opts::Valid },
            40..=51 if i == 0 => Ext::HopByHop { units, opts: Opts::Valid },
            40..=51 => Ext::DestOpts { units, opts: Opts::Valid },
            52..=61 => Ext::Routing { kind: 0, units, segments_left: 0 },
            62..=64 => Ext::Routing { kind: 2, units: 2, segments_left: 0 },
            65..=67 => Ext::Routing { kind: 4, units: 2, segments_left: 0 },
            68..=69 => Ext::Routing { kind: 253, units, segments_left: 0 },
            70 => Ext::Routing { kind: 0, units: 2, segments_left: 1 },
            71..=80 => Ext::AtomicFragment,
            81..=83 => Ext::Ah { len: 4 },
            84..=86 => Ext::Other { proto: self.rng.pick(&[135, 139, 140, 253]), units },
            87..=89 => Ext::HopByHop { units, opts: Opts::Valid }, // not first: RFC 8200 forbids
            _ => {
                let opts = self.rng.pick(&[
                    Opts::PadTooLong,
                    Opts::PadNonZero,
                    Opts::Discard,
                    Opts::Icmp,
                    Opts::TooMany,
                ]);
                let units = if opts == Opts::TooMany { 2 } else { units };
                if i == 0 && self.rng.one_in(2) {
                    Ext::HopByHop { units, opts }
                } else {
                    Ext::DestOpts { units, opts }
                }
            }
        }
    }

    /// Splits `rest` bytes starting at `from` into `n` pieces of multiples of 8 (the last takes
    /// what is left).
    fn split(&mut self, from: usize, total: usize, n: usize) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut start = from;
        for k in 0..n {
            let left = total - start;
            if k + 1 == n || left <= 8 {
                pieces.push(Piece { start, end: total, more: false, rewrite: None });
                break;
            }
            let share = (left / (n - k)).max(8) / 8 * 8;
            let end = (start + share).min(total - 1) / 8 * 8;
            let end = end.max(start + 8);
            if end >= total {
                pieces.push(Piece { start, end: total, more: false, rewrite: None });
                break;
            }
            pieces.push(Piece { start, end, more: true, rewrite: None });
            start = end;
        }
        pieces
    }

    /// A fragmentation plan for `d`: the pieces in send order, its label, and whether an
    /// overlapping rewrite sends a version of it to a guarded port.
    fn plan(&mut self, d: &Datagram) -> (Vec<Piece>, String, bool) {
        let seg = match d.l4.proto {
            Proto::Tcp => 20 + d.l4.tcp_options.len(),
            Proto::Udp => 8,
        } + 8
            + d.filler;
        let (after_frag, v6) = match &d.net {
            Net::V6 { exts, frag_at } => (exts[*frag_at..].iter().map(Ext::size).sum(), true),
            Net::V4 { .. } => (0usize, false),
        };
        let total = after_frag + seg;
        let l4_hlen = if d.l4.proto == Proto::Tcp { 20 + d.l4.tcp_options.len() } else { 8 };
        let n = 2 + self.rng.below(3);
        let kind = self.rng.below(100);
        let mut label;
        let mut pieces = match kind {
            // The transport header cut in the first piece: only 8 or 16 bytes of it.
            0..=19 => {
                let first =
                    after_frag + if d.l4.proto == Proto::Tcp { self.rng.pick(&[8, 16]) } else { 8 };
                let first = first.min(total - 1) / 8 * 8;
                label = format!("tiny-first-{}", first - after_frag);
                let mut p = vec![Piece { start: 0, end: first, more: true, rewrite: None }];
                p.extend(self.split(first, total, n - 1));
                p
            }
            // IPv6: the first piece holds the extension headers only, the transport header is
            // in the second. IPv4 has no such split but an empty first fragment.
            20..=27 if v6 && after_frag > 0 => {
                label = "l4-in-second".into();
                let mut p = vec![Piece { start: 0, end: after_frag, more: true, rewrite: None }];
                p.extend(self.split(after_frag, total, n - 1));
                p
            }
            20..=27 if v6 => {
                label = format!("even-{n}");
                self.split(0, total, n)
            }
            20..=27 => {
                label = "empty-first".into();
                let mut p = vec![Piece { start: 0, end: 0, more: true, rewrite: None }];
                p.extend(self.split(0, total, n - 1));
                p
            }
            // IPv6: the extension chain itself split across pieces.
            28..=33 if v6 && after_frag > 8 => {
                label = "chain-split".into();
                let mut p = vec![Piece { start: 0, end: 8, more: true, rewrite: None }];
                p.extend(self.split(8, total, n - 1));
                p
            }
            _ => {
                label = format!("even-{n}");
                self.split(0, total, n)
            }
        };
        let _ = l4_hlen;
        // Extras: overlaps, duplicates, a missing piece.
        let mut to_guarded = false;
        match self.rng.below(100) {
            0..=14 => {
                // Another first piece with the ports rewritten: guarded <-> control.
                let other =
                    if self.guarded.contains(&d.l4.dport) { self.control } else { self.guarded[0] };
                to_guarded = other != self.control;
                let mut p = pieces[0].clone();
                if p.end < after_frag + 4 {
                    p.end = (after_frag + 8).min(total);
                    p.more = p.end < total;
                }
                p.rewrite = Some(Rewrite::Dport(other));
                pieces.push(p);
                label += "+rewrite-ports";
            }
            15..=24 => {
                // Conflicting bytes over [8, 24): inside one piece (a duplicate range, which
                // Linux ignores) or across two (an overlap, which Linux drops the datagram for).
                let end = 24.min(total);
                if end > 8 {
                    pieces.push(Piece {
                        start: 8,
                        end,
                        more: end < total,
                        rewrite: Some(Rewrite::Invert),
                    });
                    label += "+overlap";
                }
            }
            25..=34 => {
                let i = self.rng.below(pieces.len());
                let p = pieces[i].clone();
                pieces.push(p);
                label += "+duplicate";
            }
            35..=39 if pieces.len() > 1 => {
                let i = 1 + self.rng.below(pieces.len() - 1);
                pieces.remove(i);
                label += "+missing";
            }
            _ => {}
        }
        // Send order.
        match self.rng.below(10) {
            0..=3 => label += " in-order",
            4..=5 => {
                pieces.reverse();
                label += " reversed";
            }
            _ => {
                for i in (1..pieces.len()).rev() {
                    let j = self.rng.below(i + 1);
                    pieces.swap(i, j);
                }
                label += &format!(
                    " order[{}]",
                    pieces.iter().map(|p| p.start.to_string()).collect::<Vec<_>>().join(",")
                );
            }
        }
        (pieces, label, to_guarded)
    }

    fn link(&mut self) -> (Vec<(u16, u16)>, &'static str) {
        let prio = |r: &mut Rng| (r.pick(&[0x8100, 0x88a8]), (r.below(8) as u16) << 13);
        match self.weighted(&[60, 6, 3, 3, 6, 6, 3, 3, 3, 2]) {
            0 => (vec![], "untagged"),
            1 => (vec![prio(&mut self.rng)], "prio x1"),
            2 => (vec![prio(&mut self.rng), prio(&mut self.rng)], "prio x2"),
            3 => {
                let n = 3 + self.rng.below(3);
                ((0..n).map(|_| prio(&mut self.rng)).collect(), "prio x3-5")
            }
            4 => (vec![(0x8100, 100)], "vlan 100 (emulated)"),
            5 => (vec![(0x88a8, 200), (0x8100, 300)], "qinq 200/300 (emulated)"),
            6 => {
                (vec![(0x88a8, 200), (0x8100, 300), prio(&mut self.rng)], "qinq + prio (emulated)")
            }
            7 => (vec![(0x8100, 0), (0x8100, 100), (0x8100, 0)], "prio+vlan 100+prio (emulated)"),
            8 => (vec![(0x8100, 999)], "vid 999 (no device)"),
            _ => (vec![(0x9100, 200), (0x8100, 300)], "0x9100 outer (no handler)"),
        }
    }

    fn mutation(&mut self, d: &mut Datagram) -> (Option<Mutation>, String) {
        let frames = d.pieces.as_ref().map_or(1, Vec::len);
        let frame = self.rng.below(frames);
        let v6 = d.net.is_v6();
        match self.weighted(&[55, 4, 6, 4, 8, 15, 8, 6]) {
            1 if !v6 => (Some(Mutation::BadIpChecksum { frame }), "bad ip checksum".into()),
            2 => (Some(Mutation::BadL4Checksum { frame }), "bad l4 checksum".into()),
            3 if !v6 && d.l4.proto == Proto::Udp => {
                d.l4.udp_no_checksum = true;
                (None, "udp checksum 0".into())
            }
            4 => {
                // Cut somewhere in the last 64 bytes, or in the headers: the exact length
                // needs the built frame, so it is relative to an estimate of the frame size.
                let keep = 14 + self.rng.below(120);
                (Some(Mutation::Truncate { frame, keep }), "truncate".into())
            }
            5 | 6 => {
                let field = self.field(v6, d.l4.proto);
                let op = if self.rng.one_in(2) {
                    FieldOp::FlipBit(self.rng.below(16) as u8)
                } else {
                    FieldOp::Set(
                        self.rng.pick(&[0, 1, 5, 6, 8, 17, 20, 40, 43, 44, 59, 60, 0xff, 0xffff]),
                    )
                };
                let fix_l4 = self.rng.one_in(2);
                let what = match op {
                    FieldOp::FlipBit(_) => "flip",
                    FieldOp::Set(_) => "set",
                };
                let fixed = if fix_l4 { " (l4 checksum fixed)" } else { "" };
                (
                    Some(Mutation::Field { frame, field, op, fix_l4 }),
                    format!("{what} {}{fixed}", field_name(field)),
                )
            }
            7 => {
                // Random bytes, or ports repeated: what a parser reading past the datagram
                // would take for a TCP/UDP header.
                let n = 2 + self.rng.below(45);
                let bytes = if self.rng.one_in(2) {
                    self.rng.bytes(n)
                } else {
                    let port: u16 = self.rng.pick(&[443, 53, 0, 2745]);
                    port.to_be_bytes().into_iter().cycle().take(n).collect()
                };
                (Some(Mutation::Trailer { frame, bytes }), "trailer".into())
            }
            _ => (None, "none".into()),
        }
    }

    fn field(&mut self, v6: bool, proto: Proto) -> Field {
        let l4 = if proto == Proto::Tcp { Field::TcpDataOffset } else { Field::UdpLen };
        if v6 {
            match self.rng.below(5) {
                0 => Field::V6PayloadLen,
                1 => Field::V6NextHeader,
                2 => Field::ExtNextHeader(self.rng.below(16)),
                3 => Field::ExtLen(self.rng.below(16)),
                _ => l4,
            }
        } else {
            match self.rng.below(5) {
                0 => Field::V4Ihl,
                1 => Field::V4TotalLen,
                2 => Field::V4Proto,
                3 => Field::V4FragWord,
                _ => l4,
            }
        }
    }
}

fn field_name(f: Field) -> &'static str {
    match f {
        Field::V4Ihl => "ipv4 ihl",
        Field::V4TotalLen => "ipv4 total length",
        Field::V4Proto => "ipv4 protocol",
        Field::V4FragWord => "ipv4 fragment word",
        Field::V6PayloadLen => "ipv6 payload length",
        Field::V6NextHeader => "ipv6 next header",
        Field::ExtNextHeader(_) => "ext next header",
        Field::ExtLen(_) => "ext length",
        Field::TcpDataOffset => "tcp data offset",
        Field::UdpLen => "udp length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> Wire {
        let (src4, src6) = super::super::netlab::source(0, 1);
        Wire {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            src4,
            dst4: [198, 18, 0, 1],
            src6,
            dst6: crate::frames::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        }
    }

    #[test]
    fn deterministic_and_sendable() {
        let (mut a, mut b) =
            (Generator::new(7, &[2745, 3127], 8080), Generator::new(7, &[2745, 3127], 8080));
        let w = wire();
        let mut shapes = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..5_000 {
            let (x, y) = (a.case(), b.case());
            let fx = x.frames(&w);
            assert_eq!(fx, y.frames(&w));
            for f in &fx {
                // An AF_PACKET send needs an Ethernet header and at most MTU + header + tags.
                assert!((14..=1514 + 16).contains(&f.len()), "{} {:?}", f.len(), x.labels);
            }
            *shapes.entry(x.labels.shape.clone()).or_default() += 1;
        }
        assert_eq!(shapes.len(), 6, "{shapes:?}");
    }

    /// Unmutated, unfragmented cases carry a valid checksum for any source: the only
    /// difference between phases is the address.
    #[test]
    fn phases_differ_only_by_address() {
        let mut g = Generator::new(9, &[2745], 8080);
        let w0 = wire();
        let mut w1 = wire();
        (w1.src4, w1.src6) = super::super::netlab::source(1, 1);
        for _ in 0..200 {
            let c = g.case();
            let (a, b) = (c.frames(&w0), c.frames(&w1));
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.len(), y.len());
            }
        }
    }
}
