//! When to try again: exponential backoff with full jitter, a cap, a bounded number of
//! attempts, and the hub's `Retry-After` honoured when it gives one.
//!
//! A 429 (rate limited) is the hub asking for patience, not a failure: it has a budget of its
//! own, larger than the failures', and its `Retry-After` gets jitter on top, so that clients
//! (or an agent's concurrent workers) sent away together do not all come back in the same
//! instant and the same ones lose again.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt, for network errors and retryable server errors.
    pub max_retries: u32,
    /// Waits after 429s (rate limited), counted apart from `max_retries`.
    pub max_throttled: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            // About a minute of patience at the hub's usual `Retry-After: 1`.
            max_throttled: 40,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries at all (tests that want to see the first failure).
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_retries: 0,
            max_throttled: 0,
            ..RetryPolicy::default()
        }
    }

    /// How long to wait before retry number `attempt + 1`, or `None` when retries are spent.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        if let Some(wait) = retry_after {
            return Some(self.after(wait));
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let jittered = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
        Some(Duration::from_millis(
            jittered.max(self.base.as_millis() as u64 / 2),
        ))
    }

    /// How long to wait after the `waits + 1`th 429 in a row, or `None` when the budget for
    /// them is spent: the hub's `Retry-After` (or the backoff without one), plus jitter.
    pub fn throttled_delay(&self, waits: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if waits >= self.max_throttled {
            return None;
        }
        let wait = retry_after.unwrap_or_else(|| {
            self.base
                .saturating_mul(1u32 << waits.min(16))
                .min(self.cap)
        });
        Some(self.after(wait))
    }

    /// `Retry-After` (bounded) and up to half of it again, at least a backoff base, at random.
    fn after(&self, wait: Duration) -> Duration {
        let wait = wait.min(self.cap.max(Duration::from_secs(60)));
        let spread = (wait / 2).max(self.base).as_millis() as u64;
        wait + Duration::from_millis(rand::thread_rng().gen_range(0..=spread))
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs; it falls back to backoff).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_capped_and_stop() {
        let policy = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for attempt in 0..5 {
            let delay = policy.delay(attempt, None).expect("a retry");
            assert!(delay <= Duration::from_secs(1));
            assert!(delay <= Duration::from_millis(100 << attempt));
        }
        assert_eq!(policy.delay(5, None), None);
    }

    #[test]
    fn retry_after_wins_over_backoff_with_jitter_on_top() {
        let policy = RetryPolicy::default();
        let delays: Vec<Duration> = (0..50)
            .map(|_| {
                policy
                    .delay(0, Some(Duration::from_secs(3)))
                    .expect("a retry")
            })
            .collect();
        assert!(
            delays.iter().all(
                |delay| (Duration::from_secs(3)..=Duration::from_millis(4500)).contains(delay)
            ),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|delay| *delay != delays[0]),
            "no jitter: {delays:?}"
        );
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }

    #[test]
    fn rate_limits_have_a_budget_of_their_own() {
        let policy = RetryPolicy {
            max_retries: 2,
            max_throttled: 5,
            ..RetryPolicy::default()
        };
        let second = Some(Duration::from_secs(1));
        assert_eq!(policy.delay(2, second), None);
        for waits in 0..5 {
            let delay = policy.throttled_delay(waits, second).expect("a wait");
            assert!((Duration::from_secs(1)..=Duration::from_millis(1500)).contains(&delay));
        }
        assert_eq!(policy.throttled_delay(5, second), None);
        assert_eq!(RetryPolicy::none().throttled_delay(0, second), None);
    }
}
