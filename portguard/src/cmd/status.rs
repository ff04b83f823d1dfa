//! `portguard status`: what is guarded, and how.

use std::{
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use portguard::{clock, guard::View, json::Document, pins::Pins};
use serde::Serialize;

/// Show which interfaces are guarded and how.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// One JSON document (fields in README.md, "JSON output").
    #[arg(long)]
    pub json: bool,
}

/// One guarded interface in `status --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Status {
    iface: String,
    xdp_mode: &'static str,
    mode: &'static str,
    ports: Vec<u16>,
    protocols: Vec<&'static str>,
    direction: &'static str,
    allow: Vec<String>,
    program_id: u32,
    guarded_since: String,
    guarded_since_unix: u64,
    /// The pid of the portguard that owns it, if one is running.
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

fn alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins = Pins::default();
    let mut out = Vec::new();
    for iface in pins.guarded()? {
        let g = View::open(&pins, &iface)?;
        let meta = g.meta()?;
        let s = g.settings().clone();
        out.push(Status {
            xdp_mode: g.attached().map_or("unknown", |a| a.as_str()),
            mode: s.mode.as_str(),
            ports: s.ports.clone(),
            protocols: s.protocols.iter().map(|p| p.as_str()).collect(),
            direction: s.direction.as_str(),
            allow: s.allow.iter().map(ToString::to_string).collect(),
            program_id: g.program_id().unwrap_or(0),
            guarded_since: clock::rfc3339(UNIX_EPOCH + Duration::from_secs(meta.since_unix)),
            guarded_since_unix: meta.since_unix,
            owner_pid: Some(meta.owner_pid).filter(|p| alive(*p)),
            source_capacity: meta.capacity,
            sources_tracked: g.sources()?.len(),
            pin_dir: pins.dir(&iface).display().to_string(),
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
        println!(
            "{}: guarded since {} ({} ago), {} XDP, program {}, {owner}",
            s.iface,
            clock::rfc3339(since),
            clock::short(age),
            s.xdp_mode,
            s.program_id
        );
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
