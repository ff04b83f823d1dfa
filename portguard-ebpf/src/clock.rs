//! The clock of the new-source path, chosen at load time.
//!
//! `bpf_ktime_get_coarse_ns()` (helper 160) is cheap but came with Linux 5.11; 5.10's verifier
//! refuses a program that calls it anywhere ("invalid func unknown#160"), even on a path
//! that never runs. So the program carries both calls behind COARSE_CLOCK, a read-only global
//! that userspace sets when it loads the object (after probing the kernel for the helper).
//! Read-only globals live in a frozen `.rodata` map, so the verifier knows the value while it
//! checks the program: it follows only the branch that value takes and removes the other as
//! dead code, helper call included (the libbpf pattern). Known sources never come here.

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// 1: use `bpf_ktime_get_coarse_ns()`; 0: `bpf_ktime_get_ns()` (kernels before 5.11).
/// Overridden by userspace (portguard_common::COARSE_CLOCK_GLOBAL); never written here.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 1;

/// CLOCK_MONOTONIC in ns, at jiffy resolution where the kernel has the coarse clock.
#[inline(always)]
pub fn now_ns() -> u64 {
    // A volatile read, or LLVM folds the initial value in and the choice is made at compile
    // time: the load must reach the verifier, which reads the frozen value instead.
    // SAFETY: a read of an initialised static.
    let coarse = unsafe { core::ptr::read_volatile(&raw const COARSE_CLOCK) };
    // SAFETY: helpers without arguments or side effects.
    unsafe { if coarse != 0 { bpf_ktime_get_coarse_ns() } else { bpf_ktime_get_ns() } }
}
