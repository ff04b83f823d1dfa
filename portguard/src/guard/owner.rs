//! The process that attached the program to an interface and keeps it there.
//!
//! It holds the program, the maps and the link that runs the program by descriptor, so the
//! guard stays attached for as long as it runs, whatever happens to the pins: if they vanish it
//! pins them again; if the interface goes away and comes back (a PPP reconnect makes a new
//! device), it attaches to the new one with the same maps. It stops only when a `portguard
//! detach` asks it to, through META: a deliberate, recorded request, never the mere absence of
//! a file.
//!
//! The program holds the interface's hook in one of two ways ([`Kind`], recorded in META):
//! alone, through a bpf_link pinned as `link` in the guard's directory; or as a component of
//! libxdp's multi-program dispatcher (`multiprog`), its freplace link pinned by the protocol in
//! the dispatcher's directory. Everything above holds for both: adopting a shared guard swaps
//! the dispatcher for one with the new program in the old one's place (zero gap), and a
//! dispatcher rebuilt without portguard, or detached, is joined again.

use std::{
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::DirBuilderExt as _,
    },
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use portguard_common::{
    CHANGE_ADOPT, CHANGE_ATTACH, LAYOUT_VERSION, Meta, STATE_DETACHING, STATE_GUARDING,
};

use super::{
    AttachMode, Attached, Kind, Share, View,
    attach::attach_to,
    health::{self, Health, Reason},
    ifindex,
    loaded::Program,
};
use crate::{
    counters::Source,
    multiprog::{self, Attach, Ours, component},
    netlink,
    netns::Netns,
    pins::{self, Contents, LINK, Lock, Pins},
    settings::Settings,
    sys, table, wire,
};

/// How `acquire` attaches: the kind, the run priority in a dispatcher, and the dispatcher
/// `--attach auto` found.
struct How {
    kind: Kind,
    priority: u32,
    found: Option<multiprog::Dispatcher>,
}

/// What `acquire` found.
pub enum Acquired {
    /// Nothing was there: attached afresh.
    Attached(Owner),
    /// A guard was left in place: its program was replaced in place, its counters kept.
    Adopted(Owner),
    /// Another live portguard (this pid) owns it: watching only.
    Watching(View, u32),
}

/// What an owner's upkeep found, and did about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upkeep {
    /// Guarding, as before.
    Guarding,
    /// Some pins were gone: they are back.
    Repinned(usize),
    /// The pins are gone and cannot be put back (bpffs unmounted, say): the guard holds
    /// through this process's descriptors only.
    Unpinned(String),
    /// The interface is gone; it is guarded again when it returns.
    Gone,
    /// Guarding again, on this ifindex: the interface came back, was replaced, or its link was
    /// detached by hand.
    Reattached { ifindex: u32, after: Reason },
    /// A `portguard detach` (this pid) asked this owner to stop; it did.
    Detached { by: u32 },
    /// Not guarding, and it could not guard again.
    Lost(Reason),
    /// The kernel could not be asked (out of descriptors, say): nothing is done on a guess.
    Unknown(String),
}

pub struct Owner {
    program: Program,
    /// The loaded program's id.
    prog_id: u32,
    view: View,
    /// This process's descriptor of the link that runs the program (the pin is another): the
    /// XDP link, or the component's freplace link in the dispatcher; None while the interface
    /// is gone.
    link: Option<OwnedFd>,
    /// Held for as long as this process owns the guard.
    _lock: Lock,
    attached: Attached,
    /// The mode asked for, for attaching again.
    mode: AttachMode,
    kind: Kind,
    /// Shared: the run priority, the dispatcher last joined and portguard's slot in it.
    priority: u32,
    dispatcher: u32,
    slot: usize,
    /// A detach was asked for and done: nothing left to release.
    detached: bool,
}

/// What runs the guard's program on its interface now, found before anything is loaded.
enum Live {
    Nothing,
    /// Its pinned XDP link, on the interface of its name.
    Link(FdLink),
    /// Its component in the dispatcher attached to the interface of its name, at this priority.
    Component {
        priority: u32,
    },
}

/// How `acquire` takes the hook when nothing runs the program: the kind, and for `--attach
/// auto` the dispatcher found, to say why it cannot be shared when that fails.
fn choose(
    share: &Share,
    live: &Live,
    iface: &str,
    idx: u32,
) -> Result<(Kind, Option<multiprog::Dispatcher>)> {
    let keep = |was: Kind, asked: Attach| {
        log::warn!(
            "{iface}: kept its {} attachment (--attach {} needs `portguard detach` first)",
            was.as_str(),
            asked.as_str()
        );
    };
    Ok(match (live, share.attach) {
        (Live::Link(_), Attach::Multiprog) => {
            keep(Kind::Exclusive, Attach::Multiprog);
            (Kind::Exclusive, None)
        }
        (Live::Link(_), _) => (Kind::Exclusive, None),
        (Live::Component { .. }, Attach::Exclusive) => {
            keep(Kind::Multiprog, Attach::Exclusive);
            (Kind::Multiprog, None)
        }
        (Live::Component { .. }, _) => (Kind::Multiprog, None),
        (Live::Nothing, Attach::Exclusive) => (Kind::Exclusive, None),
        (Live::Nothing, Attach::Multiprog) => (Kind::Multiprog, None),
        (Live::Nothing, Attach::Auto) => match component::auto(iface, idx)? {
            Some(d) => (Kind::Multiprog, Some(d)),
            None => (Kind::Exclusive, None),
        },
    })
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn ifname(iface: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    let b = iface.as_bytes();
    n[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
    n
}

/// Refuses to attach where another XDP program runs: portguard never replaces someone else's
/// program, and says which one it is.
fn refuse_foreign(iface: &str, idx: u32) -> Result<()> {
    if let Some(a) = netlink::query(idx)? {
        bail!(
            "{iface} already has XDP program {} ({}) attached: portguard does not replace another \
             program",
            a.prog_id,
            health::prog_name(a.prog_id)
        );
    }
    Ok(())
}

/// Pins `link` (a fresh attachment) at `path` and returns a descriptor of it that this process
/// keeps.
fn pin_link(link: FdLink, path: &Path) -> Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let pinned: PinnedLink = link.pin(path).context("pinning the XDP link")?;
    let fd = sys::obj_get(path).context("opening the pinned XDP link")?;
    drop(pinned);
    Ok(fd)
}

impl Owner {
    /// Guards `iface` in the calling thread's network namespace, with pinned state: attaches
    /// afresh, adopts a guard left in place (replacing its program atomically, keeping its
    /// counters and, when `settings` is None, its settings), or watches one that another live
    /// portguard owns. The whole of it happens under the namespace's lock, so two starts at the
    /// same instant see each other complete: one owns, the other watches.
    pub fn acquire(
        pins: &Pins,
        iface: &str,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
    ) -> Result<Acquired> {
        Owner::acquire_shared(pins, iface, settings, capacity, mode, &Share::default())
    }

    /// `acquire`, taking the interface's hook alone or sharing it through libxdp's dispatcher
    /// as `share` says. A guard left in place keeps the way it was attached.
    pub fn acquire_shared(
        pins: &Pins,
        iface: &str,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
        share: &Share,
    ) -> Result<Acquired> {
        let ns = Netns::current()?;
        let idx = ifindex(iface)?;
        let ns_dir = pins.prepare(&ns, true)?;
        let _changing = pins::lock(&ns_dir)?;
        let dir = ns_dir.join(iface);
        pins::secure_dir(&dir)?;
        let mut contents = pins::contents(&dir)?;
        let Some(lock) = pins::try_lock(&dir)? else {
            let v = View::open_dir(&dir, iface)?;
            let owner = v.meta().map(|m| m.owner_pid).unwrap_or(0);
            return Ok(Acquired::Watching(v, owner));
        };
        let link_path = dir.join(LINK);
        let mut live = Live::Nothing;
        if contents == Contents::Guard {
            // Refuses maps of another layout or type before anything is loaded against them.
            let v = View::open_dir(&dir, iface)?;
            let meta = v.meta()?;
            let ours = Ours::Map(v.maps.config_id()?);
            let kind = Kind::from_meta(meta.attach);
            if meta.state == STATE_DETACHING {
                // A detach that did not finish (its process died half-way): finish it, then
                // start afresh.
                if let Ok(fd) = sys::obj_get(&link_path) {
                    let _ = sys::link_detach(fd.as_fd());
                }
                if kind == Kind::Multiprog {
                    component::leave(meta.ifindex, ours)
                        .with_context(|| format!("{iface}: finishing an earlier detach"))?;
                }
                drop(v);
                pins::remove_guard(&dir)?;
                pins::secure_dir(&dir)?;
                contents = Contents::Empty;
            } else if kind == Kind::Multiprog {
                match multiprog::find(idx, ours)? {
                    Some((d, i)) if meta.ifindex == idx => {
                        live = Live::Component { priority: d.components[i].priority };
                    }
                    // The device it joined went away, was replaced or renamed, or its
                    // dispatcher was rebuilt without it: leave what is left (a renamed device's
                    // dispatcher, a stale directory) and join again below, maps and counters
                    // kept.
                    _ => component::leave(meta.ifindex, ours)?,
                }
            } else if let Ok(fd) = sys::obj_get(&link_path)
                && sys::xdp_link_info(fd.as_fd()).is_ok_and(|(_, i)| i == idx)
            {
                live = Live::Link(PinnedLink::from_pin(&link_path).map(FdLink::from)?);
            } else if link_path.exists() {
                // The interface went away (or was replaced) since: the link is defunct. The
                // maps, and their counters, are reused below.
                std::fs::remove_file(&link_path).ok();
            }
        }
        let (kind, found) = choose(share, &live, iface, idx)?;
        if kind == Kind::Exclusive && !matches!(live, Live::Link(_)) {
            refuse_foreign(iface, idx)?;
        }
        let priority = match (&live, share.priority) {
            (_, Some(p)) => p,
            (Live::Component { priority }, None) => *priority,
            _ => multiprog::DEFAULT_PRIORITY,
        };
        let how = How { kind, priority, found };
        let live_link = match live {
            Live::Link(l) => Some(l),
            _ => None,
        };
        let fresh = contents == Contents::Empty;
        let attempt = Owner::attach_pinned(
            &dir, iface, idx, &ns, settings, capacity, mode, live_link, lock, how,
        );
        match attempt {
            Ok(o) if fresh => Ok(Acquired::Attached(o)),
            Ok(o) => Ok(Acquired::Adopted(o)),
            Err(e) => {
                if fresh {
                    // A fresh attempt that failed leaves nothing behind; only what it pinned
                    // (portguard's own names) is removed.
                    let _ = pins::remove_guard(&dir);
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
        ns: &Netns,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
        live_link: Option<FdLink>,
        lock: Lock,
        how: How,
    ) -> Result<Owner> {
        let (mut program, mut maps) = match how.kind {
            Kind::Exclusive => Program::load(capacity, Some(dir))?,
            Kind::Multiprog => {
                Program::load_extension(capacity, dir).map_err(|e| match &how.found {
                    Some(d) => component::cannot_share(iface, d, &format!("{e:#}")),
                    None => anyhow!(
                        "{iface}: cannot join libxdp's multi-program dispatcher: {e:#} (--attach \
                     exclusive takes the interface alone)"
                    ),
                })?
            }
        };
        let prog_id = program.id()?;
        let mut meta = maps.meta()?;
        let adopting = meta.layout == LAYOUT_VERSION;
        if adopting && meta.capacity != capacity {
            log::warn!(
                "{iface}: kept its source table of {} entries, not {capacity} (a new size takes \
                 `portguard detach` first; counters are lost then)",
                meta.capacity
            );
        }
        // The table may be an existing one of another size: the budget follows what it is.
        let capacity = if adopting { meta.capacity } else { capacity };
        let old = if adopting { wire::read_settings(&maps, capacity)? } else { Settings::empty() };
        let new = settings.cloned().unwrap_or_else(|| old.clone());
        crate::guard::view::check_capacity(&new)?;
        wire::write_settings(&mut maps, &old, &new, capacity)?;
        let (mut dispatcher, mut slot) = (0, 0);
        let (link, attached) = match (how.kind, live_link) {
            (Kind::Multiprog, _) => {
                // Joining, or for a guard left in place, the dispatcher swapped for one with
                // this program in the old one's place: atomic, no packet unguarded.
                let ours = Ours::Map(maps.config_id()?);
                let j =
                    component::join(program.extension()?, iface, idx, ours, how.priority, mode)?;
                if adopting && j.replaced.is_empty() {
                    log::info!("{iface}: joined libxdp's dispatcher again, counters kept");
                }
                (dispatcher, slot) = (j.dispatcher, j.slot);
                (j.link, j.mode)
            }
            (Kind::Exclusive, Some(fd)) => {
                let prog = program.xdp()?;
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
                let fd = sys::obj_get(&dir.join(LINK)).context("opening the pinned XDP link")?;
                drop(link);
                (fd, was)
            }
            (Kind::Exclusive, None) => {
                let prog = program.xdp()?;
                let (id, attached) = attach_to(prog, iface, idx, mode)?;
                let link = FdLink::try_from(prog.take_link(id)?)
                    .map_err(|_| anyhow!("{iface}: the kernel attached XDP without a bpf_link; pinning needs Linux 5.9 or later"))?;
                (pin_link(link, &dir.join(LINK))?, attached)
            }
        };
        meta.layout = LAYOUT_VERSION;
        meta.ifindex = idx;
        meta.ifname = ifname(iface);
        meta.netns_cookie = ns.cookie;
        meta.netns_inode = ns.inode;
        meta.capacity = capacity;
        meta.xdp_mode = attached.meta();
        meta.attach = how.kind.meta();
        meta.owner_pid = std::process::id();
        meta.state = STATE_GUARDING;
        meta.generation = meta.generation.wrapping_add(1);
        meta.changed_by = std::process::id();
        meta.change = if adopting { CHANGE_ADOPT } else { CHANGE_ATTACH };
        if !adopting || meta.since_unix == 0 {
            meta.since_unix = now_unix();
        }
        maps.set_meta(&meta)?;
        let view = View::from_maps(maps, dir, iface)?;
        Ok(Owner {
            program,
            prog_id,
            view,
            link: Some(link),
            _lock: lock,
            attached,
            mode,
            kind: how.kind,
            priority: how.priority,
            dispatcher,
            slot,
            detached: false,
        })
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn view_mut(&mut self) -> &mut View {
        &mut self.view
    }

    /// The mode the kernel runs the program in, as last attached.
    pub fn attached(&self) -> Attached {
        self.attached
    }

    /// How the program holds the interface's hook.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// For the log: "native XDP", or "native XDP, shared in libxdp's dispatcher (program 812)
    /// at priority 5, with xdpfilt_alw_all (10)".
    pub fn describe(&self) -> String {
        match self.health() {
            Health::Guarded { mode, shared: Some(s), .. } => format!(
                "{} XDP, shared in libxdp's dispatcher (program {}) at priority {}, {}",
                mode.as_str(),
                s.dispatcher,
                s.priority,
                s.company()
            ),
            _ if self.kind == Kind::Multiprog => {
                format!("{} XDP, shared in libxdp's dispatcher", self.attached.as_str())
            }
            _ => format!("{} XDP", self.attached.as_str()),
        }
    }

    /// The link's (program id, ifindex) for an XDP link, (program id, target program id) for
    /// a component's link, from this process's descriptor.
    fn link_info(&self) -> Option<(u32, u32)> {
        let fd = self.link.as_ref()?.as_fd();
        match self.kind {
            Kind::Exclusive => sys::xdp_link_info(fd).ok(),
            Kind::Multiprog => sys::extension_link_info(fd).ok(),
        }
    }

    /// Whether every pin is there: META and the other maps, and the link (ours). When the
    /// kernel cannot be asked, they are taken to be there: nothing is re-pinned on a guess.
    fn pinned(&self) -> bool {
        let dir = self.view.dir();
        let maps = portguard_common::map_names::ALL.iter().all(|n| dir.join(n).exists());
        let link = match self.kind {
            Kind::Exclusive => match (&self.link, self.view.read_pinned_link()) {
                (None, _) | (Some(_), Err(_)) => true,
                (Some(_), Ok(pin)) => pin.is_some() && pin == self.link_info(),
            },
            Kind::Multiprog => self.missing_component_pins().is_none(),
        };
        maps && link
    }

    /// A shared guard whose link runs it in the dispatcher attached now, but whose pins there
    /// (`progN-link`, `progN-prog` at the slot it joined) are gone or are not its own: the
    /// dispatcher's directory. None otherwise, and when the kernel cannot be asked.
    fn missing_component_pins(&self) -> Option<std::path::PathBuf> {
        let (prog, target) = self.link_info()?;
        let idx = self.view.meta().ok()?.ifindex;
        if netlink::query(idx).ok()??.prog_id != target {
            // Rebuilt since (by libxdp, carrying portguard over, or without it): its pins are
            // the protocol's business there, and `health` says whether it runs.
            return None;
        }
        let dir = multiprog::pin_dir(idx, target);
        let link = sys::obj_get(&dir.join(format!("prog{}-link", self.slot)))
            .and_then(|fd| sys::extension_link_info(fd.as_fd()));
        let program = sys::obj_get(&dir.join(format!("prog{}-prog", self.slot)))
            .and_then(|fd| sys::prog_info(fd.as_fd()));
        let ok = link.is_ok_and(|l| l == (prog, target)) && program.is_ok_and(|p| p.id == prog);
        (!ok).then_some(dir)
    }

    /// What the kernel says about this guard now, from this process's own descriptors.
    pub fn health(&self) -> Health {
        match self.view.meta() {
            Ok(meta) => match self.kind {
                Kind::Exclusive => {
                    health::check(&meta, self.view.iface(), self.link_info(), self.pinned())
                }
                Kind::Multiprog => health::check_component(
                    &meta,
                    self.view.iface(),
                    Ours::Program(self.prog_id),
                    self.link_info(),
                ),
            },
            Err(e) => Health::NotGuarded(Reason::Unknown(format!("{e:#}"))),
        }
    }

    /// `health`, read again under libxdp's lock when a shared guard seems to be out of the
    /// dispatcher: a libxdp user may be rebuilding it right then (it pins the new dispatcher,
    /// swaps it in, then unpins the old one, each step under that lock), and a read between two
    /// steps must not make this owner join again a dispatcher it is already in.
    fn settled_health(&self) -> Health {
        let h = self.health();
        if !matches!(h, Health::NotGuarded(Reason::NotInDispatcher { .. })) {
            return h;
        }
        match multiprog::Lock::acquire() {
            Ok(_xdp) => self.health(),
            Err(_) => h,
        }
    }

    /// A shared guard carried into a rebuilt dispatcher (by libxdp, when another program
    /// joined or left): this process's descriptor follows it to its new link, letting go of
    /// the old dispatcher.
    fn follow_dispatcher(&mut self, h: &Health) {
        let Health::Guarded { shared: Some(s), pinned: true, .. } = h else { return };
        if self.kind != Kind::Multiprog || (s.dispatcher, s.slot) == (self.dispatcher, self.slot) {
            return;
        }
        let Ok(idx) = self.view.meta().map(|m| m.ifindex) else { return };
        let path = multiprog::pin_dir(idx, s.dispatcher).join(format!("prog{}-link", s.slot));
        if let Ok(fd) = sys::obj_get(&path)
            && sys::extension_link_info(fd.as_fd()).is_ok_and(|l| l == (self.prog_id, s.dispatcher))
        {
            self.link = Some(fd);
            (self.dispatcher, self.slot) = (s.dispatcher, s.slot);
        }
    }

    /// The owner's duty, done every second or so: honour a detach request, put back pins that
    /// vanished, and keep the program attached to the interface of its name, from the kernel's
    /// word on what is attached now. Anything it changes, it changes under the namespace's
    /// lock, after reading META again: a detach that got there first wins.
    pub fn upkeep(&mut self) -> Upkeep {
        if self.detached {
            return Upkeep::Detached { by: 0 };
        }
        let meta = match self.view.meta() {
            Ok(m) => m,
            Err(e) => return Upkeep::Unknown(format!("{e:#}")),
        };
        if meta.state == STATE_DETACHING {
            return self.honour_detach(&meta);
        }
        let mut repinned = None;
        if !self.pinned() {
            match self.repin() {
                Ok(Some(n)) => repinned = Some(n),
                Ok(None) => {}
                Err(e) => return self.after_repin_failed(e),
            }
        }
        let health = self.settled_health();
        self.follow_dispatcher(&health);
        match health {
            Health::Guarded { mode, .. } => {
                self.attached = mode;
                match repinned {
                    Some(n) => Upkeep::Repinned(n),
                    None => Upkeep::Guarding,
                }
            }
            Health::NotGuarded(Reason::Detaching) => self.honour_detach(&meta),
            Health::NotGuarded(Reason::InterfaceGone) => {
                self.link = None;
                Upkeep::Gone
            }
            Health::NotGuarded(Reason::Renamed { to }) => {
                // The device the link is on now has another name. The guard follows the name
                // it was given: when a device of that name exists, it is guarded instead.
                match ifindex(self.view.iface()) {
                    Ok(idx) => self.reattach(idx, Reason::Renamed { to }),
                    // No device of that name: as good as gone. The renamed device stays
                    // guarded until one appears.
                    Err(_) => Upkeep::Gone,
                }
            }
            Health::NotGuarded(
                why @ (Reason::Replaced { .. }
                | Reason::LinkDetached
                | Reason::NoProgram
                | Reason::NotInDispatcher { .. }
                | Reason::NoLink),
            ) => match ifindex(self.view.iface()) {
                Ok(idx) => self.reattach(idx, why),
                Err(_) => {
                    self.link = None;
                    Upkeep::Gone
                }
            },
            Health::NotGuarded(Reason::Unknown(e)) => Upkeep::Unknown(e),
            Health::NotGuarded(why) => Upkeep::Lost(why),
        }
    }

    fn honour_detach(&mut self, meta: &Meta) -> Upkeep {
        // `detach` did the detaching and removed the pins; what is left is to let go.
        self.link = None;
        self.detached = true;
        Upkeep::Detached { by: meta.detach_by }
    }

    fn after_repin_failed(&mut self, e: anyhow::Error) -> Upkeep {
        match self.health() {
            Health::Guarded { mode, .. } => {
                self.attached = mode;
                Upkeep::Unpinned(format!("{e:#}"))
            }
            Health::NotGuarded(why) => Upkeep::Lost(why),
        }
    }

    /// Puts back the pins that are gone, from the descriptors this process holds. None when a
    /// detach was asked for meanwhile (nothing is put back then).
    fn repin(&mut self) -> Result<Option<usize>> {
        let dir = self.view.dir().to_path_buf();
        let ns_dir = dir.parent().context("a guard's directory has a parent")?.to_path_buf();
        let root = ns_dir.parent().context("a namespace's directory has a parent")?;
        let pins = Pins::new(root);
        let ns = Netns::current()?;
        pins.prepare(&ns, true)?;
        let _changing = pins::lock(&ns_dir)?;
        if self.view.meta()?.state == STATE_DETACHING {
            return Ok(None);
        }
        pins::secure_dir(&dir)?;
        let mut n = self.view.maps.pin_missing(&dir)?;
        if self.kind == Kind::Multiprog {
            return Ok(Some(n + self.repin_component()?));
        }
        if let Some(link) = &self.link
            && self.view.pinned_link() != self.link_info()
        {
            let path = dir.join(LINK);
            let _ = std::fs::remove_file(&path);
            sys::obj_pin(link.as_fd(), &path).context("pinning the XDP link")?;
            n += 1;
        }
        Ok(Some(n))
    }

    /// Puts back a shared guard's pins in the dispatcher's directory (under libxdp's lock),
    /// from its descriptors, where they are missing: libxdp reads them to carry portguard over
    /// when it rebuilds the dispatcher. A name taken by something else is left alone.
    fn repin_component(&mut self) -> Result<usize> {
        let _xdp = multiprog::Lock::acquire()?;
        let Some(dir) = self.missing_component_pins() else { return Ok(0) };
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let mut n = 0;
        let link_pin = dir.join(format!("prog{}-link", self.slot));
        if let Some(link) = &self.link
            && !link_pin.exists()
        {
            sys::obj_pin(link.as_fd(), &link_pin)
                .with_context(|| format!("pinning {}", link_pin.display()))?;
            n += 1;
        }
        let prog_pin = dir.join(format!("prog{}-prog", self.slot));
        if !prog_pin.exists() {
            let fd = self.program.extension()?.fd()?.as_fd().try_clone_to_owned()?;
            sys::obj_pin(fd.as_fd(), &prog_pin)
                .with_context(|| format!("pinning {}", prog_pin.display()))?;
            n += 1;
        }
        Ok(n)
    }

    /// Attaches the program to interface `idx` (a new link, pinned in place of the old one),
    /// and detaches the old link if it is still on another device.
    fn reattach(&mut self, idx: u32, after: Reason) -> Upkeep {
        match self.try_reattach(idx) {
            Ok(true) => Upkeep::Reattached { ifindex: idx, after },
            Ok(false) => {
                let by = self.view.meta().map_or(0, |m| m.detach_by);
                self.link = None;
                self.detached = true;
                Upkeep::Detached { by }
            }
            Err(e) => match self.health() {
                Health::NotGuarded(why @ Reason::OtherProgram { .. }) => Upkeep::Lost(why),
                Health::Guarded { .. } => Upkeep::Guarding,
                _ => Upkeep::Lost(Reason::Unknown(format!("{e:#}"))),
            },
        }
    }

    /// Ok(false): a detach was asked for meanwhile, and nothing was attached.
    fn try_reattach(&mut self, idx: u32) -> Result<bool> {
        let dir = self.view.dir().to_path_buf();
        let ns_dir = dir.parent().context("a guard's directory has a parent")?.to_path_buf();
        let _changing = pins::lock(&ns_dir)?;
        let mut meta = self.view.meta()?;
        if meta.state == STATE_DETACHING {
            return Ok(false);
        }
        let iface = self.view.iface().to_string();
        if self.kind == Kind::Multiprog {
            let ours = Ours::Map(self.view.maps.config_id()?);
            let was = meta.ifindex;
            let j = component::join(
                self.program.extension()?,
                &iface,
                idx,
                ours,
                self.priority,
                self.mode,
            )?;
            if was != idx {
                // The device it was on, renamed (the guard moves with the name), or gone (a
                // stale directory of its dispatcher).
                if let Err(e) = component::leave(was, Ours::Program(self.prog_id)) {
                    log::warn!("{iface}: could not leave ifindex {was}'s dispatcher: {e:#}");
                }
            } else if self.dispatcher != j.dispatcher {
                // The dispatcher it was in was detached by hand: its directory is stale.
                let _ = multiprog::clean_stale(idx, self.dispatcher);
            }
            self.link = Some(j.link);
            (self.dispatcher, self.slot, self.attached) = (j.dispatcher, j.slot, j.mode);
            meta.ifindex = idx;
            meta.xdp_mode = j.mode.meta();
            self.view.maps.set_meta(&meta)?;
            return Ok(true);
        }
        refuse_foreign(&iface, idx)?;
        let (id, attached) = attach_to(self.program.xdp()?, &iface, idx, self.mode)?;
        let link = FdLink::try_from(self.program.xdp()?.take_link(id)?)
            .map_err(|_| anyhow!("{iface}: the kernel attached XDP without a bpf_link"))?;
        let fd = pin_link(link, &dir.join(LINK))?;
        if let Some(old) = self.link.replace(fd) {
            // Still on the device that had this name (renamed): the guard moves with the name.
            let _ = sys::link_detach(old.as_fd());
        }
        self.attached = attached;
        meta.ifindex = idx;
        meta.xdp_mode = attached.meta();
        self.view.maps.set_meta(&meta)?;
        Ok(true)
    }

    /// Ends ownership. `keep`: the program stays attached with its pins, for the next portguard
    /// to adopt (which needs the pins: this fails if they are gone and cannot be put back).
    /// Otherwise it is detached and its pins removed.
    pub fn release(mut self, keep: bool) -> Result<()> {
        if self.detached {
            return Ok(());
        }
        let iface = self.view.iface().to_string();
        if keep {
            if self.link.is_none() {
                // The interface is gone: the maps stay pinned for the next start, which guards
                // it again when it returns.
                return self.set_owner(0);
            }
            if !self.pinned() {
                match self.repin() {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) => bail!(
                        "could not leave {iface} guarded: its pins are gone and could not be put \
                         back ({e:#}); the guard ends with this process"
                    ),
                }
            }
            return self.set_owner(0);
        }
        let dir = self.view.dir().to_path_buf();
        let _changing = dir.parent().map(pins::lock).transpose()?;
        if self.kind == Kind::Multiprog {
            let idx = self.view.meta()?.ifindex;
            component::leave(idx, Ours::Program(self.prog_id)).map_err(|e| {
                anyhow!(
                    "could not leave {iface}'s libxdp dispatcher ({e:#}): it stays guarded; \
                     `portguard detach --iface {iface}` removes it"
                )
            })?;
            self.link = None;
        } else if let Some(link) = self.link.take() {
            sys::link_detach(link.as_fd()).context("detaching the XDP link")?;
        }
        pins::remove_guard(&dir)
    }

    fn set_owner(&mut self, pid: u32) -> Result<()> {
        let mut meta = self.view.maps.meta()?;
        meta.owner_pid = pid;
        self.view.maps.set_meta(&meta)
    }

    /// Makes room in the source table when it is nearly full; `sources` is a fresh read of
    /// it. Returns how many sources were forgotten.
    pub fn make_room(&mut self, sources: &[Source]) -> usize {
        let capacity = self.view.capacity();
        table::forget(&mut self.view.maps, sources, capacity)
    }

    /// The attached program itself, e.g. to fill its table through BPF_PROG_TEST_RUN in tests
    /// (an exclusive guard's only: a component is an extension, which cannot be test-run).
    pub fn program(&mut self) -> Result<&mut aya::programs::Xdp> {
        self.program.xdp()
    }

    /// The loaded program's id (what the kernel runs, alone or in the dispatcher).
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// Whether this kernel runs the copy-out program: fingerprints and captures are possible.
    pub fn copies(&self) -> bool {
        self.program.copies()
    }
}

/// Detaches the guard of `iface` in the calling thread's namespace, whoever owns it, and
/// removes its pins. The request is recorded in META first (under the namespace's lock), so an
/// owner that is running lets go instead of guarding again; after this returns, the interface
/// stays unguarded.
pub fn detach_pinned(pins: &Pins, iface: &str) -> Result<()> {
    let dir = pins.dir(iface)?;
    let ns_dir = dir.parent().context("a guard's directory has a parent")?;
    if !dir.join(portguard_common::map_names::META).exists() {
        return Err(crate::error::GuardError::NotGuarded { iface: iface.into(), dir }.into());
    }
    // The lock first: a guard being attached right now is complete (its META written) before
    // this looks at it, and an owner cannot act on the guard until the request is recorded.
    let _changing = pins::lock(ns_dir)?;
    let view = match View::open(pins, iface) {
        Ok(v) => Some(v),
        // Another portguard's layout can still be detached; it just cannot be told first.
        Err(e) if matches!(e.downcast_ref(), Some(crate::error::GuardError::Layout { .. })) => None,
        Err(e) => return Err(e),
    };
    if let Some(view) = view {
        let mut meta = view.maps.meta()?;
        meta.state = STATE_DETACHING;
        meta.detach_by = std::process::id();
        let mut maps = view.maps;
        maps.set_meta(&meta)?;
        if Kind::from_meta(meta.attach) == Kind::Multiprog {
            // Out of the dispatcher first, the other programs staying; the pins only after, so
            // that a failure leaves a guard that the next `detach` (or `run`) finishes.
            let ours = Ours::Map(maps.config_id()?);
            component::leave(meta.ifindex, ours).map_err(|e| {
                anyhow!(
                    "{iface}: could not leave libxdp's dispatcher ({e:#}); the detach is recorded \
                     and the next `portguard detach` or `run` finishes it"
                )
            })?;
        }
    }
    if let Ok(fd) = sys::obj_get(&dir.join(LINK)) {
        // A defunct link (its interface gone) has nothing left to detach.
        let _ = sys::link_detach(fd.as_fd());
    }
    pins::remove_guard(&dir)
}
