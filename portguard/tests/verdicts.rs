//! The verdict suite: the real XDP program, driven through BPF_PROG_TEST_RUN with hand-built
//! frames, checking the verdict and how every counter moved.

use aya::programs::{TestRun as _, TestRunOptions};
use portguard::{
    counters::Source,
    guard::Loaded,
    settings::{Cidr, Direction, Mode, Protocol, Settings, Unjudged},
    wire::{Directions, Protocols},
};
use portguard_common::{
    DIR_DST, DIR_SRC, DIR_UNJUDGED, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PROTO_TCP, PROTO_UDP,
    Totals,
};
use portguard_testkit::{
    XDP_DROP, XDP_PASS,
    frames::{Ext, Frame, TCP_ACK, TCP_RST, TCP_SYN, v6},
    root_or_skip, test_run as run,
};

const SRC4: [u8; 4] = [198, 18, 0, 2];
const DST4: [u8; 4] = [198, 18, 0, 1];
const SRC6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]);
const DST6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);

fn load(settings: Settings) -> Loaded {
    Loaded::with_defaults(&settings).unwrap()
}

fn drop_guard() -> Loaded {
    load(Settings::default())
}

/// The outcomes a frame can have, as counters see them.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    /// Matched and dropped.
    Dropped,
    /// Matched and passed (count mode, allowlist).
    Counted,
    /// Not ours: passed, only `seen` moves.
    Passed,
    /// Passed and counted as malformed.
    Malformed,
    /// A later fragment that followed its first fragment's drop.
    FollowedDrop,
    /// A later fragment that followed its first fragment's pass.
    FollowedPass,
    /// Its ports could not be read, and it could reach a guarded port: dropped (fail closed).
    UnjudgedDropped,
    /// The same, passed (count mode, `--unjudged pass`).
    UnjudgedPassed,
    /// The same from an allowlisted source: passed.
    UnjudgedAllowed,
}

fn outcome(verdict: u32, d: &Totals) -> Outcome {
    assert_eq!(d.seen, 1, "every frame is seen once: {d:?}");
    let counts = (d.matched, d.unjudged, d.malformed, d.fragments_followed, d.dropped, d.allowed);
    match (verdict, counts) {
        (XDP_DROP, (1, 0, 0, 0, 1, 0)) => Outcome::Dropped,
        (XDP_PASS, (1, 0, 0, 0, 0, _)) => Outcome::Counted,
        (XDP_PASS, (0, 0, 0, 0, 0, 0)) => Outcome::Passed,
        (XDP_PASS, (0, 0, 1, 0, 0, 0)) => Outcome::Malformed,
        (XDP_DROP, (0, 0, 0, 1, 1, 0)) => Outcome::FollowedDrop,
        (XDP_PASS, (0, 0, 0, 1, 0, 0)) => Outcome::FollowedPass,
        (XDP_DROP, (0, 1, 0, 0, 1, 0)) => Outcome::UnjudgedDropped,
        (XDP_PASS, (0, 1, 0, 0, 0, 0)) => Outcome::UnjudgedPassed,
        (XDP_PASS, (0, 1, 0, 0, 0, 1)) => Outcome::UnjudgedAllowed,
        _ => panic!("inconsistent counters for verdict {verdict}: {d:?}"),
    }
}

fn check(g: &mut Loaded, f: &Frame, want: Outcome) {
    let bytes = f.build();
    let (v, d) = run(g, &bytes);
    assert_eq!(outcome(v, &d), want, "frame {f:?}");
    if want == Outcome::Dropped {
        assert_eq!(d.dropped_bytes, bytes.len() as u64);
        assert_eq!(d.matched_bytes, bytes.len() as u64);
    }
    if d.unjudged == 1 {
        assert_eq!(d.unjudged_bytes, bytes.len() as u64);
    }
}

/// The same frame in every L2 wrapping portguard understands.
fn wrappings(f: Frame) -> Vec<Frame> {
    vec![
        f.clone(),
        f.clone().vlan(0x8100, 10),
        f.clone().vlan(0x88a8, 100).vlan(0x8100, 10),
        f.clone().vlan(0x9100, 100).vlan(0x8100, 10),
        f.clone().pppoe(),
        f.clone().vlan(0x8100, 7).pppoe(),
        f.vlan(0x88a8, 7).vlan(0x8100, 8).pppoe(),
    ]
}

fn all_l4(dport: u16, sport: u16) -> Vec<Frame> {
    vec![
        Frame::tcp4(SRC4, DST4, sport, dport).syn(),
        Frame::udp4(SRC4, DST4, sport, dport),
        Frame::tcp6(SRC6, DST6, sport, dport).syn(),
        Frame::udp6(SRC6, DST6, sport, dport),
    ]
}

#[test]
fn guarded_port_is_dropped_everything_else_passes() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    for f in all_l4(2745, 40000).into_iter().flat_map(wrappings) {
        check(&mut g, &f, Outcome::Dropped);
    }
    for f in all_l4(443, 40000).into_iter().flat_map(wrappings) {
        check(&mut g, &f, Outcome::Passed);
    }
    // The source port is not looked at by default: a server answering to a client port 2745.
    for f in all_l4(443, 2745) {
        check(&mut g, &f, Outcome::Passed);
    }
    // Neighbouring ports are not 2745.
    for p in [2744, 2746, 0, 65535, 0x0aba_u16.swap_bytes()] {
        for f in all_l4(p, 40000) {
            check(&mut g, &f, Outcome::Passed);
        }
    }
}

#[test]
fn count_mode_passes_and_counts() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings { mode: Mode::Count, ..Settings::default() });
    for f in all_l4(2745, 40000).into_iter().flat_map(wrappings) {
        check(&mut g, &f, Outcome::Counted);
    }
    for f in all_l4(443, 40000) {
        check(&mut g, &f, Outcome::Passed);
    }
}

#[test]
fn direction_selects_the_port_compared() {
    if !root_or_skip() {
        return;
    }
    for (dir, mode) in
        [(Direction::Src, Mode::Drop), (Direction::Both, Mode::Drop), (Direction::Src, Mode::Count)]
    {
        let mut g = load(Settings { direction: dir, mode, ..Settings::default() });
        let hit = if mode == Mode::Drop { Outcome::Dropped } else { Outcome::Counted };
        // Answering from 2745: an infected host's backdoor replying.
        for f in all_l4(40000, 2745) {
            check(&mut g, &f, hit);
        }
        let dst_outcome = if dir == Direction::Both { hit } else { Outcome::Passed };
        for f in all_l4(2745, 40000) {
            check(&mut g, &f, dst_outcome);
        }
        for f in all_l4(443, 40000) {
            check(&mut g, &f, Outcome::Passed);
        }
    }
}

#[test]
fn protocols_and_ports_are_configurable() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings {
        protocols: vec![Protocol::Tcp],
        ports: vec![2745, 3127],
        ..Settings::default()
    });
    check(&mut g, &Frame::tcp4(SRC4, DST4, 1, 3127), Outcome::Dropped);
    check(&mut g, &Frame::tcp6(SRC6, DST6, 1, 2745), Outcome::Dropped);
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745), Outcome::Passed);
    check(&mut g, &Frame::udp6(SRC6, DST6, 1, 3127), Outcome::Passed);
}

#[test]
fn ipv4_options_are_skipped_by_header_length() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    for words in 1..=10u8 {
        // NOPs, then an option whose bytes look like port 2745 to a parser that ignores IHL.
        let mut opts = vec![1u8; words as usize * 4];
        let n = opts.len();
        opts[n - 2] = 0x0a;
        opts[n - 1] = 0xb9;
        check(&mut g, &Frame::tcp4(SRC4, DST4, 40000, 2745).ipv4_options(&opts), Outcome::Dropped);
        check(&mut g, &Frame::udp4(SRC4, DST4, 40000, 443).ipv4_options(&opts), Outcome::Passed);
    }
}

#[test]
fn ipv6_extension_chains_are_followed() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let chains: Vec<Vec<Ext>> = vec![
        vec![Ext::HopByHop(0)],
        vec![Ext::HopByHop(1), Ext::DestOpts(0)],
        vec![Ext::HopByHop(0), Ext::Routing(2), Ext::DestOpts(0), Ext::Ah(4)],
        vec![Ext::Ah(1)],
        vec![Ext::Fragment { offset: 0, more: false, id: 7 }], // atomic fragment: a whole datagram
        // Nine headers (the first release stopped at eight and passed this one).
        vec![
            Ext::HopByHop(0),
            Ext::DestOpts(0),
            Ext::Routing(0),
            Ext::DestOpts(0),
            Ext::Ah(1),
            Ext::DestOpts(1),
            Ext::DestOpts(0),
            Ext::DestOpts(0),
            Ext::DestOpts(0),
        ],
        // MAX_IPV6_EXT_HEADERS: the deepest chain read to its end.
        [Ext::HopByHop(0)]
            .into_iter()
            .chain((1..MAX_IPV6_EXT_HEADERS).map(|i| Ext::DestOpts((i % 3) as u8)))
            .collect(),
    ];
    for chain in chains {
        let mut f = Frame::tcp6(SRC6, DST6, 40000, 2745);
        let mut u = Frame::udp6(SRC6, DST6, 40000, 443);
        for e in &chain {
            f = f.ext(e.clone());
            u = u.ext(e.clone());
        }
        for w in wrappings(f) {
            check(&mut g, &w, Outcome::Dropped);
        }
        check(&mut g, &u, Outcome::Passed);
    }
    // Deeper than followed: the ports cannot be read, and Linux follows any depth, so it
    // could reach 2745 (and other ports alike): dropped, whatever the port behind.
    for dport in [2745, 443] {
        let deep = (0..=MAX_IPV6_EXT_HEADERS)
            .fold(Frame::udp6(SRC6, DST6, 40000, dport), |f, _| f.ext(Ext::DestOpts(0)));
        for w in wrappings(deep) {
            check(&mut g, &w, Outcome::UnjudgedDropped);
        }
    }
    // No next header, ICMPv6, ESP: no ports, not malformed.
    for p in [59u8, 58, 50] {
        check(&mut g, &Frame::ip6_other(SRC6, DST6, p), Outcome::Passed);
    }
}

#[test]
fn ipv4_fragments_follow_their_first() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let id = 0x4242;
    // The first fragment carries the ports: dropped, and remembered.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 40000, 2745).payload(&[0; 16]).ipv4_fragment(0, true, id),
        Outcome::Dropped,
    );
    // The rest: no ports, the first fragment's verdict. The payload starts with bytes that
    // read as ports 443→443 to a parser that looks: they must not matter.
    let tail = Frame::ip4_other(SRC4, DST4, 17).payload(&[0x01, 0xbb, 0x01, 0xbb, 0, 0, 0, 0]);
    check(&mut g, &tail.clone().ipv4_fragment(3, true, id), Outcome::FollowedDrop);
    check(&mut g, &tail.clone().ipv4_fragment(6, false, id), Outcome::FollowedDrop);
    // Another datagram's later fragment, whose payload looks like port 2745: passes untouched
    // (xdp-filter drops this one).
    let innocent = Frame::ip4_other(SRC4, DST4, 17).payload(&[0x9c, 0x40, 0x0a, 0xb9, 0, 0, 0, 0]);
    check(&mut g, &innocent.clone().ipv4_fragment(3, false, id + 1), Outcome::Passed);
    // Same id but another protocol, or another source: another datagram.
    let tcp_tail = Frame::ip4_other(SRC4, DST4, 6).payload(&[0; 8]);
    check(&mut g, &tcp_tail.ipv4_fragment(3, false, id), Outcome::Passed);
    let other_src = Frame::ip4_other([198, 18, 0, 9], DST4, 17).payload(&[0; 8]);
    check(&mut g, &other_src.ipv4_fragment(3, false, id), Outcome::Passed);
    // A first fragment that did not match: its tail is not remembered.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 40000, 53).ipv4_fragment(0, true, 0x777),
        Outcome::Passed,
    );
    check(&mut g, &innocent.ipv4_fragment(3, false, 0x777), Outcome::Passed);
}

#[test]
fn ipv6_fragments_follow_their_first() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let first = Frame::tcp6(SRC6, DST6, 40000, 2745).syn().ext(Ext::Fragment {
        offset: 0,
        more: true,
        id: 99,
    });
    check(&mut g, &first, Outcome::Dropped);
    let tail =
        Frame::ip6_other(SRC6, DST6, 6).ext(Ext::Fragment { offset: 2, more: false, id: 99 });
    check(&mut g, &tail, Outcome::FollowedDrop);
    // With a hop-by-hop header before the fragment header, same datagram.
    let tail2 = Frame::ip6_other(SRC6, DST6, 6).ext(Ext::HopByHop(0)).ext(Ext::Fragment {
        offset: 4,
        more: false,
        id: 99,
    });
    check(&mut g, &tail2, Outcome::FollowedDrop);
    // An unrelated later fragment whose payload reads as port 2745.
    let innocent = Frame::ip6_other(SRC6, DST6, 17)
        .payload(&[0x9c, 0x40, 0x0a, 0xb9, 0, 0, 0, 0])
        .ext(Ext::Fragment { offset: 2, more: false, id: 100 });
    check(&mut g, &innocent, Outcome::Passed);

    // Count mode: the tail follows the first fragment's pass.
    let mut c = load(Settings { mode: Mode::Count, ..Settings::default() });
    check(&mut c, &first, Outcome::Counted);
    check(&mut c, &tail, Outcome::FollowedPass);
}

#[test]
fn truncated_and_bogus_headers_pass_as_malformed() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let tcp = Frame::tcp4(SRC4, DST4, 40000, 2745).syn();
    let full = tcp.build();
    // Cut anywhere inside the IPv4 or TCP header (VLAN-free frame: IP at 14, TCP at 34).
    for n in [14, 15, 20, 33, 34, 36, 40, 53] {
        check(&mut g, &tcp.clone().truncate(n), Outcome::Malformed);
    }
    assert_eq!(full.len(), 60);
    // IHL below 5, wrong version, total length below the header.
    check(&mut g, &tcp.clone().poke(14, 0x44), Outcome::Malformed);
    check(&mut g, &tcp.clone().poke(14, 0x40), Outcome::Malformed);
    check(&mut g, &tcp.clone().poke(14, 0x65), Outcome::Malformed);
    check(&mut g, &tcp.clone().poke(16, 0).poke(17, 19), Outcome::Malformed);
    // IHL claiming options that are not there.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 1, 2745).poke(14, 0x4f).truncate(60),
        Outcome::Malformed,
    );
    // A UDP header cut short.
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).truncate(14 + 20 + 6), Outcome::Malformed);
    // IPv6: short fixed header, wrong version, cut extension header, cut TCP.
    let t6 = Frame::tcp6(SRC6, DST6, 1, 2745);
    check(&mut g, &t6.clone().truncate(14 + 39), Outcome::Malformed);
    check(&mut g, &t6.clone().poke(14, 0x40), Outcome::Malformed);
    check(
        &mut g,
        &Frame::udp6(SRC6, DST6, 1, 2745).ext(Ext::HopByHop(3)).truncate(14 + 40 + 20),
        Outcome::Malformed,
    );
    check(&mut g, &t6.truncate(14 + 40 + 19), Outcome::Malformed);
    // VLAN and PPPoE cut short; a bad PPPoE header.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 1, 2745).vlan(0x8100, 1).truncate(16),
        Outcome::Malformed,
    );
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).pppoe().truncate(20), Outcome::Malformed);
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).pppoe().poke(14, 0x12), Outcome::Malformed);
    // Headers skipped rather than read must still be whole, whatever follows them: IPv4
    // options past the frame before ICMP, an IPv6 extension header cut short before ICMPv6.
    check(&mut g, &Frame::ip4_other(SRC4, DST4, 1).poke(14, 0x4f).poke(17, 60), Outcome::Malformed);
    check(
        &mut g,
        &Frame::ip6_other(SRC6, DST6, 58).ext(Ext::HopByHop(1)).truncate(14 + 40 + 8),
        Outcome::Malformed,
    );
    // A chain as deep as followed, then ICMPv6: read to its end, no ports.
    let deepest = (0..MAX_IPV6_EXT_HEADERS)
        .fold(Frame::ip6_other(SRC6, DST6, 58), |f, _| f.ext(Ext::DestOpts(0)));
    check(&mut g, &deepest, Outcome::Passed);
    // Unfragmented and deeper than followed, the last header followed cut: the stack discards
    // it.
    let cut = (0..=MAX_IPV6_EXT_HEADERS)
        .fold(Frame::udp6(SRC6, DST6, 1, 2745), |f, _| f.ext(Ext::DestOpts(1)));
    let n = cut.l4_offset() - 8 - 16 - 8;
    check(&mut g, &cut.truncate(n), Outcome::Malformed);
    // The shortest frame BPF_PROG_TEST_RUN accepts: a bare Ethernet header.
    check(&mut g, &Frame::arp().truncate(14), Outcome::Passed);
}

/// Frames that could reach a guarded port but whose ports portguard cannot read: deeper
/// VLAN stacks than followed, first fragments cut before their ports or inside their IPv6
/// chain. Linux delivers each of them to a socket (the kernel oracle, tests/oracle.rs, shows
/// it), so drop mode drops them, says so in `unjudged`, and records who sent them.
#[test]
fn unreadable_ports_fail_closed() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    // MAX_VLAN_TAGS tags are followed; one more is unjudged, whatever is inside.
    let tags = |f: Frame, n: usize| (0..n).fold(f, |f, i| f.vlan(0x8100, i as u16 + 1));
    check(&mut g, &tags(Frame::udp4(SRC4, DST4, 1, 2745), MAX_VLAN_TAGS), Outcome::Dropped);
    check(&mut g, &tags(Frame::udp4(SRC4, DST4, 1, 443), MAX_VLAN_TAGS), Outcome::Passed);
    for f in [Frame::udp4(SRC4, DST4, 1, 443), Frame::tcp6(SRC6, DST6, 1, 2745), Frame::arp()] {
        check(&mut g, &tags(f, MAX_VLAN_TAGS + 1), Outcome::UnjudgedDropped);
    }

    // A tiny IPv4 first fragment: 4 bytes of TCP are its ports, enough to judge it...
    let tiny = |dport, n, id| {
        Frame::tcp4(SRC4, DST4, 40000, dport).syn().ipv4_fragment(0, true, id).ip_payload(n)
    };
    check(&mut g, &tiny(2745, 4, 1), Outcome::Dropped);
    check(&mut g, &tiny(443, 4, 2), Outcome::Passed);
    // ... and 2 bytes are not: unjudged, and the rest of the datagram follows its drop.
    check(&mut g, &tiny(2745, 2, 3), Outcome::UnjudgedDropped);
    check(&mut g, &tiny(443, 0, 4), Outcome::UnjudgedDropped);
    let tail = |id| Frame::ip4_other(SRC4, DST4, 6).payload(&[0; 24]).ipv4_fragment(1, false, id);
    check(&mut g, &tail(3), Outcome::FollowedDrop);
    check(&mut g, &tail(4), Outcome::FollowedDrop);
    // Unfragmented, the same cut is a truncated datagram the stack discards.
    check(&mut g, &Frame::tcp4(SRC4, DST4, 1, 2745).ip_payload(2), Outcome::Malformed);

    // IPv6 first fragments: cut before the ports, or inside the chain after the fragment
    // header (RFC 7112 forbids it; Linux reassembles it anyway).
    let frag = |id| Ext::Fragment { offset: 0, more: true, id };
    let v6_tiny = Frame::udp6(SRC6, DST6, 1, 2745).ext(frag(5)).ip_payload(8 + 2);
    check(&mut g, &v6_tiny, Outcome::UnjudgedDropped);
    let v6_chain = Frame::udp6(SRC6, DST6, 1, 443).ext(frag(6)).ext(Ext::DestOpts(3));
    check(&mut g, &v6_chain.clone().ip_payload(8 + 16), Outcome::UnjudgedDropped);
    check(&mut g, &v6_chain.clone().ip_payload(8 + 1), Outcome::UnjudgedDropped);
    let v6_tail =
        |id| Frame::ip6_other(SRC6, DST6, 60).ext(Ext::Fragment { offset: 2, more: false, id });
    check(&mut g, &v6_tail(5), Outcome::FollowedDrop);
    check(&mut g, &v6_tail(6), Outcome::FollowedDrop);
    // The same chain whole, port 443: judged by its port.
    check(&mut g, &v6_chain, Outcome::Passed);

    // Who sent them is on record, with no port.
    let sources = g.sources().unwrap();
    let v4 = sources.iter().find(|s| s.addr.to_string() == "198.18.0.2").unwrap();
    assert!(v4.stats.directions.0 & DIR_UNJUDGED != 0, "{:?}", v4.stats);
    assert!(v4.stats.directions.0 & DIR_DST != 0, "{:?}", v4.stats);
    let v6s = sources.iter().find(|s| s.addr.to_string() == "2001:db8::/64").unwrap();
    assert!(v6s.stats.directions.0 & DIR_UNJUDGED != 0, "{:?}", v6s.stats);
    let t = g.totals().unwrap();
    // 3 deep VLAN stacks, 2 IPv4 and 3 IPv6 cut first fragments.
    assert_eq!(t.unjudged, 8, "{t:?}");

    // Count mode passes them; `unjudged = pass` passes them in drop mode; an allowlisted
    // source passes; a protocol that is not guarded is not our business.
    let deep = tags(Frame::udp4(SRC4, DST4, 1, 443), MAX_VLAN_TAGS + 1);
    let cut = tiny(2745, 2, 9);
    let mut c = load(Settings { mode: Mode::Count, ..Settings::default() });
    check(&mut c, &deep, Outcome::UnjudgedPassed);
    check(&mut c, &cut, Outcome::UnjudgedPassed);
    let mut p = load(Settings { unjudged: Some(Unjudged::Pass), ..Settings::default() });
    check(&mut p, &deep, Outcome::UnjudgedPassed);
    check(&mut p, &cut, Outcome::UnjudgedPassed);
    check(&mut p, &Frame::udp4(SRC4, DST4, 1, 2745), Outcome::Dropped);
    let mut a =
        load(Settings { allow: vec!["198.18.0.2/32".parse().unwrap()], ..Settings::default() });
    check(&mut a, &cut, Outcome::UnjudgedAllowed);
    // A deep VLAN stack never reaches the IP header: nobody to allow.
    check(&mut a, &deep, Outcome::UnjudgedDropped);
    let mut udp_only = load(Settings { protocols: vec![Protocol::Udp], ..Settings::default() });
    check(&mut udp_only, &cut, Outcome::Passed);
    check(&mut udp_only, &deep, Outcome::UnjudgedDropped);
    // Count mode with `unjudged = drop`: the guard counts matches and still fails closed.
    let mut cd =
        load(Settings { mode: Mode::Count, unjudged: Some(Unjudged::Drop), ..Settings::default() });
    check(&mut cd, &cut, Outcome::UnjudgedDropped);
}

/// Sources are counted per prefix: an IPv6 host rotating through its /64 is one row; an
/// IPv4-mapped IPv6 source (which Linux delivers) is an IPv6 source of its own, not the IPv4
/// host it names, and not a /64 either.
#[test]
fn sources_are_counted_per_prefix() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    for i in 1..=20u16 {
        run(&mut g, &Frame::udp6(v6([0x2001, 0xdb8, 7, 0, i, 0, 0, i]), DST6, 1, 2745).build());
    }
    run(&mut g, &Frame::udp6(v6([0x2001, 0xdb8, 8, 0, 0, 0, 0, 1]), DST6, 1, 2745).build());
    run(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).build());
    let mapped = v6([0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0002]); // ::ffff:198.18.0.2
    run(&mut g, &Frame::udp6(mapped, DST6, 1, 2745).build());
    let rows = |g: &Loaded| {
        let mut r: Vec<(String, u64)> =
            g.sources().unwrap().iter().map(|s| (s.addr.to_string(), s.stats.packets)).collect();
        r.sort();
        r
    };
    assert_eq!(
        rows(&g),
        [
            ("198.18.0.2".to_string(), 1),
            ("2001:db8:7::/64".to_string(), 20),
            ("2001:db8:8::/64".to_string(), 1),
            ("::ffff:198.18.0.2".to_string(), 1),
        ]
    );
    // Per /24 and per /128, set at run time: new rows in the new shape, the old ones kept
    // (they age out like any other).
    let mut s = g.settings().clone();
    s.v4_prefix = 24;
    s.v6_prefix = 128;
    g.apply(&s).unwrap();
    for last in [2, 77, 200] {
        run(&mut g, &Frame::udp4([198, 18, 0, last], DST4, 1, 2745).build());
    }
    run(&mut g, &Frame::udp6(SRC6, DST6, 1, 2745).build());
    let r = rows(&g);
    assert!(r.contains(&("198.18.0.0/24".to_string(), 3)), "{r:?}");
    assert!(r.contains(&("2001:db8::2".to_string(), 1)), "{r:?}");
    assert!(r.contains(&("198.18.0.2".to_string(), 1)), "{r:?}");
    assert_eq!(r.len(), 6, "{r:?}");
}

/// Past the first-sight budget (a flood of new sources), a source is admitted on evidence:
/// its second packet finds it in the sketch. One-packet spoofed sources are not (but for the
/// sketch's rare false positive).
#[test]
fn a_prober_that_comes_back_is_admitted_during_a_flood() {
    if !root_or_skip() {
        return;
    }
    // The budget is per CPU: keep every run on one.
    portguard_testkit::pin_to_cpu(0);
    let mut g = load(Settings { admit_per_slice: Some(4), ..Settings::default() });
    let mut flood_src = 0u32;
    let mut flood = |g: &mut Loaded, n: u32| {
        for _ in 0..n {
            flood_src += 1;
            let a = flood_src.to_be_bytes();
            let f = Frame::udp4([198, 18 | (a[1] & 1), a[2], a[3]], DST4, 1, 2745).build();
            let r = g
                .program()
                .unwrap()
                .test_run(TestRunOptions { data_in: Some(&f), ..Default::default() });
            assert_eq!(r.unwrap().return_value, XDP_DROP);
        }
    };
    // A slice is 67 ms: retry when one ends between the flood and the prober's packets.
    let mut admitted = None;
    for attempt in 0..20u8 {
        let before = g.totals().unwrap();
        flood(&mut g, 64);
        let prober = Frame::tcp4([198, 19, 200, attempt], DST4, 40000, 2745).syn().build();
        run(&mut g, &prober);
        run(&mut g, &prober);
        let d = portguard::counters::since(&g.totals().unwrap(), &before);
        if d.admitted_evidence == 1 && d.admitted == 1 {
            admitted = Some(attempt);
            break;
        }
    }
    let attempt = admitted.expect("no prober was admitted on evidence in 20 attempts");
    let sources = g.sources().unwrap();
    let p = sources
        .iter()
        .find(|s| s.addr.to_string() == format!("198.19.200.{attempt}"))
        .expect("the prober has a row");
    assert_eq!(p.stats.packets, 1, "its first packet was untracked, its second admitted it");
    // The flood's one-packet sources: none admitted on evidence (a false positive needs all
    // three cells of an unseen key recent: about (3 × flood / 2^21)^3). Every evidence
    // admission is a prober's, on its second packet.
    let second_packet_probers = sources
        .iter()
        .filter(|s| s.addr.to_string().starts_with("198.19.200.") && s.stats.packets == 1)
        .count() as u64;
    let t = g.totals().unwrap();
    assert!(t.admitted_evidence >= 1 && t.admitted_evidence <= second_packet_probers, "{t:?}");
}

/// The sketch's memory is counted in sources, not seconds: a prober seen once, then 400,000
/// strangers (three times the sketch's blocks), is still known when it comes back; and
/// among those strangers hardly any looks known.
#[test]
fn the_sketch_remembers_a_prober_across_a_long_flood() {
    if !root_or_skip() {
        return;
    }
    portguard_testkit::pin_to_cpu(0);
    let mut g = load(Settings { admit_per_slice: Some(32), ..Settings::default() });
    let test_run = |g: &mut Loaded, f: &[u8]| {
        let r = g
            .program()
            .unwrap()
            .test_run(TestRunOptions { data_in: Some(f), ..Default::default() });
        assert_eq!(r.unwrap().return_value, XDP_DROP);
    };
    // Each in a /64 of its own (sources are counted per /64).
    let stranger = |i: u32| {
        let src = v6([0x2001, 0xdb8, 0x1000 | (i >> 16) as u16, i as u16, 0, 0, 0, 1]);
        Frame::udp6(src, DST6, 1, 2745).build()
    };
    let mut next_stranger = 0;
    // One prober's frame right after 40 strangers have spent the first-sight budget: how it
    // was admitted, if it was. A slice that ends among those frames (67 ms; a busy machine can
    // take that long) gives a fresh budget: that frame shows nothing either way.
    let mut knock = |g: &mut Loaded, p: &[u8]| {
        for _ in 0..40 {
            next_stranger += 1;
            test_run(g, &stranger(next_stranger));
        }
        let b = g.totals().unwrap();
        test_run(g, p);
        let d = portguard::counters::since(&g.totals().unwrap(), &b);
        (d.admitted, d.admitted_evidence)
    };
    let probers: Vec<Vec<u8>> = (0..20u8)
        .map(|i| Frame::tcp4([198, 19, 201, i], DST4, 40000, 2745).syn().build())
        .collect();
    // Each prober's first frame: unknown, past the budget, no row (those that got one on a
    // fresh budget are left out).
    let fresh: Vec<&Vec<u8>> = probers.iter().filter(|p| knock(&mut g, p) == (0, 0)).collect();
    assert!(fresh.len() >= 15, "only {} of 20 probers met a spent budget", fresh.len());
    const STRANGERS: u32 = 400_000;
    let before = g.totals().unwrap();
    for i in 0..STRANGERS {
        // Numbered apart from the strangers `knock` sends.
        test_run(&mut g, &stranger(1_000_000 + i));
    }
    let flood = portguard::counters::since(&g.totals().unwrap(), &before);
    // The flood's last slice may have spent its evidence budget on the flood's own false
    // positives: the probers come back in a slice of their own, as they would after any pause.
    std::thread::sleep(std::time::Duration::from_nanos(
        2 << portguard_common::ADMISSION_SLICE_SHIFT,
    ));
    // Each comes back once: known, so admitted on evidence (or, on a fresh budget, on first
    // sight); never turned away.
    let back: Vec<(u64, u64)> = fresh.iter().map(|p| knock(&mut g, p)).collect();
    let on_evidence = back.iter().filter(|&&(a, e)| (a, e) == (1, 1)).count();
    assert!(
        back.iter().all(|&(a, _)| a == 1),
        "a prober was turned away: {back:?}; the flood: {flood:?}"
    );
    assert!(on_evidence * 10 >= fresh.len() * 8, "{on_evidence} of {} on evidence", fresh.len());
    eprintln!("{on_evidence} of {} probers admitted on evidence after the flood", fresh.len());
    let rows = g.sources().unwrap();
    let known = rows.iter().filter(|s| s.addr.to_string().starts_with("198.19.201.")).count();
    assert!(known >= fresh.len(), "{known} rows");
    // Strangers admitted on evidence are the sketch's false positives: well under 1%.
    eprintln!("{STRANGERS} strangers, {} admitted on evidence", flood.admitted_evidence);
    assert!(flood.admitted_evidence * 200 < STRANGERS as u64, "{flood:?}");
}

#[test]
fn other_traffic_passes_untouched() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    check(&mut g, &Frame::arp(), Outcome::Passed);
    check(&mut g, &Frame::arp().vlan(0x8100, 5), Outcome::Passed);
    check(&mut g, &Frame::ip4_other(SRC4, DST4, 1), Outcome::Passed); // ICMP
    check(&mut g, &Frame::ip6_other(SRC6, DST6, 58), Outcome::Passed); // ICMPv6
    // PPPoE carrying LCP, not IP.
    let mut lcp = Frame::udp4(SRC4, DST4, 1, 2745).pppoe().build();
    lcp[20] = 0xc0;
    lcp[21] = 0x21;
    let (v, d) = run(&mut g, &lcp);
    assert_eq!(outcome(v, &d), Outcome::Passed);
}

#[test]
fn allowlisted_sources_are_counted_never_dropped() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings {
        allow: vec!["198.18.0.0/30".parse::<Cidr>().unwrap(), "2001:db8::/64".parse().unwrap()],
        ..Settings::default()
    });
    for f in all_l4(2745, 40000) {
        let (v, d) = run(&mut g, &f.build());
        assert_eq!((v, d.allowed, d.matched, d.dropped), (XDP_PASS, 1, 1, 0));
    }
    check(&mut g, &Frame::udp4([198, 18, 0, 4], DST4, 1, 2745), Outcome::Dropped);
    check(
        &mut g,
        &Frame::udp6(v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 2]), DST6, 1, 2745),
        Outcome::Dropped,
    );
    let sources = g.sources().unwrap();
    assert!(
        sources.iter().any(|s| s.addr.to_string() == "198.18.0.2"),
        "allowed sources are still counted"
    );
}

#[test]
fn settings_change_at_run_time_and_counters_survive() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let f = Frame::udp4(SRC4, DST4, 1, 2745);
    check(&mut g, &f, Outcome::Dropped);
    let mut s = g.settings().clone();
    s.mode = Mode::Count;
    g.apply(&s).unwrap();
    check(&mut g, &f, Outcome::Counted);
    s.ports = vec![3127];
    g.apply(&s).unwrap();
    check(&mut g, &f, Outcome::Passed);
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 3127), Outcome::Counted);
    s.mode = Mode::Drop;
    s.allow = vec!["198.18.0.2/32".parse().unwrap()];
    g.apply(&s).unwrap();
    let (v, d) = run(&mut g, &Frame::udp4(SRC4, DST4, 1, 3127).build());
    assert_eq!((v, d.allowed), (XDP_PASS, 1));
    s.allow.clear();
    g.apply(&s).unwrap();
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 3127), Outcome::Dropped);
    let t = g.totals().unwrap();
    assert_eq!((t.seen, t.matched, t.dropped, t.allowed), (6, 5, 2, 1));
}

#[test]
fn per_source_counters_name_the_sender() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings { direction: Direction::Both, ..Settings::default() });
    let syn = Frame::tcp4(SRC4, DST4, 40000, 2745).syn();
    for _ in 0..3 {
        run(&mut g, &syn.build());
    }
    run(&mut g, &Frame::tcp4(SRC4, DST4, 40000, 2745).flags(TCP_SYN | TCP_ACK).build());
    run(&mut g, &Frame::tcp4(SRC4, DST4, 40000, 2745).flags(TCP_RST).build());
    let udp = Frame::udp6(SRC6, DST6, 2745, 5000).payload(&[0; 100]);
    run(&mut g, &udp.build());
    run(&mut g, &udp.build());
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 2);
    let v4 = sources.iter().find(|s| s.addr.to_string() == "198.18.0.2").unwrap();
    assert_eq!(v4.stats.packets, 5);
    assert_eq!(v4.stats.bytes, 5 * 60);
    assert_eq!(v4.stats.tcp_syns, 3, "SYN+ACK and RST are not connection attempts");
    assert_eq!(v4.stats.last_port, 2745);
    assert_eq!(v4.stats.directions, Directions(DIR_DST));
    assert_eq!(v4.stats.protocols, Protocols(PROTO_TCP));
    assert!(v4.stats.first_seen_ns > 0 && v4.stats.first_seen_ns <= v4.stats.last_seen_ns);
    // A host answering from 2745 is counted per address, even over IPv6 (probers per /64):
    // which of our hosts answers is the question.
    let v6s = sources.iter().find(|s| s.addr.to_string() == "2001:db8::2").unwrap();
    assert_eq!(v6s.stats.packets, 2);
    assert_eq!(v6s.stats.bytes, 2 * (14 + 40 + 8 + 100));
    assert_eq!(v6s.stats.directions, Directions(DIR_SRC), "answering from 2745");
    assert_eq!(v6s.stats.protocols, Protocols(PROTO_UDP));
    assert_eq!(v6s.stats.tcp_syns, 0);
    // Two hosts of one /64 answering are two rows; probing, they are one.
    let other = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 3]);
    run(&mut g, &Frame::udp6(other, DST6, 2745, 5000).build());
    run(&mut g, &Frame::udp6(SRC6, DST6, 40000, 2745).build());
    run(&mut g, &Frame::udp6(other, DST6, 40000, 2745).build());
    let mut rows: Vec<(String, u64)> =
        g.sources().unwrap().iter().map(|s| (s.addr.to_string(), s.stats.packets)).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("198.18.0.2".to_string(), 5),
            ("2001:db8::/64".to_string(), 2),
            ("2001:db8::2".to_string(), 2),
            ("2001:db8::3".to_string(), 1),
        ]
    );
}

#[test]
fn new_sources_are_admitted_within_budget_and_the_rest_is_counted() {
    if !root_or_skip() {
        return;
    }
    // A budget of 8 new sources per CPU per slice; 300 distinct sources arrive in a burst.
    let mut g = load(Settings { admit_per_slice: Some(8), ..Settings::default() });
    let steady = Frame::udp4([198, 19, 255, 1], DST4, 1, 2745).build();
    run(&mut g, &steady);
    for i in 0..300u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let (v, _) = run(&mut g, &Frame::udp4(src, DST4, 1, 2745).build());
        assert_eq!(v, XDP_DROP, "the drop never depends on accounting");
        if i % 50 == 0 {
            run(&mut g, &steady);
        }
    }
    let t = g.totals().unwrap();
    assert_eq!(t.dropped, 307);
    assert_eq!(t.matched, 307);
    let sources = g.sources().unwrap();
    let tracked: u64 = sources.iter().map(|s| s.stats.packets).sum();
    assert_eq!(tracked + t.untracked, 307, "every matched packet is either tracked or untracked");
    assert_eq!(t.admitted as usize, sources.len(), "every admission is one table entry");
    assert!(t.untracked > 0, "the budget held: {t:?}");
    // 300 frames take well under a second: at most a few slices' worth were admitted.
    assert!(sources.len() < 100, "{} sources admitted", sources.len());
    let s = sources.iter().find(|s| s.addr.to_string() == "198.19.255.1").unwrap();
    assert_eq!(s.stats.packets, 7, "a known source is counted exactly during a flood");
}

#[test]
fn no_frame_aborts() {
    if !root_or_skip() {
        return;
    }
    // Pseudo-random frames and mutations of valid ones (the thorough run is the fuzzer's).
    let mut g = drop_guard();
    let seeds: Vec<Vec<u8>> = all_l4(2745, 40000)
        .into_iter()
        .flat_map(wrappings)
        .map(|f| f.build())
        .chain([Frame::udp6(SRC6, DST6, 1, 2745)
            .ext(Ext::HopByHop(1))
            .ext(Ext::Fragment { offset: 0, more: true, id: 5 })
            .build()])
        .collect();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % f.len();
            f[at] = next() as u8;
        }
        let cut = 14 + (next() as usize) % (f.len() - 13);
        f.truncate(cut);
        let r = g
            .program()
            .unwrap()
            .test_run(TestRunOptions { data_in: Some(&f), ..Default::default() })
            .unwrap();
        assert!(
            r.return_value == XDP_PASS || r.return_value == XDP_DROP,
            "{} for {f:02x?}",
            r.return_value
        );
    }
}

/// A flood of one-packet sources fills the table to its bound and never pushes out a source
/// already there: two steady probers keep exact counts. Making room (what the running daemon
/// does past 90%) forgets the sources seen least recently, never the steady ones, and new
/// sources are admitted again.
#[test]
fn steady_probers_survive_a_flood_that_fills_the_table() {
    if !root_or_skip() {
        return;
    }
    let settings = Settings { admit_per_slice: Some(u32::MAX), ..Settings::default() };
    let mut g = Loaded::new(&settings, 4096).unwrap();
    let a = Frame::udp4([198, 19, 0, 1], DST4, 1, 2745).build();
    let b = Frame::tcp6(v6([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1]), DST6, 1, 2745).syn().build();
    let (mut sent_a, mut sent_b) = (0u64, 0u64);
    let flood = |g: &mut Loaded, from: u32, to: u32, sent_a: &mut u64, sent_b: &mut u64| {
        for i in from..to {
            let src = [198, 18, (i >> 8) as u8, i as u8];
            let r = g.program().unwrap().test_run(TestRunOptions {
                data_in: Some(&Frame::udp4(src, DST4, 1, 2745).build()),
                ..Default::default()
            });
            assert_eq!(r.unwrap().return_value, XDP_DROP);
            if i % 512 == 0 {
                run(g, &a);
                *sent_a += 1;
            }
            if i % 512 == 256 {
                run(g, &b);
                *sent_b += 1;
            }
        }
    };
    flood(&mut g, 0, 10_000, &mut sent_a, &mut sent_b);
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 4096, "the table is full and stays at its bound");
    let t = g.totals().unwrap();
    assert_eq!(
        t.untracked,
        10_000 + sent_a + sent_b - (sources.iter().map(|s| s.stats.packets).sum::<u64>())
    );
    assert_eq!(t.dropped, 10_000 + sent_a + sent_b);
    let find = |sources: &[Source], addr: &str| {
        sources.iter().find(|s| s.addr.to_string() == addr).map(|s| s.stats.packets)
    };
    assert_eq!(find(&sources, "198.19.0.1"), Some(sent_a));
    assert_eq!(find(&sources, "2001:db8:ffff::/64"), Some(sent_b));

    // Make room: down to 75%, the steady probers kept.
    let removed = g.make_room(&sources);
    assert_eq!(removed, 4096 - 3072);
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 3072);
    assert_eq!(find(&sources, "198.19.0.1"), Some(sent_a));
    assert_eq!(find(&sources, "2001:db8:ffff::/64"), Some(sent_b));
    // Below 90%: nothing to do.
    assert_eq!(g.make_room(&sources), 0);
    // New sources get in again, and the probers are still exact.
    flood(&mut g, 20_000, 21_500, &mut sent_a, &mut sent_b);
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 4096);
    // Source 20000 (198.18.78.32) came first after the room was made; the last, 21499, found
    // the table full again and is counted as untracked.
    assert_eq!(find(&sources, "198.18.78.32"), Some(1));
    assert_eq!(find(&sources, "198.18.83.251"), None);
    assert_eq!(find(&sources, "198.19.0.1"), Some(sent_a));
    assert_eq!(find(&sources, "2001:db8:ffff::/64"), Some(sent_b));
}

/// A full table turns new sources away without a word from the program (the daemon, which sees
/// the table and the counters, says so): each of their packets is counted as untracked, and
/// the sources already in the table keep counting.
#[test]
fn a_full_table_counts_new_sources_as_untracked() {
    if !root_or_skip() {
        return;
    }
    let settings = Settings { admit_per_slice: Some(u32::MAX), ..Settings::default() };
    let mut g = Loaded::new(&settings, 16).unwrap();
    for i in 0..200u32 {
        run(&mut g, &Frame::udp4([198, 18, 1, i as u8], DST4, 1, 2745).build());
    }
    assert_eq!(g.totals().unwrap().untracked, 184);
    assert_eq!(g.sources().unwrap().len(), 16);
    run(&mut g, &Frame::udp4([198, 18, 1, 0], DST4, 1, 2745).build());
    let first = g.sources().unwrap().into_iter().find(|s| s.addr.to_string() == "198.18.1.0");
    assert_eq!(first.map(|s| s.stats.packets), Some(2));
    assert_eq!(g.totals().unwrap().untracked, 184);
}
