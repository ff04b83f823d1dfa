//! portguard as a router service: the unit file, the sd_notify exchange with a real
//! NOTIFY_SOCKET, Prometheus metrics scraped over real HTTP, and restarts that never let a
//! probe through.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use portguard::lab::{self, Listeners};
use portguard_testkit::{Fixture, fixture::unique, root_or_skip, wait_until};
use serde_json::Value;

fn fixture() -> Fixture {
    Fixture::new(env!("CARGO_BIN_EXE_portguard"), "pgs")
}

fn unit_for_test() -> PathBuf {
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/portguard.service"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("pg-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("portguard.service");
    std::fs::write(&path, unit.replace("/usr/bin/portguard", env!("CARGO_BIN_EXE_portguard")))
        .unwrap();
    path
}

#[test]
fn unit_file_verifies_and_is_hardened() {
    let unit = unit_for_test();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for portguard.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in {text}"));
    // README states 2.5; anything above 3 ("MEDIUM" starts at 5) is a regression.
    assert!(score <= 3.0, "exposure {score}");
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/portguard.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "--persist",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
    ] {
        assert!(raw.contains(line), "{line}");
    }
    let _ = std::fs::remove_dir_all(unit.parent().unwrap());
}

/// The sd_notify exchange with a real NOTIFY_SOCKET: READY once guarded, STATUS with the
/// drops, WATCHDOG pings, RELOADING then READY on SIGHUP, STOPPING on SIGTERM.
#[test]
fn notifies_systemd_over_a_real_socket() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let dir = std::env::temp_dir().join(unique("pg-notify-"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let config = dir.join("portguard.toml");
    std::fs::write(&config, "mode = \"drop\"\n").unwrap();
    let i = f.run_with_env(
        &["--config", config.to_str().unwrap(), "--interval", "0.2", "--no-metrics"],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    let mut msgs: Vec<String> = Vec::new();
    // Every message from `from` on is kept; waits until one of them contains `needle`.
    let recv_until_from = |msgs: &mut Vec<String>, from: usize, needle: &str| {
        let mut buf = [0u8; 1024];
        wait_until(needle, || {
            if let Ok(n) = sock.recv(&mut buf) {
                msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            msgs[from.min(msgs.len())..].iter().any(|m| m.contains(needle))
        });
    };
    let recv_until = |msgs: &mut Vec<String>, needle: &str| recv_until_from(msgs, 0, needle);
    recv_until(&mut msgs, "READY=1");
    let ready = msgs.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=guarding pg-wan (native, drop): 0 dropped"), "{ready}");
    lab::udp_send(&f.lab.out, lab::outside(false, 0), SocketAddr::new(lab::gw_v4(), 2745), 3, 32)
        .unwrap();
    recv_until(&mut msgs, "STATUS=guarding pg-wan (native, drop): 3 dropped");
    recv_until(&mut msgs, "WATCHDOG=1");
    f.daemons[i].signal(libc::SIGHUP);
    recv_until(&mut msgs, "RELOADING=1");
    let reloading = msgs.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    assert!(msgs[reloading].contains("MONOTONIC_USEC="), "{msgs:?}");
    recv_until_from(&mut msgs, reloading, "READY=1");
    f.daemons[i].signal(libc::SIGTERM);
    recv_until(&mut msgs, "STOPPING=1");
    f.daemons[i].wait();
    let _ = std::fs::remove_dir_all(dir);
}

fn scrape(ns: &str, accept: Option<&'static str>) -> String {
    lab::in_netns(ns, move || {
        let mut s = TcpStream::connect("127.0.0.1:9745").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    })
    .unwrap()
    .unwrap_or_default()
}

fn sample(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Scraped over real HTTP inside the namespace, the values match the maps, and promtool (from
/// Debian's prometheus package, unpacked by `cargo xtask setup`) accepts the exposition.
#[test]
fn metrics_over_http_match_the_maps() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let _l = Listeners::start(&f.lab.gw, 2745).unwrap();
    let i = f.run(&["--interval", "0.2", "--metrics-top", "2"]);
    wait_until("metrics", || scrape(&f.lab.gw, None).contains("200 OK"));
    for host in 0..4u8 {
        lab::udp_send(
            &f.lab.out,
            lab::outside(false, host),
            SocketAddr::new(lab::gw_v4(), 2745),
            host as u32 + 1,
            32,
        )
        .unwrap();
    }
    wait_until("10 drops in the metrics", || {
        sample(
            &scrape(&f.lab.gw, None),
            "portguard_packets_total{iface=\"pg-wan\",kind=\"dropped\"}",
        ) == Some(10)
    });
    let text = scrape(&f.lab.gw, None);
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"), "{text}");
    let stats = f.bin.stats().unwrap();
    let t = &stats["interfaces"][0]["totals"];
    assert_eq!(
        sample(&text, "portguard_packets_total{iface=\"pg-wan\",kind=\"matched\"}"),
        t["matched"].as_u64()
    );
    assert_eq!(
        sample(&text, "portguard_bytes_total{iface=\"pg-wan\",kind=\"dropped\"}"),
        t["dropped_bytes"].as_u64()
    );
    assert_eq!(sample(&text, "portguard_sources_tracked{iface=\"pg-wan\"}"), Some(4));
    // Only the top 2 sources get series: bounded cardinality.
    assert_eq!(
        text.lines().filter(|l| l.starts_with("portguard_source_packets_total{")).count(),
        2
    );
    assert_eq!(
        sample(
            &text,
            "portguard_source_packets_total{iface=\"pg-wan\",source=\"198.18.0.5\",direction=\"probing\"}"
        ),
        Some(4)
    );
    assert!(text.contains("portguard_build_info{version=\""));
    assert!(
        text.contains(
            "portguard_guard_info{iface=\"pg-wan\",xdp_mode=\"native\",mode=\"drop\",attach=\"exclusive\"} 1"
        )
    );
    // The listener in the namespace is a socket on 2745 on this "host": exported too.
    wait_until("local sockets", || {
        scrape(&f.lab.gw, None).contains(
            "portguard_local_sockets{port=\"2745\",protocol=\"udp\",state=\"unconnected\"} ",
        )
    });
    // OpenMetrics on request.
    let om = scrape(&f.lab.gw, Some("application/openmetrics-text; version=1.0.0"));
    assert!(
        om.contains("application/openmetrics-text") && om.trim_end().ends_with("# EOF"),
        "{om}"
    );
    // promtool lints the classic format.
    let body = scrape(&f.lab.gw, None);
    let body = body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let promtool = PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/portguard/prometheus/usr/bin/promtool");
    assert!(promtool.exists(), "promtool missing: run `cargo xtask setup`");
    let mut p = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Default bind is loopback only.
    f.daemons[i].signal(libc::SIGTERM);
    let stderr = String::from_utf8_lossy(&f.daemons[i].wait().stderr).into_owned();
    assert!(stderr.contains("metrics on http://127.0.0.1:9745/metrics"), "{stderr}");
}

/// A steady UDP stream to 2745 while the daemon is restarted 5 times (SIGTERM with --persist,
/// then a new start that adopts): the listener receives nothing and no per-source counter ever
/// goes backwards.
#[test]
fn restarts_never_open_a_gap() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let listeners = Listeners::start(&f.lab.gw, 2745).unwrap();
    let mut current = f.run(&["--persist", "--no-metrics"]);
    f.wait_guarded();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let sender = {
        let (out, stop, sent) = (f.lab.out.clone(), stop.clone(), sent.clone());
        thread::spawn(move || {
            // Bounded: at most 60 s or 30,000 datagrams.
            let deadline = Instant::now() + Duration::from_secs(60);
            lab::in_netns(&out, move || {
                let s =
                    std::net::UdpSocket::bind(SocketAddr::new(lab::outside(false, 2), 0)).unwrap();
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && sent.load(Ordering::Relaxed) < 30_000
                {
                    let _ = s.send_to(b"knock", SocketAddr::new(lab::gw_v4(), 2745));
                    sent.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(2));
                }
            })
            .unwrap();
        })
    };
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut last = 0;
    let mut watch = |f: &Fixture| {
        if let Some(s) = f.bin.stats()
            && let Some(p) = s["interfaces"][0]["sources"][0]["packets"].as_u64()
        {
            assert!(p >= last, "a per-source counter went backwards: {last} -> {p}");
            last = p;
            seen.lock().unwrap().push(p);
        }
    };
    for _ in 0..5 {
        watch(&f);
        f.daemons[current].signal(libc::SIGTERM);
        f.daemons[current].wait();
        watch(&f);
        current = f.run(&["--persist", "--no-metrics"]);
        let c = current;
        wait_until("adoption", || {
            let out = f.portguard(&["status", "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["interfaces"][0]["owner_pid"].as_u64() == Some(f.daemons[c].pid() as u64)
        });
        watch(&f);
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let total = sent.load(Ordering::Relaxed) as u64;
    wait_until("every datagram counted", || {
        f.bin.stats().and_then(|s| s["interfaces"][0]["sources"][0]["packets"].as_u64())
            == Some(total)
    });
    watch(&f);
    assert!(total > 100, "the stream ran: {total}");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(listeners.udp(), 0, "a probe got through during a restart");
    assert!(seen.lock().unwrap().len() >= 10);
}

/// The fleet files: promtool accepts the alert rules, and the rules and the Grafana dashboard
/// only use metrics portguard exports.
#[test]
fn fleet_rules_and_dashboard_use_real_metrics() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let rules = root.join("packaging/prometheus/portguard-alerts.yml");
    let promtool = PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/portguard/prometheus/usr/bin/promtool");
    assert!(promtool.exists(), "promtool missing: run `cargo xtask setup`");
    let out = Command::new(&promtool).args(["check", "rules"]).arg(&rules).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("packaging/grafana/portguard-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 5);
    let exported = portguard::metrics::render_classic(&portguard::metrics::Snapshot {
        ifaces: vec![portguard::metrics::IfaceMetrics {
            top: vec![portguard::counters::Source {
                addr: "198.18.0.2".parse().unwrap(),
                stats: Default::default(),
            }],
            ..Default::default()
        }],
        sockets: Some(vec![portguard::metrics::LocalSocket {
            port: 2745,
            protocol: "tcp".into(),
            state: "listen".into(),
        }]),
        socket_ports: vec![2745],
    });
    let text = std::fs::read_to_string(&rules).unwrap() + &dashboard.to_string();
    let mut used = 0;
    for (i, _) in text.match_indices("portguard_") {
        let name: String =
            text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(
            exported.contains(&format!("\n{name}{{")) || exported.contains(&format!("\n{name} ")),
            "{name} is not exported"
        );
        used += 1;
    }
    assert!(used >= 10);
}
