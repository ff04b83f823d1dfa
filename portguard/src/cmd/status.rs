//! `portguard status`: what is guarded, and how, as the kernel says it is now.

use std::{
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use portguard::{
    clock,
    guard::{Health, View},
    json::Document,
    multiprog,
    netns::Netns,
    pins::Pins,
};
use serde::Serialize;

/// Show which interfaces of this network namespace are guarded, and how.
///
/// "Guarded" is what the kernel says now: the interface runs portguard's program, through the
/// guard's link. Anything else is shown as NOT GUARDED with the reason (another program, the
/// interface gone or replaced, the link detached).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// One JSON document (fields in README.md, "JSON output").
    #[arg(long)]
    pub json: bool,
}

/// The network namespace of a guard.
#[derive(Serialize, schemars::JsonSchema)]
struct NetnsJson {
    /// "root", the `ip netns` name, or "netns:[inode]".
    name: String,
    cookie: u64,
    inode: u64,
}

/// One guarded interface in `status --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Status {
    iface: String,
    netns: NetnsJson,
    /// The kernel runs portguard's program on the interface now.
    guarded: bool,
    /// Why not, when not.
    reason: Option<String>,
    /// The mode the kernel runs it in; null when not guarded.
    xdp_mode: Option<&'static str>,
    /// The program the guard's link runs; 0 when there is no link.
    program_id: u32,
    /// How the program takes the interface's XDP hook: "exclusive" (alone, through its
    /// pinned bpf_link) or "multiprog" (one program of libxdp's dispatcher).
    attach: &'static str,
    /// multiprog: its run priority in the dispatcher (lower runs first); null when exclusive
    /// or not in the dispatcher now.
    priority: Option<u32>,
    /// multiprog: the dispatcher program attached to the interface; null otherwise.
    dispatcher_id: Option<u32>,
    /// multiprog: the other programs in the dispatcher, in run order (empty otherwise).
    shared_with: Vec<PeerJson>,
    /// The link is pinned (a guard without pins ends with its owner).
    pinned: bool,
    mode: &'static str,
    ports: Vec<u16>,
    protocols: Vec<&'static str>,
    direction: &'static str,
    allow: Vec<String>,
    guarded_since: String,
    guarded_since_unix: u64,
    /// The pid of the portguard that owns it, if one is running (from the kernel's locks).
    owner_pid: Option<u32>,
    source_capacity: u32,
    sources_tracked: usize,
    pin_dir: String,
}

/// Another program in the dispatcher portguard runs in.
#[derive(Serialize, schemars::JsonSchema)]
struct PeerJson {
    program_id: u32,
    /// The kernel's name for it (at most 15 characters).
    name: String,
    priority: u32,
    /// The XDP actions after which the next program runs, e.g. ["XDP_PASS"].
    chain_call_actions: Vec<String>,
}

/// `status --json`: every guarded interface (an empty list when nothing is).
#[derive(Serialize, schemars::JsonSchema)]
pub struct StatusJson {
    pub interfaces: Vec<Status>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins = Pins::default();
    let ns = Netns::current()?;
    let mut out = Vec::new();
    for iface in pins.guarded()? {
        let g = View::open(&pins, &iface)?;
        let meta = g.meta()?;
        let s = g.settings().clone();
        let health = g.health();
        let kind = g.kind();
        let (reason, pinned, program_id, shared) = match &health {
            Health::Guarded { pinned, prog_id, shared, .. } => {
                (None, *pinned, *prog_id, shared.clone())
            }
            Health::NotGuarded(why) => (
                Some(why.to_string()),
                g.pinned_link().is_some(),
                g.pinned_link().map_or(0, |(id, _)| id),
                None,
            ),
        };
        out.push(Status {
            netns: NetnsJson { name: ns.name(), cookie: ns.cookie, inode: ns.inode },
            guarded: health.is_guarded(),
            reason,
            xdp_mode: health.mode().map(|m| m.as_str()),
            program_id,
            attach: kind.as_str(),
            priority: shared.as_ref().map(|s| s.priority),
            dispatcher_id: shared.as_ref().map(|s| s.dispatcher),
            shared_with: shared
                .iter()
                .flat_map(|s| &s.others)
                .map(|p| PeerJson {
                    program_id: p.prog_id,
                    name: p.name.clone(),
                    priority: p.priority,
                    chain_call_actions: multiprog::actions(p.chain_call_actions)
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
                .collect(),
            pinned,
            mode: s.mode.as_str(),
            ports: s.ports.clone(),
            protocols: s.protocols.iter().map(|p| p.as_str()).collect(),
            direction: s.direction.as_str(),
            allow: s.allow.iter().map(ToString::to_string).collect(),
            guarded_since: clock::rfc3339(UNIX_EPOCH + Duration::from_secs(meta.since_unix)),
            guarded_since_unix: meta.since_unix,
            owner_pid: g.owned().then_some(meta.owner_pid).filter(|p| *p != 0),
            source_capacity: meta.capacity,
            sources_tracked: g.sources()?.len(),
            pin_dir: g.dir().display().to_string(),
            iface,
        });
    }
    if args.json {
        println!("{}", Document::now(StatusJson { interfaces: out }).pretty()?);
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() {
        println!("nothing is guarded");
        return Ok(ExitCode::SUCCESS);
    }
    for s in &out {
        let since = UNIX_EPOCH + Duration::from_secs(s.guarded_since_unix);
        let age = SystemTime::now().duration_since(since).unwrap_or_default();
        let owner = match s.owner_pid {
            Some(p) => format!("run by pid {p}"),
            None => "left in place (no portguard running for it)".into(),
        };
        let state = match (&s.reason, s.xdp_mode) {
            (Some(why), _) => format!("NOT GUARDED: {why}"),
            (None, Some(m)) if s.pinned => format!("guarded ({m} XDP, program {})", s.program_id),
            (None, m) => format!(
                "guarded ({} XDP, program {}; not pinned: it ends with its owner)",
                m.unwrap_or("?"),
                s.program_id
            ),
        };
        println!("{} (namespace {}): {state}", s.iface, s.netns.name);
        match (s.attach, s.dispatcher_id, s.priority) {
            ("multiprog", Some(d), Some(p)) => {
                let others: Vec<String> = s
                    .shared_with
                    .iter()
                    .map(|o| {
                        format!("{} (program {}, priority {})", o.name, o.program_id, o.priority)
                    })
                    .collect();
                println!(
                    "  shared in libxdp's dispatcher (program {d}) at priority {p}, {}",
                    if others.is_empty() {
                        "alone".into()
                    } else {
                        format!("with {}", others.join(", "))
                    }
                );
            }
            ("multiprog", _, _) => println!("  shared through libxdp's dispatcher"),
            _ => println!("  alone on the interface (exclusive bpf_link)"),
        }
        println!("  since {} ({} ago), {owner}", clock::rfc3339(since), clock::short(age));
        let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
        println!(
            "  action {}, ports {}, protocols {}, direction {}, allowlist {}",
            s.mode,
            ports.join(","),
            s.protocols.join("+"),
            s.direction,
            if s.allow.is_empty() { "none".into() } else { s.allow.join(",") }
        );
        println!(
            "  sources tracked {} of {}, pins in {}",
            s.sources_tracked, s.source_capacity, s.pin_dir
        );
    }
    Ok(ExitCode::SUCCESS)
}
