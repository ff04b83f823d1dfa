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

/// Prints the man page (roff).
pub fn man<C: clap::CommandFactory>() -> Result<ExitCode> {
    clap_mangen::Man::new(C::command()).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
