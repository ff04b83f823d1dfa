//! Where a running guard lives in bpffs, so that any portguard process can find it:
//! `/sys/fs/bpf/portguard/<iface>/` holds every map under its own name and the XDP link as
//! `link`. The directories are 0700: the maps are writable and their contents are who probed
//! you.

use std::{
    ffi::CString,
    fs::{self, File},
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The default root of portguard's pins.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/portguard";
/// Overrides the root (tests run side by side, each with its own).
pub const ROOT_ENV: &str = "PORTGUARD_PIN_ROOT";
/// The pinned link's file name inside an interface's directory.
pub const LINK: &str = "link";

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

    /// An interface's directory.
    pub fn dir(&self, iface: &str) -> PathBuf {
        self.root.join(iface)
    }

    /// Interfaces with pinned state, sorted.
    pub fn guarded(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                bail!("reading portguard's pinned state needs root: run it with sudo")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.root.display())),
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(portguard_common::map_names::META).exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Makes sure bpffs is mounted under the root, mounting it at /sys/fs/bpf when `mount` is
    /// set and it is missing; then creates the root (0700).
    pub fn prepare(&self, mount: bool) -> Result<()> {
        if !on_bpffs(&self.root) {
            let bpffs = Path::new("/sys/fs/bpf");
            if !(mount && self.root.starts_with(bpffs)) {
                bail!(
                    "bpffs is not mounted at {}: mount it with `mount -t bpf bpf /sys/fs/bpf`",
                    bpffs.display()
                );
            }
            mount_bpffs(bpffs)?;
        }
        create_private_dir(&self.root)
    }

    /// Whether the root is on a mounted bpffs (nothing can be guarded otherwise).
    pub fn mounted(&self) -> bool {
        on_bpffs(&self.root)
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

/// Creates `dir` (and parents) and makes it 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// An exclusive lock on an interface's directory, held by the process that owns the guard
/// (the kernel drops it when that process dies, however it dies).
pub struct Lock(#[allow(dead_code)] File);

/// Takes the lock on `dir`, or None when another process holds it.
pub fn try_lock(dir: &Path) -> Result<Option<Lock>> {
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("locking {}", dir.display()));
    }
    Ok(Some(Lock(f)))
}

/// Removes a guard's pins and its directory: the link first, so that the program is detached
/// whatever happens next.
pub fn remove_guard(dir: &Path) -> Result<()> {
    let _ = fs::remove_file(dir.join(LINK));
    for name in portguard_common::map_names::ALL {
        let _ = fs::remove_file(dir.join(name));
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}
