//! When to try again: exponential backoff with full jitter, a cap, a bounded number of
//! attempts, and the hub's `Retry-After` honoured when it gives one.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
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
            ..RetryPolicy::default()
        }
    }

    /// How long to wait before retry number `attempt + 1`, or `None` when retries are spent.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        if let Some(wait) = retry_after {
            return Some(wait.min(self.cap.max(Duration::from_secs(60))));
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
        };
        for attempt in 0..5 {
            let delay = policy.delay(attempt, None).expect("a retry");
            assert!(delay <= Duration::from_secs(1));
            assert!(delay <= Duration::from_millis(100 << attempt));
        }
        assert_eq!(policy.delay(5, None), None);
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
