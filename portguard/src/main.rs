//! The portguard command line. Each subcommand lives in cmd/.

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use portguard::{error::Usage, notices};

/// Guards TCP/UDP port 2745 (the Bagle backdoor) on Linux gateways with XDP, and tells you who
/// is probing it.
#[derive(Parser)]
#[command(name = "portguard", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Act in network namespace /run/netns/NAME (as `ip -n NAME` does): its guards, its
    /// interfaces, its sockets. Default: the namespace portguard runs in.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(cmd::run::Args),
    Stats(cmd::stats::Args),
    Status(cmd::status::Args),
    Set(cmd::set::Args),
    Detach(cmd::detach::Args),
    Check(cmd::check::Args),
    Top(cmd::top::Args),
    Capture(cmd::capture::Args),
    Lab(cmd::lab::Args),
    Completions(cmd::completions::Args),
    Man(cmd::completions::ManArgs),
}

fn main() -> ExitCode {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .build();
    log::set_max_level(inner.filter());
    let _ = log::set_boxed_logger(Box::new(Logger(inner)));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let verb = verb();
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Lab(_) | Command::Top(_) | Command::Capture(_)
    ) {
        // One-shot verbs end quietly when their reader goes away (`status | head -1`), as
        // other Unix tools do; the long-running ones check their writes instead.
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Command::Check(a) = cli.command {
        // check has its own exit codes: 0 clean, 1 found, 2 error; it enters the namespace on a
        // thread of its own.
        return cmd::check::run(a, cli.netns.as_deref());
    }
    if let Some(ns) = &cli.netns {
        // Before any other thread starts, so that they all live in it.
        if let Err(e) = portguard::netns::enter(ns) {
            eprintln!("portguard: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Set(a) => cmd::set::run(a),
        Command::Detach(a) => cmd::detach::run(a),
        Command::Lab(a) => cmd::lab::run(a),
        Command::Completions(a) => cmd::completions::run::<Cli>(a),
        Command::Man(a) => cmd::completions::man::<Cli>(a),
        Command::Top(a) => cmd::top::run(a),
        Command::Capture(a) => cmd::capture::run(a),
        Command::Check(_) => unreachable!("check returned above"),
    };
    match result {
        Ok(code) => code,
        Err(e) if e.chain().any(|c| c.is::<Usage>()) => {
            eprintln!("portguard: error: {e} {}", see_help(verb.as_deref()));
            ExitCode::from(USAGE)
        }
        Err(e) => {
            // One line: the outermost context and the root cause.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            let msg = if chain.len() > 1 && !chain[0].contains(&chain[chain.len() - 1]) {
                format!("{}: {}", chain[0], chain[chain.len() - 1])
            } else {
                chain[0].clone()
            };
            eprintln!("portguard: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// env_logger, except that warnings go to the live view's notices while it is up
/// (`notices`), where a redraw cannot wipe them.
struct Logger(env_logger::Logger);

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, r: &log::Record) {
        if !self.0.matches(r) {
            return;
        }
        if r.level() <= log::Level::Warn && notices::capturing() {
            let text = r.args().to_string();
            let key = if r.target().starts_with(notices::TARGET_PREFIX) {
                r.target().to_string()
            } else {
                text.clone()
            };
            notices::post(&key, text);
            return;
        }
        self.0.log(r);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// The exit code of a malformed or contradictory command line; runtime failures are 1.
const USAGE: u8 = 2;

/// The verb on the command line, if it names one: the first word that is neither a flag nor
/// the value of the one top-level flag that takes one (`--netns NAME`).
fn verb() -> Option<String> {
    let cli = Cli::command();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--netns" {
            args.next();
        } else if !a.starts_with('-') {
            return cli.find_subcommand(&a).filter(|c| c.get_name() != "help").map(|_| a);
        }
    }
    None
}

/// Where a usage error sends the reader: the verb's own help when there is one.
fn see_help(verb: Option<&str>) -> String {
    match verb {
        Some(v) => format!("(see 'portguard {v} --help')"),
        None => "(see 'portguard --help')".to_string(),
    }
}

/// clap's errors span several lines (message, usage, hint); scripts and journald want one.
/// Help and version requests print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { USAGE } else { 0 });
    }
    let text = e.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let msg = msg.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    eprintln!("portguard: error: {msg} {}", see_help(verb().as_deref()));
    ExitCode::from(USAGE)
}
