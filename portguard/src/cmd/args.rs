//! What several verbs share: the settings flags of `run` and `set`, and which interfaces a
//! verb acts on.

use anyhow::{Result, bail};
use portguard::{
    error::usage,
    pins::Pins,
    ranges,
    settings::{Cidr, Direction, Mode, Protocol, Unjudged},
};

/// The settings flags `run` and `set` share.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SettingsArgs {
    /// What to do with matched packets [run's default: drop].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Which port of a packet is compared: dst (probes), src (hosts answering from the port),
    /// or both [run's default: dst].
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Guarded protocol (repeat for both) [run's default: tcp and udp]. With `set`, replaces
    /// the current ones.
    #[arg(long = "protocol", value_enum)]
    pub protocols: Vec<Protocol>,
    /// Source prefix that is counted but never dropped, e.g. 198.18.0.0/15 (repeatable). With
    /// `set`, added to the allowlist.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Accept an --allow that covers a whole address family (0.0.0.0/0 or ::/0), which
    /// switches off dropping for every IPv4 or IPv6 source.
    #[arg(long)]
    pub force: bool,
    /// What to do with frames that could reach a guarded port but whose ports cannot be read
    /// (an IPv6 chain or a VLAN stack deeper than followed, a first fragment cut before its
    /// ports) [default: drop in drop mode, pass in count mode].
    #[arg(long, value_enum)]
    pub unjudged: Option<Unjudged>,
    /// Count IPv4 sources per prefix of this length, 8 to 32 [run's default: 32].
    #[arg(long, value_name = "LEN", value_parser = ranges::parse::v4_prefix)]
    pub v4_prefix: Option<u8>,
    /// Count IPv6 sources per prefix of this length, 16 to 128 [run's default: 64: one /64, as
    /// a host or a scanner rotating through its /64 has, is one row].
    #[arg(long, value_name = "LEN", value_parser = ranges::parse::v6_prefix)]
    pub v6_prefix: Option<u8>,
}

impl SettingsArgs {
    /// An allowlist entry covering a whole address family is refused without --force: one
    /// mistyped prefix would silently stop all dropping for that family.
    pub fn check_allow(&self) -> Result<()> {
        if let Some(c) = self.allow.iter().find(|c| c.is_everything())
            && !self.force
        {
            return Err(usage(format!(
                "--allow {c} allows every {} source, so none would ever be dropped: add --force \
                 if that is what you want",
                family(c)
            )));
        }
        Ok(())
    }
}

/// "IPv4" or "IPv6".
pub fn family(c: &Cidr) -> &'static str {
    if c.addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Logs the allowlist entries that cover a whole address family (accepted with --force, or
/// from a config file, where there is no --force to ask for).
pub fn warn_everything_allowed(allow: &[Cidr]) {
    for c in allow.iter().filter(|c| c.is_everything()) {
        log::warn!("the allowlist holds {c}: no {} packet is ever dropped", family(c));
    }
}

/// The interfaces a verb acts on: those named, or every guarded one when none is (possibly
/// none).
pub fn targets(pins: &Pins, named: &[String]) -> Result<Vec<String>> {
    // Listing the pin root first: without the privileges to read it, a named interface would
    // look unguarded, and the answer would be wrong rather than "needs root".
    let guarded = pins.guarded()?;
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    Ok(guarded)
}

/// `targets`, where nothing to act on is an error (for verbs that change something).
pub fn some_targets(pins: &Pins, named: &[String]) -> Result<Vec<String>> {
    let all = targets(pins, named)?;
    if all.is_empty() {
        bail!(nothing_guarded(pins));
    }
    Ok(all)
}

/// What to say when nothing is guarded, and how to change that.
pub fn nothing_guarded(pins: &Pins) -> String {
    if pins.mounted() {
        "nothing is guarded: start `portguard run --iface IFACE`".into()
    } else {
        "nothing is guarded (bpffs is not mounted at /sys/fs/bpf): start `portguard run --iface IFACE`"
            .into()
    }
}
