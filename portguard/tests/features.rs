//! What the XDP program copies out for fingerprints (FEATURES) and captures (CAPTURE), driven
//! through BPF_PROG_TEST_RUN: the records against the reference reading of the same frame
//! (`Features::from_frame`), frame by frame, on the real tools' fixtures and on fuzzed frames;
//! which packets are copied (a source's first SYNs, only when a reader asked); the capture's
//! verdicts, pace and bytes; and a full ring buffer, which loses the record but never the
//! verdict or the counts.

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use pcap_file::pcap::PcapReader;
use portguard::{
    fingerprint::Features,
    guard::Loaded,
    settings::{Mode, Settings},
    wire::{self, Consumers},
};
use portguard_common::{
    CAPTURE_SNAP, CAPTURED_ALLOWED, CAPTURED_MATCHED, CAPTURED_UNJUDGED, CFG_CAPTURE_ALL,
    CFG_CAPTURE_NEW, CFG_FEATURES, CaptureEvent, FEATURE_FIRST, FeatureEvent, map_names,
};
use portguard_testkit::{
    XDP_DROP, XDP_PASS,
    frames::{Ext, Frame, v6},
    fuzz::Generator,
    pin_to_cpu, root_or_skip, test_run,
};

const DST4: [u8; 4] = [198, 18, 0, 1];

/// Drop mode, every IPv6 source its own row (so that a record's source is the frame's), and an
/// admission budget no test here runs out of.
fn settings() -> Settings {
    Settings { v6_prefix: 128, admit_per_slice: Some(1_000_000), ..Settings::default() }
}

fn load(c: Consumers) -> Loaded {
    // Per-CPU slots and pace: the same CPU for every run.
    pin_to_cpu(0);
    let mut g = Loaded::with_defaults(&settings()).unwrap();
    g.set_consumers(c).unwrap();
    g
}

fn features(first: u16) -> Consumers {
    Consumers { flags: CFG_FEATURES, feature_first: first, ..Consumers::default() }
}

fn ring(g: &mut Loaded, name: &str) -> RingBuf<MapData> {
    g.maps().ring(name).unwrap()
}

fn records<T: Copy>(r: &mut RingBuf<MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = r.next() {
        assert_eq!(item.len(), size_of::<T>(), "a record of the wrong size");
        // SAFETY: plain integers, one whole record.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const T) });
    }
    out
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let mut r = PcapReader::new(File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.unwrap().data.into_owned());
    }
    out
}

/// The record's reading must be the frame's, field by field.
fn same(frame: &[u8], ev: &FeatureEvent) -> Result<(), String> {
    let src = wire::source_addr(&ev.key).ip;
    let kernel = Features::from_raw(src, &ev.raw).map_err(|e| e.to_string())?;
    match Features::from_frame(frame) {
        Ok(reference) if reference == kernel => Ok(()),
        Ok(reference) => Err(format!("kernel {kernel:?}\nreference {reference:?}")),
        // A frame the reference does not read (PPPoE, deeper VLAN or extension stacks, a
        // header it calls inconsistent) has nothing to compare with.
        Err(_) => Ok(()),
    }
}

#[test]
fn records_of_the_real_tools_read_as_their_frames() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(features(u16::MAX));
    let mut r = ring(&mut g, map_names::FEATURES);
    let mut compared = 0;
    for e in std::fs::read_dir(data_dir()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "pcap") {
            continue;
        }
        for frame in pcap_frames(&path) {
            let (verdict, _) = test_run(&mut g, &frame);
            assert_eq!(verdict, XDP_DROP, "{}: every fixture probes 2745", path.display());
            let evs: Vec<FeatureEvent> = records(&mut r);
            let f = Features::from_frame(&frame).unwrap();
            // SYNs and datagrams are copied; a fixture holds nothing else.
            assert_eq!(evs.len(), 1, "{}: {f:?}", path.display());
            same(&frame, &evs[0]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            compared += 1;
        }
    }
    assert!(compared >= 40, "only {compared} fixture frames");
}

#[test]
fn records_of_fuzzed_frames_read_as_their_frames() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(features(u16::MAX));
    let mut r = ring(&mut g, map_names::FEATURES);
    let mut frames = Generator::new(0x2745_fea7);
    let (mut copied, mut failures) = (0, Vec::new());
    for n in 0..30_000 {
        let frame = frames.frame();
        test_run(&mut g, &frame);
        for ev in records::<FeatureEvent>(&mut r) {
            copied += 1;
            if let Err(e) = same(&frame, &ev) {
                failures.push(format!("frame {n} {frame:02x?}: {e}"));
            }
        }
    }
    assert!(copied > 1_000, "only {copied} records from 30,000 frames");
    assert!(failures.is_empty(), "{} of {copied} differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn only_a_sources_first_syns_and_datagrams_and_only_when_asked() {
    if !root_or_skip() {
        return;
    }
    let syn = |src: u8, sport| Frame::tcp4([198, 18, 0, src], DST4, sport, 2745).syn().build();
    // Nobody reads FEATURES: nothing is copied, not even a first SYN.
    let mut g = load(Consumers::default());
    let mut r = ring(&mut g, map_names::FEATURES);
    test_run(&mut g, &syn(2, 1000));
    assert!(records::<FeatureEvent>(&mut r).is_empty());

    let mut g = load(features(FEATURE_FIRST));
    let mut r = ring(&mut g, map_names::FEATURES);
    for i in 0..20 {
        test_run(&mut g, &syn(3, 1000 + i));
    }
    let evs: Vec<FeatureEvent> = records(&mut r);
    assert_eq!(evs.len(), FEATURE_FIRST as usize, "the first {FEATURE_FIRST} SYNs, no more");
    assert_eq!(
        evs.iter().map(|e| e.raw.sport).collect::<Vec<_>>(),
        (1000..1008).collect::<Vec<_>>()
    );
    // Not SYNs: an ACK, a SYN-ACK, a packet to another port.
    for f in [
        Frame::tcp4([198, 18, 0, 4], DST4, 1, 2745).flags(0x10).build(),
        Frame::tcp4([198, 18, 0, 4], DST4, 1, 2745).flags(0x12).build(),
        Frame::tcp4([198, 18, 0, 4], DST4, 1, 443).syn().build(),
    ] {
        test_run(&mut g, &f);
    }
    assert!(records::<FeatureEvent>(&mut r).is_empty());
    // UDP: datagrams among the source's first packets, payload prefix included.
    for _ in 0..10 {
        test_run(
            &mut g,
            &Frame::udp4([198, 18, 0, 5], DST4, 7, 2745).payload(b"hello, world").build(),
        );
    }
    let evs: Vec<FeatureEvent> = records(&mut r);
    assert_eq!(evs.len(), FEATURE_FIRST as usize);
    assert_eq!(&evs[0].raw.payload, b"hello, w");
    assert_eq!((evs[0].raw.payload_len, evs[0].raw.proto), (12, 17));
    // Untracked sources (no admission budget left) are not fingerprinted.
    let mut g = load(features(FEATURE_FIRST));
    g.apply(&Settings { admit_per_slice: Some(0), ..settings() }).unwrap();
    g.set_consumers(features(FEATURE_FIRST)).unwrap();
    let mut r = ring(&mut g, map_names::FEATURES);
    let (v, d) = test_run(&mut g, &syn(6, 1));
    assert_eq!((v, d.untracked), (XDP_DROP, 1));
    assert!(records::<FeatureEvent>(&mut r).is_empty());
}

#[test]
fn settings_changes_keep_what_the_readers_asked_for() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(features(FEATURE_FIRST));
    g.apply(&Settings { mode: Mode::Count, ..settings() }).unwrap();
    let mut r = ring(&mut g, map_names::FEATURES);
    let (v, _) = test_run(&mut g, &Frame::tcp4([198, 18, 0, 2], DST4, 1, 2745).syn().build());
    assert_eq!(v, XDP_PASS);
    assert_eq!(records::<FeatureEvent>(&mut r).len(), 1);
}

#[test]
fn a_full_ring_buffer_loses_records_not_verdicts() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(features(u16::MAX));
    let frame = Frame::tcp4([198, 18, 0, 2], DST4, 1, 2745).syn().build();
    let before = g.totals().unwrap();
    let n = 4_000;
    let res = g
        .program()
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(&frame), repeat: n, ..Default::default() })
        .unwrap();
    assert_eq!(res.return_value, XDP_DROP);
    let d = portguard::counters::since(&g.totals().unwrap(), &before);
    assert_eq!((d.seen, d.matched, d.dropped), (n as u64, n as u64, n as u64));
    let mut r = ring(&mut g, map_names::FEATURES);
    let kept = records::<FeatureEvent>(&mut r).len() as u64;
    assert!(kept > 1_000 && d.features_lost > 0, "kept {kept}, lost {}", d.features_lost);
    assert_eq!(kept + d.features_lost, n as u64, "every SYN was copied or counted lost");
}

fn capture(flags: u8, first: u16, per_slice: u32) -> Consumers {
    Consumers { flags, capture_first: first, capture_per_slice: per_slice, ..Consumers::default() }
}

#[test]
fn a_capture_takes_each_sources_first_packets_with_their_verdict() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(capture(CFG_CAPTURE_NEW, 2, 1_000));
    g.apply(&Settings { allow: vec!["198.18.0.9/32".parse().unwrap()], ..settings() }).unwrap();
    g.set_consumers(capture(CFG_CAPTURE_NEW, 2, 1_000)).unwrap();
    let mut r = ring(&mut g, map_names::CAPTURE);
    let long = Frame::udp4([198, 18, 0, 2], DST4, 7, 2745).payload(&[0xab; 400]).build();
    let syn6 = Frame::tcp6(
        v6([0x2001, 0xdb8, 0, 3, 0, 0, 0, 2]),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        9,
        2745,
    )
    .syn()
    .build();
    let allowed = Frame::tcp4([198, 18, 0, 9], DST4, 9, 2745).syn().build();
    let mut deep = Frame::udp6(
        v6([0x2001, 0xdb8, 0, 4, 0, 0, 0, 2]),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        9,
        2745,
    );
    for _ in 0..=portguard_common::MAX_IPV6_EXT_HEADERS {
        deep = deep.ext(Ext::DestOpts(0));
    }
    let deep = deep.build();
    for f in [&long, &long, &long, &syn6, &allowed, &deep] {
        test_run(&mut g, f);
    }
    let evs: Vec<CaptureEvent> = records(&mut r);
    let got: Vec<(IpAddr, u32, u32, u8, u8)> = evs
        .iter()
        .map(|e| (wire::source_addr(&e.key).ip, e.len, e.caplen, e.verdict, e.why))
        .collect();
    let v4 = |n| IpAddr::from([198, 18, 0, n]);
    let v6a = |n| IpAddr::from(v6([0x2001, 0xdb8, 0, n, 0, 0, 0, 2]));
    let snap = CAPTURE_SNAP as u32;
    assert_eq!(
        got,
        [
            // The first two of three: the third is past `capture_first`.
            (v4(2), long.len() as u32, snap, XDP_DROP as u8, CAPTURED_MATCHED),
            (v4(2), long.len() as u32, snap, XDP_DROP as u8, CAPTURED_MATCHED),
            (v6a(3), syn6.len() as u32, syn6.len() as u32, XDP_DROP as u8, CAPTURED_MATCHED),
            (v4(9), allowed.len() as u32, allowed.len() as u32, XDP_PASS as u8, CAPTURED_ALLOWED),
            (v6a(4), deep.len() as u32, deep.len() as u32, XDP_DROP as u8, CAPTURED_UNJUDGED),
        ]
    );
    assert_eq!(&evs[0].data[..], &long[..CAPTURE_SNAP], "the frame as the program saw it");
    assert_eq!(&evs[2].data[..syn6.len()], &syn6[..]);
    assert!(evs.iter().all(|e| e.ts_ns > 0));
}

#[test]
fn a_capture_is_paced_and_a_full_buffer_is_counted() {
    if !root_or_skip() {
        return;
    }
    // Every packet, at most 3 per CPU per slice: the rest are counted as paced.
    let mut g = load(capture(CFG_CAPTURE_ALL, 0, 3));
    let mut r = ring(&mut g, map_names::CAPTURE);
    let frame = Frame::tcp4([198, 18, 0, 2], DST4, 1, 2745).syn().build();
    let before = g.totals().unwrap();
    for _ in 0..10 {
        assert_eq!(test_run(&mut g, &frame).0, XDP_DROP);
    }
    let d = portguard::counters::since(&g.totals().unwrap(), &before);
    let kept = records::<CaptureEvent>(&mut r).len() as u64;
    // A slice (67 ms) may turn over during the loop: then a few more get through.
    assert!((3..=6).contains(&kept) && kept + d.captures_paced == 10, "{kept} kept, {d:?}");

    // No pace to speak of, and a buffer nobody drains: the rest are lost, and counted.
    let mut g = load(capture(CFG_CAPTURE_ALL, 0, u32::MAX));
    let before = g.totals().unwrap();
    let n = 5_000;
    let res = g
        .program()
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(&frame), repeat: n, ..Default::default() })
        .unwrap();
    assert_eq!(res.return_value, XDP_DROP);
    let d = portguard::counters::since(&g.totals().unwrap(), &before);
    assert_eq!((d.matched, d.dropped), (n as u64, n as u64));
    let mut r = ring(&mut g, map_names::CAPTURE);
    let kept = records::<CaptureEvent>(&mut r).len() as u64;
    assert!(kept > 1_000 && kept + d.captures_lost == n as u64, "{kept} kept, {d:?}");
}

#[test]
fn the_verifier_has_room_to_spare() {
    if !root_or_skip() {
        return;
    }
    let mut g = Loaded::with_defaults(&settings()).unwrap();
    let n = g.program().unwrap().info().unwrap().verified_instruction_count().unwrap();
    eprintln!("verified instructions: {n}");
    // The limit is 1,000,000. The parser alone takes about 460,000 on Linux 6.18; the copy-out
    // path is a program of its own so that it does not add per parse path (copy.rs).
    assert!(n < 600_000, "{n}");
}
