//! Primitive probes: hand-written programs that do one thing each (read the coarse clock, look
//! up a per-CPU LRU hash like SOURCES), measured like the tools, so that a matched drop's cost
//! can be read as a sum of parts. Each figure is its program minus the floor.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};
use portguard_common::{DEFAULT_SOURCE_CAPACITY, SourceKey, SourceSlot, Totals};

use super::{
    bpf::{self, *},
    cases::Case,
    cost,
};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_MAP_UPDATE: i32 = 2;
const HELPER_KTIME_GET_COARSE_NS: i32 = 160;

const KEY: i16 = size_of::<SourceKey>() as i16;
const VALUE: i16 = size_of::<SourceSlot>() as i16;

/// `r0 = XDP_PASS; exit`.
fn pass() -> [u64; 2] {
    [insn(MOV64_IMM, 0, 0, 0, XDP_PASS as i32), insn(EXIT, 0, 0, 0, 0)]
}

/// Looks up a zero key of `key` bytes in `map` (the key sits on the stack, in 8-byte stores);
/// with `insert`, adds it with a zero value of `value` bytes on a miss, so every run after the
/// first is a hit.
fn lookup(map: &OwnedFd, key: i16, value: i16, insert: bool) -> Vec<u64> {
    let fd = map.as_fd().as_raw_fd();
    let mut p = Vec::new();
    for off in (0..key).step_by(8) {
        p.push(insn(ST_DW, 10, 0, off - key, 0));
    }
    p.extend([
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, fd),
        0,
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -(key as i32)),
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP),
    ]);
    if insert {
        let mut miss = Vec::new();
        for off in (0..value).step_by(8) {
            miss.push(insn(ST_DW, 10, 0, off - key - value, 0));
        }
        miss.extend([
            insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, fd),
            0,
            insn(MOV64_REG, 2, 10, 0, 0),
            insn(ADD64_IMM, 2, 0, 0, -(key as i32)),
            insn(MOV64_REG, 3, 10, 0, 0),
            insn(ADD64_IMM, 3, 0, 0, -((key + value) as i32)),
            insn(MOV64_IMM, 4, 0, 0, 0),
            insn(CALL, 0, 0, 0, HELPER_MAP_UPDATE),
        ]);
        // On a hit (r0 != NULL) jump over the insert.
        p.push(insn(JNE_IMM, 0, 0, miss.len() as i16, 0));
        p.extend(miss);
    }
    p.extend(pass());
    p
}

pub struct Probe {
    pub name: &'static str,
    /// ns above the floor.
    pub ns: f64,
}

pub fn measure(frame: &Case, repeat: u32, rounds: usize) -> Result<Vec<Probe>> {
    let map = |t| {
        bpf::create_map(t, KEY as u32, VALUE as u32, DEFAULT_SOURCE_CAPACITY)
            .context("creating a probe map")
    };
    let lru = map(BPF_MAP_TYPE_LRU_PERCPU_HASH)?;
    let lru_hit = map(BPF_MAP_TYPE_LRU_PERCPU_HASH)?;
    let hash_hit = map(BPF_MAP_TYPE_HASH)?;
    let array = bpf::create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, size_of::<Totals>() as u32, 1)
        .context("creating a probe map")?;
    let load = |name: &str, insns: &[u64]| {
        bpf::load_xdp(name, insns).with_context(|| format!("loading probe {name}"))
    };
    let progs: Vec<(&'static str, OwnedFd)> = vec![
        ("floor", bpf::load_floor().context("loading the floor")?),
        ("bpf_ktime_get_coarse_ns()", {
            let [a, b] = pass();
            load("pg_clock", &[insn(CALL, 0, 0, 0, HELPER_KTIME_GET_COARSE_NS), a, b])?
        }),
        (
            "LRU per-CPU hash lookup, miss (SOURCES' shape)",
            load("pg_lru_miss", &lookup(&lru, KEY, VALUE, false))?,
        ),
        (
            "LRU per-CPU hash lookup, hit (SOURCES' shape)",
            load("pg_lru_hit", &lookup(&lru_hit, KEY, VALUE, true))?,
        ),
        (
            "plain hash lookup, hit (same key)",
            load("pg_hash_hit", &lookup(&hash_hit, KEY, VALUE, true))?,
        ),
        ("per-CPU array lookup (TOTALS' shape)", load("pg_array", &lookup(&array, 8, 0, false))?),
    ];
    let tools: Vec<cost::Tool> =
        progs.iter().map(|(name, fd)| cost::Tool { name, fd: fd.as_fd() }).collect();
    let one = Case { name: frame.name.clone(), frame: frame.frame.clone(), ..*frame };
    let t = cost::measure(&tools, vec![one], repeat, rounds)?;
    let floor = t.cell(0, "floor").map_or(f64::NAN, |c| c.ns);
    Ok(progs
        .iter()
        .skip(1)
        .map(|(name, _)| Probe { name, ns: t.cell(0, name).map_or(f64::NAN, |c| c.ns) - floor })
        .collect())
}
