//! Where a running guard lives in bpffs, so that any portguard process can find it:
//! `<root>/netns-<cookie>/<iface>/` holds every map under its own name and the XDP link as
//! `link`. A guard's identity is its namespace (by cookie: see `netns`) and its interface; the
//! same name in another namespace is another guard.
//!
//! Only root may change a guard: every directory portguard uses is created by it, owned by root,
//! writable by nobody else, and never a symlink. bpffs is often mounted 1777 (it is by `mount -t
//! bpf`), so anyone may create a name in it first: such a directory is refused with one line,
//! never adopted. The directories are 0700: the maps are writable and their contents are who
//! probed you.
//!
//! Locks (flock on directories, the only files bpffs has that can be locked; the kernel drops
//! them when their holder dies, however it dies):
//! - an interface's directory, held exclusively by the process that owns the guard;
//! - the namespace's directory, held briefly around every change to a guard (attach, adopt,
//!   settings, detach, re-pin), so that two operators never lose each other's changes.

use std::{
    ffi::CString,
    fs::{self, File},
    os::{
        fd::AsRawFd as _,
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
        },
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use portguard_common::map_names;

use crate::netns::Netns;

/// The default root of portguard's pins.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/portguard";
/// Overrides the root (tests run side by side, each with its own).
pub const ROOT_ENV: &str = "PORTGUARD_PIN_ROOT";
/// The pinned link's file name inside an interface's directory.
pub const LINK: &str = "link";
/// An empty directory inside an interface's directory, locked by the one capture reading the
/// guard's CAPTURE ring buffer (`portguard capture`, or the daemon's `[capture]`).
pub const CAPTURE_LOCK: &str = "capture";
/// How long a change waits for another one in the same namespace to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
}

impl Default for Pins {
    fn default() -> Self {
        let root =
            std::env::var_os(ROOT_ENV).map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from);
        Pins { root }
    }
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Pins {
        Pins { root: root.into() }
    }

    /// The directory of the guards of network namespace `ns`.
    pub fn ns_dir(&self, ns: &Netns) -> PathBuf {
        self.root.join(ns.key())
    }

    /// An interface's directory in the calling thread's network namespace.
    pub fn dir(&self, iface: &str) -> Result<PathBuf> {
        Ok(self.ns_dir(&Netns::current()?).join(iface))
    }

    /// The guarded interfaces of the calling thread's network namespace, sorted.
    pub fn guarded(&self) -> Result<Vec<String>> {
        self.guarded_in(&self.ns_dir(&Netns::current()?))
    }

    /// The guarded interfaces pinned in `ns_dir`, sorted.
    pub fn guarded_in(&self, ns_dir: &Path) -> Result<Vec<String>> {
        let mut out: Vec<String> = list(ns_dir)?
            .into_iter()
            .filter(|p| p.join(map_names::META).exists())
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every namespace directory under the root (the namespace may be gone).
    pub fn namespaces(&self) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = list(&self.root)?
            .into_iter()
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("netns-"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Makes sure bpffs is mounted under the root, mounting it at /sys/fs/bpf when `mount` is
    /// set and it is missing; then creates (or checks) the root and the namespace's directory.
    pub fn prepare(&self, ns: &Netns, mount: bool) -> Result<PathBuf> {
        ensure_bpffs(&self.root, mount)?;
        if let Some(parent) = self.root.parent() {
            check_parent(parent)?;
        }
        secure_dir(&self.root)?;
        let dir = self.ns_dir(ns);
        secure_dir(&dir)?;
        Ok(dir)
    }

    /// Whether the root is on a mounted bpffs (nothing can be guarded otherwise).
    pub fn mounted(&self) -> bool {
        on_bpffs(&self.root)
    }
}

/// Makes sure bpffs is mounted under `path`, mounting it at /sys/fs/bpf when `mount` is set,
/// `path` is below it, and it is missing.
pub fn ensure_bpffs(path: &Path, mount: bool) -> Result<()> {
    if on_bpffs(path) {
        return Ok(());
    }
    let bpffs = Path::new("/sys/fs/bpf");
    if !(mount && path.starts_with(bpffs)) {
        bail!(
            "bpffs is not mounted at {}: mount it with `mount -t bpf bpf /sys/fs/bpf`",
            bpffs.display()
        );
    }
    mount_bpffs(bpffs)
}

/// The entries of `dir`; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(e) => Ok(e.filter_map(|e| e.ok()).map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!("reading portguard's pinned state needs root: run it with sudo")
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// The nearest existing ancestor of `path` is on bpffs.
fn on_bpffs(path: &Path) -> bool {
    let mut p = path;
    loop {
        if p.exists() {
            let Ok(c) = CString::new(p.as_os_str().as_bytes()) else { return false };
            // SAFETY: a zeroed statfs filled in by the kernel for a NUL-terminated path.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
                return false;
            }
            return st.f_type as i64 == BPF_FS_MAGIC;
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return false,
        }
    }
}

fn mount_bpffs(at: &Path) -> Result<()> {
    fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null())
    };
    if r != 0 {
        bail!(
            "bpffs is not mounted at {} and mounting it failed ({}): mount it with `mount -t bpf \
             bpf /sys/fs/bpf`",
            at.display(),
            std::io::Error::last_os_error()
        );
    }
    log::info!("mounted bpffs at {}", at.display());
    Ok(())
}

/// The user that may own portguard's directories: root, or whoever runs it when that is not
/// root (a test with capabilities only).
fn trusted_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The directory the root is created in (bpffs' own mount point, usually) must not let others
/// replace what portguard creates in it: owned by root or us, and either not writable by
/// others or sticky (1777: others may add names but not remove or rename ours).
fn check_parent(dir: &Path) -> Result<()> {
    let m = fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    let uid = m.uid();
    let writable_by_others = m.mode() & 0o022 != 0;
    let sticky = m.mode() & 0o1000 != 0;
    if !m.is_dir() || (uid != 0 && uid != trusted_uid()) || (writable_by_others && !sticky) {
        bail!(
            "{} (owner uid {uid}, mode {:o}) lets other users replace portguard's pins: refusing",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// Creates `dir` (0700) or checks the one there: a directory, not a symlink, owned by root (or
/// us), writable by nobody else. One that fails is refused, never taken over: someone else made
/// it, and may still hold it open.
pub fn secure_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    // O_NOFOLLOW: a symlink planted here fails the open instead of being followed; the checks
    // are then made on the very directory opened, not on a path that could change meanwhile.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                anyhow!("{} is not a directory (a symlink or a file): refusing", dir.display())
            } else {
                anyhow!("opening {}: {e}", dir.display())
            }
        })?;
    let m = f.metadata().with_context(|| format!("checking {}", dir.display()))?;
    let uid = m.uid();
    if uid != 0 && uid != trusted_uid() {
        bail!(
            "{} is owned by uid {uid}, not root: someone else made it, refusing to use it \
             (remove it as root if it is not yours)",
            dir.display()
        );
    }
    if m.mode() & 0o777 != 0o700 {
        // Ours, but loosened (by hand, or an old portguard): private again. Only its owner
        // could have made it group- or world-writable.
        f.set_permissions(fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

/// What a guard's directory holds before anything is loaded against it.
#[derive(Debug, PartialEq, Eq)]
pub enum Contents {
    /// Nothing: a fresh guard.
    Empty,
    /// portguard's: META and maps (and perhaps a link).
    Guard,
}

/// Looks at `dir` before the program is loaded with its pins: anything but nothing or a
/// portguard guard (META present, every entry a name portguard pins) is refused, and nothing in
/// it is touched. The maps' types and sizes are checked separately, once opened.
pub fn contents(dir: &Path) -> Result<Contents> {
    let entries = list(dir)?;
    if entries.is_empty() {
        return Ok(Contents::Empty);
    }
    let names: Vec<String> =
        entries.iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
    let known = |n: &str| n == LINK || n == CAPTURE_LOCK || map_names::ALL.contains(&n);
    if let Some(odd) = names.iter().find(|n| !known(n)) {
        bail!(
            "{} holds '{odd}', which portguard never pins: not portguard's, refusing",
            dir.display()
        );
    }
    if !names.iter().any(|n| n == map_names::META) {
        bail!(
            "{} holds pins but no META: not a portguard guard (or a broken one), refusing; \
             `portguard detach` cannot tell what it is: remove it by hand if it is stale",
            dir.display()
        );
    }
    Ok(Contents::Guard)
}

/// An exclusive flock on a directory: ownership of a guard (its interface directory, for the
/// owner's lifetime) or a change in progress (the namespace directory, briefly).
pub struct Lock(#[allow(dead_code)] File);

fn open_dir(dir: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .with_context(|| format!("opening {}", dir.display()))
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(e) }
}

/// Takes the lock on `dir`, or None when another process holds it.
pub fn try_lock(dir: &Path) -> Result<Option<Lock>> {
    let f = open_dir(dir)?;
    Ok(flock(&f, libc::LOCK_EX)
        .with_context(|| format!("locking {}", dir.display()))?
        .then(|| Lock(f)))
}

/// Takes the lock on `dir`, waiting up to LOCK_WAIT for its holder to finish.
pub fn lock(dir: &Path) -> Result<Lock> {
    let f = open_dir(dir)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        if flock(&f, libc::LOCK_EX).with_context(|| format!("locking {}", dir.display()))? {
            return Ok(Lock(f));
        }
        if Instant::now() >= deadline {
            bail!(
                "another portguard has been changing the guards in {} for {} s: try again",
                dir.display(),
                LOCK_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The capture lock of the guard in `dir` (see CAPTURE_LOCK), or None while another capture
/// holds it.
pub fn try_lock_capture(dir: &Path) -> Result<Option<Lock>> {
    let d = dir.join(CAPTURE_LOCK);
    secure_dir(&d)?;
    try_lock(&d)
}

/// Whether a live capture reads the guard in `dir`.
pub fn capturing(dir: &Path) -> bool {
    owned(&dir.join(CAPTURE_LOCK))
}

/// Whether a live process owns the guard in `dir` (holds its lock): read from the kernel's
/// locks, not from a pid that may have been reused.
pub fn owned(dir: &Path) -> bool {
    let Ok(f) = open_dir(dir) else { return false };
    // A shared lock is refused while an exclusive one is held; taken, it goes with `f`.
    matches!(flock(&f, libc::LOCK_SH), Ok(false))
}

/// Removes a guard's pins and its directory: the link first, so that the program is detached
/// whatever happens next. Only the names portguard pins are removed.
pub fn remove_guard(dir: &Path) -> Result<()> {
    let _ = fs::remove_file(dir.join(LINK));
    for name in map_names::ALL {
        let _ = fs::remove_file(dir.join(name));
    }
    let _ = fs::remove_dir(dir.join(CAPTURE_LOCK));
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pg-pins-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn secure_dir_creates_private_and_refuses_symlinks() {
        let d = tmp("secure");
        secure_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        secure_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700, "made private again");
        let link = tmp("symlink");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = secure_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let _ = fs::remove_file(&link);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn contents_refuses_what_is_not_portguards() {
        let d = tmp("contents");
        fs::create_dir_all(&d).unwrap();
        assert_eq!(contents(&d).unwrap(), Contents::Empty);
        fs::write(d.join("SOURCES"), b"").unwrap();
        assert!(contents(&d).unwrap_err().to_string().contains("no META"));
        fs::write(d.join("META"), b"").unwrap();
        assert_eq!(contents(&d).unwrap(), Contents::Guard);
        fs::write(d.join("evil"), b"").unwrap();
        assert!(contents(&d).unwrap_err().to_string().contains("'evil'"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_held_lock_is_seen_by_others() {
        let d = tmp("lock");
        fs::create_dir_all(&d).unwrap();
        assert!(!owned(&d));
        let l = try_lock(&d).unwrap().unwrap();
        assert!(owned(&d));
        assert!(try_lock(&d).unwrap().is_none());
        drop(l);
        assert!(!owned(&d));
        let _ = fs::remove_dir_all(&d);
    }
}
