//! What several verbs share: the settings flags of `run` and `set`, and which interfaces a
//! verb acts on.

use anyhow::{Result, bail};
use portguard::{
    pins::Pins,
    settings::{Cidr, Direction, Mode, Protocol},
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
}

/// The interfaces a verb acts on: those named, or every guarded one when none is (possibly
/// none).
pub fn targets(pins: &Pins, named: &[String]) -> Result<Vec<String>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    pins.guarded()
}

/// `targets`, where nothing to act on is an error.
pub fn some_targets(pins: &Pins, named: &[String]) -> Result<Vec<String>> {
    let all = targets(pins, named)?;
    if all.is_empty() {
        if !pins.mounted() {
            bail!(
                "nothing is guarded (bpffs is not mounted at /sys/fs/bpf): start `portguard run --iface IFACE`"
            );
        }
        bail!("nothing is guarded: start `portguard run --iface IFACE`");
    }
    Ok(all)
}

/// The longest `--duration`: a year (and a sane bound for a timer).
const MAX_DURATION: f64 = 365.0 * 86_400.0;

/// `--duration SECONDS`: finite, above zero, at most a year. Checked before anything is loaded.
pub fn duration(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > MAX_DURATION {
        return Err(format!("'{s}': give a number of seconds above 0 and at most {MAX_DURATION}"));
    }
    Ok(v)
}
