//! Fingerprints against the real tools.
//!
//! - `fixtures_get_their_tools_label`: the pcaps in `tests/data/` (captured from the real
//!   tools, see its README) are classified packet by packet and source by source.
//! - `signatures_and_labels_agree_with_p0f`: p0f itself reads the same pcaps; its `raw_sig` and
//!   its label must equal portguard's signature and its reading of p0f.fp, packet by packet.
//! - `real_tools_live`: runs nmap, masscan, zmap, hping3, curl, Linux sockets and scapy in a
//!   namespace lab of its own, captures with tcpdump and classifies what arrived, so the rules
//!   are tested against today's tools and not only against our own old captures. Root only.
//!   `PORTGUARD_FIXTURES_OUT=DIR` also writes the per-tool pcaps (how the fixtures were made).
//!
//! Only what the XDP program hands to userspace is classified: TCP SYNs (SYN without ACK, RST,
//! FIN) and UDP datagrams, to port 2745.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
};
use portguard::fingerprint::{Evidence, Features, Fingerprinter, OS_STACK, P0fDb, Transport, p0f};

/// How a source's packets must be labelled.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Per {
    /// Every packet on its own.
    Every,
    /// Every packet but the first (the label needs a relation with the previous packet); the
    /// first must not carry another tool's label.
    AfterFirst,
}

struct Expect {
    /// The fixture `tests/data/<file>.pcap`.
    file: &'static str,
    /// What produced it.
    tool: &'static str,
    sources: &'static [&'static str],
    label: &'static str,
    per: Per,
}

const EXPECT: &[Expect] = &[
    Expect {
        file: "nmap-sS",
        tool: "nmap -sS (IPv4 and IPv6)",
        sources: &["198.19.5.10", "2001:db8:f5::10"],
        label: "nmap",
        per: Per::Every,
    },
    Expect {
        file: "nmap-sT",
        tool: "nmap -sT (Linux connect)",
        sources: &["198.19.5.11", "2001:db8:f5::11"],
        label: OS_STACK,
        per: Per::Every,
    },
    Expect {
        file: "nmap-sU",
        tool: "nmap -sU",
        sources: &["198.19.5.12", "2001:db8:f5::12"],
        label: "nmap",
        per: Per::Every,
    },
    Expect {
        file: "masscan",
        tool: "masscan",
        sources: &["198.19.5.13"],
        label: "masscan",
        per: Per::Every,
    },
    Expect {
        file: "zmap",
        tool: "zmap (TCP SYN and UDP)",
        sources: &["198.19.5.14"],
        label: "zmap",
        per: Per::Every,
    },
    Expect {
        file: "hping3",
        tool: "hping3 -S",
        sources: &["198.19.5.15"],
        label: "hping3",
        per: Per::Every,
    },
    Expect {
        file: "hping3-udp",
        tool: "hping3 -2 (UDP)",
        sources: &["198.19.5.23"],
        label: "hping3",
        per: Per::AfterFirst,
    },
    Expect {
        file: "linux",
        tool: "curl and UDP sockets (Linux)",
        sources: &["198.19.5.16", "2001:db8:f5::16", "198.19.5.17", "2001:db8:f5::17"],
        label: OS_STACK,
        per: Per::Every,
    },
    Expect {
        file: "mirai",
        tool: "Mirai-like (scapy)",
        sources: &["198.19.5.18"],
        label: "Mirai-like",
        per: Per::Every,
    },
    Expect {
        file: "windows",
        tool: "Windows-like (scapy)",
        sources: &["198.19.5.19", "2001:db8:f5::19"],
        label: OS_STACK,
        per: Per::Every,
    },
    Expect {
        file: "unicornscan",
        tool: "unicornscan-like (scapy)",
        sources: &["198.19.5.20"],
        label: "unicornscan-like",
        per: Per::AfterFirst,
    },
];

/// A scratch directory, removed however the test ends.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("pgfp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn expect_for(src: IpAddr) -> Option<&'static Expect> {
    EXPECT.iter().find(|e| e.sources.iter().any(|s| s.parse::<IpAddr>().unwrap() == src))
}

/// What the XDP program would hand over: a SYN or a UDP datagram to 2745.
fn handed_over(frame: &[u8]) -> Option<Features> {
    let f = Features::from_frame(frame).ok()?;
    (f.dport == 2745 && (f.is_syn() || f.transport == Transport::Udp)).then_some(f)
}

fn read_pcap(path: &Path) -> Vec<(Vec<u8>, Features)> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = PcapReader::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        if let Some(f) = handed_over(&p.data) {
            out.push((p.data.into_owned(), f));
        }
    }
    out
}

/// Classifies packets source by source, in order; returns every departure from `EXPECT`, and
/// the summary per source (for the comparison table).
fn check(fp: &Fingerprinter, packets: &[Features]) -> (Vec<String>, BTreeMap<String, String>) {
    let mut bad = Vec::new();
    let mut sources: BTreeMap<IpAddr, Evidence> = BTreeMap::new();
    let mut summaries = BTreeMap::new();
    for f in packets {
        let Some(exp) = expect_for(f.src) else {
            bad.push(format!("{}: a source no tool was run from", f.src));
            continue;
        };
        let e = sources.entry(f.src).or_default();
        let first = e.packets() == 0;
        let v = e.observe(fp, f);
        let must = exp.per == Per::Every || !first;
        if must && v.label != exp.label {
            bad.push(format!("{} ({}): packet labelled {v} (sport {})", f.src, exp.tool, f.sport));
        }
        if !must && v.is_tool() && v.label != exp.label {
            bad.push(format!("{} ({}): first packet labelled {v}", f.src, exp.tool));
        }
        // The rule that is never to be broken: an OS stack is never called a scanner.
        if exp.label == OS_STACK && v.is_tool() {
            bad.push(format!("{} ({}): an OS stack labelled as a tool: {v}", f.src, exp.tool));
        }
    }
    for (src, e) in &sources {
        let s = e.summary().unwrap();
        let exp = expect_for(*src).unwrap();
        if s.label != exp.label || s.agreeing != s.packets {
            bad.push(format!("{src} ({}): source summary {}", exp.tool, s.headline()));
        }
        summaries.insert(src.to_string(), s.headline());
    }
    (bad, summaries)
}

fn fingerprinter() -> Fingerprinter {
    // Debian's p0f database when installed: its OS labels must never override a tool rule.
    Fingerprinter::load(&[], None).unwrap()
}

#[test]
fn fixtures_get_their_tools_label() {
    let fp = fingerprinter();
    let mut failures = Vec::new();
    for exp in EXPECT {
        let path = data_dir().join(format!("{}.pcap", exp.file));
        let packets: Vec<Features> = read_pcap(&path).into_iter().map(|(_, f)| f).collect();
        assert!(!packets.is_empty(), "{}: no SYN or UDP datagram to 2745", path.display());
        for src in exp.sources {
            let src: IpAddr = src.parse().unwrap();
            assert!(packets.iter().any(|f| f.src == src), "{}: nothing from {src}", path.display());
        }
        failures.extend(check(&fp, &packets).0);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// p0f's log lines for SYNs: (client address, client port, label, raw_sig).
fn run_p0f(pcap: &Path, log: &Path) -> Vec<(IpAddr, u16, String, String)> {
    let _ = std::fs::remove_file(log);
    let out = Command::new("p0f").arg("-r").arg(pcap).arg("-o").arg(log).output().unwrap();
    assert!(out.status.success(), "p0f: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.contains("] mod=syn|")) {
        let field = |k: &str| {
            line.split('|').find_map(|p| p.strip_prefix(k)).map(str::to_string).unwrap_or_default()
        };
        let cli = field("cli=");
        let (addr, port) = cli.rsplit_once('/').unwrap();
        let label = [field("os="), field("app=")].into_iter().find(|s| !s.is_empty()).unwrap();
        rows.push((addr.parse().unwrap(), port.parse().unwrap(), label, field("raw_sig=")));
    }
    rows
}

#[test]
fn signatures_and_labels_agree_with_p0f() {
    if !portguard_testkit::tool_or_skip("p0f") {
        return;
    }
    let db = P0fDb::load_default().expect("p0f is installed but its database is not").unwrap();
    let dir = Tmp::new("p0f");
    let mut compared = 0;
    let mut failures = Vec::new();
    for exp in EXPECT {
        let path = data_dir().join(format!("{}.pcap", exp.file));
        let ours: Vec<(IpAddr, u16, String, String)> = read_pcap(&path)
            .into_iter()
            .filter(|(_, f)| f.is_syn())
            .map(|(_, f)| {
                let label = db.lookup(&f).map(|m| m.label).unwrap_or_else(|| "???".into());
                (f.src, f.sport, label, p0f::signature(&f))
            })
            .collect();
        for row in run_p0f(&path, &dir.0.join("p0f.log")) {
            compared += 1;
            if !ours.contains(&row) {
                let mine: Vec<_> = ours.iter().filter(|o| o.0 == row.0 && o.1 == row.1).collect();
                failures.push(format!("{}: p0f says {row:?}, portguard {mine:?}", exp.file));
            }
        }
    }
    assert!(compared >= 20, "p0f logged only {compared} SYNs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The README table: per tool, what portguard and p0f say. `cargo test --test fingerprint --
/// --ignored --nocapture comparison_table`.
#[test]
#[ignore = "prints the comparison table for the README"]
fn comparison_table() {
    let fp = fingerprinter();
    println!("| tool | source | portguard | p0f 3.09b |\n|---|---|---|---|");
    for exp in EXPECT {
        let packets: Vec<Features> = read_pcap(&data_dir().join(format!("{}.pcap", exp.file)))
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        let (_, summaries) = check(&fp, &packets);
        for (src, headline) in summaries {
            let src: IpAddr = src.parse().unwrap();
            let mut p0f: Vec<String> = packets
                .iter()
                .filter(|f| f.src == src && f.is_syn())
                .map(|f| {
                    fp.p0f
                        .as_ref()
                        .and_then(|db| db.lookup(f))
                        .map(|m| m.to_string())
                        .unwrap_or("???".into())
                })
                .collect();
            p0f.dedup();
            let p0f = if p0f.is_empty() {
                "(UDP: no TCP fingerprint)".to_string()
            } else {
                p0f.join("; ")
            };
            println!("| {} | {src} | {headline} | {p0f} |", exp.tool);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The live lab

const SCAN_IF: &str = "pgfps";
const TGT_IF: &str = "pgfpt";

/// Two namespaces joined by a veth pair: the tools in one, the target (198.19.5.1-4,
/// 2001:db8:f5::1) in the other. Removed when dropped.
struct NetLab {
    scan: String,
    tgt: String,
    scan_if: String,
    tgt_if: String,
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    sh(Command::new("ip").args(args))
}

impl NetLab {
    fn create() -> NetLab {
        let id = std::process::id();
        let lab = NetLab {
            scan: format!("pgfp{id}s"),
            tgt: format!("pgfp{id}t"),
            scan_if: format!("{SCAN_IF}{}", id % 1_000_000),
            tgt_if: format!("{TGT_IF}{}", id % 1_000_000),
        };
        lab.remove();
        ip(&["netns", "add", &lab.scan]);
        ip(&["netns", "add", &lab.tgt]);
        ip(&[
            "link",
            "add",
            &lab.scan_if,
            "netns",
            &lab.scan,
            "type",
            "veth",
            "peer",
            "name",
            &lab.tgt_if,
            "netns",
            &lab.tgt,
        ]);
        for n in 1..=4 {
            ip(&["-n", &lab.tgt, "addr", "add", &format!("198.19.5.{n}/24"), "dev", &lab.tgt_if]);
        }
        ip(&["-n", &lab.tgt, "addr", "add", "2001:db8:f5::1/64", "dev", &lab.tgt_if, "nodad"]);
        for n in 10..=23 {
            ip(&["-n", &lab.scan, "addr", "add", &format!("198.19.5.{n}/24"), "dev", &lab.scan_if]);
            ip(&[
                "-n",
                &lab.scan,
                "addr",
                "add",
                &format!("2001:db8:f5::{n}/64"),
                "dev",
                &lab.scan_if,
                "nodad",
            ]);
        }
        for (ns, dev) in [(&lab.scan, &lab.scan_if), (&lab.tgt, &lab.tgt_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // Checksums computed in software, so that the captures show correct ones (veth would
        // otherwise carry the partial checksums of offload). Best effort.
        let _ = lab.run(&["ethtool", "-K", &lab.scan_if, "tx", "off"]).output();
        lab
    }

    /// A command in the scanner namespace (network namespace only, as the FIELD-NOTES say).
    fn run(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.scan)).args(args);
        c.stdin(Stdio::null());
        c
    }

    fn tgt_mac(&self) -> String {
        let out = ip(&["-n", &self.tgt, "-br", "link", "show", "dev", &self.tgt_if]);
        out.split_whitespace().nth(2).expect("a MAC address in `ip -br link`").to_string()
    }

    /// tcpdump on the target side, ready when this returns.
    fn capture(&self, path: &Path) -> Child {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.tgt))
            .args(["tcpdump", "--immediate-mode", "-i", &self.tgt_if, "-U", "-s", "256", "-w"])
            .arg(path)
            .arg("dst port 2745")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "tcpdump: {line}");
        child
    }

    fn remove(&self) {
        for ns in [&self.scan, &self.tgt] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs a tool under `timeout`; its exit status is not judged (masscan never exits by itself,
/// curl fails on a closed port): what it sent is. A tool that could not run at all (timeout's
/// 125-127) is worth a note.
fn drive(lab: &NetLab, args: &[&str]) {
    let out = lab.run(args).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if matches!(out.status.code(), Some(125..=127)) {
        eprintln!(
            "note: {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

#[test]
fn real_tools_live() {
    if !portguard_testkit::root_or_skip() {
        return;
    }
    for t in ["nmap", "masscan", "zmap", "hping3", "tcpdump", "curl", "nsenter", "/usr/bin/python3"]
    {
        if !portguard_testkit::tool_or_skip(t) {
            return;
        }
    }
    let scapy = Command::new("/usr/bin/python3").args(["-c", "import scapy.all"]).output();
    assert!(
        scapy.is_ok_and(|o| o.status.success()),
        "scapy is not importable by /usr/bin/python3 (cargo xtask setup installs python3-scapy)"
    );
    let lab = NetLab::create();
    let work = Tmp::new("live");
    let pcap = work.0.join("all.pcap");
    let blocklist = work.0.join("zmap-blocklist");
    // zmap refuses to scan without a blocklist, and its default one covers 198.18.0.0/15.
    std::fs::write(&blocklist, "0.0.0.0/8\n").unwrap();
    let bl = blocklist.to_str().unwrap();
    let mac = lab.tgt_mac();
    let ifc = lab.scan_if.clone();
    let craft = data_dir().join("craft_syns.py");
    let craft = craft.to_str().unwrap();
    let mut tcpdump = lab.capture(&pcap);

    let nmap = |args: &[&str]| {
        let mut a = vec!["timeout", "60", "nmap", "-n", "-Pn", "-p", "2745", "-e", &ifc];
        a.extend_from_slice(args);
        drive(&lab, &a);
    };
    for _ in 0..2 {
        nmap(&["-sS", "-S", "198.19.5.10", "198.19.5.1"]);
        nmap(&["-6", "-sS", "-S", "2001:db8:f5::10", "2001:db8:f5::1"]);
        nmap(&["-sU", "-S", "198.19.5.12", "198.19.5.1"]);
    }
    nmap(&["-sT", "-S", "198.19.5.11", "198.19.5.1"]);
    nmap(&["-6", "-sT", "-S", "2001:db8:f5::11", "2001:db8:f5::1"]);
    nmap(&["-6", "-sU", "-S", "2001:db8:f5::12", "2001:db8:f5::1"]);
    // masscan 1.3.2 never exits after its wait: interrupted, as the FIELD-NOTES say.
    drive(
        &lab,
        &[
            "timeout",
            "-s",
            "INT",
            "6",
            "masscan",
            "198.19.5.1-198.19.5.4",
            "-p",
            "2745",
            "--rate",
            "100",
            "--adapter",
            &ifc,
            "--adapter-ip",
            "198.19.5.13",
            "--router-mac",
            &mac,
            "--wait",
            "1",
        ],
    );
    drive(
        &lab,
        &[
            "timeout",
            "30",
            "zmap",
            "-p",
            "2745",
            "-i",
            &ifc,
            "-G",
            &mac,
            "-S",
            "198.19.5.14",
            "-b",
            bl,
            "-P",
            "2",
            "-r",
            "100",
            "-c",
            "1",
            "-q",
            "198.19.5.0/30",
        ],
    );
    drive(
        &lab,
        &[
            "timeout",
            "30",
            "zmap",
            "-M",
            "udp",
            "-p",
            "2745",
            "-i",
            &ifc,
            "-G",
            &mac,
            "-S",
            "198.19.5.14",
            "-b",
            bl,
            "-r",
            "100",
            "-c",
            "1",
            "-q",
            "198.19.5.1/32",
        ],
    );
    drive(
        &lab,
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
            "198.19.5.15",
            "-I",
            &ifc,
            "198.19.5.1",
        ],
    );
    drive(
        &lab,
        &[
            "timeout",
            "30",
            "hping3",
            "-2",
            "-p",
            "2745",
            "-c",
            "3",
            "-i",
            "u100000",
            "-a",
            "198.19.5.23",
            "-I",
            &ifc,
            "198.19.5.1",
        ],
    );
    for url in ["http://198.19.5.1:2745/", "http://198.19.5.1:2745/"] {
        drive(
            &lab,
            &["timeout", "10", "curl", "-s", "--max-time", "3", "--interface", "198.19.5.16", url],
        );
    }
    drive(
        &lab,
        &[
            "timeout",
            "10",
            "curl",
            "-s",
            "-6",
            "--max-time",
            "3",
            "--interface",
            "2001:db8:f5::16",
            "http://[2001:db8:f5::1]:2745/",
        ],
    );
    let udp = "import socket\n\
               for fam, src, dst in [(socket.AF_INET, '198.19.5.17', '198.19.5.1'),\n\
                                     (socket.AF_INET6, '2001:db8:f5::17', '2001:db8:f5::1')]:\n\
               \x20   s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((src, 0))\n\
               \x20   for p in (b'hello', b''): s.sendto(p, (dst, 2745))\n";
    drive(&lab, &["timeout", "10", "/usr/bin/python3", "-c", udp]);
    for (kind, src, dsts) in [
        ("mirai", "198.19.5.18", "198.19.5.1,198.19.5.2,198.19.5.3"),
        ("windows", "198.19.5.19", "198.19.5.1"),
        ("windows6", "2001:db8:f5::19", "2001:db8:f5::1"),
        ("unicorn", "198.19.5.20", "198.19.5.1,198.19.5.2,198.19.5.1"),
    ] {
        drive(&lab, &["timeout", "30", "/usr/bin/python3", craft, &ifc, &mac, kind, src, dsts]);
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();
    drop(lab);

    let packets = read_pcap(&pcap);
    if let Some(dir) = std::env::var_os("PORTGUARD_FIXTURES_OUT") {
        write_fixtures(Path::new(&dir), &packets);
    }
    let features: Vec<Features> = packets.iter().map(|(_, f)| *f).collect();
    let (failures, summaries) = check(&fingerprinter(), &features);
    for (src, s) in &summaries {
        eprintln!("{src}: {s}");
    }
    for exp in EXPECT {
        for src in exp.sources {
            if !summaries.contains_key(*src) {
                eprintln!("note: nothing captured from {src} ({})", exp.tool);
            }
        }
    }
    let missing: Vec<&str> = EXPECT
        .iter()
        .filter(|e| !e.sources.iter().any(|s| summaries.contains_key(*s)))
        .map(|e| e.tool)
        .collect();
    assert!(missing.is_empty(), "no packets from: {}", missing.join(", "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Splits a live capture into the per-tool fixtures.
fn write_fixtures(dir: &Path, packets: &[(Vec<u8>, Features)]) {
    std::fs::create_dir_all(dir).unwrap();
    for exp in EXPECT {
        let path = dir.join(format!("{}.pcap", exp.file));
        let header =
            PcapHeader { snaplen: 256, datalink: DataLink::ETHERNET, ..PcapHeader::default() };
        let mut w = PcapWriter::with_header(File::create(&path).unwrap(), header).unwrap();
        let mut t = 0u64;
        for (frame, f) in
            packets.iter().filter(|(_, f)| expect_for(f.src).is_some_and(|e| e.file == exp.file))
        {
            // Timestamps: one packet a millisecond from an arbitrary epoch (the captures'
            // clock carries no information and would churn the files).
            t += 1;
            debug_assert!(f.dport == 2745);
            w.write_packet(&PcapPacket::new(
                Duration::from_millis(1_795_000_000_000 + t),
                frame.len() as u32,
                frame,
            ))
            .unwrap();
        }
        eprintln!("wrote {} ({t} packets)", path.display());
    }
}
