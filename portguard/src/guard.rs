//! One guarded interface: the loaded program, its maps, and its XDP attachment.
//!
//! Two ways to hold one:
//! - `Guard::load` + `attach`: nothing pinned; dropping the guard detaches it. The verdict tests
//!   and benchmarks use this (they drive the program through BPF_PROG_TEST_RUN).
//! - `Guard::acquire`: pinned under `Pins` so that every portguard process can see and change
//!   it, and so that it outlives the process when asked to. If the interface is already guarded
//!   (a previous run left it in place, or was killed), the new program atomically replaces the
//!   old one on the same link, reusing its maps: no packet is ever unguarded and no counter is
//!   lost. If another live portguard owns it, this one only watches.

use std::{
    ffi::CString,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use portguard_common::{
    DEFAULT_SOURCE_CAPACITY, LAYOUT_VERSION, Meta, PROGRAM_NAME, Totals, XDP_MODE_GENERIC,
    XDP_MODE_NATIVE, map_names,
};

pub use crate::maps::Source;
use crate::{
    maps::Maps,
    pins::{self, LINK, Lock, Pins},
    settings::Settings,
    sys,
};

/// The XDP object, built by build.rs from portguard-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard"));

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

    fn from_meta(m: u8) -> Option<Attached> {
        match m {
            XDP_MODE_NATIVE => Some(Attached::Native),
            XDP_MODE_GENERIC => Some(Attached::Generic),
            _ => None,
        }
    }

    fn meta(self) -> u8 {
        match self {
            Attached::Native => XDP_MODE_NATIVE,
            Attached::Generic => XDP_MODE_GENERIC,
        }
    }
}

/// What `acquire` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Nothing was there: attached afresh.
    Attached,
    /// A guard was left in place: its program was replaced in place, its counters kept.
    Adopted,
    /// Another live portguard (this pid) owns it: watching only.
    Watching(u32),
}

pub struct Guard {
    /// The program; None when only watching pinned state.
    ebpf: Option<Ebpf>,
    maps: Maps,
    settings: Settings,
    /// SOURCES capacity, which the admission budget is derived from.
    capacity: u32,
    /// The XDP link when this guard owns a pinned attachment.
    link: Option<FdLink>,
    pin_dir: Option<PathBuf>,
    _lock: Option<Lock>,
    pub iface: Option<String>,
    pub attached: Option<Attached>,
}

/// The ifindex of `iface`, or a one-line error naming it.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| anyhow!("invalid interface name '{iface}'"))?;
    // SAFETY: a NUL-terminated string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 || iface.contains('/') {
        bail!("unknown interface '{iface}' (see `ip link` for the interfaces on this host)");
    }
    Ok(idx)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Loads the object, its maps pinned in (or reused from) `dir` when given.
fn load_object(capacity: u32, dir: Option<&Path>) -> Result<(Ebpf, Maps)> {
    if capacity == 0 {
        bail!("the source table needs at least 1 entry");
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map_names::SOURCES, capacity);
    if let Some(dir) = dir {
        for name in map_names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
    program(&mut ebpf)?.load().map_err(verifier_error)?;
    let maps = Maps::take(&mut ebpf)?;
    Ok((ebpf, maps))
}

impl Guard {
    /// Loads the program (SOURCES holding `capacity` entries) with fresh, unpinned maps and
    /// writes `settings` into them. Nothing is attached yet.
    pub fn load(settings: &Settings, capacity: u32) -> Result<Guard> {
        let (ebpf, maps) = load_object(capacity, None)?;
        let mut g = Guard {
            ebpf: Some(ebpf),
            maps,
            settings: Settings { ports: Vec::new(), allow: Vec::new(), ..settings.clone() },
            capacity,
            link: None,
            pin_dir: None,
            _lock: None,
            iface: None,
            attached: None,
        };
        g.apply(settings)?;
        Ok(g)
    }

    /// Loads with the default source capacity.
    pub fn load_default(settings: &Settings) -> Result<Guard> {
        Guard::load(settings, DEFAULT_SOURCE_CAPACITY)
    }

    /// Attaches an unpinned guard to `iface`. With `Auto`, a driver without native XDP gets
    /// generic mode and a warning on stderr.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached> {
        if self.iface.is_some() {
            bail!("already attached");
        }
        let idx = ifindex(iface)?;
        let prog = self.program()?;
        let (_, attached) = attach_to(prog, iface, idx, mode)?;
        self.iface = Some(iface.to_string());
        self.attached = Some(attached);
        Ok(attached)
    }

    /// Guards `iface` with pinned state: attaches afresh, adopts a guard left in place
    /// (replacing its program atomically, keeping its counters and, when `settings` is None,
    /// its settings), or watches one that another live portguard owns.
    pub fn acquire(
        pins: &Pins,
        iface: &str,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
    ) -> Result<(Guard, Acquired)> {
        let idx = ifindex(iface)?;
        pins.prepare(true)?;
        let dir = pins.dir(iface);
        pins::create_private_dir(&dir)?;
        let Some(lock) = pins::try_lock(&dir)? else {
            let g = Guard::open(pins, iface)?;
            let owner = g.maps.meta().map(|m| m.owner_pid).unwrap_or(0);
            return Ok((g, Acquired::Watching(owner)));
        };
        let link_path = dir.join(LINK);
        let live = sys::obj_get(&link_path)
            .and_then(|fd| sys::xdp_link_info(fd.as_fd()))
            .is_ok_and(|(_, i)| i == idx);
        let live_link =
            if live { PinnedLink::from_pin(&link_path).ok().map(FdLink::from) } else { None };
        if live_link.is_none() && link_path.exists() {
            // The interface went away (or was replaced) since: the link is defunct. The maps,
            // and their counters, are reused below.
            std::fs::remove_file(&link_path).ok();
        }
        let had_maps = dir.join(map_names::META).exists();
        if had_maps {
            // Refuse maps of another layout before anything is loaded against them.
            Maps::open(&dir)?;
        }
        let result =
            Guard::attach_pinned(&dir, iface, idx, settings, capacity, mode, live_link, lock);
        match result {
            Ok(g) => {
                let how = if g.1 { Acquired::Adopted } else { Acquired::Attached };
                Ok((g.0, how))
            }
            Err(e) => {
                if !had_maps {
                    // A fresh attempt that failed leaves nothing behind.
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attach_pinned(
        dir: &Path,
        iface: &str,
        idx: u32,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
        live_link: Option<FdLink>,
        lock: Lock,
    ) -> Result<(Guard, bool)> {
        let (mut ebpf, mut maps) = load_object(capacity, Some(dir))?;
        let mut meta = maps.meta()?;
        let adopting = meta.layout == LAYOUT_VERSION;
        // The table may be an existing one of another size: the budget follows what it is.
        let capacity = if adopting { meta.capacity } else { capacity };
        let old = if adopting { maps.settings()? } else { Settings::empty() };
        let new = settings.cloned().unwrap_or_else(|| old.clone());
        maps.apply(&old, &new, capacity)?;
        let prog = program(&mut ebpf)?;
        let (link, attached) = match live_link {
            Some(fd) => {
                // Atomic replacement (BPF_LINK_UPDATE): the old program runs until the new one
                // does.
                let xdp = XdpLink::try_from(fd).context("the pinned link is not an XDP link")?;
                let id =
                    prog.attach_to_link(xdp).context("replacing the program on the pinned link")?;
                let link = FdLink::try_from(prog.take_link(id)?).context("taking the link")?;
                let was = Attached::from_meta(meta.xdp_mode).unwrap_or(Attached::Native);
                if matches!(
                    (mode, was),
                    (AttachMode::Native, Attached::Generic)
                        | (AttachMode::Generic, Attached::Native)
                ) {
                    log::warn!(
                        "{iface}: kept its {} XDP attachment (changing mode needs `portguard detach` first)",
                        was.as_str()
                    );
                }
                (link, was)
            }
            None => {
                let (id, attached) = attach_to(prog, iface, idx, mode)?;
                let link = FdLink::try_from(prog.take_link(id)?)
                    .map_err(|_| anyhow!("{iface}: the kernel attached XDP without a bpf_link; pinning needs Linux 5.9 or later"))?;
                let pinned = link.pin(dir.join(LINK)).context("pinning the XDP link")?;
                (FdLink::from(pinned), attached)
            }
        };
        let fresh_meta = meta.layout != LAYOUT_VERSION;
        meta.layout = LAYOUT_VERSION;
        meta.ifindex = idx;
        meta.capacity = capacity;
        meta.xdp_mode = attached.meta();
        meta.owner_pid = std::process::id();
        if fresh_meta || meta.since_unix == 0 {
            meta.since_unix = now_unix();
        }
        maps.set_meta(&meta)?;
        let g = Guard {
            ebpf: Some(ebpf),
            maps,
            settings: new,
            capacity,
            link: Some(link),
            pin_dir: Some(dir.to_path_buf()),
            _lock: Some(lock),
            iface: Some(iface.to_string()),
            attached: Some(attached),
        };
        Ok((g, adopting))
    }

    /// Opens the pinned state of a guarded interface, to read or change it (no program).
    pub fn open(pins: &Pins, iface: &str) -> Result<Guard> {
        let dir = pins.dir(iface);
        if !dir.join(map_names::META).exists() {
            if !pins.mounted() {
                bail!(
                    "{iface} is not guarded (bpffs is not mounted at /sys/fs/bpf, so nothing is)"
                );
            }
            bail!("{iface} is not guarded by portguard (no pinned state in {})", dir.display());
        }
        let maps = Maps::open(&dir)?;
        let meta = maps.meta()?;
        let settings = maps.settings()?;
        Ok(Guard {
            ebpf: None,
            maps,
            settings,
            capacity: meta.capacity,
            link: None,
            pin_dir: Some(dir),
            _lock: None,
            iface: Some(iface.to_string()),
            attached: Attached::from_meta(meta.xdp_mode),
        })
    }

    /// Ends ownership of a pinned guard. `keep`: the program stays attached with its pins, for
    /// the next portguard to adopt. Otherwise it is detached and its pins removed.
    pub fn release(mut self, keep: bool) -> Result<()> {
        let Some(dir) = self.pin_dir.clone() else { return Ok(()) };
        if keep {
            if self.link.is_some() {
                let mut meta = self.maps.meta()?;
                meta.owner_pid = 0;
                self.maps.set_meta(&meta)?;
            }
            return Ok(());
        }
        if self.link.take().is_some() {
            let fd = sys::obj_get(&dir.join(LINK)).context("opening the pinned XDP link")?;
            sys::link_detach(fd.as_fd()).context("detaching the XDP link")?;
        }
        remove_pins(&dir)
    }

    /// Detaches the guard pinned for `iface`, whoever owns it, and removes its pins.
    pub fn detach_pinned(pins: &Pins, iface: &str) -> Result<()> {
        let dir = pins.dir(iface);
        if !dir.join(map_names::META).exists() {
            bail!("{iface} is not guarded by portguard (no pinned state in {})", dir.display());
        }
        if let Ok(fd) = sys::obj_get(&dir.join(LINK)) {
            // A defunct link (its interface gone) has nothing left to detach.
            let _ = sys::link_detach(fd.as_fd());
        }
        remove_pins(&dir)
    }

    /// Whether this guard's pinned state is still there (`portguard detach` removes it).
    pub fn still_pinned(&self) -> bool {
        self.pin_dir.as_ref().is_none_or(|d| d.join(map_names::META).exists())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn meta(&self) -> Result<Meta> {
        self.maps.meta()
    }

    /// Re-reads the settings from the maps (another process may have changed them).
    pub fn refresh_settings(&mut self) -> Result<&Settings> {
        self.settings = self.maps.settings()?;
        Ok(&self.settings)
    }

    /// Changes the running configuration in place: no reload, counters kept.
    pub fn apply(&mut self, new: &Settings) -> Result<()> {
        let old =
            if self.pin_dir.is_some() { self.maps.settings()? } else { self.settings.clone() };
        self.maps.apply(&old, new, self.capacity)?;
        self.settings = new.clone();
        Ok(())
    }

    /// The program itself, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(self.ebpf.as_mut().context("no program: this guard only reads pinned state")?)
    }

    /// The id of the program attached now.
    pub fn program_id(&mut self) -> Result<u32> {
        if let Some(dir) = &self.pin_dir
            && let Ok(fd) = sys::obj_get(&dir.join(LINK))
        {
            return Ok(sys::xdp_link_info(fd.as_fd())?.0);
        }
        Ok(self.program()?.info()?.id())
    }

    /// TOTALS summed over CPUs.
    pub fn totals(&self) -> Result<Totals> {
        self.maps.totals()
    }

    /// Every tracked source, its CPUs merged.
    pub fn sources(&self) -> Result<Vec<Source>> {
        self.maps.sources()
    }

    /// The underlying object, for the logger.
    pub fn ebpf(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }
}

fn remove_pins(dir: &Path) -> Result<()> {
    // The link first: once it is gone the program is detached whatever happens next.
    let _ = std::fs::remove_file(dir.join(LINK));
    for name in map_names::ALL {
        let _ = std::fs::remove_file(dir.join(name));
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

fn attach_to(
    prog: &mut Xdp,
    iface: &str,
    idx: u32,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, Attached)> {
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

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .context("the object has no portguard program")?
        .try_into()
        .context("portguard is not an XDP program")
}

fn verifier_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!(
                "the kernel rejected the XDP program ({io_error}); verifier log:\n{verifier_log}"
            )
        }
        e => anyhow!(e).context("loading the XDP program"),
    }
}

fn attach_error(iface: &str, mode: &str, e: ProgramError) -> anyhow::Error {
    anyhow!("cannot attach to {iface} in {mode} XDP mode: {}", root_cause(&e))
}

/// The innermost error message: aya wraps syscall errors a few levels deep.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut msg = cur.to_string();
    while let Some(next) = cur.source() {
        msg = next.to_string();
        cur = next;
    }
    msg
}
