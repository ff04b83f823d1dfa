//! An interface's XDP attachment over rtnetlink, as the kernel reports it to `ip link`: what
//! "guarded" is read from, every time. aya 0.14 keeps its netlink code private; this is the
//! little of it portguard needs. The socket belongs to the calling thread's network namespace.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const IFLA_XDP_EXPECTED_FD: u16 = 8;

const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_MULTI: u8 = 4;

/// XDP_FLAGS_* (include/uapi/linux/if_link.h).
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// The mode of an XDP attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub fn flag(self) -> u32 {
        match self {
            Mode::Native => XDP_FLAGS_DRV_MODE,
            Mode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The program attached to an interface (native preferred, as libxdp reads it), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub prog_id: u32,
    pub mode: Mode,
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is checked and then owned.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, ours.
        let s = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: an int option on our socket. Failure only costs the kernel's message.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_NETLINK,
                    opt,
                    &one as *const libc::c_int as *const libc::c_void,
                    size_of::<libc::c_int>() as u32,
                )
            };
        }
        Ok(s)
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and sa outlive the call.
        let r = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// (type, payload) of each attribute in `b`.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16_at(b, 0) as usize;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((u16_at(b, 2) & NLA_TYPE_MASK, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn push_attr(msg: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    msg.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(payload);
    while !msg.len().is_multiple_of(4) {
        msg.push(0);
    }
}

/// A request: header, ifinfomsg for `ifindex`, then `body` attributes.
fn request(ty: u16, flags: u16, ifindex: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + body.len());
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    // struct ifinfomsg: family, pad, type, index, flags, change.
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(body);
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// An NLMSG_ERROR: Ok for an ack, else the errno and the kernel's message (extack), if any.
fn error_of(msg: &[u8], flags: u16) -> std::result::Result<(), (io::Error, Option<String>)> {
    let errno = -(u32_at(msg, 16) as i32);
    if errno == 0 {
        return Ok(());
    }
    let mut text = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The error code, then the request's header (capped) or whole request.
        let skip = if flags & NLM_F_CAPPED != 0 { 20 + 16 } else { 20 + u32_at(msg, 20) as usize };
        if let Some(tlvs) = msg.get(skip..) {
            for (ty, p) in attrs(tlvs) {
                if ty == NLMSGERR_ATTR_MSG {
                    let s = p.split(|b| *b == 0).next().unwrap_or_default();
                    text = Some(String::from_utf8_lossy(s).into_owned());
                }
            }
        }
    }
    Err((io::Error::from_raw_os_error(errno), text))
}

/// The XDP program attached to `ifindex` (generic or native; offloaded ones are not shared),
/// or None.
pub fn query(ifindex: u32) -> Result<Option<Attachment>> {
    let s = Socket::open()?;
    s.send(&request(RTM_GETLINK, 0, ifindex, &[]))?;
    let buf = s.recv()?;
    let mut b = &buf[..];
    while b.len() >= 16 {
        let len = (u32_at(b, 0) as usize).min(b.len());
        let (ty, flags) = (u16_at(b, 4), u16_at(b, 6));
        let msg = &b[..len];
        if ty == NLMSG_ERROR
            && msg.len() >= 20
            && let Err((e, text)) = error_of(msg, flags)
        {
            bail!("reading the XDP state of ifindex {ifindex}: {}", text.unwrap_or(e.to_string()));
        }
        if ty == RTM_NEWLINK && msg.len() >= 32 {
            for (a, p) in attrs(&msg[32..]) {
                if a != IFLA_XDP {
                    continue;
                }
                let (mut attached, mut drv, mut skb, mut hw) = (0u8, 0, 0, 0);
                for (x, v) in attrs(p) {
                    match x {
                        IFLA_XDP_ATTACHED if !v.is_empty() => attached = v[0],
                        IFLA_XDP_DRV_PROG_ID if v.len() >= 4 => drv = u32_at(v, 0),
                        IFLA_XDP_SKB_PROG_ID if v.len() >= 4 => skb = u32_at(v, 0),
                        IFLA_XDP_HW_PROG_ID if v.len() >= 4 => hw = u32_at(v, 0),
                        _ => {}
                    }
                }
                let _ = hw;
                return Ok(match attached {
                    XDP_ATTACHED_DRV if drv != 0 => {
                        Some(Attachment { prog_id: drv, mode: Mode::Native })
                    }
                    XDP_ATTACHED_SKB if skb != 0 => {
                        Some(Attachment { prog_id: skb, mode: Mode::Generic })
                    }
                    XDP_ATTACHED_MULTI if drv != 0 => {
                        Some(Attachment { prog_id: drv, mode: Mode::Native })
                    }
                    XDP_ATTACHED_MULTI if skb != 0 => {
                        Some(Attachment { prog_id: skb, mode: Mode::Generic })
                    }
                    _ => None,
                });
            }
            return Ok(None);
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    bail!("reading the XDP state of ifindex {ifindex}: no answer from the kernel")
}

/// Why a netlink XDP change failed: the errno, and the kernel's own words when it gave any.
#[derive(Debug)]
pub struct SetError {
    pub errno: io::Error,
    pub message: Option<String>,
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m} ({})", self.errno),
            None => write!(f, "{}", self.errno),
        }
    }
}

impl std::error::Error for SetError {}

impl SetError {
    /// The kernel refused because the attached program is no longer the expected one (or one
    /// appeared where none was expected): someone changed the hook meanwhile.
    pub fn raced(&self) -> bool {
        self.errno.raw_os_error() == Some(libc::EEXIST)
    }
}

/// Attaches `prog` (None: detaches) on `ifindex` with `flags`; with XDP_FLAGS_REPLACE, only if
/// `expected` is the program attached now.
pub fn set(
    ifindex: u32,
    prog: Option<BorrowedFd<'_>>,
    flags: u32,
    expected: Option<BorrowedFd<'_>>,
) -> std::result::Result<(), SetError> {
    let mut xdp = Vec::new();
    let fd: i32 = prog.map_or(-1, |p| p.as_raw_fd());
    push_attr(&mut xdp, IFLA_XDP_FD, &fd.to_ne_bytes());
    push_attr(&mut xdp, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    if let Some(e) = expected {
        push_attr(&mut xdp, IFLA_XDP_EXPECTED_FD, &e.as_raw_fd().to_ne_bytes());
    }
    let mut body = Vec::new();
    push_attr(&mut body, IFLA_XDP | NLA_F_NESTED, &xdp);
    let io = |errno: io::Error| SetError { errno, message: None };
    let s = Socket::open().map_err(io)?;
    s.send(&request(RTM_SETLINK, NLM_F_ACK, ifindex, &body)).map_err(io)?;
    let buf = s.recv().map_err(io)?;
    if buf.len() >= 20 && u16_at(&buf, 4) == NLMSG_ERROR {
        return error_of(&buf, u16_at(&buf, 6))
            .map_err(|(errno, message)| SetError { errno, message });
    }
    Ok(())
}

/// The name of interface `ifindex` in this namespace, if there is one.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
