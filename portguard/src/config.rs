//! The configuration file (TOML). Flags given on the command line override it; SIGHUP re-reads
//! it. `packaging/portguard.toml` documents every key.

use std::path::Path;

use anyhow::{Result, anyhow};
use serde::Deserialize;

use crate::{
    guard::AttachMode,
    settings::{Cidr, Direction, Mode, Protocol},
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
    pub ports: Option<Vec<u16>>,
    /// tcp and/or udp.
    pub protocols: Option<Vec<Protocol>>,
    /// dst, src or both.
    pub direction: Option<Direction>,
    /// Source prefixes counted but never dropped.
    pub allow: Option<Vec<Cidr>>,
    /// auto, native or generic.
    pub xdp_mode: Option<AttachMode>,
    /// Capacity of the per-source table.
    pub sources: Option<u32>,
    /// Leave the guard attached when portguard exits.
    pub persist: Option<bool>,
    #[serde(default)]
    pub output: Output,
    #[serde(default)]
    pub metrics: Metrics,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Seconds between counter updates.
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
    pub listen: Option<String>,
    /// Per-source series exported for the top N sources only.
    pub top_sources: Option<usize>,
}

impl FileConfig {
    /// Reads and parses `path`. Errors are one line naming the file and the line.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read config {}: {e}", path.display()))?;
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
        if let Some(p) = c.ports.as_ref().and_then(|p| p.iter().find(|p| **p == 0)) {
            return Err(format!("port {p} is not a valid port (1..=65535)"));
        }
        if c.sources == Some(0) {
            return Err("sources must be at least 1".into());
        }
        if let Some(i) = c.output.interval
            && !(0.05..=3600.0).contains(&i)
        {
            return Err("output.interval must be between 0.05 and 3600 seconds".into());
        }
        Ok(c)
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
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9745"));
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
        assert!(FileConfig::parse("ports = [0]").unwrap_err().contains("port 0"));
        assert!(!FileConfig::parse("[output\ninterval=1").unwrap_err().contains('\n'));
    }
}
