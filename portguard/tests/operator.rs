//! The operator's verbs end to end: `run` (pinned, adopted, persisted), `stats`, `status`,
//! `set`, `detach`, the config file and SIGHUP, against a guard in a namespace pair with real
//! traffic. Each test has its own pin root and namespaces.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use portguard::lab::{self, GW_IF, Listeners};
use portguard_testkit::{Fixture, fixture::unique, root_or_skip, wait_until};
use serde_json::Value;

fn fixture() -> Fixture {
    Fixture::new(env!("CARGO_BIN_EXE_portguard"), "pgo")
}

fn iface_entry(doc: &Value, iface: &str) -> Value {
    Fixture::entry(doc, iface)
}

#[test]
fn stats_status_set_detach_on_a_running_guard() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let listeners = Listeners::start(&f.lab.gw, 2745).unwrap();
    let run = f.run(&["--interval", "0.2"]);
    f.wait_guarded();
    f.probe(0, 5);
    f.probe(3, 2);
    wait_until("14 drops", || f.dropped() == 14);

    // stats --json: totals and sources with documented fields.
    // (Fixture::json validates each document against docs/schema/ too.)
    let doc = f.json(&["stats", "--json"]);
    assert_eq!(doc["version"], 1);
    assert!(doc["generated_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{doc}");
    assert!(doc["generated_at_unix"].as_u64().is_some(), "{doc}");
    let e = iface_entry(&doc, GW_IF);
    assert_eq!(e["mode"], "drop");
    assert_eq!(e["xdp_mode"], "native");
    assert_eq!(e["ports"], serde_json::json!([2745]));
    assert_eq!(e["totals"]["dropped"], 14);
    assert_eq!(e["sources_tracked"], 4);
    let top = &e["sources"][0];
    let v6 = lab::outside_source(true, 0);
    assert!(top["address"] == "198.18.0.2" || top["address"] == v6.as_str(), "{top}");
    assert_eq!(top["prefix_len"], if top["address"] == "198.18.0.2" { 32 } else { 64 });
    assert_eq!(top["packets"], 5);
    assert_eq!(
        top["bytes"],
        5 * (if top["address"] == "198.18.0.2" { 14 + 20 + 8 + 64 } else { 14 + 40 + 8 + 64 })
    );
    assert_eq!(top["direction"], "probing");
    assert_eq!(top["protocols"], serde_json::json!(["udp"]));
    assert_eq!(top["last_port"], 2745);
    for key in [
        "rate_pps",
        "first_seen",
        "first_seen_unix",
        "last_seen",
        "last_seen_unix",
        "last_seen_age_seconds",
        "tcp_syns",
    ] {
        assert!(top.get(key).is_some(), "missing {key}: {top}");
    }
    assert!(top["first_seen"].as_str().unwrap().ends_with('Z'));
    // Whole seconds, as integers (not 1795675202.0), like status's guarded_since_unix.
    for key in ["first_seen_unix", "last_seen_unix"] {
        assert!(top[key].is_u64(), "{key} is an integer: {top}");
    }
    // --top and --sort.
    let doc = f.json(&["stats", "--json", "--top", "2", "--sort", "last-seen"]);
    assert_eq!(iface_entry(&doc, GW_IF)["sources"].as_array().unwrap().len(), 2);
    // The table for people.
    let out = f.portguard(&["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.0.5") && text.contains("probing 2745"), "{text}");
    // One reading has no rates: none is printed (not "0/s"); with --interval there are.
    assert!(text.contains("seen ") && !text.contains("/s)"), "{text}");
    let out = f.portguard(&["stats", "--interval", "0.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/s)"), "{text}");

    // status: times in UTC with the zone shown, as in the logs.
    let text = String::from_utf8_lossy(&f.portguard(&["status"]).stdout).to_string();
    let since = text.split("  since ").nth(1).and_then(|t| t.split(' ').next()).unwrap();
    assert!(since.len() == 20 && since.ends_with('Z') && since.contains('T'), "{text}");
    let doc = f.json(&["status", "--json"]);
    assert_eq!(doc["version"], 1);
    assert!(doc["generated_at_unix"].is_u64(), "{doc}");
    let s = iface_entry(&doc, GW_IF);
    assert_eq!(s["mode"], "drop");
    assert_eq!(s["protocols"], serde_json::json!(["tcp", "udp"]));
    assert_eq!(s["direction"], "dst");
    assert!(s["program_id"].as_u64().unwrap() > 0);
    // The owner is the portguard that nsenter exec()s into: the same pid.
    assert_eq!(s["owner_pid"].as_u64().unwrap(), f.daemons[run].pid() as u64);
    assert!(s["guarded_since_unix"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(s["source_capacity"], 65536);

    // set: count mode lets probes through, counters are kept.
    let out =
        f.portguard(&["set", "--mode", "count", "--add-port", "3127", "--allow", "198.18.0.0/30"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("count tcp+udp dst port 2745,3127, allow 198.18.0.0/30")
    );
    f.probe(1, 3);
    wait_until("count mode to deliver 6 datagrams", || listeners.udp() >= 6);
    assert_eq!(listeners.udp(), 6, "count mode delivers");
    let doc = f.json(&["stats", "--json"]);
    let e = iface_entry(&doc, GW_IF);
    assert_eq!(e["totals"]["dropped"], 14, "counters survive set");
    assert_eq!(e["totals"]["matched"], 20);
    assert_eq!(e["mode"], "count");
    let doc = f.json(&["status", "--json"]);
    assert_eq!(iface_entry(&doc, GW_IF)["ports"], serde_json::json!([2745, 3127]));
    assert_eq!(iface_entry(&doc, GW_IF)["allow"], serde_json::json!(["198.18.0.0/30"]));
    // The running daemon follows the change.
    wait_until("the daemon to show count mode", || f.daemons[run].out().contains("mode=count"));
    let out = f.portguard(&[
        "set",
        "--mode",
        "drop",
        "--remove-port",
        "3127",
        "--disallow",
        "198.18.0.0/30",
    ]);
    assert!(out.status.success(), "{out:?}");

    // detach: removes everything; the daemon honours the request and exits with 3 (detached
    // on request: not a failure, and not to be restarted).
    let out = f.portguard(&["detach", "--iface", GW_IF]);
    assert!(out.status.success(), "{out:?}");
    assert!(!f.attached());
    assert!(!f.dir.exists());
    let out = f.daemons[run].wait();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("detached by `portguard detach`"), "{stderr}");
    assert!(!f.attached(), "nothing brought it back");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("iface=pg-wan") && stdout.contains("mode=count"),
        "the daemon saw the set: {stdout}"
    );
    assert!(stdout.contains("new source on pg-wan: 198.18.0.2 probing 2745 (udp)"), "{stdout}");
}

#[test]
fn persist_then_adopt_keeps_counters_and_never_unguards() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let listeners = Listeners::start(&f.lab.gw, 2745).unwrap();
    let first = f.run(&["--persist"]);
    f.wait_guarded();
    f.probe(0, 4);
    // probe() sends over IPv4 and IPv6: 8 datagrams.
    wait_until("8 drops", || f.dropped() == 8);
    f.daemons[first].signal(libc::SIGTERM);
    let out = f.daemons[first].wait();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("left pg-wan guarded"));
    // Still attached with nobody running: probes are still dropped.
    assert!(f.attached());
    f.probe(0, 4);
    wait_until("16 drops", || f.dropped() == 16);
    assert_eq!(f.owner(), None);
    // kill -9 of a new owner also leaves the guard in place. It asks for another table size,
    // which an adopted guard cannot take: it says so.
    let second = f.run(&["--persist", "--sources", "1024"]);
    f.daemons[second].wait_log("adopted the guard left on pg-wan");
    f.daemons[second].wait_log(
        "pg-wan: kept its table of 65536 sources (--sources 1024 is not applied to a guard already in place",
    );
    f.daemons[second].signal(libc::SIGKILL);
    let _ = f.daemons[second].wait();
    assert!(f.attached());
    f.probe(0, 4);
    wait_until("24 drops", || f.dropped() == 24);
    // A third start, by hand without --persist, adopts it, says so, and leaves it in place at
    // the end: a guard someone left is not removed by a run that happened by.
    let third = f.run(&[]);
    f.daemons[third].wait_log("adopted the guard left on pg-wan");
    f.daemons[third].wait_log("it stays in place when this run ends");
    wait_until("24 drops", || f.dropped() == 24);
    f.daemons[third].signal(libc::SIGINT);
    let out = f.daemons[third].wait();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("left pg-wan guarded"));
    assert!(f.attached());
    // Asked to, a run detaches what it adopted.
    let fourth = f.run(&["--detach-on-exit"]);
    f.daemons[fourth].wait_log("it is detached when this run ends");
    f.daemons[fourth].signal(libc::SIGINT);
    let out = f.daemons[fourth].wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("detached from pg-wan"), "{stderr}");
    assert!(!f.attached());
    assert_eq!(listeners.udp(), 0, "no probe ever got through");
}

/// A router's WAN interface goes away (PPP hang-up, driver reset) and comes back: the daemon
/// says so, keeps its counters, and guards it again without being told.
#[test]
fn a_deleted_interface_is_guarded_again_when_it_returns() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let listeners = Listeners::start(&f.lab.gw, 2745).unwrap();
    let run = f.run(&["--interval", "0.2"]);
    f.wait_guarded();
    f.probe(0, 2);
    wait_until("4 drops", || f.dropped() == 4);
    f.lab.unplug().unwrap();
    f.daemons[run].wait_log("pg-wan went away");
    f.lab.plug().unwrap();
    f.daemons[run].wait_log("pg-wan is back: guarding it again (native XDP), counters kept");
    assert!(f.attached());
    f.probe(1, 2);
    wait_until("8 drops: counted on top of the old ones", || f.dropped() == 8);
    assert_eq!(listeners.udp(), 0);
    f.daemons[run].signal(libc::SIGTERM);
    let out = f.daemons[run].wait();
    assert!(out.status.success(), "{out:?}");
    assert!(!f.attached());
}

#[test]
fn a_second_run_watches_instead_of_attaching_twice() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let owner = f.run(&[]);
    f.wait_guarded();
    let watcher = f.run(&["--mode", "count", "--duration", "1"]);
    let out = f.daemons[watcher].wait();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already guarded by a running portguard"), "{stderr}");
    // The watcher changed nothing and detached nothing.
    assert!(f.attached());
    let doc = f.json(&["status", "--json"]);
    assert_eq!(iface_entry(&doc, GW_IF)["mode"], "drop");
    f.daemons[owner].signal(libc::SIGTERM);
    let out = f.daemons[owner].wait();
    assert!(out.status.success());
    assert!(!f.attached());
}

#[test]
fn config_file_flags_override_and_sighup_reloads() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let dir = tempdir();
    let path = dir.join("portguard.toml");
    std::fs::write(&path, "mode = \"count\"\nports = [2745, 3127]\n[output]\ninterval = 0.2\n")
        .unwrap();
    let run = f.run(&["--config", path.to_str().unwrap(), "--direction", "both"]);
    f.wait_guarded();
    let doc = f.json(&["status", "--json"]);
    let s = iface_entry(&doc, GW_IF);
    assert_eq!(s["mode"], "count");
    assert_eq!(s["ports"], serde_json::json!([2745, 3127]));
    assert_eq!(s["direction"], "both");
    // A broken file on SIGHUP: the running configuration stays, the line is named.
    std::fs::write(&path, "mode = \"drop\"\nportz = [1]\n").unwrap();
    f.daemons[run].signal(libc::SIGHUP);
    f.daemons[run].wait_log("keeping the running configuration");
    assert_eq!(iface_entry(&f.json(&["status", "--json"]), GW_IF)["mode"], "count");
    // A good one is applied in place.
    std::fs::write(&path, "mode = \"drop\"\nports = [2745]\n").unwrap();
    f.daemons[run].signal(libc::SIGHUP);
    f.daemons[run].wait_log("reloaded:");
    let doc = f.json(&["status", "--json"]);
    assert_eq!(iface_entry(&doc, GW_IF)["mode"], "drop");
    assert_eq!(iface_entry(&doc, GW_IF)["ports"], serde_json::json!([2745]));
    assert_eq!(iface_entry(&doc, GW_IF)["direction"], "both", "the flag still overrides");
    f.daemons[run].signal(libc::SIGTERM);
    let out = f.daemons[run].wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keeping the running configuration")
            && stderr.contains("line 2: unknown field `portz`"),
        "{stderr}"
    );
    assert!(stderr.contains("reloaded: drop tcp+udp both port 2745"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP re-reads the rule files named by --rules, the same names as before and no config
/// file: a broken one keeps the running rules (naming its line), a good one labels the next
/// source.
#[test]
fn sighup_rereads_the_rule_files() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let dir = tempdir();
    let rules = dir.join("local.fp");
    let rule = |len: usize| {
        format!(
            "[lab sender]\nclass = misc\nmatch = udp && payload_len == {len} && \
             starts_with(payload, \"5a5a\")\nevidence = {{payload_len}} bytes of 0x5a\n"
        )
    };
    std::fs::write(&rules, rule(1000)).unwrap();
    let run = f.run(&["--rules", rules.to_str().unwrap(), "--interval", "0.2", "--no-metrics"]);
    f.wait_guarded();
    std::fs::write(&rules, "[lab sender]\nclass = misc\nmatch = udp &&\n").unwrap();
    f.daemons[run].signal(libc::SIGHUP);
    f.daemons[run].wait_log("keeping the running fingerprint rules");
    assert!(f.daemons[run].log().contains("local.fp:3:"), "{}", f.daemons[run].log());
    std::fs::write(&rules, rule(33)).unwrap();
    f.daemons[run].signal(libc::SIGHUP);
    f.daemons[run].wait_log("fingerprint rules reloaded");
    let dst = std::net::SocketAddr::new(lab::gw_v4(), 2745);
    lab::udp_send(&f.lab.out, lab::outside(false, 0), dst, 1, 33).unwrap();
    let source = lab::outside_source(false, 0);
    wait_until("the new rule's label", || {
        let doc = f.json(&["stats", "--json"]);
        iface_entry(&doc, GW_IF)["sources"].as_array().is_some_and(|s| {
            s.iter().any(|s| s["address"] == source && s["fingerprint"]["label"] == "lab sender")
        })
    });
    f.daemons[run].signal(libc::SIGTERM);
    assert!(f.daemons[run].wait().status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP applies every key that can change in place and names each one that takes a restart.
#[test]
fn sighup_applies_what_it_can_and_names_the_rest() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let dir = tempdir();
    let path = dir.join("portguard.toml");
    std::fs::write(&path, "[output]\ninterval = 0.2\n").unwrap();
    let run = f.run(&["--config", path.to_str().unwrap(), "--no-metrics"]);
    f.wait_guarded();
    wait_until("a key=value line", || f.daemons[run].out().contains("iface="));
    std::fs::write(
        &path,
        "sources = 1024\nxdp_mode = \"generic\"\npersist = true\n[output]\ninterval = 0.1\njson = true\n",
    )
    .unwrap();
    f.daemons[run].signal(libc::SIGHUP);
    f.daemons[run].wait_log("SIGHUP: applied");
    let log = f.daemons[run].log();
    assert!(log.contains("SIGHUP: sources, xdp_mode changed, which takes a restart"), "{log}");
    assert!(log.contains("[output] interval = 0.1, [output] json = true, persist = true"), "{log}");
    // Applied: JSON lines now.
    wait_until("JSON lines", || f.daemons[run].out().lines().any(|l| l.starts_with('{')));
    // Still running as it was: the table was not resized, the attachment not changed.
    let doc = f.json(&["status", "--json"]);
    assert_eq!(iface_entry(&doc, GW_IF)["source_capacity"], 65536);
    assert_eq!(iface_entry(&doc, GW_IF)["xdp_mode"], "native");
    // persist = true was applied: the guard stays after SIGTERM.
    f.daemons[run].signal(libc::SIGTERM);
    let out = f.daemons[run].wait();
    assert!(out.status.success(), "{out:?}");
    assert!(f.attached(), "persist applied on reload: the guard is left in place");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn json_lines_from_run() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--json", "--interval", "0.2", "--duration", "2"]);
    f.wait_guarded();
    f.probe(2, 2);
    let out = f.daemons[run].wait();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every line is a document of its own: the schema, a version and a time stamp.
    for l in &lines {
        portguard_testkit::schema::validate("run", l);
        assert_eq!(l["version"], 1, "{l}");
        assert!(l["generated_at"].is_string() && l["generated_at_unix"].is_u64(), "{l}");
    }
    assert!(lines.iter().any(|l| l["event"] == "new_source"
        && l["address"] == "198.18.0.4"
        && l["iface"] == GW_IF));
    let last = lines.iter().rev().find(|l| l["event"] == "interval").unwrap();
    assert_eq!(last["totals"]["dropped"], 4);
    assert_eq!(last["iface"], GW_IF);
}

#[test]
fn errors_are_one_line_and_leave_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let one_line = |out: &Output, code: i32, needle: &str| {
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("portguard: error: ") && e.contains(needle), "{needle}: {e}");
    };
    // Read-only verbs answer "nothing" with an empty list, not an error.
    let out = f.portguard(&["stats"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("nothing is guarded"), "{out:?}");
    assert_eq!(f.json(&["stats", "--json"])["interfaces"], serde_json::json!([]));
    assert_eq!(f.json(&["status", "--json"])["interfaces"], serde_json::json!([]));
    one_line(&f.portguard(&["stats", "--iface", "pg-wan"]), 1, "pg-wan is not guarded");
    one_line(&f.portguard(&["set", "--mode", "count"]), 1, "nothing is guarded");
    one_line(&f.portguard(&["set", "--iface", "eth9"]), 2, "nothing to change");
    one_line(&f.portguard(&["detach", "--iface", "pg-wan"]), 1, "not guarded");
    one_line(&f.portguard(&["detach"]), 2, "--iface");
    one_line(&f.portguard(&["set", "--allow", "1.2.3.4/64"]), 2, "prefix length");
    let dir = tempdir();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "interfaces = [\"pg-wan\"]\nmode = \"block\"\n").unwrap();
    one_line(
        &f.portguard(&["run", "--config", bad.to_str().unwrap()]),
        1,
        "line 2: unknown variant `block`",
    );
    one_line(
        &f.portguard(&["run", "--config", "/nonexistent/portguard.toml"]),
        1,
        "cannot read config",
    );
    one_line(&f.portguard(&["run"]), 2, "no interface to guard");
    // No XDP in the requested mode: loopback has no native XDP. Nothing is left pinned.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", f.lab.gw))
        .arg(env!("CARGO_BIN_EXE_portguard"))
        .args(["run", "--iface", "lo", "--xdp-mode", "native", "--duration", "1"])
        .env("PORTGUARD_PIN_ROOT", &f.pins.path)
        .output()
        .unwrap();
    one_line(&out, 1, "cannot attach to lo in native XDP mode");
    assert!(!f.dir.with_file_name("lo").exists(), "nothing left pinned");
    let _ = std::fs::remove_dir_all(dir);
    // A status with nothing guarded is not an error.
    let out = f.portguard(&["status"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing is guarded");
}

/// `check` without --port looks for the ports the guards are configured with: the daemon's
/// warning about a local socket on a guarded port sends the admin there.
#[test]
fn check_defaults_to_the_guarded_ports() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    f.run(&["--port", "3127", "--port", "2745", "--no-metrics"]);
    f.wait_guarded();
    let doc = f.json(&["check", "--json"]);
    assert_eq!(doc["ports"], serde_json::json!([2745, 3127]));
    // Asked for explicitly, --port wins.
    assert_eq!(f.json(&["check", "--json", "--port", "8080"])["ports"], serde_json::json!([8080]));
}

/// Guarding the loopback or an interface that is down is done as asked, with a word about it.
#[test]
fn quiet_interfaces_are_named() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let gw = f.lab.gw.clone();
    let ip = |args: &[&str]| {
        let out = Command::new("ip").arg("-n").arg(&gw).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ip(&["link", "add", "pg-down", "type", "veth", "peer", "name", "pg-down-p"]);
    for (iface, needle) in [
        ("lo", "lo is the loopback interface: it carries only this host's own traffic"),
        ("pg-down", "pg-down is down: nothing reaches it until it is up"),
    ] {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{gw}"))
            .arg(env!("CARGO_BIN_EXE_portguard"))
            .args(["run", "--iface", iface, "--duration", "0.2", "--no-metrics"])
            .env("PORTGUARD_PIN_ROOT", &f.pins.path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains(needle), "{iface}: {log}");
    }
    // An interface that is up and not the loopback gets no such word.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{gw}"))
        .arg(env!("CARGO_BIN_EXE_portguard"))
        .args(["run", "--iface", GW_IF, "--duration", "0.2", "--no-metrics"])
        .env("PORTGUARD_PIN_ROOT", &f.pins.path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !log.contains(" is down") && !log.contains("loopback"),
        "{log}"
    );
}

#[test]
fn completions_and_man_page() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let out = f.portguard(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--add-port"));
    let out = f.portguard(&["man"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH portguard"));
    // Every page, rendered by man(1) without a warning; the top page states what every verb
    // shares, and every page it refers to exists.
    let dir = tempdir();
    let out = f.portguard(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let render = |page: &str| {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.join(page))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .expect("man (cargo xtask setup installs man-db)");
        assert!(out.status.success(), "{page}: {out:?}");
        assert!(out.stderr.is_empty(), "{page}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = render("portguard.1");
    for section in ["EXIT STATUS", "FILES", "ENVIRONMENT", "SEE ALSO", "PORTGUARD_PIN_ROOT"] {
        assert!(top.contains(section), "{section}: {top}");
    }
    for verb in ["run", "stats", "status", "set", "detach", "check", "top"] {
        let page = render(&format!("portguard-{verb}.1"));
        assert!(page.contains("OPTIONS") && page.contains("--help"), "{verb}: {page}");
    }
    assert!(render("portguard-run.1").contains("--iface"));
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(unique("pgtest-"));
    std::fs::create_dir_all(&d).unwrap();
    d
}
