//! Sharing an interface's XDP hook with other XDP programs through libxdp's multi-program
//! protocol (xdp-tools, `lib/libxdp/protocol.org`, dispatcher version 2), so that portguard and
//! xdp-filter, xdp-loader or any other libxdp user run on one NIC, each seeing the other.
//!
//! How it works: a small *dispatcher* program (libxdp's own `xdp-dispatcher.o`) is attached to
//! the interface through netlink; it calls up to ten component programs in order of priority,
//! and continues to the next one when a component returns one of its *chain-call actions*.
//! Each component is an freplace (BPF_PROG_TYPE_EXT) program that replaces one of the
//! dispatcher's stub functions (`prog0`..`prog9`; a lone component replaces `xdp_dispatcher`
//! itself). Adding, replacing or removing a component builds a *new* dispatcher with the new
//! set, attaches every component to it, pins it under `/sys/fs/bpf/xdp/dispatch-IFINDEX-ID/`
//! (`progN-prog`, `progN-link`), swaps it for the old one atomically (XDP_FLAGS_REPLACE with
//! the old program as the expected one), and only then removes the old dispatcher's pins. No
//! packet ever meets a half-built chain, and a concurrent change by anyone else makes the swap
//! fail and the whole thing start over. All of it under libxdp's lock (flock on
//! `/sys/fs/bpf/xdp`).
//!
//! This module is the protocol, for any component; `component` is portguard's side of it (its
//! program loaded as an extension, joining and leaving). The netlink and bpf(2) calls are the
//! crate's own (`netlink`, `sys`).

pub mod component;
pub mod dispatcher;

use std::{
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{Extension, links::FdLink};

pub use crate::netlink::Mode;
use crate::{netlink, sys};

/// Run priority when none is given: before xdp-filter (10) and before libxdp's default (50), so
/// that every probe is counted before another filter can drop it.
pub const DEFAULT_PRIORITY: u32 = 5;
/// XDP actions, as chain-call bits (`1 << action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// portguard's chain-call actions: what it passes goes on to the next program; its drop ends
/// the chain.
pub const DEFAULT_CHAIN_CALL_ACTIONS: u32 = 1 << XDP_PASS;
/// libxdp's override of the bpffs root its state lives under (honoured here too).
pub const BPFFS_ENV: &str = "LIBXDP_BPFFS";
/// How long to wait for libxdp's lock before giving up.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Swaps retried when someone else changed the interface meanwhile.
const ATTEMPTS: usize = 10;

/// How portguard takes an interface's XDP hook (`--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// Share it when a libxdp dispatcher is already there, take it alone otherwise.
    Auto,
    /// Alone, through a bpf_link: nobody can replace or remove portguard by accident, and
    /// libxdp users get EBUSY.
    Exclusive,
    /// As one program of libxdp's dispatcher, beside xdp-filter and the like.
    Multiprog,
}

impl Attach {
    pub fn as_str(self) -> &'static str {
        match self {
            Attach::Auto => "auto",
            Attach::Exclusive => "exclusive",
            Attach::Multiprog => "multiprog",
        }
    }
}

/// libxdp's state directory: `$LIBXDP_BPFFS/xdp`, by default `/sys/fs/bpf/xdp`.
pub fn state_dir() -> PathBuf {
    std::env::var_os(BPFFS_ENV)
        .map_or_else(|| PathBuf::from("/sys/fs/bpf"), PathBuf::from)
        .join("xdp")
}

/// Where the dispatcher `id` attached to `ifindex` keeps its components' pins.
pub fn pin_dir(ifindex: u32, id: u32) -> PathBuf {
    state_dir().join(format!("dispatch-{ifindex}-{id}"))
}

/// libxdp's lock: an exclusive flock on its state directory, held across a whole change.
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    pub fn acquire() -> Result<Lock> {
        let dir = state_dir();
        // Mounts bpffs if it is missing; creates the directory 0700, as libxdp does.
        crate::pins::ensure_bpffs(&dir, true)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&dir)
            .with_context(|| format!("opening {}", dir.display()))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("locking {}", dir.display()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "libxdp's lock on {} has been held by another process for {} s",
                    dir.display(),
                    LOCK_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One program in a dispatcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Its position in the run order (0 runs first).
    pub slot: usize,
    /// 0 when its program is not pinned where the protocol says (the dispatcher cannot be
    /// rebuilt with it then).
    pub prog_id: u32,
    /// The kernel's name for it (at most 15 bytes).
    pub name: String,
    pub priority: u32,
    /// XDP actions (as `1 << action` bits) that continue to the next program.
    pub chain_call_actions: u32,
    /// Loaded with BPF_F_XDP_HAS_FRAGS.
    pub frags: bool,
    pub map_ids: Vec<u32>,
    /// Its pinned link replaces a function of this very dispatcher: the kernel runs it there.
    pub linked: bool,
    tag: [u8; 8],
    load_time: u64,
}

impl Component {
    /// Chain-call actions by name, as xdp-loader prints them.
    pub fn actions(&self) -> String {
        actions(self.chain_call_actions)
    }
}

/// XDP actions (as `1 << action` bits) by name, as xdp-loader prints them.
pub fn actions(bits: u32) -> String {
    let names = ["XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"];
    let v: Vec<&str> = (0..5).filter(|a| bits & (1 << a) != 0).map(|a| names[a as usize]).collect();
    v.join(",")
}

/// A libxdp dispatcher attached to an interface, with its components in run order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatcher {
    pub ifindex: u32,
    pub prog_id: u32,
    pub mode: Mode,
    pub components: Vec<Component>,
}

impl Dispatcher {
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(self.ifindex, self.prog_id)
    }
}

/// What holds an interface's XDP hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Nothing.
    Free,
    /// A libxdp dispatcher (protocol version 2).
    Dispatcher(Dispatcher),
    /// A dispatcher of another protocol version, which libxdp itself would not change.
    OtherVersion { prog_id: u32, version: u8 },
    /// A program that is not a dispatcher: it has the hook to itself.
    Exclusive { prog_id: u32, name: String },
}

/// Which component is portguard's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ours {
    /// The one that uses this map (portguard's CONFIG, which the program reads for every
    /// packet): the kernel's truth that it is the program of that guard.
    Map(u32),
    /// This program.
    Program(u32),
}

impl Ours {
    fn is(&self, c: &Component) -> bool {
        match self {
            Ours::Map(id) => c.map_ids.contains(id),
            Ours::Program(id) => c.prog_id == *id,
        }
    }
}

/// Whether this kernel runs dispatcher components: libxdp's own check
/// (`xdp_multiprog__check_compat`), its dispatcher's `xdp_pass` loaded as an extension of a
/// scratch dispatcher's `compat_test`, attached, and its link pinned in libxdp's directory and
/// unpinned. Some kernels refuse every trampoline-based program (freplace, fentry) even to
/// root; libxdp then falls back to attaching a single program on its own, and sharing cannot
/// work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// The kernel refused the extension (loading or attaching it): why, in one line.
    Refused(String),
}

/// Runs libxdp's compatibility check (see [`Support`]). Err: it could not be run at all
/// (libxdp's dispatcher object missing, bpffs unusable), which says nothing of the kernel.
pub fn support() -> Result<Support> {
    let mut scratch = dispatcher::load(&dispatcher::Config::empty(1))?;
    let target = scratch.program()?.fd()?.try_clone()?;
    let path = dispatcher::object_path()?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut obj = aya::EbpfLoader::new()
        .extension("xdp_pass")
        .load(&bytes)
        .context("loading libxdp's dispatcher object")?;
    let ext: &mut Extension = obj
        .program_mut("xdp_pass")
        .context("libxdp's dispatcher object has no xdp_pass")?
        .try_into()?;
    if let Err(e) = ext.load(target, "compat_test") {
        return Ok(Support::Refused(format!(
            "this kernel refuses XDP extension (freplace) programs: {}",
            load_error(&e)
        )));
    }
    let link = match ext.attach() {
        Ok(l) => FdLink::from(ext.take_link(l)?),
        Err(e) => {
            return Ok(Support::Refused(format!(
                "this kernel refuses to attach XDP extension (freplace) programs: {}",
                root_cause(&e)
            )));
        }
    };
    let id = ext.info().map_or(0, |i| i.id());
    let _lock = Lock::acquire()?;
    let pin = state_dir().join(format!("prog-test-link-0-{id}"));
    let pinned = link.pin(&pin).map_err(|e| anyhow!("pinning {}: {e}", pin.display()))?;
    pinned.unpin().map_err(|e| anyhow!("unpinning {}: {e}", pin.display()))?;
    Ok(Support::Yes)
}

/// What holds `ifindex`'s XDP hook, read from the kernel (netlink, then the program and its
/// config map) and, for a dispatcher, from its pins.
pub fn hook(ifindex: u32) -> Result<Hook> {
    let Some(att) = netlink::query(ifindex)? else { return Ok(Hook::Free) };
    Ok(match dispatcher::inspect(att.prog_id)? {
        dispatcher::Kind::Other { id, name } => Hook::Exclusive { prog_id: id, name },
        dispatcher::Kind::OtherVersion { id, version } => {
            Hook::OtherVersion { prog_id: id, version }
        }
        dispatcher::Kind::Dispatcher(found) => {
            Hook::Dispatcher(read_components(ifindex, att.mode, &found))
        }
    })
}

/// The components of a dispatcher, from its pins and the kernel's info of what they hold. A
/// slot whose pins are missing is listed with program id 0.
fn read_components(ifindex: u32, mode: Mode, d: &dispatcher::Found) -> Dispatcher {
    let dir = pin_dir(ifindex, d.info.id);
    let mut components = Vec::new();
    for slot in 0..(d.config.num_progs_enabled as usize).min(dispatcher::MAX_PROGS) {
        let info = sys::obj_get(&dir.join(format!("prog{slot}-prog")))
            .and_then(|fd| sys::prog_info(fd.as_fd()))
            .ok();
        let linked = sys::obj_get(&dir.join(format!("prog{slot}-link")))
            .and_then(|fd| sys::extension_link_info(fd.as_fd()))
            .is_ok_and(|(prog, target)| {
                target == d.info.id && info.as_ref().is_some_and(|i| i.id == prog)
            });
        let (prog_id, name, map_ids, tag, load_time) = match info {
            Some(i) => (i.id, i.name, i.map_ids, i.tag, i.load_time),
            None => (0, "?".into(), Vec::new(), [0; 8], 0),
        };
        components.push(Component {
            slot,
            prog_id,
            name,
            priority: d.config.run_prios[slot],
            chain_call_actions: d.config.chain_call_actions[slot] & !(1 << dispatcher::RETVAL),
            frags: d.config.program_flags[slot] != 0,
            map_ids,
            linked,
            tag,
            load_time,
        });
    }
    Dispatcher { ifindex, prog_id: d.info.id, mode, components }
}

/// `ours` in the dispatcher attached to `ifindex`, if it is there and the kernel runs it
/// there: the dispatcher and the component's index in it.
pub fn find(ifindex: u32, ours: Ours) -> Result<Option<(Dispatcher, usize)>> {
    match hook(ifindex)? {
        Hook::Dispatcher(d) => {
            Ok(d.components.iter().position(|c| c.linked && ours.is(c)).map(|i| (d, i)))
        }
        _ => Ok(None),
    }
}

/// The dispatcher directories under libxdp's state where a component that is `ours` is
/// pinned, whatever interface or network namespace they are of (bpffs is shared, ifindexes
/// are not).
pub fn pinned_in(ours: Ours) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir()) else { return out };
    for e in entries.filter_map(|e| e.ok()) {
        if !e.file_name().to_string_lossy().starts_with("dispatch-") {
            continue;
        }
        for slot in 0..dispatcher::MAX_PROGS {
            let Ok(fd) = sys::obj_get(&e.path().join(format!("prog{slot}-prog"))) else {
                continue;
            };
            let Ok(info) = sys::prog_info(fd.as_fd()) else { continue };
            let mine = match ours {
                Ours::Map(id) => info.map_ids.contains(&id),
                Ours::Program(id) => info.id == id,
            };
            if mine {
                out.push(e.path());
                break;
            }
        }
    }
    out
}

/// A program about to join (loaded already, see `component`): its run priority, its
/// chain-call actions, and the name libxdp sorts by among programs of equal priority.
pub struct Joining<'a> {
    pub ext: &'a mut Extension,
    pub name: &'a str,
    pub priority: u32,
    pub chain_call_actions: u32,
}

/// What a change did.
#[derive(Debug)]
pub struct Changed {
    /// The dispatcher attached now; None when the last component left and the hook is free.
    pub dispatcher: Option<Dispatcher>,
    /// The joining program's index in it, when it joined, and its link (this process's own
    /// descriptor; the pin is the protocol's).
    pub joined: Option<(usize, OwnedFd)>,
    /// `ours`' components that were there before (replaced or removed).
    pub replaced: Vec<u32>,
}

/// Puts `joining` into `ifindex`'s dispatcher, replacing any component that is `ours` (an
/// earlier portguard on the same maps) in the same atomic swap, or creating a dispatcher when
/// the hook is free. `mode` applies to a new dispatcher (None: native, else generic); an
/// existing one keeps its own.
pub fn join(ifindex: u32, ours: Ours, joining: Joining<'_>, mode: Option<Mode>) -> Result<Changed> {
    change(ifindex, ours, Some(joining), mode)
}

/// Removes `ours` from `ifindex`'s dispatcher, leaving the others running; the last one out
/// detaches the dispatcher. Nothing there: nothing done.
pub fn leave(ifindex: u32, ours: Ours) -> Result<Changed> {
    change(ifindex, ours, None, None)
}

/// A slot of the dispatcher being built.
enum Entry<'a> {
    Kept(&'a Component),
    Ours,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Native => "native",
        Mode::Generic => "generic",
    }
}

fn change(
    ifindex: u32,
    ours: Ours,
    mut joining: Option<Joining<'_>>,
    mode: Option<Mode>,
) -> Result<Changed> {
    let _lock = Lock::acquire()?;
    for _ in 0..ATTEMPTS {
        let old = match hook(ifindex)? {
            // Leaving where no dispatcher is: nothing of `ours` runs there, nothing to do.
            Hook::Free | Hook::OtherVersion { .. } | Hook::Exclusive { .. }
                if joining.is_none() =>
            {
                return Ok(Changed { dispatcher: None, joined: None, replaced: Vec::new() });
            }
            Hook::Free => None,
            Hook::Dispatcher(d) => Some(d),
            Hook::OtherVersion { prog_id, version } => bail!(
                "ifindex {ifindex} runs a libxdp dispatcher of protocol version {version} (program \
                 {prog_id}), which this portguard does not speak: unload it first \
                 (xdp-loader unload --all)"
            ),
            Hook::Exclusive { prog_id, name } => bail!(
                "ifindex {ifindex} already has XDP program {prog_id} ({name}) attached on its own, \
                 not through libxdp's dispatcher: it cannot be shared, and portguard does not \
                 replace another program"
            ),
        };
        let old_fd = match &old {
            Some(d) => Some(sys::prog_by_id(d.prog_id).context("opening the old dispatcher")?),
            None => None,
        };
        let kept: Vec<&Component> =
            old.iter().flat_map(|d| d.components.iter()).filter(|c| !ours.is(c)).collect();
        let replaced: Vec<u32> = old
            .iter()
            .flat_map(|d| d.components.iter())
            .filter(|c| ours.is(c))
            .map(|c| c.prog_id)
            .collect();
        if joining.is_none() && replaced.is_empty() {
            return Ok(Changed { dispatcher: old, joined: None, replaced });
        }
        if let Some(c) = kept.iter().find(|c| c.prog_id == 0) {
            bail!(
                "ifindex {ifindex}'s dispatcher (program {}) has no program pinned for its slot {} \
                 in {}: it cannot be rebuilt (`xdp-loader status` shows what it holds)",
                old.as_ref().map_or(0, |d| d.prog_id),
                c.slot,
                old.as_ref().map(|d| d.pin_dir().display().to_string()).unwrap_or_default()
            );
        }
        // Run order: priority, then name (libxdp's first two tie-breaks), then loaded programs
        // by tag and load time; a program joining now sorts after loaded ones of its rank.
        let mut entries: Vec<Entry> = kept.iter().map(|c| Entry::Kept(c)).collect();
        if joining.is_some() {
            entries.push(Entry::Ours);
        }
        let key = |e: &Entry| match e {
            Entry::Kept(c) => (c.priority, c.name.clone(), 0, c.tag, c.load_time),
            Entry::Ours => {
                let j = joining.as_ref().expect("joining");
                (j.priority, j.name.chars().take(15).collect(), 1, [0; 8], 0)
            }
        };
        entries.sort_by_key(key);
        if entries.len() > dispatcher::MAX_PROGS {
            bail!(
                "ifindex {ifindex}'s dispatcher already runs {} programs, the most libxdp's \
                 dispatcher takes",
                dispatcher::MAX_PROGS
            );
        }
        let old_mode = old.as_ref().map(|d| d.mode).or(mode).unwrap_or(Mode::Native);
        if entries.is_empty() {
            // The last component leaves: the dispatcher goes with it.
            let old = old.expect("a dispatcher with the leaving program in it");
            let flags = old_mode.flag() | netlink::XDP_FLAGS_REPLACE;
            match netlink::set(ifindex, None, flags, old_fd.as_ref().map(|f| f.as_fd())) {
                Ok(()) => {}
                Err(e) if e.raced() => continue,
                Err(e) => bail!("detaching the dispatcher from ifindex {ifindex}: {e}"),
            }
            remove_pin_dir(&old.pin_dir());
            return Ok(Changed { dispatcher: None, joined: None, replaced });
        }
        let built = build(ifindex, old.as_ref(), &entries, joining.as_mut())?;
        let new_dir = pin_dir(ifindex, built.id);
        let mut tried = vec![old_mode];
        if old.is_none() && mode.is_none() {
            tried.push(Mode::Generic);
        }
        let mut result = Err(anyhow!("not attached"));
        let mut raced = false;
        for m in &tried {
            let flags = m.flag()
                | if old.is_some() {
                    netlink::XDP_FLAGS_REPLACE
                } else {
                    netlink::XDP_FLAGS_UPDATE_IF_NOEXIST
                };
            match netlink::set(
                ifindex,
                Some(built.fd.as_fd()),
                flags,
                old_fd.as_ref().map(|f| f.as_fd()),
            ) {
                Ok(()) => {
                    if *m != old_mode {
                        log::warn!(
                            "ifindex {ifindex}: native XDP unavailable; the dispatcher runs in \
                             generic mode, after the kernel has allocated an skb"
                        );
                    }
                    result = Ok(*m);
                    break;
                }
                // Replaced meanwhile, or (where there was nothing) taken meanwhile: start over.
                Err(e)
                    if e.raced()
                        || (old.is_none() && e.errno.raw_os_error() == Some(libc::EBUSY)) =>
                {
                    raced = true;
                    break;
                }
                Err(e) => {
                    result = Err(anyhow!(
                        "attaching libxdp's dispatcher to ifindex {ifindex} in {} mode: {e}",
                        mode_name(*m)
                    ))
                }
            }
        }
        if raced {
            remove_pin_dir(&new_dir);
            continue;
        }
        let attached_mode = match result {
            Ok(m) => m,
            Err(e) => {
                remove_pin_dir(&new_dir);
                return Err(e);
            }
        };
        if let Some(old) = &old {
            remove_pin_dir(&old.pin_dir());
        }
        let d = match hook(ifindex)? {
            Hook::Dispatcher(d) if d.prog_id == built.id => d,
            // Changed again already (by someone else): report what was built.
            _ => Dispatcher {
                ifindex,
                prog_id: built.id,
                mode: attached_mode,
                components: Vec::new(),
            },
        };
        return Ok(Changed { dispatcher: Some(d), joined: built.ours, replaced });
    }
    bail!(
        "ifindex {ifindex}'s XDP programs kept changing while portguard tried to change them; try again"
    )
}

/// A new dispatcher with every component attached and pinned, not yet on the interface.
struct Built {
    fd: aya::programs::ProgramFd,
    id: u32,
    ours: Option<(usize, OwnedFd)>,
    /// Keeps the dispatcher loaded until it is attached (its components' links pin it after).
    _ebpf: dispatcher::Loaded,
}

fn build(
    ifindex: u32,
    old: Option<&Dispatcher>,
    entries: &[Entry<'_>],
    mut joining: Option<&mut Joining<'_>>,
) -> Result<Built> {
    // portguard's program reads packets through direct access only: no frags, so neither can
    // the dispatcher (the protocol's rule: frags only if every component has them).
    let mut config = dispatcher::Config::empty(entries.len() as u8);
    for (slot, e) in entries.iter().enumerate() {
        let (prio, chain, frags) = match e {
            Entry::Kept(c) => (c.priority, c.chain_call_actions, c.frags),
            Entry::Ours => {
                let j = joining.as_ref().expect("joining");
                (j.priority, j.chain_call_actions, false)
            }
        };
        config.chain_call_actions[slot] = chain | (1 << dispatcher::RETVAL);
        config.run_prios[slot] = prio;
        config.program_flags[slot] = if frags { BPF_F_XDP_HAS_FRAGS } else { 0 };
    }
    let mut loaded = dispatcher::load(&config)?;
    let id = loaded.id;
    let fd = loaded.program()?.fd()?.try_clone()?;
    let dir = pin_dir(ifindex, id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let pinned = (|| -> Result<Option<(usize, OwnedFd)>> {
        let mut ours = None;
        for (slot, e) in entries.iter().enumerate() {
            let func = if entries.len() == 1 {
                dispatcher::PROGRAM.to_string()
            } else {
                format!("prog{slot}")
            };
            let link_pin = dir.join(format!("prog{slot}-link"));
            let prog_pin = dir.join(format!("prog{slot}-prog"));
            match e {
                Entry::Kept(c) => {
                    let from = old
                        .expect("kept from a dispatcher")
                        .pin_dir()
                        .join(format!("prog{}-prog", c.slot));
                    let mut ext = Extension::from_pin(&from)
                        .with_context(|| format!("opening {}", from.display()))?;
                    let link = ext.attach_to_program(&fd, &func).map_err(|e| {
                        anyhow!(
                            "re-attaching '{}' (id {}) to the new dispatcher: {}",
                            c.name,
                            c.prog_id,
                            root_cause(&e)
                        )
                    })?;
                    let link = FdLink::from(ext.take_link(link)?);
                    link.pin(&link_pin)
                        .with_context(|| format!("pinning {}", link_pin.display()))?;
                    ext.pin(&prog_pin)
                        .with_context(|| format!("pinning {}", prog_pin.display()))?;
                }
                Entry::Ours => {
                    let j = joining.as_mut().expect("joining");
                    // Loaded (verified) already: attached to this dispatcher like any component.
                    let link = j.ext.attach_to_program(&fd, &func).map_err(|e| {
                        anyhow!(
                            "the kernel refused portguard's program as a dispatcher component: {}",
                            load_error(&e)
                        )
                    })?;
                    let link = FdLink::from(j.ext.take_link(link)?);
                    let pinned = link
                        .pin(&link_pin)
                        .with_context(|| format!("pinning {}", link_pin.display()))?;
                    let held = sys::obj_get(&link_pin)
                        .with_context(|| format!("opening {}", link_pin.display()))?;
                    drop(pinned);
                    j.ext
                        .pin(&prog_pin)
                        .with_context(|| format!("pinning {}", prog_pin.display()))?;
                    ours = Some((slot, held));
                }
            }
        }
        Ok(ours)
    })();
    match pinned {
        Ok(ours) => Ok(Built { fd, id, ours, _ebpf: loaded }),
        Err(e) => {
            remove_pin_dir(&dir);
            Err(e)
        }
    }
}

/// BPF_F_XDP_HAS_FRAGS.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// Removes a dispatcher's pin directory (its links first, so the components detach from it).
/// Only the protocol's own files are removed; anything else keeps the directory.
pub fn remove_pin_dir(dir: &Path) {
    for slot in 0..dispatcher::MAX_PROGS {
        let _ = std::fs::remove_file(dir.join(format!("prog{slot}-link")));
        let _ = std::fs::remove_file(dir.join(format!("prog{slot}-prog")));
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("could not remove {}: {e}", dir.display());
    }
}

/// Removes the pins of dispatcher `id` of `ifindex` if that dispatcher is no longer attached
/// there (its interface went away, or someone detached it by hand), as `xdp-loader clean`
/// would: a stale directory keeps its programs loaded. Under libxdp's lock.
pub fn clean_stale(ifindex: u32, id: u32) -> Result<()> {
    let dir = pin_dir(ifindex, id);
    if !dir.exists() {
        return Ok(());
    }
    let _lock = Lock::acquire()?;
    let attached = netlink::name_of(ifindex).is_some()
        && netlink::query(ifindex)?.is_some_and(|a| a.prog_id == id);
    if !attached {
        remove_pin_dir(&dir);
    }
    Ok(())
}

/// A load error in one line: the syscall's error and the verifier's last word.
pub(crate) fn load_error(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            // The reason is the last line before the verifier's statistics.
            let last = log
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| {
                    !l.is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                })
                .unwrap_or("");
            if !last.is_empty() {
                format!("{io_error}: {last}")
            } else if io_error.raw_os_error() == Some(libc::EPERM) {
                // No verifier word: refused before verification, as kernels that forbid every
                // trampoline-based program do (even to root).
                format!("{io_error}, before any verification")
            } else {
                io_error.to_string()
            }
        }
        e => root_cause(e),
    }
}

/// The innermost error message: aya wraps syscall errors a few levels deep.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut msg = cur.to_string();
    while let Some(next) = cur.source() {
        msg = next.to_string();
        cur = next;
    }
    msg
}
