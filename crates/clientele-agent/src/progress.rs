//! What the user sees while a run goes and when it ends: a progress bar on a terminal, plain
//! log lines otherwise, and the one-line summary of `AGENT.md`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The run's counters, shared by the tasks that send batches.
#[derive(Debug, Default)]
pub struct Counters {
    pub rows: AtomicU64,
    pub created: AtomicU64,
    pub updated: AtomicU64,
    pub unchanged: AtomicU64,
    pub archived: AtomicU64,
    pub deleted: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Arc<std::sync::Mutex<Instant>>,
    command: &'static str,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(command: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(command);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            counters: Arc::new(Counters::default()),
            bar,
            started: Instant::now(),
            last_log: Arc::new(std::sync::Mutex::new(Instant::now())),
            command,
        }
    }

    /// Called as work advances: refreshes the bar, or logs a line every few seconds.
    pub fn tick(&self) {
        let line = self.counts_line();
        if let Some(bar) = &self.bar {
            bar.set_message(line);
            return;
        }
        if let Ok(mut last) = self.last_log.lock()
            && last.elapsed() >= LOG_EVERY
        {
            *last = Instant::now();
            eprintln!("{}: {line}", self.command);
        }
    }

    /// A line for the operator, above the bar when there is one.
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("{}: {message}", self.command)),
            None => eprintln!("{}: {message}", self.command),
        }
    }

    fn counts_line(&self) -> String {
        let c = &self.counters;
        format!(
            "rows={} created={} updated={} unchanged={} archived={} deleted={} failed={}",
            Counters::get(&c.rows),
            Counters::get(&c.created),
            Counters::get(&c.updated),
            Counters::get(&c.unchanged),
            Counters::get(&c.archived),
            Counters::get(&c.deleted),
            Counters::get(&c.failed),
        )
    }

    /// The summary line: counts, elapsed time and rows per second.
    pub fn summary(&self) -> String {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let c = &self.counters;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rows = Counters::get(&c.rows);
        let rate = if elapsed > 0.0 {
            rows as f64 / elapsed
        } else {
            0.0
        };
        format!(
            "{}: created={} updated={} unchanged={} archived={} deleted={} failed={} elapsed={:.2}s rate={:.0} rows/s",
            self.command,
            Counters::get(&c.created),
            Counters::get(&c.updated),
            Counters::get(&c.unchanged),
            Counters::get(&c.archived),
            Counters::get(&c.deleted),
            Counters::get(&c.failed),
            elapsed,
            rate,
        )
    }
}
