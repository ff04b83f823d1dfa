//! Bad input gets one clear line and a non-zero exit, and leaves nothing attached.

use std::process::{Command, Output};

fn portguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portguard")).args(args).output().unwrap()
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let first = stderr.lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("portguard: error: "), "{stderr}");
    first
}

#[test]
fn unknown_interface() {
    let out = portguard(&["run", "--iface", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1));
    let e = one_line_error(&out);
    assert!(e.contains("unknown interface 'nosuchif0'"), "{e}");
}

/// A usage error: exit 2, one line that names `needle` and points at the verb's help.
fn usage_error(args: &[&str], needle: &str) {
    let out = portguard(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    let e = one_line_error(&out);
    assert!(e.contains(needle), "{args:?}: {e}");
    let help = format!("(see 'portguard {} --help')", args[0]);
    assert!(e.ends_with(&help), "{args:?}: {e}");
}

#[test]
fn interface_is_required() {
    // Not a clap error (the interfaces may come from a config file), but still a usage error.
    usage_error(&["run"], "give --iface IFACE");
}

/// Every class of malformed command line exits 2 (README: "Exit codes"), before anything is
/// read or attached, so none of these needs root.
#[test]
fn usage_errors_exit_2() {
    for (args, needle) in [
        // Values clap checks.
        (&["run", "-i", "lo", "--port", "70000"][..], "70000"),
        (&["run", "-i", "lo", "--port", "0"], "'0'"),
        (&["run", "-i", "lo", "--port", "http"], "http"),
        (&["run", "-i", "lo", "--allow", "10.0.0.0/40"], "prefix length"),
        (&["run", "-i", "lo", "--mode", "reject"], "reject"),
        (&["run", "-i", "lo", "--direction", "up"], "up"),
        (&["run", "-i", "lo", "--sources", "0"], "--sources"),
        // One range for every interval, and a duration that is more than nothing.
        (&["run", "-i", "lo", "--interval", "0"], "0 is not between 0.05 and 3600 seconds"),
        (&["run", "-i", "lo", "--interval", "soon"], "'soon' is not a number"),
        (&["stats", "--interval", "0.01"], "not between 0.05 and 3600"),
        (&["stats", "--interval", "3601"], "not between 0.05 and 3600"),
        (&["top", "--interval", "0"], "not between 0.05 and 3600"),
        (&["run", "-i", "lo", "--duration", "0"], "not a positive number of seconds"),
        // Unknown flags and verbs, missing values.
        (&["run", "--ifcae", "lo"], "--ifcae"),
        (&["stats", "--top"], "--top"),
        (&["detach"], "--iface"),
        (&["check", "--port", "0"], "'0'"),
        // Contradictions and requests that cannot mean what they say.
        (
            &["set", "--add-port", "8080", "--remove-port", "8080"],
            "--add-port 8080 and --remove-port 8080 contradict",
        ),
        (
            &["set", "--allow", "198.18.0.0/15", "--disallow", "198.18.0.0/15"],
            "--allow 198.18.0.0/15 and --disallow 198.18.0.0/15 contradict",
        ),
        (&["set"], "nothing to change"),
        (&["set", "--allow", "0.0.0.0/0"], "every IPv4 source"),
        (&["run", "-i", "lo", "--allow", "::/0"], "every IPv6 source"),
        (&["run", "-i", "lo", "--allow", "::ffff:198.18.7.10/128"], "write 198.18.7.10/32"),
        (&["detach", "--iface", "x", "--all"], "--all"),
    ] {
        usage_error(args, needle);
    }
    // Without a verb, the top-level help.
    let out = portguard(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).ends_with("(see 'portguard --help')"));
}

/// Every verb that takes an interval states the one range in its --help.
#[test]
fn help_states_the_interval_range() {
    let (lo, hi) = portguard::ranges::INTERVAL;
    for verb in ["run", "stats", "top"] {
        let out = portguard(&[verb, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        let help =
            String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains(&format!("{lo} to {hi}")), "{verb}: {help}");
    }
}

#[test]
fn reading_pinned_state_without_privileges() {
    if !portguard_testkit::root_or_skip() {
        return;
    }
    // The pin root is 0700: an unprivileged user is told why, in one line.
    let root = format!("/sys/fs/bpf/pgtest-cli-{}", std::process::id());
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for verb in [
        &["stats"][..],
        &["stats", "--iface", "eth1"],
        &["status"],
        &["set", "--mode", "count"],
        &["detach", "--all"],
        // A named interface, too: not "eth1 is not guarded", which would be a wrong answer.
        &["detach", "--iface", "eth1"],
        &["set", "--iface", "eth1", "--mode", "drop"],
        &["top", "--iface", "eth1"],
        &["top"],
    ] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_portguard"))
            .args(verb)
            .env("PORTGUARD_PIN_ROOT", &root)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{verb:?}: {out:?}");
        assert!(one_line_error(&out).contains("needs root"), "{verb:?}");
    }
    std::fs::remove_dir(&root).unwrap();
}

#[test]
fn without_privileges() {
    if !portguard_testkit::root_or_skip() {
        return;
    }
    // Drop to nobody with no capabilities; `setpriv` is util-linux.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_portguard"))
        .args(["run", "--iface", "lo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let e = one_line_error(&out);
    assert!(e.contains("needs root"), "{e}");
}
