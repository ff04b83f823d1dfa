//! pcapng files of matched packets, readable by tcpdump, tshark and Wireshark.
//!
//! One section, one interface description block per guarded interface (its name, Ethernet
//! link type, the capture's snap length, nanosecond timestamps), then one enhanced packet block per
//! packet with a comment carrying portguard's verdict and the source's label
//! (`portguard: drop; label: masscan; IP ID 19830 == ...`). Wireshark shows the comment under
//! "Packet comments"; `tshark -T fields -e frame.comment` prints it.
//!
//! Written with the `pcap-file` crate, 2.0.0 (its latest stable release; 3.0 is still a release
//! candidate). 2.0 writes timestamps as nanoseconds whatever the interface says, so every
//! interface block here declares nanosecond resolution (`if_tsresol` = 9): without it readers
//! would take the nanoseconds for microseconds and date packets 1000 times too late.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use pcap_file::{
    DataLink, Endianness,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};

/// A guarded interface, as the capture describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The interface name (`if_name`): what tshark shows as `frame.interface_name`.
    pub name: String,
    /// Free text (`if_description`): the guard's mode, say.
    pub description: Option<String>,
}

impl Interface {
    pub fn new(name: &str) -> Interface {
        Interface { name: name.to_string(), description: None }
    }
}

/// The comment portguard attaches to a packet: its verdict, the source's label and why.
pub fn comment(verdict: &str, label: &str, evidence: &str) -> String {
    // One line: some readers show only the first.
    let clean = |s: &str| s.replace(['\n', '\r'], " ");
    if evidence.is_empty() {
        format!("portguard: {}; label: {}", clean(verdict), clean(label))
    } else {
        format!("portguard: {}; label: {}; {}", clean(verdict), clean(label), clean(evidence))
    }
}

/// A pcapng writer with portguard's interfaces.
pub struct Writer<W: Write> {
    inner: PcapNgWriter<W>,
    interfaces: usize,
    snaplen: u32,
    bytes: u64,
    packets: u64,
}

impl Writer<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the section and interface blocks.
    pub fn create(path: &Path, interfaces: &[Interface], snaplen: u32) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Writer::new(BufWriter::new(f), interfaces, snaplen)
            .with_context(|| format!("writing {}", path.display()))
    }
}

impl<W: Write> Writer<W> {
    /// Writes the section header and one interface description per interface; packets then
    /// name their interface by its index in `interfaces`. `snaplen` (`--snaplen`) is the bytes
    /// kept of each packet, the same for every interface: libpcap (so tcpdump) refuses a
    /// section whose interfaces have different snap lengths.
    pub fn new(out: W, interfaces: &[Interface], snaplen: u32) -> Result<Self> {
        if interfaces.is_empty() {
            bail!("a capture needs at least one interface");
        }
        if snaplen == 0 {
            bail!("a snap length of 0 keeps nothing");
        }
        let section = SectionHeaderBlock {
            endianness: if cfg!(target_endian = "big") {
                Endianness::Big
            } else {
                Endianness::Little
            },
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "portguard {}",
                env!("CARGO_PKG_VERSION")
            )))],
        };
        let mut inner = PcapNgWriter::with_section_header(out, section)
            .map_err(|e| anyhow::anyhow!("writing the section header: {e}"))?;
        let mut bytes = 28u64; // the section header block with its option, roughly
        for i in interfaces {
            let mut options = vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(i.name.clone())),
                InterfaceDescriptionOption::IfTsResol(9),
            ];
            if let Some(d) = &i.description {
                options.push(InterfaceDescriptionOption::IfDescription(Cow::Owned(d.clone())));
            }
            let idb = InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen, options };
            bytes += inner
                .write_pcapng_block(idb)
                .map_err(|e| anyhow::anyhow!("writing the interface block of {}: {e}", i.name))?
                as u64;
        }
        Ok(Writer { inner, interfaces: interfaces.len(), snaplen, bytes, packets: 0 })
    }

    /// Writes one packet: `frame` as seen on interface `iface` (an index into the interfaces
    /// given to `new`), `orig_len` its length on the wire (frames longer than the snap length
    /// are cut), `comment` the verdict and label (see [`comment`]; empty for none).
    pub fn write(
        &mut self,
        iface: u32,
        timestamp: SystemTime,
        frame: &[u8],
        orig_len: u32,
        comment: &str,
    ) -> Result<()> {
        if iface as usize >= self.interfaces {
            bail!("interface index {iface} out of range ({} interfaces)", self.interfaces);
        }
        let keep = frame.len().min(self.snaplen as usize);
        let ts = timestamp.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let mut options = Vec::new();
        if !comment.is_empty() {
            options.push(EnhancedPacketOption::Comment(Cow::Borrowed(comment)));
        }
        let epb = EnhancedPacketBlock {
            interface_id: iface,
            timestamp: ts,
            original_len: orig_len.max(keep as u32),
            data: Cow::Borrowed(&frame[..keep]),
            options,
        };
        self.bytes += self
            .inner
            .write_pcapng_block(epb)
            .map_err(|e| anyhow::anyhow!("writing a packet: {e}"))? as u64;
        self.packets += 1;
        Ok(())
    }

    /// Bytes written so far (what rotation compares with its limit).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn flush(&mut self) -> Result<()> {
        self.inner.get_mut().flush().context("flushing the capture")
    }

    pub fn into_inner(self) -> W {
        self.inner.into_inner()
    }
}

/// A capture file that rotates: when the current file passes `max_bytes`, it becomes
/// `FILE.1` (`FILE.1` becomes `FILE.2`, ...), at most `keep` old files are kept, and a fresh
/// `FILE` starts with the same interfaces. Each file is a complete pcapng on its own.
pub struct Rotating {
    path: PathBuf,
    interfaces: Vec<Interface>,
    snaplen: u32,
    max_bytes: u64,
    keep: usize,
    current: Writer<BufWriter<File>>,
    rotations: u64,
}

impl Rotating {
    pub fn create(
        path: &Path,
        interfaces: &[Interface],
        snaplen: u32,
        max_bytes: u64,
        keep: usize,
    ) -> Result<Self> {
        if max_bytes == 0 {
            bail!("a rotation size of 0 bytes would rotate after every packet forever");
        }
        Ok(Rotating {
            path: path.to_path_buf(),
            interfaces: interfaces.to_vec(),
            snaplen,
            max_bytes,
            keep,
            current: Writer::create(path, interfaces, snaplen)?,
            rotations: 0,
        })
    }

    /// `FILE.n`.
    pub fn old(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Writes a packet (as [`Writer::write`]), rotating first when the file is full.
    pub fn write(
        &mut self,
        iface: u32,
        ts: SystemTime,
        frame: &[u8],
        orig_len: u32,
        comment: &str,
    ) -> Result<()> {
        if self.current.bytes() >= self.max_bytes && self.current.packets() > 0 {
            self.rotate()?;
        }
        self.current.write(iface, ts, frame, orig_len, comment)
    }

    fn rotate(&mut self) -> Result<()> {
        self.current.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)
                .with_context(|| format!("removing {}", self.path.display()))?;
        } else {
            let _ = std::fs::remove_file(self.old(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.old(n);
                if from.exists() {
                    std::fs::rename(&from, self.old(n + 1))
                        .with_context(|| format!("renaming {}", from.display()))?;
                }
            }
            std::fs::rename(&self.path, self.old(1))
                .with_context(|| format!("renaming {}", self.path.display()))?;
        }
        self.current = Writer::create(&self.path, &self.interfaces, self.snaplen)?;
        self.rotations += 1;
        Ok(())
    }

    /// Files started after the first.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    pub fn flush(&mut self) -> Result<()> {
        self.current.flush()
    }
}

/// What `--count N` and `--per-source K` allow: packets are admitted until N in all, and at
/// most K per source. The per-source table is bounded (`MAX_TRACKED`): under a spoofed-source
/// flood, sources beyond it are not captured rather than growing memory without end.
#[derive(Debug, Default)]
pub struct Budget {
    count: Option<u64>,
    per_source: Option<u32>,
    admitted: u64,
    seen: HashMap<IpAddr, u32>,
}

impl Budget {
    /// Sources tracked for `per_source`.
    pub const MAX_TRACKED: usize = 65_536;

    pub fn new(count: Option<u64>, per_source: Option<u32>) -> Budget {
        Budget { count, per_source, ..Budget::default() }
    }

    /// Whether to capture a packet from `src`; counts it when yes.
    pub fn admit(&mut self, src: IpAddr) -> bool {
        if self.done() {
            return false;
        }
        if let Some(k) = self.per_source {
            let tracked = self.seen.len();
            match self.seen.get_mut(&src) {
                Some(n) if *n >= k => return false,
                Some(n) => *n += 1,
                None if tracked >= Self::MAX_TRACKED || k == 0 => return false,
                None => {
                    self.seen.insert(src, 1);
                }
            }
        }
        self.admitted += 1;
        true
    }

    /// `--count` reached: the capture is complete.
    pub fn done(&self) -> bool {
        self.count.is_some_and(|c| self.admitted >= c)
    }

    pub fn admitted(&self) -> u64 {
        self.admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_in_all_and_per_source() {
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let mut g = Budget::new(Some(4), Some(2));
        assert!(g.admit(a) && g.admit(a));
        assert!(!g.admit(a));
        assert!(g.admit(b) && g.admit(b));
        assert!(g.done() && !g.admit("198.18.0.3".parse().unwrap()));
        assert_eq!(g.admitted(), 4);
        let mut open = Budget::new(None, None);
        assert!((0..1000).all(|_| open.admit(a)));
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        assert!(Writer::new(Vec::new(), &[], 64).is_err());
        assert!(Writer::new(Vec::new(), &[Interface::new("eth1")], 0).is_err());
        let mut w = Writer::new(Vec::new(), &[Interface::new("eth1")], 64).unwrap();
        let e = w.write(1, SystemTime::now(), &[0u8; 60], 60, "").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        // Cut to the snap length; the original length stays.
        w.write(0, SystemTime::now(), &[0u8; 100], 100, "x").unwrap();
        assert_eq!(w.packets(), 1);
        assert!(comment("drop", "a\nb", "").contains("a b"));
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("pgfp-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.pcapng");
        let mut r = Rotating::create(&path, &[Interface::new("eth1")], 256, 1000, 2).unwrap();
        for i in 0..40u8 {
            r.write(0, SystemTime::now(), &[i; 100], 100, "portguard: drop").unwrap();
        }
        r.flush().unwrap();
        assert!(r.rotations() >= 3, "{}", r.rotations());
        assert!(path.exists() && r.old(1).exists() && r.old(2).exists());
        assert!(!r.old(3).exists());
        for p in [&path, &r.old(1), &r.old(2)] {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(len <= 1000 + 200, "{} is {len} bytes", p.display());
            // Every file starts with a section header block.
            assert_eq!(&std::fs::read(p).unwrap()[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
