//! Debian kernels for the guests: downloaded with a private apt configuration (its own sources
//! list, state and cache under ~/.cache/portguard/kernels/apt, so the host's apt setup is
//! untouched), extracted with `dpkg-deb -x` (never installed), and cached between runs.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::Arch;
use crate::util::describe;

/// The kernel series the lab boots, and the Debian suites that ship each, newest first: a
/// Debian 12 router runs the security suite's 6.1 (bookworm's point release lags behind).
pub const SERIES: &[(&str, &[&str])] = &[
    ("5.10", &["bullseye-security", "bullseye"]),
    ("6.1", &["bookworm-security", "bookworm"]),
    ("6.12", &["bookworm-backports"]),
];

/// The suites the private apt configuration knows: (archive, suite).
const SUITES: &[(&str, &str)] = &[
    ("debian", "bullseye"),
    ("debian-security", "bullseye-security"),
    ("debian", "bookworm"),
    ("debian-security", "bookworm-security"),
    ("debian", "bookworm-backports"),
];

/// An extracted kernel package.
pub struct Kernel {
    /// "6.1", as asked for.
    pub series: String,
    /// The package and its version, e.g. linux-image-6.1.0-50-amd64 6.1.176-1.
    pub package: String,
    pub version: String,
    /// `uname -r` of the guest: the directory under lib/modules.
    pub release: String,
    /// The extracted package.
    pub root: PathBuf,
}

pub fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/portguard/kernels"))
}

/// The suites to take a kernel from, newest first: `SERIES` (e.g. 6.1) or `SERIES@SUITE`
/// (e.g. 6.1@bookworm, the point release); a one-line error for anything else.
pub fn suites(spec: &str) -> Result<Vec<&'static str>> {
    let (series, suite) = match spec.split_once('@') {
        Some((s, suite)) => (s, Some(suite)),
        None => (spec, None),
    };
    let suites =
        SERIES.iter().find(|(s, _)| *s == series).map(|(_, suites)| *suites).with_context(
            || {
                let known: Vec<&str> = SERIES.iter().map(|(s, _)| *s).collect();
                format!(
                    "unknown kernel '{spec}' (known: {}; SERIES@SUITE picks a suite)",
                    known.join(", ")
                )
            },
        )?;
    match suite {
        None => Ok(suites.to_vec()),
        Some(want) => {
            suites.iter().find(|s| **s == want).map(|s| vec![*s]).with_context(|| {
                format!("{series} comes from {}, not '{want}'", suites.join(" or "))
            })
        }
    }
}

/// The kernel of `series` for `arch`, downloaded and extracted unless the cache has it.
/// `refresh` asks apt again for the newest build of the series.
pub fn fetch(series: &str, arch: Arch, refresh: bool) -> Result<Kernel> {
    let suites = suites(series)?;
    let cache = cache_dir()?;
    let marker = cache.join(format!("{}-{}.resolved", series.replace('@', "-"), arch.deb()));
    if !refresh && let Ok(s) = fs::read_to_string(&marker) {
        let mut w = s.split_whitespace();
        if let (Some(package), Some(version)) = (w.next(), w.next()) {
            let root = cache.join(format!("{package}_{version}"));
            if root.join("boot").is_dir() {
                return open(series, package, version, root);
            }
        }
    }
    let apt = Apt::new(&cache.join("apt"))?;
    apt.update()?;
    // The metapackage (linux-image-amd64) of the suite names the versioned image package.
    let meta = format!("linux-image-{}", arch.flavour());
    let version = suites
        .iter()
        .find_map(|s| apt.version_in(&meta, arch, s).ok())
        .with_context(|| format!("no suite of {} has {meta}", suites.join(", ")))?;
    let show = apt.output(&["show", &format!("{meta}:{}={version}", arch.deb())], "apt-cache")?;
    let package = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .and_then(|d| d.split([' ', ',']).find(|p| p.starts_with("linux-image-")))
        .with_context(|| format!("{meta} {version} depends on no linux-image package"))?
        .to_string();
    let deb = apt.download(&package, arch, &version, &cache.join("debs"))?;
    let root = cache.join(format!("{package}_{version}"));
    extract(&deb, &root)?;
    fs::write(&marker, format!("{package} {version}\n"))?;
    open(series, &package, &version, root)
}

fn open(series: &str, package: &str, version: &str, root: PathBuf) -> Result<Kernel> {
    let modules = modules_dir(&root)?;
    let release =
        modules.file_name().and_then(|n| n.to_str()).context("odd modules directory")?.to_string();
    Ok(Kernel {
        series: series.into(),
        package: package.into(),
        version: version.into(),
        release,
        root,
    })
}

/// lib/modules/<release> (usr/lib/modules in merged-/usr packages).
fn modules_dir(root: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(mut it) = fs::read_dir(root.join(base))
            && let Some(Ok(e)) = it.next()
        {
            return Ok(e.path());
        }
    }
    bail!("{} has no lib/modules/<release>", root.display())
}

fn extract(deb: &Path, root: &Path) -> Result<()> {
    let tmp = root.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root)?;
    Ok(())
}

impl Kernel {
    /// The compressed kernel image (bzImage on x86_64, a gzip'ed Image on arm64; QEMU takes
    /// both with -kernel).
    pub fn image(&self) -> Result<PathBuf> {
        let p = self.root.join(format!("boot/vmlinuz-{}", self.release));
        if !p.exists() {
            bail!("{} has no kernel image", self.root.display());
        }
        Ok(p)
    }

    /// The modules that provide `wanted` (names as in `lsmod`; "?name" when optional), with
    /// their dependencies first,
    /// leaving out what the kernel has built in. Compressed modules (.ko.xz, .ko.zst) are
    /// decompressed on the host: busybox's insmod takes plain ELF only.
    pub fn modules(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let dir = modules_dir(&self.root)?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let builtin: BTreeSet<String> = builtin
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(|f| norm(f.trim_end_matches(".ko")))
            .collect();
        let mut files = Vec::new();
        walk(&dir.join("kernel"), &mut files)?;
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            // "?name": only if the kernel has it (as a module or built in).
            let (name, optional) = match w.strip_prefix('?') {
                Some(n) => (norm(n), true),
                None => (norm(w), false),
            };
            if optional
                && !builtin.contains(&name)
                && !files.iter().any(|p| module_name(p).as_deref() == Some(&name))
            {
                continue;
            }
            self.visit(&name, &builtin, &files, &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        builtin: &BTreeSet<String>,
        files: &[PathBuf],
        seen: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
        depth: usize,
    ) -> Result<()> {
        if depth > 16 {
            bail!("module dependencies of {name} nest too deep");
        }
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let file = files
            .iter()
            .find(|p| module_name(p).as_deref() == Some(name))
            .with_context(|| format!("kernel {} has no module {name}", self.release))?;
        let data = read_module(file)?;
        for dep in modinfo(&data, "depends").split(',').filter(|d| !d.is_empty()) {
            self.visit(&norm(dep), builtin, files, seen, order, depth + 1)?;
        }
        order.push(Module { name: name.to_string(), data });
        Ok(())
    }
}

/// A kernel module, ready for insmod.
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// Module names treat '-' and '_' alike.
fn norm(s: &str) -> String {
    s.replace('-', "_")
}

fn module_name(p: &Path) -> Option<String> {
    let f = p.file_name()?.to_str()?;
    let stem = f
        .strip_suffix(".ko")
        .or_else(|| f.strip_suffix(".ko.xz"))
        .or_else(|| f.strip_suffix(".ko.zst"))?;
    Some(norm(stem))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if module_name(&p).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

fn read_module(p: &Path) -> Result<Vec<u8>> {
    let name = p.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(p).with_context(|| format!("reading {}", p.display()));
    };
    let o = Command::new(tool).args(["-dc"]).arg(p).output()?;
    if !o.status.success() {
        bail!("{tool} -dc {} failed", p.display());
    }
    Ok(o.stdout)
}

/// One field of a module's .modinfo section: NUL-separated `key=value` strings. A plain scan
/// is enough; the strings appear nowhere else in the file.
pub fn modinfo(data: &[u8], key: &str) -> String {
    let pat = format!("\0{key}=");
    let pat = pat.as_bytes();
    data.windows(pat.len())
        .position(|w| w == pat)
        .map(|i| {
            let v = &data[i + pat.len()..];
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
        .unwrap_or_default()
}

/// apt-get and apt-cache with a configuration of their own (APT_CONFIG): the host's sources,
/// state, cache and apt.conf.d are neither read nor written.
pub struct Apt {
    conf: PathBuf,
}

impl Apt {
    pub fn new(dir: &Path) -> Result<Apt> {
        for d in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(d))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut sources = String::new();
        for (archive, s) in SUITES {
            sources.push_str(&format!(
                "deb [signed-by={keyring}] http://deb.debian.org/{archive} {s} main\n"
            ));
        }
        fs::write(dir.join("etc/sources.list"), sources)?;
        let d = dir.display();
        let conf = dir.join("apt.conf");
        fs::write(
            &conf,
            format!(
                "Dir::Etc \"{d}/etc\";\nDir::Etc::SourceList \"{d}/etc/sources.list\";\n\
                 Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\n\
                 Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
                 Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
                 Dir::State \"{d}/state\";\nDir::State::status \"{d}/state/status\";\n\
                 Dir::Cache \"{d}/cache\";\nAPT::Architecture \"amd64\";\n\
                 APT::Architectures {{ \"amd64\"; \"arm64\"; }};\nAcquire::Languages \"none\";\n\
                 Acquire::Retries \"3\";\nAPT::Sandbox::User \"root\";\n"
            ),
        )?;
        if !dir.join("state/status").exists() {
            fs::write(dir.join("state/status"), "")?;
        }
        Ok(Apt { conf })
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("APT_CONFIG", &self.conf);
        c
    }

    fn output(&self, args: &[&str], tool: &str) -> Result<String> {
        let mut c = self.cmd(tool);
        c.args(args);
        let o = c.output().with_context(|| format!("spawning {}", describe(&c)))?;
        if !o.status.success() {
            bail!("{} failed: {}", describe(&c), String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn update(&self) -> Result<()> {
        let names: Vec<&str> = SUITES.iter().map(|(_, s)| *s).collect();
        eprintln!("vmlab: apt-get update (private sources: {})", names.join(", "));
        self.output(&["update", "-qq"], "apt-get").map(|_| ())
    }

    /// The version of `package` that `suite` ships for `arch`.
    pub fn version_in(&self, package: &str, arch: Arch, suite: &str) -> Result<String> {
        let m = self.output(&["madison", &format!("{package}:{}", arch.deb())], "apt-cache")?;
        // "linux-image-amd64 | 6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages"
        m.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').map(str::trim).collect();
                (f.len() == 3 && f[2].split_whitespace().nth(1) == Some(&format!("{suite}/main")))
                    .then(|| f[1].to_string())
            })
            .next()
            .with_context(|| format!("{suite} has no {package} for {}", arch.deb()))
    }

    /// Downloads one package into `dir` (unless it is there) and returns the .deb.
    pub fn download(
        &self,
        package: &str,
        arch: Arch,
        version: &str,
        dir: &Path,
    ) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let file_version = version.replace(':', "%3a");
        let deb = dir.join(format!("{package}_{file_version}_{}.deb", arch.deb()));
        if deb.exists() {
            return Ok(deb);
        }
        eprintln!("vmlab: downloading {package} {version} ({})", arch.deb());
        let mut c = self.cmd("apt-get");
        c.args(["download", "-qq", &format!("{package}:{}={version}", arch.deb())])
            .current_dir(dir);
        run(&mut c)?;
        if !deb.exists() {
            bail!("apt-get download left no {}", deb.display());
        }
        Ok(deb)
    }

    /// The newest version of `package` for `arch` in `suite`, downloaded and extracted into
    /// `dir` (kept between runs).
    pub fn unpack(&self, package: &str, arch: Arch, suite: &str, dir: &Path) -> Result<PathBuf> {
        let version = self.version_in(package, arch, suite)?;
        let deb = self.download(package, arch, &version, &dir.join("debs"))?;
        let root = dir.join(format!("{package}_{}_{}", version.replace(':', "%3a"), arch.deb()));
        if !root.exists() {
            extract(&deb, &root)?;
        }
        Ok(root)
    }
}

fn run(c: &mut Command) -> Result<()> {
    let st = c.status().with_context(|| format!("spawning {}", describe(c)))?;
    if !st.success() {
        bail!("{} failed: {st}", describe(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_fields() {
        let data = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_net\0";
        assert_eq!(modinfo(data, "depends"), "virtio,virtio_ring");
        assert_eq!(modinfo(data, "name"), "virtio_net");
        assert_eq!(modinfo(data, "vermagic"), "");
    }

    #[test]
    fn unknown_series_is_one_line() {
        let e = suites("4.19").unwrap_err().to_string();
        assert_eq!(e, "unknown kernel '4.19' (known: 5.10, 6.1, 6.12; SERIES@SUITE picks a suite)");
        assert_eq!(suites("6.1@bookworm").unwrap(), ["bookworm"]);
        assert_eq!(
            suites("6.1@trixie").unwrap_err().to_string(),
            "6.1 comes from bookworm-security or bookworm, not 'trixie'"
        );
    }
}
