//! The `clientele` binary: `clientele serve` runs the hub.

mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "clientele", version, about = "The customer data hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub's HTTP API.
    Serve(serve::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
    }
}
