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
        let (reason, pinned) = match &health {
            Health::Guarded { pinned, .. } => (None, *pinned),
            Health::NotGuarded(why) => (Some(why.to_string()), g.pinned_link().is_some()),
        };
        out.push(Status {
            netns: NetnsJson { name: ns.name(), cookie: ns.cookie, inode: ns.inode },
            guarded: health.is_guarded(),
            reason,
            xdp_mode: health.mode().map(|m| m.as_str()),
            program_id: g.pinned_link().map_or(0, |(id, _)| id),
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
