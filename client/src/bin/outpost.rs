use clap::Parser;

fn main() -> anyhow::Result<()> {
    outpost_client::cli::run(outpost_client::cli::Cli::parse())?;
    Ok(())
}
