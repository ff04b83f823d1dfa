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

#[test]
fn interface_is_required() {
    let out = portguard(&["run"]);
    // Not a clap error: the interfaces may come from a config file instead.
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("give --iface IFACE"));
}

#[test]
fn invalid_ports_and_cidrs() {
    for (args, needle) in [
        (vec!["run", "-i", "lo", "--port", "70000"], "70000"),
        (vec!["run", "-i", "lo", "--port", "0"], "0"),
        (vec!["run", "-i", "lo", "--port", "http"], "http"),
        (vec!["run", "-i", "lo", "--allow", "10.0.0.0/40"], "prefix length"),
        (vec!["run", "-i", "lo", "--mode", "reject"], "reject"),
        (vec!["run", "-i", "lo", "--direction", "up"], "up"),
        (vec!["run", "-i", "lo", "--interval", "0"], "interval"),
    ] {
        let out = portguard(&args);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: {out:?}");
        let e = one_line_error(&out);
        assert!(e.contains(needle), "{args:?}: {e}");
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
    for verb in [&["stats"][..], &["status"], &["set", "--mode", "count"], &["detach", "--all"]] {
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
