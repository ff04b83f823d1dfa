//! The portguard command line. Each subcommand lives in cmd/.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Guards TCP/UDP port 2745 (the Bagle backdoor) on Linux gateways with XDP, and tells you who
/// is probing it.
#[derive(Parser)]
#[command(name = "portguard", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(cmd::run::Args),
    Lab(cmd::lab::Args),
    Check(cmd::check::Args),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `check` promises exit 2 and one line on stderr for any error, usage errors included.
        Err(e) if e.use_stderr() && invoked_check() => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("portguard: error: {}", first.strip_prefix("error: ").unwrap_or(first));
            return ExitCode::from(cmd::check::ERROR);
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Lab(a) => cmd::lab::run(a),
        Command::Check(a) => return cmd::check::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portguard: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line: the outermost context and the root cause.
fn error_line(e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
    match (chain.first(), chain.last()) {
        (Some(first), Some(last)) if chain.len() > 1 && !first.contains(last.as_str()) => {
            format!("{first}: {last}")
        }
        (Some(first), _) => first.clone(),
        _ => e.to_string(),
    }
}

/// Whether the subcommand on the command line is `check` (the first argument that is not an
/// option).
fn invoked_check() -> bool {
    std::env::args_os()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .is_some_and(|a| a == "check")
}
