//! Asking the kernel for its TCP and UDP sockets over NETLINK_SOCK_DIAG (inet_diag), as `ss`
//! does: the kernel's own table, not a parse of /proc/net/tcp text, and both IP families.
//!
//! The dump covers the network namespace of the calling thread.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::{Family, Protocol};

/// One socket as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    pub protocol: Protocol,
    pub family: Family,
    /// The kernel's state number (TCP_ESTABLISHED = 1 ... TCP_NEW_SYN_RECV = 12); UDP sockets
    /// use 7 (TCP_CLOSE) when unconnected and 1 when connected.
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    /// 0 when no file refers to the socket any more (e.g. TIME-WAIT).
    pub inode: u32,
}

/// Every TCP and UDP socket, IPv4 and IPv6, in the calling thread's network namespace.
pub fn dump_all() -> Result<Vec<KernelSocket>> {
    let mut all = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for family in [Family::Ipv4, Family::Ipv6] {
            all.extend(dump(protocol, family)?);
        }
    }
    Ok(all)
}

/// Largest netlink datagram we read at once; the kernel sizes dump batches to the reader's
/// buffer, but never beyond this in practice (it uses up to 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// Netlink header size (nlmsghdr).
const NLMSG_HDRLEN: usize = 16;

/// One inet_diag dump: all sockets of one protocol and family, in every state.
pub fn dump(protocol: Protocol, family: Family) -> Result<Vec<KernelSocket>> {
    let what = format!("{} {} sockets", protocol.as_str(), family.as_str());
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a NETLINK_SOCK_DIAG socket")?;
    socket.bind_auto().context("binding the NETLINK_SOCK_DIAG socket")?;
    socket.connect(&NetlinkAddr::new(0, 0)).context("connecting to the kernel over netlink")?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: match family {
                Family::Ipv4 => AF_INET,
                Family::Ipv6 => AF_INET6,
            },
            protocol: match protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
            },
            extensions: ExtensionFlags::empty(),
            // Every state bit, including TCP_NEW_SYN_RECV (12) which `StateFlags::all()` lacks:
            // a half-open connection to the port is something an admin wants to see.
            states: StateFlags::from_bits_retain(u32::MAX),
            socket_id: match family {
                Family::Ipv4 => SocketId::new_v4(),
                Family::Ipv6 => SocketId::new_v6(),
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).with_context(|| format!("asking the kernel for {what}"))?;

    let mut found = Vec::new();
    let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        rx.clear();
        let n = socket.recv(&mut rx, 0).with_context(|| format!("reading {what}"))?;
        if n > rx.len() {
            bail!("reading {what}: netlink message truncated ({n} bytes)");
        }
        if n == 0 {
            bail!("reading {what}: the kernel closed the dump early");
        }
        let mut off = 0;
        while off < rx.len() {
            let rest = &rx[off..];
            let Some(len) = rest.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            else {
                bail!("reading {what}: malformed netlink message");
            };
            let len = len as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                bail!("reading {what}: malformed netlink message (length {len})");
            }
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rest[..len])
                .map_err(|e| anyhow::anyhow!("reading {what}: {e}"))?;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                // An error with code 0 is an acknowledgement; anything else ends the dump.
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(e.to_io()).with_context(|| format!("reading {what}"));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let id = &h.socket_id;
                    found.push(KernelSocket {
                        protocol,
                        family,
                        state: h.state,
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                        uid: h.uid,
                        inode: h.inode,
                    });
                }
                _ => {}
            }
            // Messages are padded to 4 bytes.
            off += (len + 3) & !3;
        }
    }
}
