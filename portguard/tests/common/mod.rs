//! Helpers shared by the integration tests that drive the `portguard` binary.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// Polls `cond` until it holds or 30 s pass (the machine may be busy: no fixed sleeps).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// A pin root of a test's own under /sys/fs/bpf; whatever is guarded there is detached and
/// the directory removed when it is dropped, however the test ends.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new(name: &str) -> PinRoot {
        PinRoot(PathBuf::from(format!("/sys/fs/bpf/pgtest-{name}-{}", std::process::id())))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_portguard"))
            .args(["detach", "--all"])
            .env("PORTGUARD_PIN_ROOT", &self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
