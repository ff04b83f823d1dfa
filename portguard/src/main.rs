//! The portguard command line. Each subcommand lives in cmd/.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Lab(cmd::lab::Args),
    Completions(cmd::completions::Args),
    /// Print the man page (roff), e.g. `portguard man > portguard.1`.
    Man,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if !matches!(cli.command, Command::Run(_) | Command::Lab(_) | Command::Top(_)) {
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
        Command::Man => cmd::completions::man::<Cli>(),
        Command::Top(a) => cmd::top::run(a),
        Command::Check(_) => unreachable!("check returned above"),
    };
    match result {
        Ok(code) => code,
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
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
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
    eprintln!("portguard: error: {msg} (see 'portguard --help')");
    ExitCode::from(2)
}
