//! The agent's command line: `push`, `pull` and `sync` share one set of flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clientele_agent::run::{Command, Options, parse_duration};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The job file (TOML, see AGENT.md).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repeat the run at this interval (e.g. 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    every: Option<Duration>,
    /// Write one JSON line per rejected row to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub async fn run(command: Command, args: AgentArgs) -> anyhow::Result<()> {
    clientele_agent::run::run(
        command,
        Options {
            config: args.config,
            dry_run: args.dry_run,
            every: args.every,
            report: args.report,
        },
    )
    .await
}
