//! Which processes hold which sockets: every /proc/<pid>/fd/* that links to "socket:[INODE]".
//!
//! Socket inodes live in one filesystem (sockfs) for the whole host, so this works for sockets
//! of any network namespace. Processes come and go while we read: one that vanishes is skipped.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::CStr,
    fs,
    io::ErrorKind,
    path::Path,
};

use super::Process;

/// The owners of the sockets asked about, and what kept us from seeing more.
#[derive(Debug, Default)]
pub struct Owners {
    /// Socket inode → the processes with a file descriptor on it (by pid, each once).
    pub by_inode: HashMap<u64, Vec<Process>>,
    /// Processes whose descriptors we were not allowed to read (not root, or hardened /proc).
    pub denied: usize,
}

/// Finds the processes holding any of `inodes`, by scanning `proc_root` (normally "/proc").
pub fn owners(proc_root: &Path, inodes: &HashSet<u64>) -> Owners {
    let mut out = Owners::default();
    if inodes.is_empty() {
        return out;
    }
    let Ok(entries) = fs::read_dir(proc_root) else {
        return out;
    };
    // pid → inodes it holds; BTreeMap so processes come out in pid order.
    let mut held: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let fd_dir = entry.path().join("fd");
        let fds = match fs::read_dir(&fd_dir) {
            Ok(fds) => fds,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                out.denied += 1;
                continue;
            }
            // Gone, or a zombie without descriptors.
            Err(_) => continue,
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let Some(inode) = target.to_str().and_then(socket_inode) else { continue };
            if inodes.contains(&inode) {
                let list = held.entry(pid).or_default();
                if !list.contains(&inode) {
                    list.push(inode);
                }
            }
        }
    }
    for (pid, held_inodes) in held {
        let dir = proc_root.join(pid.to_string());
        // A process that exited since we saw its descriptors no longer owns anything.
        let Some(name) = read_comm(&dir) else { continue };
        let cmdline = read_cmdline(&dir).unwrap_or_default();
        for inode in held_inodes {
            out.by_inode.entry(inode).or_default().push(Process {
                pid,
                name: name.clone(),
                cmdline: cmdline.clone(),
            });
        }
    }
    out
}

/// The inode in a descriptor link such as "socket:[12345]".
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn read_comm(dir: &Path) -> Option<String> {
    let raw = fs::read(dir.join("comm")).ok()?;
    Some(String::from_utf8_lossy(&raw).trim_end_matches('\n').to_string())
}

/// The command line with its NUL separators turned into spaces; empty for kernel threads.
fn read_cmdline(dir: &Path) -> Option<String> {
    let raw = fs::read(dir.join("cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// The name of user `uid`, or its number when the user database does not know it.
pub fn user_name(uid: u32) -> String {
    lookup_user(uid).unwrap_or_else(|| uid.to_string())
}

fn lookup_user(uid: u32) -> Option<String> {
    // SAFETY: sysconf has no preconditions.
    let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
    let mut size = if hint > 0 { hint as usize } else { 1024 };
    // getpwuid_r asks for a bigger buffer with ERANGE; give up past 1 MiB.
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: an all-zero passwd is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the given size for the call's duration.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE {
            size *= 2;
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
        return (!name.is_empty()).then_some(name);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("socket:[]"), None);
        assert_eq!(socket_inode("socket:[12"), None);
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("socket:[99999999999999999999999]"), None);
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }
}
