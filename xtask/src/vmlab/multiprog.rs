//! The multiprog scenario: `tests/multiprog.rs` (portguard beside xdp-filter in libxdp's
//! multi-program dispatcher) run for real in a Debian guest.
//!
//! Why a guest: sharing the hook needs freplace (extension) programs, and some kernels refuse
//! every trampoline-based program even to root (this project's development machine, Linux
//! 6.18, does); there the sharing tests can only skip. Debian's kernels run them.
//!
//! How: the test binary is built on the host as `cargo test` builds it, and the guest mounts
//! the host's root read-only over 9p and runs it there under chroot, with the host's tools
//! (xdp-filter, xdp-loader, ip, nsenter, bpftool, python3-jsonschema for the schemas) and the
//! guest's own /proc, /sys, /dev, /run, /tmp and bpffs. In the guest a refusal of extensions
//! is a failure (PORTGUARD_REQUIRE_SHARING), never a skip. The whole output is kept in the
//! run's directory (`tests.log`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{
    Arch, Run,
    lab::Lab,
    qemu::{Spec, Vm},
    scenario::crashed_booting,
};
use crate::util::{cargo, describe, root};

/// The whole test file, under emulation: about 5 minutes at 2 vCPUs.
const TESTS_TIMEOUT: Duration = Duration::from_secs(1800);

/// The host's root at /host, and the guest's own kernel filesystems under it. `cache=loose`:
/// the host's files do not change under a run, and without a page cache every exec and page
/// fault goes over 9p (on 6.12, 4 s for each `ip` the tests run, against 0.2 s). The repository
/// is bound back over the guest's own mounts: a clone under /tmp (CI's may be one) would
/// otherwise be hidden by the guest's /tmp.
fn mounts(repo: &std::path::Path) -> String {
    let r = repo.display();
    format!(
        "mkdir -p /host /repo && \
         mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host && \
         mount -o bind /host{r} /repo && \
         mount -t proc proc /host/proc && mount -t sysfs sys /host/sys && \
         mount -t devtmpfs dev /host/dev && mount -t tmpfs run /host/run && \
         mount -t tmpfs tmp /host/tmp && mount -t bpf bpf /host/sys/fs/bpf && \
         mkdir -p /host{r} && mount -o bind /repo /host{r}"
    )
}

pub fn run(run: &Run) -> Result<()> {
    if run.arch != Arch::host() {
        bail!(
            "the multiprog scenario runs the host's test binary: {} guests only",
            Arch::host().name()
        );
    }
    let exe = build()?;
    std::fs::create_dir_all(&run.dir)?;
    let lab = Lab::create()?;
    let spec = Spec {
        arch: run.arch,
        cpus: run.cpus,
        queues: run.queues,
        kernel: &run.kernel.image()?,
        initrd: run.initrd,
        dir: &run.dir,
        host_root: true,
    };
    // An emulated guest can crash while booting (see scenario::Guest::boot): one more boot.
    let mut vm = match Vm::boot(&lab, &spec) {
        Ok(vm) => vm,
        Err(e) if crashed_booting(&run.dir) => {
            eprintln!("vmlab: the guest crashed while booting ({e:#}); booting again");
            Vm::boot(&lab, &spec)?
        }
        Err(e) => return Err(e),
    };
    if !vm.rc_errors.is_empty() {
        bail!("the guest's startup failed: {}", vm.rc_errors.join("; "));
    }
    eprintln!(
        "vmlab: [{}] booted in {:.0} s; running tests/multiprog.rs in the guest",
        run.label(),
        vm.boot.as_secs_f64()
    );
    vm.ok(&mounts(&root())).context("mounting the host's root in the guest")?;
    let inner = format!(
        "cd {} && exec env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         HOME=/root PORTGUARD_REQUIRE_ROOT=1 PORTGUARD_REQUIRE_SHARING=1 {exe} \
         --test-threads=1 --color=never --nocapture {filter}",
        root().display(),
        // A test name filter, for working on one test (PORTGUARD_VMLAB_TESTS=name).
        filter = std::env::var("PORTGUARD_VMLAB_TESTS").unwrap_or_default()
    );
    let t = Instant::now();
    let o = vm.sh(&format!("chroot /host /bin/sh -c '{inner}'"), TESTS_TIMEOUT)?;
    let log = run.dir.join("tests.log");
    let text: Vec<String> = o
        .out
        .iter()
        .map(|l| format!("out: {l}"))
        .chain(o.err.iter().map(|l| format!("err: {l}")))
        .collect();
    std::fs::write(&log, text.join("\n") + "\n")?;
    // Each test's verdict, prefixed so that no test runner's summary line is echoed as ours.
    for l in o.out.iter().filter(|l| l.starts_with("test ")) {
        eprintln!("vmlab: guest {l}");
    }
    let summary = o
        .out
        .iter()
        .find_map(|l| l.strip_prefix("test result: "))
        .unwrap_or("no summary")
        .to_string();
    vm.end(0)?;
    if o.code != "0" {
        let panics: Vec<&String> = o.err.iter().filter(|l| l.contains("panicked")).collect();
        bail!(
            "tests/multiprog.rs failed in the guest (exit {}; {summary}): {} (the whole output is \
             in {})",
            o.code,
            panics.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" / "),
            log.display()
        );
    }
    eprintln!(
        "vmlab: [{}] tests/multiprog.rs in the guest: {summary} ({:.0} s)",
        run.label(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo test --no-run` for tests/multiprog.rs (and portguard, which it runs); the path of
/// the test binary.
fn build() -> Result<String> {
    let mut c = cargo();
    c.args(["test", "--package", "portguard", "--test", "multiprog", "--no-run"])
        .current_dir(root());
    eprintln!("+ {}", describe(&c));
    let out = c.output().context("running cargo test --no-run")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building tests/multiprog.rs failed:\n{err}");
    }
    // "  Executable tests/multiprog.rs (target/debug/deps/multiprog-0123abcd)"
    err.lines()
        .filter_map(|l| l.trim().strip_prefix("Executable tests/multiprog.rs ("))
        .filter_map(|l| l.strip_suffix(')'))
        .next_back()
        .map(|p| root().join(p).display().to_string())
        .context("cargo test --no-run named no multiprog test binary")
}
