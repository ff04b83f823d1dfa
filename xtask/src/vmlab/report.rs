//! Reading what the guest reported (portguard's `stats --json` and `status --json`, the
//! runner's counts) and checking it: every check is recorded, and a run fails with all its
//! mismatches listed at once.

use std::{
    collections::BTreeMap,
    fmt::{Debug, Display},
    io::Write as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// One interface of `portguard stats --json`.
#[derive(Debug, Default)]
pub struct Stats {
    pub xdp_mode: String,
    pub mode: String,
    pub totals: BTreeMap<String, u64>,
    pub sources_tracked: u64,
    pub sources: BTreeMap<String, Source>,
}

#[derive(Debug, Default, Clone)]
pub struct Source {
    pub packets: u64,
    pub bytes: u64,
    pub tcp_syns: u64,
    pub protocols: Vec<String>,
    pub direction: String,
}

fn iface<'a>(v: &'a Value, iface: &str) -> Result<&'a Value> {
    v["interfaces"]
        .as_array()
        .context("no interfaces array")?
        .iter()
        .find(|i| i["iface"] == iface)
        .with_context(|| format!("{iface} is not guarded"))
}

pub fn stats(json: &str, name: &str) -> Result<Stats> {
    let v: Value = serde_json::from_str(json).with_context(|| format!("stats --json: {json}"))?;
    let i = iface(&v, name)?;
    let totals = i["totals"]
        .as_object()
        .context("no totals")?
        .iter()
        .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
        .collect();
    let mut sources = BTreeMap::new();
    for s in i["sources"].as_array().context("no sources")? {
        let addr = s["address"].as_str().context("a source without an address")?.to_string();
        sources.insert(
            addr,
            Source {
                packets: s["packets"].as_u64().unwrap_or(0),
                bytes: s["bytes"].as_u64().unwrap_or(0),
                tcp_syns: s["tcp_syns"].as_u64().unwrap_or(0),
                protocols: s["protocols"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                direction: s["direction"].as_str().unwrap_or("").to_string(),
            },
        );
    }
    Ok(Stats {
        xdp_mode: i["xdp_mode"].as_str().unwrap_or("").to_string(),
        mode: i["mode"].as_str().unwrap_or("").to_string(),
        totals,
        sources_tracked: i["sources_tracked"].as_u64().unwrap_or(0),
        sources,
    })
}

/// One interface of `portguard status --json`, as a JSON value; None when it is not guarded.
pub fn status(json: &str, name: &str) -> Result<Option<Value>> {
    let v: Value = serde_json::from_str(json).with_context(|| format!("status --json: {json}"))?;
    Ok(iface(&v, name).ok().cloned())
}

/// Checks of one run, and the numbers it measured.
#[derive(Default)]
pub struct Checks {
    pub label: String,
    pub passed: u32,
    pub failed: Vec<String>,
    /// Measurements, in order: printed as `key=value` and written to the results file.
    pub values: Vec<(String, String)>,
}

impl Checks {
    pub fn new(label: &str) -> Checks {
        Checks { label: label.into(), ..Default::default() }
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got == want {
            self.passed += 1;
        } else {
            self.failed.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    pub fn that(&mut self, what: &str, ok: bool, detail: impl Display) {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(format!("{what}: {detail}"));
        }
    }

    pub fn value(&mut self, key: &str, v: impl Display) {
        let v = v.to_string();
        eprintln!("vmlab: [{}] {key}={v}", self.label);
        self.values.push((key.into(), v));
    }

    /// Appends the measurements and the verdict to `file` (`label key=value ...` lines).
    pub fn write(&self, file: &Path) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
        let kv: Vec<String> = self.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            f,
            "{} passed={} failed={} {}",
            self.label,
            self.passed,
            self.failed.len(),
            kv.join(" ")
        )?;
        Ok(())
    }

    pub fn verdict(&self) -> Result<()> {
        if self.failed.is_empty() {
            eprintln!("vmlab: [{}] all {} checks passed", self.label, self.passed);
            return Ok(());
        }
        bail!(
            "[{}] {} of {} checks failed:\n  {}",
            self.label,
            self.failed.len(),
            self.passed as usize + self.failed.len(),
            self.failed.join("\n  ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json() {
        let j = r#"{"version":1,"interfaces":[{"iface":"eth0","xdp_mode":"native","mode":"drop",
          "totals":{"seen":10,"matched":4,"dropped":4},"sources_tracked":1,
          "sources":[{"address":"198.18.77.11","packets":4,"bytes":228,"tcp_syns":2,
          "protocols":["tcp","udp"],"direction":"probing"}]}]}"#;
        let s = stats(j, "eth0").unwrap();
        assert_eq!(s.totals["dropped"], 4);
        assert_eq!(s.sources["198.18.77.11"].tcp_syns, 2);
        assert_eq!(s.sources["198.18.77.11"].protocols, ["tcp", "udp"]);
        assert!(stats(j, "eth1").is_err());
    }
}
