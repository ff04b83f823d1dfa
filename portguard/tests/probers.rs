//! Who is knocking, end to end: the real tools (nmap -sS, -sT and -sU, masscan, zmap, hping3,
//! curl and nc from the lab's Linux stack, scapy-crafted Mirai-like and Windows-like SYNs)
//! probe a guarded gateway in the namespace lab, each from an address of its own, while
//! `portguard run` guards it and `portguard capture` records the evidence. Every source must
//! get its tool's label in `stats --json` (an OS stack never a scanner's), the new-source lines
//! and the metrics must say the same, and the capture must open in tshark with the packets the
//! program counted, their addresses, ports, interface and labels. Root and the tools only.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portguard::lab::{self, GW_IF};
use portguard_testkit::{Fixture, root_or_skip, tool_or_skip, wait_until};
use serde_json::Value;

/// One tool, the source it probes from, and the label its packets must get.
struct Probe {
    tool: &'static str,
    source: &'static str,
    label: &'static str,
}

const OS_STACK: &str = "OS stack";

const PROBES: &[Probe] = &[
    Probe { tool: "nmap -sS", source: "198.18.0.20", label: "nmap" },
    Probe { tool: "nmap -6 -sS", source: "2001:db8:0:20::2", label: "nmap" },
    Probe { tool: "nmap -sT", source: "198.18.0.21", label: OS_STACK },
    Probe { tool: "nmap -sU", source: "198.18.0.22", label: "nmap" },
    Probe { tool: "masscan", source: "198.18.0.23", label: "masscan" },
    Probe { tool: "zmap", source: "198.18.0.24", label: "zmap" },
    Probe { tool: "hping3 -S", source: "198.18.0.25", label: "hping3" },
    Probe { tool: "curl", source: "198.18.0.26", label: OS_STACK },
    Probe { tool: "curl -6", source: "2001:db8:0:26::2", label: OS_STACK },
    Probe { tool: "nc", source: "198.18.0.27", label: OS_STACK },
    Probe { tool: "Mirai-like (scapy)", source: "198.18.0.28", label: "Mirai-like" },
    Probe { tool: "Windows-like (scapy)", source: "198.18.0.29", label: OS_STACK },
];

/// Packets the capture keeps of each source.
const PER_SOURCE: u64 = 3;

/// The address as `stats` shows it: IPv6 sources are counted per /64.
fn row(source: &str) -> String {
    if source.contains(':') {
        let a: std::net::Ipv6Addr = source.parse().unwrap();
        let s = a.segments();
        format!("{}/64", std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
    } else {
        source.to_string()
    }
}

/// A scratch directory, removed however the test ends.
struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a tool in the outside namespace (the network namespace only: see FIELD-NOTES). Its exit
/// status is not judged (masscan never exits by itself, curl and nc time out against a drop):
/// what it sent is.
fn drive(ns: &str, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if matches!(out.status.code(), Some(125..=127)) {
        panic!("{} could not run: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
}

fn mac(ns: &str, dev: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-br", "link", "show", "dev", dev]).output();
    let out = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    out.split_whitespace().nth(2).expect("a MAC address in `ip -br link`").to_string()
}

fn scrape(ns: &str) -> String {
    lab::in_netns(ns, || {
        let mut s = TcpStream::connect("127.0.0.1:9745").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    })
    .unwrap()
    .unwrap_or_default()
}

/// Every source in `stats --json`: (packets, fingerprint).
fn sources(f: &Fixture) -> BTreeMap<String, (u64, Value)> {
    let doc = f.json(&["stats", "--json", "--top", "100"]);
    Fixture::entry(&doc, GW_IF)["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let addr = s["address"].as_str().unwrap().to_string();
            (addr, (s["packets"].as_u64().unwrap(), s["fingerprint"].clone()))
        })
        .collect()
}

fn send_all(ns: &str, gw_mac: &str, work: &Path) {
    let ifc = "pg-peer";
    let nmap = |args: &[&str]| {
        let mut a = vec![
            "timeout",
            "60",
            "nmap",
            "-n",
            "-Pn",
            "-p",
            "2745",
            "-e",
            ifc,
            "--max-retries",
            "1",
        ];
        a.extend_from_slice(args);
        drive(ns, &a);
    };
    nmap(&["-sS", "-S", "198.18.0.20", "198.18.0.1"]);
    nmap(&["-6", "-sS", "-S", "2001:db8:0:20::2", "2001:db8::1"]);
    nmap(&["-sT", "-S", "198.18.0.21", "--host-timeout", "8s", "198.18.0.1"]);
    nmap(&["-sU", "-S", "198.18.0.22", "198.18.0.1"]);
    // masscan 1.3.2 never exits after its wait: interrupted (FIELD-NOTES).
    drive(
        ns,
        &[
            "timeout",
            "-s",
            "INT",
            "6",
            "masscan",
            "198.18.0.1",
            "-p",
            "2745",
            "--rate",
            "100",
            "--adapter",
            ifc,
            "--adapter-ip",
            "198.18.0.23",
            "--router-mac",
            gw_mac,
            "--wait",
            "1",
        ],
    );
    // zmap's default blocklist covers 198.18.0.0/15: a list of its own.
    let blocklist = work.join("zmap-blocklist");
    std::fs::write(&blocklist, "0.0.0.0/8\n").unwrap();
    drive(
        ns,
        &[
            "timeout",
            "30",
            "zmap",
            "-p",
            "2745",
            "-i",
            ifc,
            "-G",
            gw_mac,
            "-S",
            "198.18.0.24",
            "-b",
            blocklist.to_str().unwrap(),
            "-P",
            "2",
            "-r",
            "100",
            "-c",
            "1",
            "-q",
            "198.18.0.1/32",
        ],
    );
    drive(
        ns,
        &[
            "timeout",
            "30",
            "hping3",
            "-S",
            "-p",
            "2745",
            "-c",
            "3",
            "-i",
            "u100000",
            "-a",
            "198.18.0.25",
            "-I",
            ifc,
            "198.18.0.1",
        ],
    );
    drive(
        ns,
        &[
            "timeout",
            "10",
            "curl",
            "-s",
            "--max-time",
            "3",
            "--interface",
            "198.18.0.26",
            "http://198.18.0.1:2745/",
        ],
    );
    drive(
        ns,
        &[
            "timeout",
            "10",
            "curl",
            "-s",
            "-6",
            "--max-time",
            "3",
            "--interface",
            "2001:db8:0:26::2",
            "http://[2001:db8::1]:2745/",
        ],
    );
    drive(ns, &["timeout", "10", "nc", "-z", "-w", "3", "-s", "198.18.0.27", "198.18.0.1", "2745"]);
    let craft = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/craft_syns.py");
    let craft = craft.to_str().unwrap();
    for (kind, src) in [("mirai", "198.18.0.28"), ("windows", "198.18.0.29")] {
        drive(
            ns,
            &["timeout", "30", "/usr/bin/python3", craft, ifc, gw_mac, kind, src, "198.18.0.1"],
        );
    }
}

#[test]
fn every_tool_gets_its_label_and_the_capture_shows_its_packets() {
    if !root_or_skip() {
        return;
    }
    for t in
        ["nmap", "masscan", "zmap", "hping3", "curl", "nc", "tshark", "nsenter", "/usr/bin/python3"]
    {
        if !tool_or_skip(t) {
            return;
        }
    }
    let mut f = Fixture::new(env!("CARGO_BIN_EXE_portguard"), "pgpr");
    let work = Tmp(std::env::temp_dir().join(format!("pgpr-{}", std::process::id())));
    std::fs::create_dir_all(&work.0).unwrap();
    for p in PROBES {
        let a = if p.source.contains(':') {
            format!("{}/48", p.source)
        } else {
            format!("{}/24", p.source)
        };
        sh(&["ip", "-n", &f.lab.out, "addr", "add", &a, "dev", "pg-peer", "nodad"]);
    }
    let i = f.run(&["--interval", "0.5", "--top", "50"]);
    f.wait_guarded();
    wait_until("the daemon to read fingerprints", || f.daemons[i].log().contains("guarding"));

    // The capture, started before the first probe: each source's first packets.
    let pcap = work.0.join("probes.pcapng");
    let per_source = PER_SOURCE.to_string();
    let mut capture = f
        .bin
        .cmd(&[
            "capture",
            "--iface",
            GW_IF,
            "-w",
            pcap.to_str().unwrap(),
            "--per-source",
            &per_source,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(capture.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("capturing the first 3 packets of each new source on pg-wan"),
        "{first}"
    );

    let started = Instant::now();
    send_all(&f.lab.out, &mac(&f.lab.gw, GW_IF), &work.0);
    eprintln!("the tools ran for {:.0} s", started.elapsed().as_secs_f64());

    // Every source labelled as its tool, in stats --json.
    let expected: BTreeMap<String, &Probe> = PROBES.iter().map(|p| (row(p.source), p)).collect();
    let labelled = |s: &BTreeMap<String, (u64, Value)>| {
        expected.iter().all(|(a, p)| s.get(a).is_some_and(|(_, fp)| fp["label"] == p.label))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = sources(&f);
    while !labelled(&seen) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        seen = sources(&f);
    }
    let mut failures = Vec::new();
    for (a, p) in &expected {
        match seen.get(a) {
            None => failures.push(format!("{} ({a}): no packets counted", p.tool)),
            Some((_, fp)) if fp["label"] != p.label => {
                failures.push(format!("{} ({a}): labelled {fp}, expected {}", p.tool, p.label))
            }
            Some((n, fp)) => eprintln!(
                "{:<22} {a:<20} {n:>3} packets: {} ({}/{} agreed): {}",
                p.tool, fp["label"], fp["agreeing"], fp["packets"], fp["evidence"]
            ),
        }
        // An OS stack is never called a scanner, not even by one of its packets.
        if p.label == OS_STACK
            && let Some((_, fp)) = seen.get(a)
        {
            assert_ne!(fp["class"], "scanner", "{} ({a}): {fp}", p.tool);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What an admin sees (README, "What is probing us", shows this table).
    let table = f.portguard(&["stats", "--top", "20"]);
    eprintln!("{}", String::from_utf8_lossy(&table.stdout));
    assert!(String::from_utf8_lossy(&table.stdout).contains("TOOL"));
    // JSON carries the p0f-style signature and the TTL distance of TCP sources.
    let (_, zmap) = &seen["198.18.0.24"];
    assert_eq!(zmap["ttl"], 255);
    assert_eq!(zmap["ttl_distance"], 0);
    assert!(zmap["signature"].as_str().is_some_and(|s| s.starts_with("4:255+0:0:")), "{zmap}");
    assert!(zmap["evidence"].as_str().unwrap().contains("IP ID 54321"), "{zmap}");

    // The new-source lines name the tool, and the metrics count sources per tool.
    let out = f.daemons[i].out();
    assert!(
        out.lines()
            .any(|l| l.contains("198.18.0.24 probing 2745") && l.ends_with("zmap (IP ID 54321)")),
        "{out}"
    );
    let metrics = scrape(&f.lab.gw);
    for (tool, n) in [("nmap", 3), ("masscan", 1), ("zmap", 1), ("hping3", 1), ("Mirai-like", 1)] {
        let series = format!("portguard_sources{{iface=\"pg-wan\",tool=\"{tool}\"}} {n}");
        assert!(metrics.contains(&series), "missing {series}:\n{metrics}");
    }

    // The capture: stopped, then read back with tshark.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    let status = capture.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "capture: {status}: {rest}");
    assert!(rest.starts_with("captured "), "{rest}");
    assert!(!rest.contains("lost"), "nothing lost or paced at this rate: {rest}");
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "tcp.dstport",
            "-e",
            "udp.dstport",
            "-e",
            "frame.comment",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark: {stderr}");
    assert!(!stderr.contains("damaged") && !stderr.contains("cut short"), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let c: Vec<&str> = line.split('|').collect();
        assert_eq!(c.len(), 6, "{line}");
        assert_eq!(c[0], GW_IF, "{line}");
        let src = if c[1].is_empty() { row(c[2]) } else { c[1].to_string() };
        assert!(c[3] == "2745" || c[4] == "2745", "{line}");
        let p = expected.get(&src).unwrap_or_else(|| panic!("a packet from {src}: {line}"));
        assert!(
            c[5].starts_with(&format!("portguard: drop; label: {}", p.label)),
            "{} ({src}): {line}",
            p.tool
        );
        *per.entry(src).or_default() += 1;
    }
    for (a, p) in &expected {
        let counted = seen[a].0;
        assert_eq!(per.get(a).copied().unwrap_or(0), counted.min(PER_SOURCE), "{} ({a})", p.tool);
    }
}

/// The daemon's own rotating capture (`[capture]`): each new source's first packets, in a file
/// tshark reads; one capture at a time per guard (a second is refused, naming the first); a
/// capture killed without a word leaves nothing behind (its owner's upkeep stops the copying);
/// a guard with no owner, which copies nothing out, is refused.
#[test]
fn the_daemon_keeps_a_capture_and_one_capture_reads_a_guard_at_a_time() {
    if !root_or_skip() || !tool_or_skip("tshark") {
        return;
    }
    let mut f = Fixture::new(env!("CARGO_BIN_EXE_portguard"), "pgpc");
    let work = Tmp(std::env::temp_dir().join(format!("pgpc-{}", std::process::id())));
    std::fs::create_dir_all(&work.0).unwrap();
    let dir = work.0.join("capture");
    let config = work.0.join("portguard.toml");
    std::fs::write(
        &config,
        format!("[capture]\ndirectory = \"{}\"\nper_source = 2\n", dir.display()),
    )
    .unwrap();
    let i = f.run(&["--config", config.to_str().unwrap(), "--interval", "0.2"]);
    f.daemons[i].wait_log("capturing the first 2 packets of each new source");
    // A second capture of the same guard is refused, and says why.
    let out = f.portguard(&["capture", "--iface", GW_IF, "-w", "/dev/null", "--duration", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another capture is reading it"), "{err}");
    // Two sources, five datagrams each: two of each are kept.
    for host in [0, 1] {
        lab::udp_send(
            &f.lab.out,
            lab::outside(false, host),
            std::net::SocketAddr::new(lab::gw_v4(), 2745),
            5,
            40,
        )
        .unwrap();
    }
    wait_until("10 drops", || f.dropped() >= 10);
    f.daemons[i].signal(libc::SIGTERM);
    let end = f.daemons[i].wait();
    assert!(end.status.success(), "{}", String::from_utf8_lossy(&end.stderr));
    let log = String::from_utf8_lossy(&end.stderr);
    assert!(log.contains("capture closed: 4 packets written"), "{log}");
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(dir.join("portguard.pcapng"))
        .args(["-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "ip.src"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    rows.sort();
    assert_eq!(
        rows,
        ["pg-wan|198.18.0.2", "pg-wan|198.18.0.2", "pg-wan|198.18.0.3", "pg-wan|198.18.0.3"]
    );

    // A capture killed outright: its owner notices the lock is free and stops the copying.
    let j = f.run(&["--interval", "0.2"]);
    f.wait_guarded();
    wait_until("the owner", || f.owner().is_some());
    let mut c = f.bin.cmd(&["capture", "--iface", GW_IF, "-w", "/dev/null"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.kill().unwrap();
    c.wait().unwrap();
    f.daemons[j].wait_log("a capture ended without saying so");

    // A guard left in place with nobody running for it copies nothing out: a capture of it is
    // refused, and says what to do, rather than wait on an empty file.
    f.daemons[j].signal(libc::SIGTERM);
    assert!(f.daemons[j].wait().status.success());
    let k = f.run(&["--persist", "--duration", "0.5", "--no-metrics"]);
    assert!(f.daemons[k].wait().status.success());
    let out = f.portguard(&["capture", "--iface", GW_IF, "-w", "/dev/null", "--duration", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no portguard runs for it"), "{err}");
}
