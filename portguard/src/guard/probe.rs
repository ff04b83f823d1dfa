//! What the running kernel offers the program, asked once per process before the first load.

use std::sync::OnceLock;

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};

/// Whether XDP programs may call `bpf_ktime_get_coarse_ns()` (Linux 5.11+). The program's
/// COARSE_CLOCK global is set from this (see portguard-ebpf/src/clock.rs); without it, new
/// sources are timed with `bpf_ktime_get_ns()`, which only makes admitting a source a little
/// dearer. Says so once, in one line, when falling back.
pub(crate) fn coarse_clock() -> bool {
    static COARSE: OnceLock<bool> = OnceLock::new();
    *COARSE.get_or_init(|| {
        match is_helper_supported(ProgramType::Xdp, BpfHelper::BPF_FUNC_ktime_get_coarse_ns) {
            Ok(true) => true,
            Ok(false) => {
                log::info!(
                    "this kernel has no bpf_ktime_get_coarse_ns (Linux 5.11+): new sources are \
                     timed with bpf_ktime_get_ns"
                );
                false
            }
            // The probe is a program load like the real one: whatever stopped it will stop
            // that one too, with its own error. Until then, the clock every kernel has.
            Err(e) => {
                log::debug!("probing bpf_ktime_get_coarse_ns: {e}");
                false
            }
        }
    })
}
