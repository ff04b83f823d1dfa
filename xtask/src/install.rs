//! `cargo xtask install`: the binary, the systemd unit, the default config, the man page and
//! shell completions, the shipped fingerprint rule table (for reference: it is compiled in),
//! where a Debian-like router expects them. `--destdir` stages into a
//! directory (for packaging); the config file is never overwritten.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, root, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Installation prefix (the binary goes to PREFIX/bin).
    #[arg(long, default_value = "/usr")]
    prefix: PathBuf,
    /// Stage everything under this directory instead of /.
    #[arg(long)]
    destdir: Option<PathBuf>,
    /// Install this binary instead of building target/release/portguard.
    #[arg(long)]
    binary: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let binary = match args.binary {
        Some(b) => b,
        None => {
            crate::setup::run()?;
            sh(cargo().args(["build", "--release", "--package", "portguard"]))?;
            root().join("target/release/portguard")
        }
    };
    let dest = args.destdir.unwrap_or_else(|| PathBuf::from("/"));
    let files = install(&binary, &args.prefix, &dest)?;
    for f in files {
        eprintln!("installed {}", f.display());
    }
    Ok(())
}

/// `dest` joined with an absolute path.
fn under(dest: &Path, p: &Path) -> PathBuf {
    dest.join(p.strip_prefix("/").unwrap_or(p))
}

fn write(path: PathBuf, contents: &[u8], mode: u32, out: &mut Vec<PathBuf>) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    out.push(path);
    Ok(())
}

fn generated(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let o = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !o.status.success() {
        bail!("{} {} failed", binary.display(), args.join(" "));
    }
    Ok(o.stdout)
}

/// Installs into `dest` with `prefix`; returns what it wrote.
pub fn install(binary: &Path, prefix: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let bin = prefix.join("bin/portguard");
    write(under(dest, &bin), &fs::read(binary).context("reading the binary")?, 0o755, &mut out)?;
    let unit = fs::read_to_string(root().join("packaging/portguard.service"))?
        .replace("/usr/bin/portguard", &bin.display().to_string());
    // Units live under /usr/lib/systemd even for other prefixes: that is where systemd looks.
    let unit_dir = if prefix == Path::new("/usr") {
        prefix.join("lib/systemd/system")
    } else {
        PathBuf::from("/etc/systemd/system")
    };
    write(under(dest, &unit_dir.join("portguard.service")), unit.as_bytes(), 0o644, &mut out)?;
    let config = under(dest, Path::new("/etc/portguard/portguard.toml"));
    if !config.exists() {
        write(config, &fs::read(root().join("packaging/portguard.toml"))?, 0o640, &mut out)?;
    }
    let share = prefix.join("share");
    // Every page: portguard(1) and one per verb, as `portguard man --dir` writes them.
    let pages = std::env::temp_dir().join(format!("portguard-man-{}", std::process::id()));
    let _ = fs::remove_dir_all(&pages);
    generated(binary, &["man", "--dir", &pages.display().to_string()])?;
    let mut names: Vec<_> =
        fs::read_dir(&pages)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let page = fs::read(pages.join(&name))?;
        write(under(dest, &share.join("man/man1").join(&name)), &page, 0o644, &mut out)?;
    }
    fs::remove_dir_all(&pages)?;
    for (shell, path) in [
        ("bash", "bash-completion/completions/portguard"),
        ("zsh", "zsh/vendor-completions/_portguard"),
        ("fish", "fish/vendor_completions.d/portguard.fish"),
    ] {
        write(
            under(dest, &share.join(path)),
            &generated(binary, &["completions", shell])?,
            0o644,
            &mut out,
        )?;
    }
    write(
        under(dest, &share.join("doc/portguard/README.md")),
        &fs::read(root().join("README.md"))?,
        0o644,
        &mut out,
    )?;
    // The rule table portguard has compiled in: the format, and the rules a local file adds to.
    write(
        under(dest, &share.join("doc/portguard/portguard.fp")),
        &fs::read(root().join("packaging/portguard.fp"))?,
        0o644,
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real binary, built by `cargo test --workspace` before any test runs.
    #[test]
    fn stages_a_complete_installation() {
        let binary = root().join("target/debug/portguard");
        assert!(binary.exists(), "build portguard first (cargo test --workspace does)");
        let dest = std::env::temp_dir().join(format!("pg-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dest);
        let files = install(&binary, Path::new("/usr"), &dest).unwrap();
        // Binary, unit, config, README, the rule table, 3 completions, and 12 man pages.
        assert_eq!(files.len(), 20);
        let unit =
            fs::read_to_string(dest.join("usr/lib/systemd/system/portguard.service")).unwrap();
        assert!(
            unit.contains(
                "ExecStart=/usr/bin/portguard run --config /etc/portguard/portguard.toml"
            )
        );
        let mode = fs::metadata(dest.join("usr/bin/portguard")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let man = fs::read_to_string(dest.join("usr/share/man/man1/portguard.1")).unwrap();
        assert!(man.contains(".TH portguard") && man.contains("EXIT STATUS"));
        for verb in ["run", "stats", "status", "set", "detach", "check", "top", "capture"] {
            let page = dest.join(format!("usr/share/man/man1/portguard-{verb}.1"));
            assert!(page.exists(), "{}", page.display());
        }
        assert!(
            fs::read_to_string(dest.join("usr/share/bash-completion/completions/portguard"))
                .unwrap()
                .contains("--iface")
        );
        // The config is never overwritten.
        fs::write(dest.join("etc/portguard/portguard.toml"), "mode = \"count\"\n").unwrap();
        let again = install(&binary, Path::new("/usr"), &dest).unwrap();
        assert_eq!(again.len(), 19);
        assert_eq!(
            fs::read_to_string(dest.join("etc/portguard/portguard.toml")).unwrap(),
            "mode = \"count\"\n"
        );
        // Another prefix: the unit points at it.
        let files = install(&binary, Path::new("/usr/local"), &dest).unwrap();
        assert!(files.iter().any(|f| f.ends_with("usr/local/bin/portguard")));
        let unit = fs::read_to_string(dest.join("etc/systemd/system/portguard.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/portguard run"));
        fs::remove_dir_all(&dest).unwrap();
    }
}
