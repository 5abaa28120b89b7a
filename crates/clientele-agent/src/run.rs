//! Running a command: the hub client from the job (the secret from the environment), a first
//! call that turns an unreachable hub or a bad key into a clear error, `--every` repetition,
//! and the summary line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clientele_client::{Client, ClientError, Credentials, RetryPolicy};
use reqwest::Method;
use serde_json::Value;

use crate::job::Job;
use crate::progress::Progress;
use crate::report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Push,
    Pull,
    Sync,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Push => "push",
            Command::Pull => "pull",
            Command::Sync => "sync",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub config: PathBuf,
    pub dry_run: bool,
    pub every: Option<Duration>,
    pub report: Option<PathBuf>,
}

/// Runs the command once, or every `--every` until interrupted. A run that cannot finish is an
/// error; with `--every` it is logged and the next run is tried.
pub async fn run(command: Command, options: Options) -> anyhow::Result<()> {
    let job = Arc::new(Job::load(&options.config)?);
    let client = connect(&job).await?;
    loop {
        let outcome = run_once(command, &job, &client, &options).await;
        let Some(every) = options.every else {
            return outcome;
        };
        if let Err(error) = outcome {
            eprintln!("{}: the run failed: {error:#}", command.name());
        }
        tokio::time::sleep(every).await;
    }
}

async fn run_once(
    command: Command,
    job: &Arc<Job>,
    client: &Client,
    options: &Options,
) -> anyhow::Result<()> {
    let progress = Progress::new(command.name());
    let report = Report::create(options.report.as_deref())?;
    match command {
        Command::Push => {
            crate::push::Push::new(
                job.clone(),
                client.clone(),
                report,
                progress.clone(),
                options.dry_run,
            )
            .await?
            .run()
            .await?
        }
        Command::Pull => crate::pull::run(job, client, &progress, options.dry_run).await?,
        Command::Sync => crate::sync::run(job, client, &report, &progress, options.dry_run).await?,
    }
    println!("{}", progress.summary());
    Ok(())
}

/// The client for the job's hub, after one authenticated call proved the hub and the key work.
pub async fn connect(job: &Job) -> anyhow::Result<Client> {
    let secret = std::env::var(&job.hub.key_env).map_err(|_| {
        anyhow!(job.error(
            "hub",
            "key_env",
            &format!(
                "the environment variable {} holds no API key",
                job.hub.key_env
            )
        ))
    })?;
    let credentials = match &job.hub.key_id {
        Some(key_id) => Credentials::Signed {
            key_id: key_id.clone(),
            secret,
        },
        None => Credentials::Bearer(secret),
    };
    let client = Client::new(&job.hub.url, credentials)?;
    // Few retries for the probe: an unreachable hub should say so within seconds.
    let probe = client.clone().with_retry(RetryPolicy {
        max_retries: 2,
        ..RetryPolicy::default()
    });
    match probe
        .request::<Value>(Method::GET, "/v1/customers?limit=1", None, None)
        .await
    {
        Ok(_) => Ok(client),
        Err(ClientError::Problem { status: 401, .. }) => Err(anyhow!(
            "the hub at {} refused the API key from {} (401): check the key",
            job.hub.url,
            job.hub.key_env
        )),
        Err(ClientError::Problem { status: 403, .. }) => Err(anyhow!(
            "the API key from {} may not read customers on {} (403)",
            job.hub.key_env,
            job.hub.url
        )),
        Err(error) => Err(error).with_context(|| format!("cannot use the hub at {}", job.hub.url)),
    }
}

/// `--every` values: `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("`{text}` is not a duration such as 30s, 5m or 1h")),
    };
    if seconds == 0 {
        return Err("the interval must be more than zero".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
