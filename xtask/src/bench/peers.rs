//! The peers portguard is measured against: xdp-filter (loaded the way an admin would, on a
//! veth inside a namespace of our own) and the floor (the smallest XDP program there is).

use std::{os::fd::OwnedFd, process::Command};

use anyhow::{Context as _, Result, bail};

use super::bpf;
use crate::util::{describe, output};

/// The namespace and veth xdp-filter is loaded on. Never the root namespace: xdp-filter
/// attaches to a real interface, and this one exists only for the benchmark.
const NS: &str = "pgbench-xf";
const VETH: &str = "pgbxf0";
const PEER: &str = "pgbxf1";

/// xdp-filter loaded on a veth in `NS`, filtering port 2745, and an fd for its XDP program.
/// Dropping it unloads xdp-filter (which also removes its pins from bpffs) and deletes the
/// namespace, also when setting up failed halfway.
pub struct XdpFilter {
    pub fd: Option<OwnedFd>,
    pub id: u32,
    pub name: String,
    pub version: String,
    loaded: bool,
}

fn in_ns(args: &[&str]) -> Command {
    // nsenter enters only the network namespace; `ip netns exec` would remount /sys and hide
    // the bpffs pins xdp-filter keeps its maps in.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{NS}")).args(args);
    c
}

fn ip(args: &[&str]) -> Result<()> {
    output(Command::new("ip").args(args)).map(drop)
}

impl XdpFilter {
    pub fn start(port: u16) -> Result<XdpFilter> {
        // Leftovers of a run that was killed: unload (which also removes xdp-filter's pins in
        // bpffs), then remove the namespace.
        if std::path::Path::new(&format!("/run/netns/{NS}")).exists() {
            let _ = in_ns(&["xdp-filter", "unload", VETH]).output();
            let _ = Command::new("ip").args(["netns", "del", NS]).output();
        }
        ip(&["netns", "add", NS]).context("creating the xdp-filter namespace")?;
        let mut me = XdpFilter {
            fd: None,
            id: 0,
            name: String::new(),
            version: String::new(),
            loaded: false,
        };
        ip(&["-n", NS, "link", "add", VETH, "type", "veth", "peer", "name", PEER])?;
        ip(&["-n", NS, "link", "set", VETH, "up"])?;
        ip(&["-n", NS, "link", "set", PEER, "up"])?;
        // Native first (veth has it); generic as a fallback. The program is the same either
        // way, and BPF_PROG_TEST_RUN does not go through the attachment.
        if output(&mut in_ns(&["xdp-filter", "load", VETH])).is_err() {
            output(&mut in_ns(&["xdp-filter", "load", "--mode", "skb", VETH]))
                .context("loading xdp-filter (native and skb mode)")?;
        }
        me.loaded = true;
        // Default: destination port, TCP and UDP (see `xdp-filter port --help`).
        output(&mut in_ns(&["xdp-filter", "port", &port.to_string()]))
            .context("adding the port to xdp-filter")?;
        let status = output(&mut in_ns(&["xdp-loader", "status", VETH]))?;
        let (name, id) = filter_program(&status)
            .with_context(|| format!("no xdpfilt_ program in `xdp-loader status`:\n{status}"))?;
        me.fd = Some(
            bpf::prog_fd_by_id(id).with_context(|| format!("opening xdp-filter program {id}"))?,
        );
        me.id = id;
        me.name = name;
        me.version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "xdp-tools"]))
            .unwrap_or_else(|_| "unknown".into());
        Ok(me)
    }
}

/// xdp-filter's own program (not the libxdp dispatcher, when there is one): the name starts
/// with `xdpfilt_`, and the ID is the first number after it on the same line.
fn filter_program(status: &str) -> Option<(String, u32)> {
    for line in status.lines() {
        let mut words = line.split_whitespace().skip_while(|w| !w.starts_with("xdpfilt_"));
        let Some(name) = words.next() else { continue };
        if let Some(id) = words.find_map(|w| w.parse::<u32>().ok()) {
            return Some((name.to_string(), id));
        }
    }
    None
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        self.fd = None;
        if self.loaded {
            let mut c = in_ns(&["xdp-filter", "unload", VETH]);
            if let Err(e) = output(&mut c) {
                eprintln!("bench: warning: {} failed: {e:#}", describe(&c));
            }
        }
        let _ = Command::new("ip").args(["netns", "del", NS]).output();
    }
}

/// The floor program, loaded raw.
pub fn floor() -> Result<OwnedFd> {
    bpf::load_floor().context("loading the floor program (BPF_PROG_LOAD)")
}

/// Refuses to go on when no XDP-capable program answers: catches a wrong fd before it turns
/// into a table of nonsense.
pub fn check_verdict(tool: &str, got: u32, want: u32, case: &str) -> Result<()> {
    if got != want {
        bail!(
            "{tool} returned {} for {case}, expected {}",
            bpf::verdict_name(got),
            bpf::verdict_name(want)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_filter_program_not_the_dispatcher() {
        let plain = "Interface Prio Program name Mode ID Tag Chain actions\n\
                     ----\n\
                     pgbxf0       xdpfilt_alw_all   native   119  2d8506cc913c856b\n";
        assert_eq!(super::filter_program(plain), Some(("xdpfilt_alw_all".into(), 119)));
        let multi = "pgbxf0  xdp_dispatcher native 118 90f686eb86991928\n \
                     =>  50  xdpfilt_alw_all  121  2d8506cc913c856b  XDP_PASS\n";
        assert_eq!(super::filter_program(multi), Some(("xdpfilt_alw_all".into(), 121)));
    }
}
