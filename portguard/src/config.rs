//! The configuration file (TOML), and the plan a daemon runs: the file's keys with the command
//! line's flags over them. SIGHUP re-reads the file and makes the plan again.
//! `packaging/portguard.toml` documents every key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use portguard_common::{DEFAULT_PORT, DEFAULT_SOURCE_CAPACITY};

/// The largest config file read: the full example with comments is under 2 KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
use serde::Deserialize;

use crate::{
    guard::{AttachMode, Share},
    multiprog::Attach,
    settings::{
        Cidr, DEFAULT_V4_PREFIX, DEFAULT_V6_PREFIX, Direction, Mode, Protocol, Settings, Unjudged,
    },
};

/// The file's contents. Every key is optional; a missing key keeps the built-in default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Interfaces to guard.
    pub interfaces: Option<Vec<String>>,
    /// drop or count.
    pub mode: Option<Mode>,
    /// Guarded ports.
    #[serde(default, deserialize_with = "checked::ports")]
    pub ports: Option<Vec<u16>>,
    /// tcp and/or udp.
    pub protocols: Option<Vec<Protocol>>,
    /// dst, src or both.
    pub direction: Option<Direction>,
    /// Source prefixes counted but never dropped.
    pub allow: Option<Vec<Cidr>>,
    /// auto, native or generic.
    pub xdp_mode: Option<AttachMode>,
    /// auto, exclusive or multiprog: take the XDP hook alone, or share it through libxdp's
    /// dispatcher.
    pub attach: Option<Attach>,
    /// Run priority among the dispatcher's programs (lower runs first).
    pub priority: Option<u32>,
    /// Capacity of the per-source table.
    #[serde(default, deserialize_with = "checked::sources")]
    pub sources: Option<u32>,
    /// Leave the guard attached when portguard exits.
    pub persist: Option<bool>,
    /// drop or pass frames whose ports cannot be read (default: what the mode does).
    pub unjudged: Option<Unjudged>,
    /// Sources are counted per prefix of these lengths.
    #[serde(default, deserialize_with = "checked::v4_prefix")]
    pub v4_prefix: Option<u8>,
    #[serde(default, deserialize_with = "checked::v6_prefix")]
    pub v6_prefix: Option<u8>,
    #[serde(default)]
    pub output: Output,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub fingerprint: Fingerprint,
    #[serde(default)]
    pub capture: Capture,
}

/// `[fingerprint]`: what names the tools behind the probes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// Rule files read after the shipped table, in order.
    pub rules: Option<Vec<PathBuf>>,
    /// p0f's database: a path, "auto" (Debian's, when installed) or "off".
    pub p0f: Option<String>,
}

/// `[capture]`: the daemon's rotating capture of matched packets.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Where the files go; unset: no capture.
    pub directory: Option<PathBuf>,
    /// A file is rotated once it passes this many MiB.
    #[serde(default, deserialize_with = "checked::size_mib")]
    pub size_mib: Option<u64>,
    /// Rotated files kept beside the current one.
    pub files: Option<usize>,
    /// Packets kept of each new source; 0 with `all`.
    #[serde(default, deserialize_with = "checked::per_source")]
    pub per_source: Option<u16>,
    /// Every matched packet (up to `rate`), not only each new source's first ones.
    pub all: Option<bool>,
    /// Packets per second at most.
    #[serde(default, deserialize_with = "checked::rate")]
    pub rate: Option<u32>,
    /// Bytes kept of each packet.
    #[serde(default, deserialize_with = "checked::snaplen")]
    pub snaplen: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Seconds between counter updates.
    #[serde(default, deserialize_with = "checked::interval")]
    pub interval: Option<f64>,
    /// Sources shown per interface.
    pub top: Option<usize>,
    /// JSON lines instead of text.
    pub json: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address of the Prometheus endpoint ("off" disables it).
    #[serde(default, deserialize_with = "checked::listen")]
    pub listen: Option<String>,
    /// Per-source series exported for the top N sources only.
    pub top_sources: Option<usize>,
}

impl FileConfig {
    /// Reads and parses `path`. Errors are one line naming the file and the line.
    /// Reads and parses `path`. Only a regular file of at most MAX_CONFIG_BYTES is read: a
    /// FIFO would block the daemon (on start and on every SIGHUP), a huge file would cost its
    /// size in memory several times over.
    pub fn load(path: &Path) -> Result<FileConfig> {
        use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
        let cannot =
            |e: &dyn std::fmt::Display| anyhow!("cannot read config {}: {e}", path.display());
        // Non-blocking: opening a FIFO for reading would wait for a writer.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| cannot(&e))?;
        let m = f.metadata().map_err(|e| cannot(&e))?;
        if !m.is_file() {
            return Err(cannot(&"not a regular file"));
        }
        if m.len() > MAX_CONFIG_BYTES {
            return Err(cannot(&format!(
                "{} bytes, more than a config file needs ({MAX_CONFIG_BYTES} at most)",
                m.len()
            )));
        }
        let mut text = String::new();
        f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(|e| cannot(&e))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(cannot(&format!("more than {MAX_CONFIG_BYTES} bytes")));
        }
        FileConfig::parse(&text).map_err(|e| anyhow!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let c: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().replace('\n', " ");
            match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            }
        })?;
        Ok(c)
    }
}

/// What the command line said; unset flags leave the file's value (or the default) alone.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub ifaces: Vec<String>,
    pub mode: Option<Mode>,
    pub ports: Vec<u16>,
    pub direction: Option<Direction>,
    pub protocols: Vec<Protocol>,
    pub allow: Vec<Cidr>,
    pub xdp_mode: Option<AttachMode>,
    pub attach: Option<Attach>,
    pub priority: Option<u32>,
    pub sources: Option<u32>,
    pub admit_per_slice: Option<u32>,
    pub unjudged: Option<Unjudged>,
    pub v4_prefix: Option<u8>,
    pub v6_prefix: Option<u8>,
    pub interval: Option<f64>,
    pub top: Option<usize>,
    pub json: bool,
    pub persist: bool,
    pub detach_on_exit: bool,
    pub metrics: Option<SocketAddr>,
    pub no_metrics: bool,
    pub metrics_top: Option<usize>,
    pub rules: Vec<PathBuf>,
    pub p0f: Option<String>,
}

/// Where p0f's database comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum P0f {
    /// Debian's (`/etc/p0f/p0f.fp`) when it is installed, else none.
    Auto,
    Off,
    File(PathBuf),
}

impl P0f {
    fn parse(s: &str) -> P0f {
        match s {
            "auto" => P0f::Auto,
            "off" => P0f::Off,
            path => P0f::File(PathBuf::from(path)),
        }
    }
}

/// The daemon's rotating capture (`[capture]`).
#[derive(Clone, Debug, PartialEq)]
pub struct CapturePlan {
    pub directory: PathBuf,
    pub max_bytes: u64,
    pub files: usize,
    pub per_source: u16,
    pub all: bool,
    pub rate: u32,
    pub snaplen: u32,
}

/// Flags and config file merged, validated: what a daemon runs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ifaces: Vec<String>,
    pub settings: Settings,
    pub xdp_mode: AttachMode,
    /// How the XDP hook is taken (`attach`, `priority`).
    pub share: Share,
    pub sources: u32,
    /// The capacity was given (flag or file), not the default.
    pub sources_chosen: bool,
    pub interval: f64,
    pub top: usize,
    pub json: bool,
    /// Leave what this run attached in place when it ends.
    pub persist: bool,
    /// Detach on exit even a guard this run adopted (left in place by an earlier run), which
    /// otherwise stays.
    pub detach_on_exit: bool,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The address was given (flag or file), not the default.
    pub metrics_chosen: bool,
    pub metrics_top: usize,
    /// The network namespace the interfaces are in, when it has a name worth showing.
    pub netns: Option<String>,
    /// Rule files read after the shipped table, and p0f's database.
    pub rules: Vec<PathBuf>,
    pub p0f: P0f,
    /// The daemon's own capture, when configured.
    pub capture: Option<CapturePlan>,
}

impl Plan {
    /// Reads the config file named by the flags (if any) and merges the flags over it.
    pub fn load(flags: &Flags) -> Result<Plan> {
        let file = match &flags.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Plan::merge(flags, &file)
    }

    /// The flags over `file`.
    pub fn merge(flags: &Flags, file: &FileConfig) -> Result<Plan> {
        fn pick<T: Clone>(flag: &[T], file: &Option<Vec<T>>, default: Vec<T>) -> Vec<T> {
            if !flag.is_empty() { flag.to_vec() } else { file.clone().unwrap_or(default) }
        }
        let mut ifaces = pick(&flags.ifaces, &file.interfaces, Vec::new());
        // `--iface X --iface X` is one interface: the second would watch the first.
        let mut seen = std::collections::HashSet::new();
        ifaces.retain(|i| seen.insert(i.clone()));
        if ifaces.is_empty() {
            return Err(crate::error::usage(
                "no interface to guard: give --iface IFACE (or `interfaces` in the config file)",
            ));
        }
        let mut ports = pick(&flags.ports, &file.ports, vec![DEFAULT_PORT]);
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            bail!("no port to guard");
        }
        let mut protocols =
            pick(&flags.protocols, &file.protocols, vec![Protocol::Tcp, Protocol::Udp]);
        protocols.sort_by_key(|p| *p as u8);
        protocols.dedup();
        if protocols.is_empty() {
            bail!("no protocol to guard");
        }
        let mut allow = pick(&flags.allow, &file.allow, Vec::new());
        allow.dedup();
        let interval = flags.interval.or(file.output.interval).unwrap_or(1.0);
        crate::ranges::interval(interval).map_err(|e| anyhow!("interval: {e}"))?;
        Ok(Plan {
            ifaces,
            settings: Settings {
                mode: flags.mode.or(file.mode).unwrap_or(Mode::Drop),
                ports,
                protocols,
                direction: flags.direction.or(file.direction).unwrap_or(Direction::Dst),
                allow,
                admit_per_slice: flags.admit_per_slice,
                unjudged: flags.unjudged.or(file.unjudged),
                v4_prefix: flags.v4_prefix.or(file.v4_prefix).unwrap_or(DEFAULT_V4_PREFIX),
                v6_prefix: flags.v6_prefix.or(file.v6_prefix).unwrap_or(DEFAULT_V6_PREFIX),
            },
            xdp_mode: flags.xdp_mode.or(file.xdp_mode).unwrap_or(AttachMode::Auto),
            share: Share {
                attach: flags.attach.or(file.attach).unwrap_or(Attach::Auto),
                priority: flags.priority.or(file.priority),
            },
            sources: flags.sources.or(file.sources).unwrap_or(DEFAULT_SOURCE_CAPACITY),
            sources_chosen: flags.sources.is_some() || file.sources.is_some(),
            interval,
            top: flags.top.or(file.output.top).unwrap_or(10),
            json: flags.json || file.output.json.unwrap_or(false),
            persist: flags.persist || file.persist.unwrap_or(false),
            detach_on_exit: flags.detach_on_exit,
            metrics: if flags.no_metrics {
                None
            } else if let Some(a) = flags.metrics {
                Some(a)
            } else {
                match file.metrics.listen.as_deref() {
                    Some("off") => None,
                    Some(a) => Some(a.parse().map_err(|_| {
                        anyhow!("metrics.listen: '{a}' is not an address like 127.0.0.1:9745 (or \"off\")")
                    })?),
                    None => Some(crate::metrics::DEFAULT_LISTEN.parse()?),
                }
            },
            metrics_chosen: flags.metrics.is_some() || file.metrics.listen.is_some(),
            metrics_top: flags.metrics_top.or(file.metrics.top_sources).unwrap_or(10),
            netns: None,
            rules: pick(&flags.rules, &file.fingerprint.rules, Vec::new()),
            p0f: P0f::parse(
                flags.p0f.as_deref().or(file.fingerprint.p0f.as_deref()).unwrap_or("auto"),
            ),
            capture: capture_plan(&file.capture),
        })
    }
}

/// `[capture]` with its defaults, when it names a directory.
fn capture_plan(c: &Capture) -> Option<CapturePlan> {
    let all = c.all.unwrap_or(false);
    Some(CapturePlan {
        directory: c.directory.clone()?,
        max_bytes: c.size_mib.unwrap_or(crate::capture::DEFAULT_SIZE_MIB) << 20,
        files: c.files.unwrap_or(crate::capture::DEFAULT_FILES),
        per_source: c.per_source.unwrap_or(crate::capture::DEFAULT_PER_SOURCE),
        all,
        rate: c.rate.unwrap_or(crate::capture::DEFAULT_RATE),
        snaplen: c.snaplen.unwrap_or(crate::capture::MAX_SNAPLEN),
    })
}

/// Values checked while the file is parsed, so that an invalid one is reported at its line like
/// a syntax error; the ranges are the flags' own (`ranges`).
mod checked {
    use serde::{Deserializer, de::Error as _};

    use crate::ranges;

    fn check<'de, D: Deserializer<'de>, T: serde::Deserialize<'de>>(
        d: D,
        f: impl Fn(&T) -> Result<(), String>,
    ) -> Result<Option<T>, D::Error> {
        let v = T::deserialize(d)?;
        f(&v).map_err(D::Error::custom)?;
        Ok(Some(v))
    }

    pub fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
        check(d, |v: &Vec<u16>| v.iter().try_for_each(|p| ranges::port(*p).map(drop)))
    }

    pub fn sources<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        check(d, |v: &u32| ranges::sources(*v).map(drop))
    }

    pub fn v4_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        check(d, |v: &u8| ranges::prefix(*v, false).map(drop))
    }

    pub fn v6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        check(d, |v: &u8| ranges::prefix(*v, true).map(drop))
    }

    pub fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        check(d, |v: &f64| ranges::interval(*v).map(drop).map_err(|e| format!("interval: {e}")))
    }

    pub fn size_mib<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        check(d, |v: &u64| ranges::capture_size_mib(*v).map(drop))
    }

    pub fn per_source<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        check(d, |v: &u16| ranges::per_source(*v).map(drop))
    }

    pub fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        check(d, |v: &u32| ranges::capture_rate(*v).map(drop))
    }

    pub fn snaplen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        check(d, |v: &u32| ranges::snaplen(*v).map(drop))
    }

    pub fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check(d, |v: &String| match v.as_str() {
            "off" => Ok(()),
            a => a
                .parse::<std::net::SocketAddr>()
                .map(drop)
                .map_err(|_| format!("'{a}' is not an address like 127.0.0.1:9745 (or \"off\")")),
        })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = FileConfig::parse(
            r#"
interfaces = ["eth1", "ppp0"]
mode = "count"
ports = [2745, 3127]
protocols = ["tcp"]
direction = "both"
allow = ["198.18.0.0/15", "2001:db8::/32"]
xdp_mode = "generic"
attach = "multiprog"
priority = 20
sources = 1024
persist = true
[output]
interval = 2.5
top = 5
json = true
[metrics]
listen = "127.0.0.1:9745"
top_sources = 20
"#,
        )
        .unwrap();
        assert_eq!(c.interfaces.unwrap(), ["eth1", "ppp0"]);
        assert_eq!(c.mode, Some(Mode::Count));
        assert_eq!(c.ports.unwrap(), [2745, 3127]);
        assert_eq!(c.protocols.unwrap(), [Protocol::Tcp]);
        assert_eq!(c.direction, Some(Direction::Both));
        assert_eq!(c.allow.unwrap()[1].to_string(), "2001:db8::/32");
        assert_eq!(c.xdp_mode, Some(AttachMode::Generic));
        assert_eq!((c.attach, c.priority), (Some(Attach::Multiprog), Some(20)));
        assert_eq!(c.output.interval, Some(2.5));
        assert_eq!(c.metrics.top_sources, Some(20));
    }

    #[test]
    fn the_shipped_example_parses_to_the_defaults() {
        let c = FileConfig::parse(include_str!("../../packaging/portguard.toml")).unwrap();
        assert_eq!(c.interfaces.unwrap(), ["eth1"]);
        assert_eq!(c.mode, Some(Mode::Drop));
        assert_eq!(c.ports.unwrap(), [portguard_common::DEFAULT_PORT]);
        assert_eq!(c.sources, Some(portguard_common::DEFAULT_SOURCE_CAPACITY));
        assert_eq!((c.attach, c.priority), (Some(Attach::Auto), None));
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9745"));
    }

    #[test]
    fn fingerprint_and_capture_sections() {
        let c = FileConfig::parse(
            "[fingerprint]\nrules = [\"/etc/portguard/local.fp\"]\np0f = \"off\"\n\
             [capture]\ndirectory = \"/var/lib/portguard/capture\"\nper_source = 3\n",
        )
        .unwrap();
        let flags = Flags { ifaces: vec!["eth1".into()], ..Flags::default() };
        let p = Plan::merge(&flags, &c).unwrap();
        assert_eq!(p.rules, [PathBuf::from("/etc/portguard/local.fp")]);
        assert_eq!(p.p0f, P0f::Off);
        let cap = p.capture.unwrap();
        assert_eq!((cap.per_source, cap.files, cap.rate, cap.snaplen), (3, 5, 1000, 256));
        assert_eq!(cap.max_bytes, 64 << 20);
        // Flags win; the shipped example captures nothing and asks p0f for OS labels.
        let p = Plan::merge(&Flags { p0f: Some("/tmp/p0f.fp".into()), ..flags.clone() }, &c);
        assert_eq!(p.unwrap().p0f, P0f::File("/tmp/p0f.fp".into()));
        let shipped = FileConfig::parse(include_str!("../../packaging/portguard.toml")).unwrap();
        let p = Plan::merge(&flags, &shipped).unwrap();
        assert_eq!((p.capture, p.p0f), (None, P0f::Auto));
        let e = FileConfig::parse("[capture]\nper_source = 0\n").unwrap_err();
        assert!(e.starts_with("line 2: a capture keeps at least 1 packet"), "{e}");
        let e = FileConfig::parse("[capture]\n\nsnaplen = 9000\n").unwrap_err();
        assert!(e.starts_with("line 3: 9000: a capture keeps 14 to 256 bytes"), "{e}");
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(FileConfig::parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn errors_name_the_line() {
        let e = FileConfig::parse("mode = \"drop\"\n\nmdoe = \"count\"\n").unwrap_err();
        assert!(e.starts_with("line 3: unknown field `mdoe`"), "{e}");
        let e = FileConfig::parse("ports = [2745, 70000]\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let e = FileConfig::parse("\nallow = [\"10.0.0.0/99\"]\n").unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("prefix length"), "{e}");
        let e = FileConfig::parse("mode = \"reject\"").unwrap_err();
        assert!(e.contains("unknown variant `reject`"), "{e}");
        // Invalid values are named at their line too, not only syntax and unknown keys.
        let e = FileConfig::parse("mode = \"drop\"\nports = [2745, 0]\n").unwrap_err();
        assert!(e.starts_with("line 2: port 0 is not a valid port"), "{e}");
        let e = FileConfig::parse("[output]\ntop = 5\ninterval = 0\n").unwrap_err();
        assert!(e.starts_with("line 3: interval: 0 is not between 0.05 and 3600"), "{e}");
        let e = FileConfig::parse("\nsources = 0\n").unwrap_err();
        assert!(e.starts_with("line 2: 0: the source table holds 256 to 1048576 entries"), "{e}");
        let e = FileConfig::parse("[metrics]\nlisten = \"9745\"\n").unwrap_err();
        assert!(e.starts_with("line 2: '9745' is not an address"), "{e}");
        assert!(!FileConfig::parse("[output\ninterval=1").unwrap_err().contains('\n'));
    }
}
