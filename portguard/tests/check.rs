//! `portguard check` against real sockets in throwaway network namespaces: the kernel's
//! NETLINK_SOCK_DIAG answer, the /proc inode lookup, and the binary's exit codes and output.
//!
//! Every test makes its own lab (unique names), so they run in parallel; traffic stays on the
//! lab's veth, between 198.18.0.0/15 and 2001:db8::/32 addresses. Needs root.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use portguard::{
    check::{self, Family, Protocol, Report, Socket},
    lab::{self, Lab},
};
use portguard_testkit::{root_or_skip, wait_until};

const PORT: u16 = 2745;

fn lab(n: u32) -> Lab {
    Lab::create(&format!("pgck{}-{n}", std::process::id())).expect("creating the lab")
}

fn portguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portguard")).args(args).output().expect("running portguard")
}

/// The sockets of `report` with this protocol, family and state on local or remote `addr`.
fn find<'a>(
    report: &'a Report,
    protocol: Protocol,
    family: Family,
    state: &str,
    addr: SocketAddr,
) -> Vec<&'a Socket> {
    report
        .sockets
        .iter()
        .filter(|s| s.protocol == protocol && s.family == family && s.state == state)
        .filter(|s| s.local() == addr || s.remote() == addr)
        .collect()
}

fn assert_owned_by(sockets: &[&Socket], pid: u32, what: &str) {
    assert_eq!(sockets.len(), 1, "{what}: expected one socket, got {sockets:#?}");
    let s = sockets[0];
    assert!(s.owner_visible, "{what}: owner not found: {s:#?}");
    assert!(s.inode != 0, "{what}: {s:#?}");
    assert!(s.processes.iter().any(|p| p.pid == pid), "{what}: pid {pid} missing: {s:#?}");
    assert_eq!(s.uid, 0, "{what}");
    assert_eq!(s.user, "root", "{what}");
}

#[test]
fn reports_listeners_bound_udp_and_outbound_connections() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(1);
    let me = std::process::id();
    let v4 = SocketAddr::new(lab::gw_v4(), PORT);
    let v6 = SocketAddr::new(lab::gw_v6(), PORT);
    let peer = SocketAddr::new(lab::outside(false, 0), PORT);
    let _tcp4 = lab::in_netns(&lab.gw, move || TcpListener::bind(v4)).unwrap().unwrap();
    let _tcp6 = lab::in_netns(&lab.gw, move || TcpListener::bind(v6)).unwrap().unwrap();
    let _udp4 = lab::in_netns(&lab.gw, move || UdpSocket::bind(v4)).unwrap().unwrap();
    let _udp6 = lab::in_netns(&lab.gw, move || UdpSocket::bind(v6)).unwrap().unwrap();
    // An outbound connection from the gateway to 2745 outside: only its REMOTE port is 2745.
    let _server = lab::in_netns(&lab.out, move || TcpListener::bind(peer)).unwrap().unwrap();
    let client =
        lab::in_netns(&lab.gw, move || TcpStream::connect_timeout(&peer, Duration::from_secs(5)))
            .unwrap()
            .unwrap();

    let report = check::scan(&[PORT], Some(&lab.gw)).unwrap();
    assert!(!report.clean);
    assert_eq!(report.ports, vec![PORT]);
    assert_eq!(report.netns.as_deref(), Some(lab.gw.as_str()));
    assert_owned_by(&find(&report, Protocol::Tcp, Family::Ipv4, "listen", v4), me, "tcp4 listen");
    assert_owned_by(&find(&report, Protocol::Tcp, Family::Ipv6, "listen", v6), me, "tcp6 listen");
    assert_owned_by(
        &find(&report, Protocol::Udp, Family::Ipv4, "unconnected", v4),
        me,
        "udp4 bound",
    );
    assert_owned_by(
        &find(&report, Protocol::Udp, Family::Ipv6, "unconnected", v6),
        me,
        "udp6 bound",
    );
    let out = find(&report, Protocol::Tcp, Family::Ipv4, "established", peer);
    assert_owned_by(&out, me, "tcp4 outbound");
    assert_eq!(out[0].local(), client.local_addr().unwrap());
    assert_eq!(out[0].remote(), peer);
    // The listener's remote side is empty, and nothing else is in this namespace.
    let l = find(&report, Protocol::Tcp, Family::Ipv4, "listen", v4)[0];
    assert_eq!((l.remote_port, l.remote_address.is_unspecified()), (0, true));
    assert_eq!(report.sockets.len(), 5, "{:#?}", report.sockets);

    // Another port: the same sockets do not count.
    let other = check::scan(&[2746], Some(&lab.gw)).unwrap();
    assert!(other.clean && other.sockets.is_empty(), "{other:#?}");
}

/// Kills the child it holds when dropped, so a failed assertion leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reports_another_process_by_pid_and_name() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(2);
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let script = "import socket, sys, time\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  s.bind(('198.18.0.1', 2745))\n\
                  print('ready', flush=True)\n\
                  sys.stdin.read()\n";
    // Only the network namespace changes; nsenter execs python, so the pid is the child's.
    let mut child = Reaped(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.gw))
            .args([python, "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning nsenter python3"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let report = check::scan(&[PORT], Some(&lab.gw)).unwrap();
    let v4 = SocketAddr::new(lab::gw_v4(), PORT);
    let found = find(&report, Protocol::Udp, Family::Ipv4, "unconnected", v4);
    assert_owned_by(&found, child.0.id(), "python's udp socket");
    let p = &found[0].processes[0];
    assert!(p.name.starts_with("python3"), "{p:#?}");
    assert!(p.cmdline.contains("-c import socket"), "{p:#?}");
    assert!(!p.cmdline.contains('\0'));
}

#[test]
fn clean_namespace_exits_0_and_a_listener_exits_1() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(3);
    let report = check::scan(&[PORT], Some(&lab.gw)).unwrap();
    assert!(report.clean && report.sockets.is_empty(), "{report:#?}");

    let out = portguard(&["check", "--netns", &lab.gw]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("nothing in network namespace {} uses port 2745\n", lab.gw));

    let out = portguard(&["check", "--netns", &lab.gw, "--port", "2745", "-p", "8080"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("uses ports 2745, 8080"), "{out:?}");

    let addr = SocketAddr::new(lab::gw_v6(), PORT);
    let _l = lab::in_netns(&lab.gw, move || TcpListener::bind(addr)).unwrap().unwrap();
    let out = portguard(&["check", "--netns", &lab.gw]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for col in ["PROTO", "STATE", "LOCAL", "REMOTE", "PID", "USER", "PROCESS", "COMMAND"] {
        assert!(lines[0].contains(col), "{stdout}");
    }
    // Aligned: each column starts where its heading does.
    let row = lines[1];
    assert!(row.starts_with("tcp6 "), "{stdout}");
    let at = lines[0].find("PID").unwrap();
    assert!(row[at..].starts_with(&std::process::id().to_string()), "{stdout}");
    let at = lines[0].find("STATE").unwrap();
    assert!(row[at..].starts_with("listen"), "{stdout}");
    assert!(row.contains("[2001:db8::1]:2745"), "{stdout}");
    assert_eq!(lines[2], format!("1 socket in network namespace {} uses port 2745", lab.gw));
}

#[test]
fn json_has_the_documented_fields() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(4);
    let addr = SocketAddr::new(lab::gw_v4(), PORT);
    let listener = lab::in_netns(&lab.gw, move || TcpListener::bind(addr)).unwrap().unwrap();
    let out = portguard(&["check", "--json", "--netns", &lab.gw]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    portguard_testkit::schema::validate("check", &doc);
    assert_eq!(doc["version"], 1);
    assert!(doc["generated_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{doc}");
    assert!(doc["generated_at_unix"].as_u64().is_some_and(|t| t > 1_700_000_000), "{doc}");
    assert_eq!(doc["ports"], serde_json::json!([2745]));
    assert_eq!(doc["clean"], false);
    assert_eq!(doc["netns"], lab.gw.as_str());
    let sockets = doc["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 1, "{doc:#}");
    let s = &sockets[0];
    assert_eq!(s["protocol"], "tcp");
    assert_eq!(s["family"], "ipv4");
    assert_eq!(s["state"], "listen");
    assert_eq!(s["local_address"], "198.18.0.1");
    assert_eq!(s["local_port"], 2745);
    assert_eq!(s["remote_address"], "0.0.0.0");
    assert_eq!(s["remote_port"], 0);
    assert!(s["inode"].as_u64().is_some_and(|i| i > 0), "{s:#}");
    assert_eq!(s["uid"], 0);
    assert_eq!(s["user"], "root");
    assert_eq!(s["owner_visible"], true);
    assert!(s["owner_note"].is_null(), "{s:#}");
    let p = &s["processes"][0];
    assert_eq!(p["pid"], std::process::id());
    assert!(p["name"].as_str().is_some_and(|n| !n.is_empty()), "{p:#}");
    assert!(p["cmdline"].is_string(), "{p:#}");

    drop(listener);
    let out = portguard(&["check", "--json", "--netns", &lab.gw]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    portguard_testkit::schema::validate("check", &doc);
    assert_eq!(doc["clean"], true);
    assert_eq!(doc["sockets"], serde_json::json!([]));
}

#[test]
fn errors_exit_2_with_one_line() {
    let missing = format!("pgck{}-none", std::process::id());
    for args in [
        vec!["check", "--port", "0"],
        vec!["check", "--port", "70000"],
        vec!["check", "--port", "x"],
        vec!["check", "--netns", missing.as_str()],
        vec!["check", "--netns", "../../etc"],
        vec!["check", "--bogus"],
    ] {
        let out = portguard(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("portguard: error: "), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Without --netns, check looks at its own namespace: run inside a lab namespace, it answers
/// for that namespace alone, clean and then not.
#[test]
fn own_namespace_scan_answers_for_it() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(9);
    let own = |json: bool| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", lab.gw))
            .arg(env!("CARGO_BIN_EXE_portguard"))
            .arg("check");
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let out = own(true);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    portguard_testkit::schema::validate("check", &doc);
    assert_eq!(
        (doc["clean"].clone(), doc["netns"].clone()),
        (true.into(), serde_json::Value::Null)
    );
    let v4 = SocketAddr::new(lab::gw_v4(), PORT);
    let _udp = lab::in_netns(&lab.gw, move || UdpSocket::bind(v4)).unwrap().unwrap();
    let out = own(true);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    portguard_testkit::schema::validate("check", &doc);
    assert_eq!(doc["clean"], false);
    assert_eq!(doc["sockets"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(own(false).status.code(), Some(1));
}

#[test]
fn sockets_without_a_process_are_listed_not_dropped() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(5);
    let peer = SocketAddr::new(lab::outside(false, 1), PORT);
    let server = lab::in_netns(&lab.out, move || TcpListener::bind(peer)).unwrap().unwrap();
    let client =
        lab::in_netns(&lab.gw, move || TcpStream::connect_timeout(&peer, Duration::from_secs(5)))
            .unwrap()
            .unwrap();
    let local = client.local_addr().unwrap();
    let (accepted, _) = server.accept().unwrap();
    // The gateway closes first, so its end waits in TIME-WAIT, owned by no process.
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    drop(accepted);

    let mut waiting = Vec::new();
    wait_until("the TIME-WAIT socket", || {
        let report = check::scan(&[PORT], Some(&lab.gw)).unwrap();
        waiting = report
            .sockets
            .into_iter()
            .filter(|s| s.state == "time-wait" && s.local() == local && s.remote() == peer)
            .collect();
        !waiting.is_empty()
    });
    assert_eq!(waiting.len(), 1, "{local} -> {peer}: {waiting:#?}");
    let s = &waiting[0];
    assert!(!s.owner_visible && s.processes.is_empty(), "{s:#?}");
    assert!(s.owner_note.is_some(), "{s:#?}");

    let out = portguard(&["check", "--netns", &lab.gw]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let row = stdout.lines().find(|l| l.contains("time-wait")).expect("a time-wait row");
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[4], "-", "{stdout}");
    assert!(row.contains("(none: closed, held by the kernel)"), "{stdout}");
}

#[test]
fn reports_a_connection_attempt_in_syn_sent() {
    if !root_or_skip() {
        return;
    }
    let lab = lab(6);
    // An address on the lab's link that nobody answers for: the SYN never leaves the veth, and
    // the socket stays in SYN-SENT while the kernel retries.
    let nobody = SocketAddr::new(std::net::Ipv4Addr::new(198, 18, 0, 200).into(), PORT);
    let socket = lab::in_netns(&lab.gw, move || -> std::io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        match s.connect(&nobody.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
            Err(e) => Err(e),
            Ok(()) => Err(std::io::Error::other("connected to nobody")),
        }
    })
    .unwrap()
    .unwrap();
    let report = check::scan(&[PORT], Some(&lab.gw)).unwrap();
    let found = find(&report, Protocol::Tcp, Family::Ipv4, "syn-sent", nobody);
    assert_owned_by(&found, std::process::id(), "tcp4 syn-sent");
    assert_eq!(found[0].local(), socket.local_addr().unwrap().as_socket().unwrap());
}
