//! Attaching the program to an interface, in the XDP mode asked for.

use anyhow::{Result, anyhow};
use aya::programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId};
use portguard_common::{ATTACH_EXCLUSIVE, ATTACH_MULTIPROG, XDP_MODE_GENERIC, XDP_MODE_NATIVE};

use crate::multiprog::root_cause;

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic with a warning.
    Auto,
    /// Native only: fail if the driver has no XDP support.
    Native,
    /// Generic (skb) XDP: works on any interface, after the skb is allocated.
    Generic,
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
        }
    }

    /// From `Meta::xdp_mode`.
    pub fn from_meta(m: u8) -> Option<Attached> {
        match m {
            XDP_MODE_NATIVE => Some(Attached::Native),
            XDP_MODE_GENERIC => Some(Attached::Generic),
            _ => None,
        }
    }

    pub fn meta(self) -> u8 {
        match self {
            Attached::Native => XDP_MODE_NATIVE,
            Attached::Generic => XDP_MODE_GENERIC,
        }
    }
}

/// How the program holds the interface's XDP hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Alone, through a pinned bpf_link.
    Exclusive,
    /// As a component of libxdp's multi-program dispatcher (see `multiprog`).
    Multiprog,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exclusive => "exclusive",
            Kind::Multiprog => "multiprog",
        }
    }

    /// From `Meta::attach`.
    pub fn from_meta(m: u8) -> Kind {
        if m == ATTACH_MULTIPROG { Kind::Multiprog } else { Kind::Exclusive }
    }

    pub fn meta(self) -> u8 {
        match self {
            Kind::Exclusive => ATTACH_EXCLUSIVE,
            Kind::Multiprog => ATTACH_MULTIPROG,
        }
    }
}

/// How a guard is to share its interface (`--attach`, `--priority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub attach: crate::multiprog::Attach,
    /// Run priority in the dispatcher (lower runs first). None: a guard left in place keeps
    /// its own, a new one gets `multiprog::DEFAULT_PRIORITY`.
    pub priority: Option<u32>,
}

impl Default for Share {
    fn default() -> Self {
        Share { attach: crate::multiprog::Attach::Auto, priority: None }
    }
}

/// Attaches `prog` to interface `idx`. With `Auto`, a driver without native XDP gets generic
/// mode and a warning.
pub fn attach_to(
    prog: &mut Xdp,
    iface: &str,
    idx: u32,
    mode: AttachMode,
) -> Result<(XdpLinkId, Attached)> {
    Ok(match mode {
        AttachMode::Native => (
            prog.attach_to_if_index(idx, XdpMode::Driver)
                .map_err(|e| attach_error(iface, "native", e))?,
            Attached::Native,
        ),
        AttachMode::Generic => (
            prog.attach_to_if_index(idx, XdpMode::Skb)
                .map_err(|e| attach_error(iface, "generic", e))?,
            Attached::Generic,
        ),
        AttachMode::Auto => match prog.attach_to_if_index(idx, XdpMode::Driver) {
            Ok(id) => (id, Attached::Native),
            Err(native) => {
                let id = prog
                    .attach_to_if_index(idx, XdpMode::Skb)
                    .map_err(|e| attach_error(iface, "generic", e))?;
                log::warn!(
                    "{iface}: native XDP unavailable ({}); running in generic mode, after the \
                     kernel has allocated an skb",
                    root_cause(&native)
                );
                (id, Attached::Generic)
            }
        },
    })
}

fn attach_error(iface: &str, mode: &str, e: ProgramError) -> anyhow::Error {
    anyhow!("cannot attach to {iface} in {mode} XDP mode: {}", root_cause(&e))
}
