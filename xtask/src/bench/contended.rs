//! One source on two CPUs at once: the per-source table is shared by the CPUs and its counters
//! are added atomically, so a source whose packets land on several queues bounces one cache
//! line between cores. Two threads pinned to CPUs 0 and 1 run BPF_PROG_TEST_RUN of portguard
//! (drop mode) at the same moment, on frames from one source (contended) or from a source each
//! (parallel, the same machine load without the shared line); one thread alone is the
//! baseline. Medians over the rounds, ns per packet per thread.

use std::{
    os::fd::BorrowedFd,
    sync::{Arc, Barrier},
    thread,
};

use anyhow::{Context as _, Result};
use portguard_testkit::frames::Frame;

use super::{
    bpf,
    cases::{DST4, GUARDED, SRC4},
    cost::median,
};

pub struct Contended {
    pub alone_ns: f64,
    pub parallel_ns: f64,
    pub contended_ns: f64,
    pub repeat: u32,
    pub rounds: usize,
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// ns per packet for each of `frames.len()` threads (thread i on CPU i, frame i), started
/// together.
fn together(fd: BorrowedFd<'_>, frames: &[Vec<u8>], repeat: u32) -> Result<Vec<f64>> {
    let barrier = Arc::new(Barrier::new(frames.len()));
    thread::scope(|s| {
        let handles: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(cpu, frame)| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    pin(cpu);
                    barrier.wait();
                    bpf::test_run(fd, frame, repeat).map(|r| r.ns as f64)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a measuring thread panicked"))?
                    .context("BPF_PROG_TEST_RUN")
            })
            .collect()
    })
}

pub fn measure(fd: BorrowedFd<'_>, repeat: u32, rounds: usize) -> Result<Contended> {
    let one = Frame::udp4(SRC4, DST4, 40000, GUARDED).build();
    let other = Frame::udp4([198, 18, 0, 3], DST4, 40000, GUARDED).build();
    // Both sources known before measuring.
    for f in [&one, &other] {
        bpf::test_run(fd, f, 1_000).context("warming up")?;
    }
    let (mut alone, mut parallel, mut contended) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        alone.extend(together(fd, std::slice::from_ref(&one), repeat)?);
        parallel.extend(together(fd, &[one.clone(), other.clone()], repeat)?);
        contended.extend(together(fd, &[one.clone(), one.clone()], repeat)?);
    }
    Ok(Contended {
        alone_ns: median(alone),
        parallel_ns: median(parallel),
        contended_ns: median(contended),
        repeat,
        rounds,
    })
}
