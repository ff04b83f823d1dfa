//! The raw bpf(2) calls the benchmarks need beyond aya: loading the floor program, opening a
//! program another tool loaded (xdp-filter), and BPF_PROG_TEST_RUN on any program fd. Every
//! tool goes through the same `test_run`, so no tool is measured through a different path.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// Opcodes used by the hand-written programs.
pub const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
pub const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
pub const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
pub const ST_DW: u8 = 0x7a; // BPF_ST | BPF_MEM | BPF_DW
pub const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW (two slots)
pub const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;
/// `src_reg` of LD_IMM64 when `imm` is a map fd.
pub const PSEUDO_MAP_FD: u8 = 1;

pub use portguard_testkit::{XDP_ABORTED, XDP_DROP, XDP_PASS};

/// The head of `union bpf_attr` for BPF_MAP_CREATE.
#[repr(C, align(8))]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
}

/// The head of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest).
#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C, align(8))]
#[derive(Default)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
    /// Explicit, so it is zero: newer kernels read a token fd here.
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly laid out, fully initialised prefix of `union bpf_attr` and
    // we pass its exact size; pointers inside it outlive the call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as libc::c_uint)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// One eBPF instruction (`struct bpf_insn`) as the little-endian u64 the kernel reads.
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | (src << 4)) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// A map of our own, for the primitive probes.
pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"pg_probe");
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: name,
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// Loads an XDP program from raw instructions (GPL, so that every helper is available).
pub fn load_xdp(name: &str, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map(owned)
}

/// The smallest possible XDP program, `r0 = XDP_PASS; exit`: the cost of BPF_PROG_TEST_RUN
/// itself, which every other figure includes.
pub fn load_floor() -> io::Result<OwnedFd> {
    // struct bpf_insn as little-endian u64: code | regs << 8 | off << 16 | imm << 32.
    load_xdp("pg_floor", &[insn(MOV64_IMM, 0, 0, 0, XDP_PASS as i32), insn(EXIT, 0, 0, 0, 0)])
}

/// A new fd for a program someone else loaded.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdById { id, ..Default::default() };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

/// One BPF_PROG_TEST_RUN: the verdict and the kernel's average ns per run.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub verdict: u32,
    pub ns: u32,
}

pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<Run> {
    let mut attr = TestRun {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(Run { verdict: attr.retval, ns: attr.duration })
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "ABORTED",
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        _ => "other",
    }
}
