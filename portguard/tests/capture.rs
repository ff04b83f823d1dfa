//! The pcapng writer against the readers admins use: tshark and tcpdump must open what it
//! writes, see every packet on its interface, and show the verdict comments.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, UNIX_EPOCH},
};

use portguard::capture::{Interface, Rotating, Writer, comment};
use portguard_testkit::frames::{Frame, v6};

/// A scratch directory, removed however the test ends.
struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("pgfp-capture-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

/// Four packets on two interfaces: IPv4 and IPv6 TCP SYNs, a UDP datagram, a long frame cut
/// to the snap length.
fn write_sample(path: &std::path::Path) {
    let ifaces = [
        Interface { name: "pg-wan".into(), description: Some("drop".into()) },
        Interface::new("pg-wan2"),
    ];
    let mut w = Writer::create(path, &ifaces, 128).unwrap();
    let t0 = UNIX_EPOCH + Duration::new(1_795_675_202, 123_456_789);
    let syn4 = Frame::tcp4([198, 18, 0, 5], [198, 18, 0, 1], 52121, 2745).syn().build();
    let syn6 = Frame::tcp6(
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 5]),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        40000,
        2745,
    )
    .syn()
    .build();
    let udp = Frame::udp4([198, 18, 0, 6], [198, 18, 0, 1], 5000, 2745).payload(b"hello").build();
    let long =
        Frame::udp4([198, 18, 0, 7], [198, 18, 0, 1], 5001, 2745).payload(&[0x5a; 400]).build();
    w.write(
        0,
        t0,
        &syn4,
        syn4.len() as u32,
        &comment("drop", "masscan", "IP ID 19830 == (dst ^ dport ^ seq) & 0xffff"),
    )
    .unwrap();
    w.write(
        1,
        t0 + Duration::from_millis(1),
        &syn6,
        syn6.len() as u32,
        &comment("drop", "nmap", "window 1024"),
    )
    .unwrap();
    w.write(
        0,
        t0 + Duration::from_millis(2),
        &udp,
        udp.len() as u32,
        &comment("count", "OS stack (UDP socket)", ""),
    )
    .unwrap();
    w.write(0, t0 + Duration::from_millis(3), &long, long.len() as u32, "").unwrap();
    w.flush().unwrap();
}

#[test]
fn tshark_reads_interfaces_addresses_ports_and_comments() {
    if !portguard_testkit::tool_or_skip("tshark") {
        return;
    }
    let dir = tmp("tshark");
    let path = dir.0.join("c.pcapng");
    write_sample(&path);
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&path)
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
        ])
        .args(["-e", "tcp.dstport", "-e", "udp.dstport", "-e", "frame.len", "-e", "frame.cap_len"])
        .args(["-e", "frame.time_epoch", "-e", "frame.comment"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert_eq!(&rows[0][..5], &["pg-wan", "198.18.0.5", "", "2745", ""]);
    assert_eq!(&rows[1][..5], &["pg-wan2", "", "2001:db8::5", "2745", ""]);
    assert_eq!(&rows[2][..5], &["pg-wan", "198.18.0.6", "", "", "2745"]);
    // Timestamps keep their nanoseconds (the interface blocks declare the resolution).
    assert!(rows[0][7].starts_with("1795675202.123456789"), "{}", rows[0][7]);
    assert!(rows[0][8].contains("portguard: drop; label: masscan; IP ID 19830"), "{}", rows[0][8]);
    assert!(rows[1][8].contains("label: nmap"), "{}", rows[1][8]);
    assert!(rows[2][8].contains("portguard: count; label: OS stack (UDP socket)"));
    assert_eq!(rows[3][8], "");
    // The long frame: cut to the capture's 128 bytes, its wire length kept.
    assert_eq!((rows[3][5], rows[3][6]), ("442", "128"));
    // No warnings about the file itself.
    assert!(!stderr.contains("appears to be damaged") && !stderr.contains("cut short"), "{stderr}");
}

#[test]
fn tcpdump_reads_it_too() {
    if !portguard_testkit::tool_or_skip("tcpdump") {
        return;
    }
    let dir = tmp("tcpdump");
    let path = dir.0.join("c.pcapng");
    write_sample(&path);
    let out = Command::new("tcpdump").args(["-nn", "-r"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tcpdump failed: {stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].contains("198.18.0.5.52121 > 198.18.0.1.2745: Flags [S]"), "{}", lines[0]);
    assert!(lines[1].contains("2001:db8::5.40000 > 2001:db8::1.2745: Flags [S]"), "{}", lines[1]);
    assert!(lines[2].contains("198.18.0.6.5000 > 198.18.0.1.2745: UDP, length 5"), "{}", lines[2]);
    // A filter works on it as on any capture.
    let out = Command::new("tcpdump").args(["-nn", "-r"]).arg(&path).arg("ip6").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn rotated_files_each_open_on_their_own() {
    if !portguard_testkit::tool_or_skip("tshark") {
        return;
    }
    let dir = tmp("rotate");
    let path = dir.0.join("r.pcapng");
    let mut r = Rotating::create(&path, &[Interface::new("pg-wan")], 256, 2_000, 3).unwrap();
    let syn = Frame::tcp4([198, 18, 0, 5], [198, 18, 0, 1], 1, 2745).syn().build();
    for _ in 0..150 {
        r.write(
            0,
            UNIX_EPOCH + Duration::from_secs(1),
            &syn,
            syn.len() as u32,
            "portguard: drop; label: zmap",
        )
        .unwrap();
    }
    r.flush().unwrap();
    let mut total = 0;
    for p in [path.clone(), r.old(1), r.old(2), r.old(3)] {
        let out = Command::new("tshark").arg("-r").arg(&p).output().unwrap();
        assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        total += String::from_utf8_lossy(&out.stdout).lines().count();
    }
    assert!(!r.old(4).exists());
    // The newest files hold the newest packets; older ones were dropped, none was split.
    assert!(
        total > 0 && total < 60 && r.rotations() > 3,
        "{total} packets kept, {} rotations",
        r.rotations()
    );
}
