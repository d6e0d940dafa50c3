//! `outpost`: the command line of the Outpost client (`sync`, `query`, `exec`,
//! `status`). The library it drives is the `outpost-client` crate.
//!
//! - [`cli`]: argument parsing and the commands.

use clap::Parser;

mod cli;

fn main() -> anyhow::Result<()> {
    cli::run(cli::Cli::parse())?;
    Ok(())
}
