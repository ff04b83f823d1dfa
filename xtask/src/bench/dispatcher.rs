//! What sharing the hook costs (`cargo xtask bench -- --dispatcher`, which runs only this and
//! writes bench/dispatcher.md): BPF_PROG_TEST_RUN per packet of portguard alone (its
//! exclusive attachment runs the program directly) against libxdp's dispatcher holding it,
//! alone and with xdp-filter after it, and xdp-filter alone in one, on three frames: to 2745
//! (portguard drops it, xdp-filter never runs), to 2746 (portguard passes it on, xdp-filter
//! drops it) and to 8080 (both pass it).
//!
//! The dispatcher rows with components need a kernel that runs freplace programs: they are
//! measured on the real attachment (portguard joined with `--attach multiprog` on a lab veth,
//! xdp-filter loaded by xdp-filter itself), in the same run as the rest. Where the kernel
//! refuses extensions, the dispatcher is measured with empty slots only (its own cost before
//! any component runs), and the fragment says so.

use std::{os::fd::AsFd as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use portguard::{
    guard::{AttachMode, Owner, Share},
    lab::{self, GW_IF, Lab},
    multiprog::{self, Attach, Support, dispatcher},
    netlink,
    pins::Pins,
    settings::Settings,
};
use portguard_common::DEFAULT_SOURCE_CAPACITY;
use portguard_testkit::frames::Frame;

use super::{
    bpf,
    cases::{Case, DST4, SRC4},
    cost,
};

const FILTERED: u16 = 2746;

const FLOOR: &str = "floor (return XDP_PASS)";
const ALONE: &str = "portguard alone (exclusive)";
const EMPTY1: &str = "dispatcher, 1 empty slot";
const EMPTY2: &str = "dispatcher, 2 empty slots";
const IN_D: &str = "portguard in a dispatcher";
const WITH_XF: &str = "portguard + xdp-filter in a dispatcher";
const XF_IN_D: &str = "xdp-filter alone in a dispatcher";

fn cases() -> Vec<Case> {
    [(2745, true), (FILTERED, false), (8080, false)]
        .into_iter()
        .map(|(port, matched)| Case {
            name: format!("UDP :{port}"),
            frame: Frame::udp4(SRC4, DST4, 40000, port).build(),
            matched,
            plain: true,
        })
        .collect()
}

/// Expected verdicts per row, on the cases in order.
fn expected(row: &str) -> [u32; 3] {
    let (d, p) = (bpf::XDP_DROP, bpf::XDP_PASS);
    match row {
        ALONE | IN_D => [d, p, p],
        WITH_XF => [d, d, p],
        XF_IN_D => [p, d, p],
        _ => [p, p, p],
    }
}

/// An empty dispatcher of `n` slots, each chaining on XDP_PASS, as libxdp builds them.
fn empty_dispatcher(n: u8) -> Result<(dispatcher::Loaded, std::os::fd::OwnedFd)> {
    let mut c = dispatcher::Config::empty(n);
    for i in 0..n as usize {
        c.chain_call_actions[i] = (1 << multiprog::XDP_PASS) | (1 << dispatcher::RETVAL);
    }
    let mut d = dispatcher::load(&c)?;
    let fd = d.program()?.fd()?.as_fd().try_clone_to_owned()?;
    Ok((d, fd))
}

/// A lab with portguard joined to the dispatcher on its veth, and xdp-filter when loaded;
/// everything removed when dropped.
struct Shared {
    lab: Lab,
    pins: Pins,
    owner: Option<Owner>,
    xdp_filter: bool,
}

impl Shared {
    fn start() -> Result<Shared> {
        let lab = Lab::create(&format!("pgbmp{}", std::process::id()))?;
        let pins = Pins::new(format!("/sys/fs/bpf/pgbench-mp-{}", std::process::id()));
        let mut me = Shared { lab, pins: pins.clone(), owner: None, xdp_filter: false };
        let share = Share { attach: Attach::Multiprog, priority: None };
        let acquired = lab::in_netns(&me.lab.gw, move || {
            Owner::acquire_shared(
                &pins,
                GW_IF,
                Some(&Settings::default()),
                DEFAULT_SOURCE_CAPACITY,
                AttachMode::Auto,
                &share,
            )
        })??;
        match acquired {
            portguard::guard::Acquired::Attached(o) => me.owner = Some(o),
            _ => bail!("the lab's veth was guarded already"),
        }
        Ok(me)
    }

    fn xdp(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.lab.gw))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn load_xdp_filter(&mut self) -> Result<()> {
        self.xdp_filter = true;
        self.xdp(&["xdp-filter", "load", GW_IF])?;
        self.xdp(&["xdp-filter", "port", &FILTERED.to_string()])
    }

    /// The dispatcher attached to the veth now.
    fn dispatcher(&self) -> Result<std::os::fd::OwnedFd> {
        let id = lab::in_netns(&self.lab.gw, || {
            let i = portguard::guard::ifindex(GW_IF)?;
            anyhow::Ok(netlink::query(i)?.map(|a| a.prog_id))
        })??
        .context("nothing attached to the lab's veth")?;
        bpf::prog_fd_by_id(id).with_context(|| format!("opening program {id}"))
    }

    /// portguard leaves the dispatcher (xdp-filter stays).
    fn leave(&mut self) -> Result<()> {
        if let Some(o) = self.owner.take() {
            let gw = self.lab.gw.clone();
            lab::in_netns(&gw, move || o.release(false))??;
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.leave();
        if self.xdp_filter {
            let _ = self.xdp(&["xdp-filter", "unload", GW_IF]);
        }
        let _ = std::fs::remove_dir_all(&self.pins.root);
    }
}

/// Measures, writes `out`, and prints the fragment.
pub fn run(repeat: u32, rounds: usize, out: &Path) -> Result<()> {
    let floor = bpf::load_floor()?;
    let mut alone = portguard::guard::Loaded::with_defaults(&Settings::default())?;
    let alone_fd = alone.program()?.fd()?.as_fd().try_clone_to_owned()?;
    let (_d1, empty1) = empty_dispatcher(1)?;
    let (_d2, empty2) = empty_dispatcher(2)?;
    let mut tools = vec![
        cost::Tool { name: FLOOR, fd: floor.as_fd() },
        cost::Tool { name: ALONE, fd: alone_fd.as_fd() },
        cost::Tool { name: EMPTY1, fd: empty1.as_fd() },
        cost::Tool { name: EMPTY2, fd: empty2.as_fd() },
    ];
    let support = multiprog::support()?;
    let mut tables = vec![cost::measure(&tools, cases(), repeat, rounds)?];
    if support == Support::Yes {
        let mut s = Shared::start()?;
        let in_d = s.dispatcher()?;
        tables.push(cost::measure(
            &[cost::Tool { name: IN_D, fd: in_d.as_fd() }],
            cases(),
            repeat,
            rounds,
        )?);
        s.load_xdp_filter()?;
        let with_xf = s.dispatcher()?;
        tables.push(cost::measure(
            &[cost::Tool { name: WITH_XF, fd: with_xf.as_fd() }],
            cases(),
            repeat,
            rounds,
        )?);
        s.leave()?;
        let xf = s.dispatcher()?;
        // The first rows again beside it, so that this table has its own reference.
        tools.push(cost::Tool { name: XF_IN_D, fd: xf.as_fd() });
        tables.push(cost::measure(&tools, cases(), repeat, rounds)?);
    }
    for t in &tables {
        for (ci, case) in t.cases.iter().enumerate() {
            for (ti, tool) in t.tools.iter().enumerate() {
                let got = t.cells[ci][ti].verdict;
                let want = expected(tool)[ci];
                if got != want {
                    bail!(
                        "{tool} gave {} on {} (expected {}): no numbers from a program that does \
                         not do what it should",
                        bpf::verdict_name(got),
                        case.name,
                        bpf::verdict_name(want)
                    );
                }
            }
        }
    }
    let md = render(&tables, &support, repeat, rounds);
    println!("{md}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

fn render(tables: &[cost::CostTable], support: &Support, repeat: u32, rounds: usize) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // The CPU says whether this ran on hardware or under emulation (QEMU's TCG shows its own
    // model), which no figure here survives unchanged.
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mut md = String::from("## Sharing the interface: the dispatcher's cost\n\n");
    md.push_str(&format!(
        "BPF_PROG_TEST_RUN, ns per packet (median of {rounds} rounds of {repeat}), kernel {}, \
         {cpu}. `cargo xtask bench -- --dispatcher` writes this fragment.\n\n",
        kernel.trim()
    ));
    let names: Vec<String> = tables[0].cases.iter().map(|c| c.name.clone()).collect();
    md.push_str(&format!("| program | {} | adds, per packet |\n", names.join(" | ")));
    md.push_str(&format!("|---|{}---|\n", "---:|".repeat(names.len())));
    let mut seen = Vec::new();
    for t in tables {
        for tool in &t.tools {
            // The last table repeats the first rows as its own reference: show them once.
            if seen.contains(tool) {
                continue;
            }
            seen.push(tool);
            let ns = |ci: usize, tool: &str| t.cell(ci, tool).map_or(f64::NAN, |c| c.ns);
            let cells: Vec<String> = (0..names.len())
                .map(|ci| {
                    let c = t.cell(ci, tool).expect("measured");
                    format!("{:.0} ({})", c.ns, bpf::verdict_name(c.verdict))
                })
                .collect();
            // What the row adds to the program it wraps, measured in the same table: the
            // dispatcher's own cost.
            let added = match *tool {
                EMPTY1 | EMPTY2 => Some(FLOOR),
                IN_D | WITH_XF => Some(ALONE),
                _ => None,
            }
            .filter(|r| t.cell(0, r).is_some() || tables[0].cell(0, r).is_some())
            .map(|r| {
                let base = if t.cell(0, r).is_some() { t } else { &tables[0] };
                let d: Vec<String> = (0..names.len())
                    .map(|ci| {
                        format!(
                            "{:+.0}",
                            ns(ci, tool) - base.cell(ci, r).map_or(f64::NAN, |c| c.ns)
                        )
                    })
                    .collect();
                format!("{} ns vs. {r}", d.join(" / "))
            })
            .unwrap_or_else(|| "".into());
            md.push_str(&format!("| {tool} | {} | {added} |\n", cells.join(" | ")));
        }
    }
    if let Support::Refused(why) = support {
        md.push_str(&format!(
            "\nNo dispatcher row with a component: {why}. Those rows need a kernel that runs \
             freplace programs (Debian's do: `cargo xtask vmlab --scenario multiprog` runs the \
             sharing tests in one, under emulation, whose nanoseconds would not be the \
             hardware's).\n"
        ));
    }
    md
}
