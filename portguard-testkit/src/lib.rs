//! What portguard's tests and benchmarks share, kept out of the production crate:
//!
//! - `frames`: hand-built frames; `fuzz`: random and mutated ones from the same shapes.
//! - `reference`: the verdict semantics as plain Rust, which the differential test compares
//!   with the program.
//! - [`test_run`]: one frame through BPF_PROG_TEST_RUN, with the verdict and how TOTALS moved.
//! - `fixture`: the `portguard` binary run as an admin runs it (verbs, and `run` in a lab
//!   namespace), a self-cleaning pin root, [`wait_until`], and [`root_or_skip`].
//! - `schema`: every `--json` document validated against the published schemas.

pub mod fixture;
pub mod frames;
pub mod fuzz;
pub mod oracle;
pub mod reference;
pub mod schema;

use std::time::{Duration, Instant};

use aya::programs::{TestRun as _, TestRunOptions};
use portguard::{counters, guard::Loaded};
use portguard_common::Totals;

pub use fixture::{Bin, Daemon, Fixture, PinRoot};

/// XDP actions, as BPF_PROG_TEST_RUN returns them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Runs one frame through the program; returns the verdict and how the totals moved. The
/// program must never abort.
pub fn test_run(g: &mut Loaded, frame: &[u8]) -> (u32, Totals) {
    let before = g.totals().unwrap();
    let r = g
        .program()
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
        .unwrap();
    let after = g.totals().unwrap();
    assert_ne!(r.return_value, XDP_ABORTED, "XDP_ABORTED for {frame:02x?}");
    (r.return_value, counters::since(&after, &before))
}

/// Polls `cond` until it holds, or panics naming `what` after 30 s (the machine may be busy:
/// no fixed sleeps).
/// Keeps the calling thread on one CPU: per-CPU map state (TOTALS, ADMISSION) then belongs
/// to one CPU across BPF_PROG_TEST_RUN calls.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// Whether this process may load programs and make namespaces. Root-only tests start with
/// `if !root_or_skip() { return; }`: as another user they say so in one line and pass, unless
/// PORTGUARD_REQUIRE_ROOT is set (`cargo xtask test` sets it), where skipping is a failure.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("PORTGUARD_REQUIRE_ROOT").is_some() {
        panic!("this test needs root and PORTGUARD_REQUIRE_ROOT is set");
    }
    eprintln!("skipped: needs root (it loads XDP programs and makes network namespaces)");
    false
}

/// Whether a tool `cargo xtask setup` installs is here. Tests that need one start with
/// `if !tool_or_skip("tshark") { return; }`: without it they say so in one line and pass,
/// unless PORTGUARD_REQUIRE_ROOT is set (`cargo xtask test`, after setup), where a missing tool
/// is a failure.
pub fn tool_or_skip(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v \"$0\"", name])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var_os("PORTGUARD_REQUIRE_ROOT").is_some() {
        panic!("{name} is missing: `cargo xtask setup` installs it");
    }
    eprintln!("skipped: {name} is not installed (cargo xtask setup installs it)");
    false
}
