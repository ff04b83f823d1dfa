//! `portguard completions SHELL` and `portguard man`: generated from the clap definitions, so
//! they never drift from the real flags.

use std::process::ExitCode;

use anyhow::Result;

/// Print shell completions (bash, zsh, fish, elvish, powershell).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run<C: clap::CommandFactory>(args: Args) -> Result<ExitCode> {
    let mut cmd = C::command();
    clap_complete::generate(args.shell, &mut cmd, "portguard", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Write the man pages: portguard(1) with exit codes, files and environment, and one page per
/// verb (portguard-run(1), ...).
#[derive(clap::Args, Clone, Debug)]
pub struct ManArgs {
    /// Write every page into this directory (default: print portguard(1) on stdout).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// What every verb shares, written once on the top page.
const TOP_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
A runtime failure: missing privileges, an unknown interface, no XDP in the requested mode, a
malformed config file, an interface that is not guarded.
.TP
.B 2
A malformed or contradictory command line (the error names the verb's \fB\-\-help\fR).
.TP
.B 3
\fBrun\fR only: every guard it held was detached on request (\fBportguard detach\fR).
.PP
\fBportguard check\fR answers with its code: 0 when nothing uses a guarded port, 1 when
something does, 2 when the check could not run.
.SH FILES
.TP
.I /etc/portguard/portguard.toml
The configuration file of the service (\fBrun \-\-config\fR); SIGHUP re\-reads it.
.TP
.I /sys/fs/bpf/portguard/netns\-COOKIE/IFACE/
The running guard of IFACE in the network namespace of that cookie: its maps and its XDP
link, pinned in bpffs (directories 0700, root's).
.SH ENVIRONMENT
.TP
.B PORTGUARD_PIN_ROOT
Where guards are pinned instead of /sys/fs/bpf/portguard.
.TP
.B RUST_LOG
Log level (error, warn, info, debug); info by default.
.TP
.B NOTIFY_SOCKET, WATCHDOG_USEC
Set by systemd for a Type=notify service: readiness, status and watchdog pings.
.SH "SEE ALSO"
.BR portguard\-run (1),
.BR portguard\-stats (1),
.BR portguard\-status (1),
.BR portguard\-set (1),
.BR portguard\-detach (1),
.BR portguard\-check (1),
.BR portguard\-top (1),
.BR bpftool (8)
"#;

/// Prints portguard(1), or writes every page into `--dir`.
pub fn man<C: clap::CommandFactory>(args: ManArgs) -> Result<ExitCode> {
    let cmd = C::command();
    let Some(dir) = args.dir else {
        top_page(cmd, &mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir)?;
    // One page per visible verb (clap_mangen names them portguard-VERB.1), then the top page
    // over the one it wrote, with the sections every verb shares.
    clap_mangen::generate_to(cmd.clone(), &dir)?;
    let mut top = std::fs::File::create(dir.join("portguard.1"))?;
    top_page(cmd, &mut top)?;
    Ok(ExitCode::SUCCESS)
}

fn top_page(cmd: clap::Command, w: &mut dyn std::io::Write) -> Result<()> {
    clap_mangen::Man::new(cmd).render(w)?;
    w.write_all(TOP_SECTIONS.as_bytes())?;
    Ok(())
}
