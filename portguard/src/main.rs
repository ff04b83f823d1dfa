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
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Lab(a) => cmd::lab::run(a),
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
