//! In-kernel cost per packet: BPF_PROG_TEST_RUN with a large repeat, one frame at a time.
//!
//! Tools are interleaved inside every round (and the order rotates), so that noise from the
//! other work on this machine lands on all of them alike; the figure kept is the median of the
//! rounds. The kernel's duration excludes the time it yields the CPU, and is whole ns.

use std::os::fd::BorrowedFd;

use anyhow::{Context as _, Result};

use super::{bpf, cases::Case};

pub struct Tool<'a> {
    pub name: &'static str,
    pub fd: BorrowedFd<'a>,
}

/// One case × tool.
pub struct Cell {
    /// Median of the rounds, ns per packet.
    pub ns: f64,
    pub verdict: u32,
}

pub struct CostTable {
    pub tools: Vec<&'static str>,
    pub cases: Vec<Case>,
    /// `[case][tool]`.
    pub cells: Vec<Vec<Cell>>,
    pub repeat: u32,
    pub rounds: usize,
}

impl CostTable {
    pub fn cell(&self, case: usize, tool: &str) -> Option<&Cell> {
        let t = self.tools.iter().position(|n| *n == tool)?;
        self.cells.get(case)?.get(t)
    }
}

pub fn measure(tools: &[Tool], cases: Vec<Case>, repeat: u32, rounds: usize) -> Result<CostTable> {
    let mut verdicts = vec![vec![0u32; tools.len()]; cases.len()];
    // Warm-up: caches, branch predictors, and portguard's SOURCES entry for the known source
    // (a matched drop from a source the table already has is the case the target is about).
    for (ci, case) in cases.iter().enumerate() {
        for (ti, tool) in tools.iter().enumerate() {
            let r = bpf::test_run(tool.fd, &case.frame, 1_000)
                .with_context(|| format!("BPF_PROG_TEST_RUN of {} on {}", tool.name, case.name))?;
            verdicts[ci][ti] = r.verdict;
        }
    }
    let mut samples = vec![vec![Vec::with_capacity(rounds); tools.len()]; cases.len()];
    for round in 0..rounds {
        for (ci, case) in cases.iter().enumerate() {
            for k in 0..tools.len() {
                let ti = (k + round + ci) % tools.len();
                let r = bpf::test_run(tools[ti].fd, &case.frame, repeat).with_context(|| {
                    format!("BPF_PROG_TEST_RUN of {} on {}", tools[ti].name, case.name)
                })?;
                samples[ci][ti].push(r.ns as f64);
            }
        }
        eprint!("\rbench: cost round {}/{rounds}", round + 1);
    }
    eprintln!();
    let cells = samples
        .into_iter()
        .zip(verdicts)
        .map(|(per_tool, v)| {
            per_tool
                .into_iter()
                .zip(v)
                .map(|(s, verdict)| Cell { ns: median(s), verdict })
                .collect()
        })
        .collect();
    Ok(CostTable { tools: tools.iter().map(|t| t.name).collect(), cases, cells, repeat, rounds })
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}
