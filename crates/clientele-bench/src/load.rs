//! A closed-loop load generator: `concurrency` tasks each run one operation after another until
//! the time is up. Latencies of successful operations go to an HDR histogram (microseconds);
//! failures are counted apart, with a few samples kept for the report.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use clientele_bench::procfs::{CpuUse, CpuWindow};

/// One operation of a scenario, boxed so scenario builders can name their closures' type.
pub type OpFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Longest latency the histograms hold (one minute, in microseconds); longer ones saturate.
const MAX_LATENCY_MICROS: u64 = 60_000_000;
/// Failure messages kept per run.
const FAILURE_SAMPLES: usize = 5;

/// What one run of a scenario measured.
pub struct Measured {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latencies of the successful operations, in microseconds.
    pub latency: Histogram<u64>,
    pub failure_samples: Vec<String>,
}

impl Measured {
    fn empty() -> anyhow::Result<Self> {
        Ok(Self {
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .context("creating a latency histogram")?,
            failure_samples: Vec::new(),
        })
    }

    fn merge(&mut self, other: Measured) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latency
            .add(&other.latency)
            .context("merging latency histograms")?;
        let room = FAILURE_SAMPLES.saturating_sub(self.failure_samples.len());
        self.failure_samples
            .extend(other.failure_samples.into_iter().take(room));
        Ok(())
    }

    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Failed operations as a fraction of all operations.
    pub fn error_rate(&self) -> f64 {
        let total = self.ok + self.failed;
        if total == 0 {
            0.0
        } else {
            self.failed as f64 / total as f64
        }
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A source of numbers unique within one scenario (across its warm-up and measured runs), for
/// unique keys and for spreading reads over the known ids.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn starting_at(first: u64) -> Self {
        Self(Arc::new(AtomicU64::new(first)))
    }

    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// An index in `0..len` that looks random for consecutive `n` (SplitMix64).
pub fn spread(n: u64, len: usize) -> usize {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % len.max(1) as u64) as usize
}

/// Runs `op` from `concurrency` tasks for `duration` and returns what was measured. An operation
/// reports failure as `Err(description)`.
pub async fn run<F, Fut>(concurrency: usize, duration: Duration, op: F) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| tokio::spawn(worker(deadline, op.clone())))
        .collect();
    let mut total = Measured::empty()?;
    for joined in futures::future::join_all(workers).await {
        total.merge(joined.context("a load task failed")??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// A warm-up run (discarded: it fills pools, caches and connections), then the measured run
/// with the CPU used during it, counting the process `hub_pid` as the hub.
pub async fn warm_then_measure<F, Fut>(
    hub_pid: Option<u32>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> anyhow::Result<(Measured, CpuUse)>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    if !warmup.is_zero() {
        run(concurrency, warmup, op.clone()).await?;
    }
    let window = CpuWindow::start(hub_pid)?;
    let measured = run(concurrency, duration, op).await?;
    Ok((measured, window.finish()?))
}

/// One task's loop: the next operation starts when the previous one has finished.
async fn worker<F, Fut>(deadline: Instant, op: F) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tally = Measured::empty()?;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let outcome = op().await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Ok(()) => {
                tally.ok += 1;
                tally.latency.saturating_record(micros.max(1));
            }
            Err(failure) => {
                tally.failed += 1;
                if tally.failure_samples.len() < FAILURE_SAMPLES {
                    tally.failure_samples.push(failure);
                }
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_in_range_and_covers_it() {
        let mut seen = [false; 10];
        for n in 0..1000 {
            seen[spread(n, 10)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[tokio::test]
    async fn run_counts_successes_and_failures_apart() -> anyhow::Result<()> {
        let counter = Counter::default();
        let op = move || {
            let n = counter.next();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if n % 2 == 0 {
                    Ok(())
                } else {
                    Err(format!("odd {n}"))
                }
            }
        };
        let measured = run(4, Duration::from_millis(100), op).await?;
        assert!(measured.ok > 0 && measured.failed > 0);
        assert!(measured.ok.abs_diff(measured.failed) <= 4);
        assert_eq!(measured.latency.len(), measured.ok);
        assert!(measured.failure_samples.len() <= FAILURE_SAMPLES);
        Ok(())
    }
}
