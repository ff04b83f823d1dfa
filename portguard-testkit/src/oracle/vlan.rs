//! VLAN sub-interfaces, emulated: this machine's kernel has no 802.1Q support
//! (CONFIG_VLAN_8021Q, CONFIG_BRIDGE_VLAN_FILTERING and CONFIG_NET_ACT_VLAN are all unset), so
//! `ip link add ... type vlan` fails and a tagged frame with a non-zero VLAN id can never be
//! delivered here. What the core does without them is real and kept: a priority tag (VLAN id
//! 0, 802.1Q or 802.1ad) is peeled however deeply such tags nest (net/core/dev.c,
//! `__netif_receive_skb_core`, "check_vlan_id"), and any other tag marks the frame
//! PACKET_OTHERHOST, which IP discards.
//!
//! To see what a gateway *with* sub-interfaces would deliver, a tcx ingress program on the
//! gateway's veth pops the tags such a gateway would have devices for: 802.1Q id 100
//! (`pg-wan.100`), and 802.1ad id 200 carrying 802.1Q id 300 (`pg-wan.200.300`), plus the
//! priority tags between them, as `vlan_do_receive` would walk them. It runs after XDP (the
//! guard sees the tags) and before the stack's VLAN check, as the 8021q module's receive hook
//! would. The program is 60-odd instructions assembled here, loaded with bpf(2), and attached
//! with a bpf_link that goes away with its file descriptor (or with the namespace).

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// __sk_buff offsets (include/uapi/linux/bpf.h).
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_VLAN_PROTO: i16 = 28;
/// vlan_proto is the wire's big-endian u16 as stored: 0x8100 reads as 0x0081 on little-endian.
const PROTO_8021Q: i32 = u16::from_ne_bytes(0x8100u16.to_be_bytes()) as i32;
const PROTO_8021AD: i32 = u16::from_ne_bytes(0x88a8u16.to_be_bytes()) as i32;
const BPF_FUNC_SKB_VLAN_POP: i32 = 19;
/// Tags walked at most; beyond, the core's own handling applies (priority tags peeled, others
/// dropped).
const ROUNDS: usize = 4;

/// The VLANs a gateway with sub-interfaces would deliver, as (TPID, id) paths.
pub const DEVICES: [&[(u16, u16)]; 2] = [&[(0x8100, 100)], &[(0x88a8, 200), (0x8100, 300)]];

#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// A tiny assembler: jumps name labels, resolved at the end.
struct Asm {
    code: Vec<Insn>,
    /// (instruction index, label)
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn here(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn emit(&mut self, i: Insn) {
        self.code.push(i);
    }
    /// `if dst <op> imm goto label` (op: 0x15 JEQ, 0x55 JNE), or `goto label` (0x05).
    fn jump(&mut self, op: u8, dst: u8, imm: i32, l: usize) {
        self.fixups.push((self.code.len(), l));
        self.code.push(insn(op, dst, 0, 0, imm));
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, l) in self.fixups {
            let target = self.labels[l].expect("label placed");
            self.code[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.code
    }
}

const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const LDX_W: u8 = 0x61;
const AND64_K: u8 = 0x57;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// The program: r6 = skb, r7 = the device the frame is on (0 the veth, 1 its .100, 2 its
/// .200, 3 .200.300); per round, pop the outer tag if the current device has a child for it,
/// or it is a priority tag.
fn program() -> Vec<Insn> {
    let mut a = Asm { code: Vec::new(), fixups: Vec::new(), labels: Vec::new() };
    let out = a.label();
    a.emit(insn(MOV64_X, 6, 1, 0, 0));
    a.emit(insn(MOV64_K, 7, 0, 0, 0));
    for _ in 0..ROUNDS {
        let (pop, child, is200, next) = (a.label(), a.label(), a.label(), a.label());
        a.emit(insn(LDX_W, 2, 6, SKB_VLAN_PRESENT, 0));
        a.jump(JEQ_K, 2, 0, out);
        a.emit(insn(LDX_W, 3, 6, SKB_VLAN_TCI, 0));
        a.emit(insn(AND64_K, 3, 0, 0, 0x0fff));
        a.emit(insn(LDX_W, 4, 6, SKB_VLAN_PROTO, 0));
        // A priority tag: the core peels it too; popping it here lets the walk go on.
        a.jump(JEQ_K, 3, 0, pop);
        a.jump(JNE_K, 7, 0, child);
        // On the veth: .100 (802.1Q) or .200 (802.1ad).
        a.jump(JNE_K, 3, 100, is200);
        a.jump(JNE_K, 4, PROTO_8021Q, out);
        a.emit(insn(MOV64_K, 7, 0, 0, 1));
        a.jump(JA, 0, 0, pop);
        a.here(is200);
        a.jump(JNE_K, 3, 200, out);
        a.jump(JNE_K, 4, PROTO_8021AD, out);
        a.emit(insn(MOV64_K, 7, 0, 0, 2));
        a.jump(JA, 0, 0, pop);
        // On .200: .200.300 (802.1Q). Nothing has children below that, nor below .100.
        a.here(child);
        a.jump(JNE_K, 7, 2, out);
        a.jump(JNE_K, 3, 300, out);
        a.jump(JNE_K, 4, PROTO_8021Q, out);
        a.emit(insn(MOV64_K, 7, 0, 0, 3));
        a.here(pop);
        a.emit(insn(MOV64_X, 1, 6, 0, 0));
        a.emit(insn(CALL, 0, 0, 0, BPF_FUNC_SKB_VLAN_POP));
        a.jump(JNE_K, 0, 0, out);
        a.here(next);
    }
    a.here(out);
    // TCX_PASS (== TC_ACT_OK): on to the stack.
    a.emit(insn(MOV64_K, 0, 0, 0, 0));
    a.emit(insn(EXIT, 0, 0, 0, 0));
    a.finish()
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a zero-padded bpf_attr of the given size; the kernel reads only it and
    // the buffers it points to, which outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor the kernel handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Loads the program and attaches it at tcx ingress of `ifindex`, which must be in the calling
/// thread's network namespace. The returned link detaches when dropped.
pub fn attach(ifindex: u32) -> io::Result<OwnedFd> {
    let insns = program();
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes()); // log_level
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    put(&mut attr, 48, b"pgor_vlan\0");
    let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(0);
        io::Error::new(
            e.kind(),
            format!("loading the VLAN program: {e}: {}", String::from_utf8_lossy(&log[..end])),
        )
    })?;
    let mut attr = [0u8; 128];
    use std::os::fd::AsRawFd as _;
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 4, &ifindex.to_ne_bytes());
    put(&mut attr, 8, &BPF_TCX_INGRESS.to_ne_bytes());
    // The link holds the program; the program's own fd can go.
    bpf(BPF_LINK_CREATE, &mut attr)
        .map_err(|e| io::Error::new(e.kind(), format!("attaching the VLAN program: {e}")))
}

/// Whether a tag stack (outermost first) reaches IP at the gateway: with the emulated
/// sub-interfaces (`emulated`) or with the core alone.
pub fn deliverable(tags: &[(u16, u16)], emulated: bool) -> bool {
    let vlan = |t: u16| t == 0x8100 || t == 0x88a8;
    let mut device: &[(u16, u16)] = &[];
    for &(tpid, tci) in tags {
        if !vlan(tpid) {
            return false; // 0x9100 and others: no handler at all
        }
        let vid = tci & 0x0fff;
        if vid == 0 {
            continue;
        }
        if !emulated {
            return false;
        }
        let mut path = device.to_vec();
        path.push((tpid, vid));
        match DEVICES.iter().find(|d| d.starts_with(&path)) {
            Some(d) => device = &d[..path.len()],
            None => return false,
        }
    }
    // A frame for a device that is only a parent (.200 alone) still lands on it.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_resolve_forward() {
        let p = program();
        for (i, x) in p.iter().enumerate() {
            if matches!(x.code, JEQ_K | JNE_K | JA) {
                let t = i as isize + 1 + x.off as isize;
                assert!(t > i as isize && (t as usize) < p.len(), "{i}: {}", x.off);
            }
        }
        assert_eq!(p.last().unwrap().code, EXIT);
    }

    #[test]
    fn what_a_gateway_with_subinterfaces_delivers() {
        assert!(deliverable(&[], false));
        assert!(deliverable(&[(0x8100, 0), (0x88a8, 0), (0x8100, 0)], false));
        assert!(!deliverable(&[(0x8100, 100)], false));
        assert!(deliverable(&[(0x8100, 100)], true));
        assert!(deliverable(&[(0x8100, 0), (0x8100, 100), (0x8100, 0)], true));
        assert!(deliverable(&[(0x88a8, 200), (0x8100, 300)], true));
        assert!(!deliverable(&[(0x8100, 200), (0x8100, 300)], true));
        assert!(!deliverable(&[(0x8100, 100), (0x8100, 300)], true));
        assert!(!deliverable(&[(0x9100, 0)], true));
    }
}
