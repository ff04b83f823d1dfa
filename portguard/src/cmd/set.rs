//! `portguard set`: change a running guard in place: no reload, counters kept.

use std::process::ExitCode;

use anyhow::{Result, bail};
use portguard::{
    error::usage,
    guard::{View, view::check_capacity},
    pins::Pins,
    settings::{Cidr, Settings},
};
use portguard_common::CHANGE_SET;

use super::args::{SettingsArgs, some_targets};

/// Change the running guard in place (no reload; counters are kept).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Only this interface (default: every guarded one).
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub iface: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Guard this port too (repeatable).
    #[arg(long = "add-port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub add_ports: Vec<u16>,
    /// Stop guarding this port (repeatable).
    #[arg(long = "remove-port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub remove_ports: Vec<u16>,
    /// Remove a source prefix from the allowlist (repeatable).
    #[arg(long = "disallow", value_name = "CIDR")]
    pub disallow: Vec<Cidr>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let a = &args.settings;
    if a.mode.is_none()
        && args.add_ports.is_empty()
        && args.remove_ports.is_empty()
        && a.allow.is_empty()
        && args.disallow.is_empty()
        && a.direction.is_none()
        && a.protocols.is_empty()
        && a.unjudged.is_none()
        && a.v4_prefix.is_none()
        && a.v6_prefix.is_none()
    {
        return Err(usage(
            "nothing to change: give --mode, --add-port, --remove-port, --allow, --disallow, \
             --direction, --protocol, --unjudged, --v4-prefix or --v6-prefix",
        ));
    }
    if let Some(p) = args.add_ports.iter().find(|p| args.remove_ports.contains(p)) {
        return Err(usage(format!("--add-port {p} and --remove-port {p} contradict each other")));
    }
    if let Some(c) = a.allow.iter().find(|c| args.disallow.contains(c)) {
        return Err(usage(format!("--allow {c} and --disallow {c} contradict each other")));
    }
    a.check_allow()?;
    let pins = Pins::default();
    let targets = some_targets(&pins, args.iface.as_slice())?;
    // Checked against every target first, so that a change that cannot apply to one applies
    // to none.
    let mut views = Vec::new();
    for iface in &targets {
        let g = View::open(&pins, iface)?;
        let mut s = g.settings().clone();
        edit(&args, &mut s).map_err(|e| anyhow::anyhow!("{iface}: {e}"))?;
        check_capacity(&s).map_err(|e| anyhow::anyhow!("{iface}: {e}"))?;
        views.push(g);
    }
    super::args::warn_everything_allowed(&a.allow);
    // Each change is applied as a change, under the namespace's lock, to what the maps hold
    // then: two operators' changes both survive, whatever their order.
    for mut g in views {
        let iface = g.iface().to_string();
        let c = g
            .update(CHANGE_SET, |s| edit(&args, s))
            .map_err(|e| anyhow::anyhow!("{iface}: {e:#}"))?;
        println!("{iface}: {}", c.new.summary());
    }
    Ok(ExitCode::SUCCESS)
}

/// The change `args` asks for, made to `s`.
fn edit(args: &Args, s: &mut Settings) -> Result<()> {
    let a = &args.settings;
    if let Some(m) = a.mode {
        s.mode = m;
    }
    if let Some(u) = a.unjudged {
        s.unjudged = Some(u);
    }
    if let Some(p) = a.v4_prefix {
        s.v4_prefix = p;
    }
    if let Some(p) = a.v6_prefix {
        s.v6_prefix = p;
    }
    if let Some(d) = a.direction {
        s.direction = d;
    }
    if !a.protocols.is_empty() {
        s.protocols = a.protocols.clone();
        s.protocols.sort_by_key(|p| *p as u8);
        s.protocols.dedup();
    }
    for p in &args.remove_ports {
        if !s.ports.contains(p) {
            bail!("port {p} is not guarded");
        }
        s.ports.retain(|x| x != p);
    }
    s.ports.extend(args.add_ports.iter().copied());
    s.ports.sort_unstable();
    s.ports.dedup();
    if s.ports.is_empty() {
        bail!("refusing to remove the last guarded port (use `portguard detach` to stop guarding)");
    }
    for c in &args.disallow {
        if !s.allow.contains(c) {
            bail!("{c} is not on the allowlist");
        }
        s.allow.retain(|x| x != c);
    }
    for c in &a.allow {
        if !s.allow.contains(c) {
            s.allow.push(*c);
        }
    }
    Ok(())
}
