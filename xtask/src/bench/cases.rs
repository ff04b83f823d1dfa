//! The frames the in-kernel cost is measured on: every shape portguard parses, each to the
//! guarded port (matched) and to 443 (unmatched), all from one known source.

use portguard_testkit::frames::{Ext, Frame, v6};

pub const GUARDED: u16 = 2745;
const OTHER: u16 = 443;

pub const SRC4: [u8; 4] = [198, 18, 0, 2];
pub const DST4: [u8; 4] = [198, 18, 0, 1];
pub const SRC6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]);
pub const DST6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);

pub struct Case {
    pub name: String,
    pub frame: Vec<u8>,
    /// To the guarded port.
    pub matched: bool,
    /// A plain IPv4/IPv6 TCP/UDP frame, the cases the targets are stated for.
    pub plain: bool,
}

pub fn all() -> Vec<Case> {
    let mut out = Vec::new();
    for (label, plain, make) in shapes() {
        for (port, matched) in [(GUARDED, true), (OTHER, false)] {
            out.push(Case {
                name: format!("{label} :{port}"),
                frame: make(port).build(),
                matched,
                plain,
            });
        }
    }
    out
}

type Shape = (&'static str, bool, fn(u16) -> Frame);

fn shapes() -> Vec<Shape> {
    vec![
        ("IPv4 TCP", true, |p| Frame::tcp4(SRC4, DST4, 40000, p).syn()),
        ("IPv4 UDP", true, |p| Frame::udp4(SRC4, DST4, 40000, p)),
        ("IPv6 TCP", true, |p| Frame::tcp6(SRC6, DST6, 40000, p).syn()),
        ("IPv6 UDP", true, |p| Frame::udp6(SRC6, DST6, 40000, p)),
        ("VLAN IPv4 TCP", false, |p| Frame::tcp4(SRC4, DST4, 40000, p).syn().vlan(0x8100, 7)),
        ("QinQ IPv4 TCP", false, |p| {
            Frame::tcp4(SRC4, DST4, 40000, p).syn().vlan(0x88a8, 100).vlan(0x8100, 200)
        }),
        ("PPPoE IPv4 TCP", false, |p| Frame::tcp4(SRC4, DST4, 40000, p).syn().pppoe()),
        ("IPv6 HBH+DstOpts TCP", false, |p| {
            Frame::tcp6(SRC6, DST6, 40000, p).syn().ext(Ext::HopByHop(0)).ext(Ext::DestOpts(0))
        }),
    ]
}
