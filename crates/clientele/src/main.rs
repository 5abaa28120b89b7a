//! The `clientele` binary: `clientele serve` runs the hub; `push`, `pull` and `sync` run the agent.

mod agent;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: a request allocates much small, short-lived memory
/// (parsed fields, documents, bound rows), which glibc's malloc served at about three times the
/// instructions (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Send new and changed source rows to the hub (AGENT.md).
    Push(agent::AgentArgs),
    /// Follow the hub's change feed into a mirror table.
    Pull(agent::AgentArgs),
    /// Keep a mirror table and the hub in step both ways.
    Sync(agent::AgentArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Push(args) => {
            runtime.block_on(agent::run(clientele_agent::run::Command::Push, args))
        }
        Command::Pull(args) => {
            runtime.block_on(agent::run(clientele_agent::run::Command::Pull, args))
        }
        Command::Sync(args) => {
            runtime.block_on(agent::run(clientele_agent::run::Command::Sync, args))
        }
    }
}
