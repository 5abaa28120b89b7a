//! Rate limiting per API key: a token bucket per key, in this hub process. Several hub processes
//! behind a load balancer each grant the configured rate (a per-process limit, documented in
//! `clientele serve --help`). A limited request gets 429 `rate_limited` with `Retry-After`
//! (whole seconds, at least 1) before it authenticates further, claims an idempotency key or
//! touches the database.
//!
//! A password hashed or verified costs a token of its own on top of its request's
//! ([`RateLimiter::charge_passwords`]), so a bulk sync carrying a thousand passwords, a
//! thousand Argon2id computations, spends its key's budget as a thousand requests would; it is
//! refused with 429 before any is hashed, and leaves its idempotency key unused.
//!
//! The bootstrap key is exempt unless configured otherwise, or unless its secret is short enough
//! to have been chosen by hand (`auth::bootstrap`): it is the operator's own key. The
//! endpoints that need no key (`OPEN_PATHS`) are never limited.
//! Memory is bounded: buckets that refilled completely are the same as fresh ones and are
//! dropped when the map grows past its bound, so revoked keys do not stay forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clientele_domain::ApiKeyId;

use crate::auth::Caller;
use crate::problem::ApiError;
use crate::state::AppState;

/// A token bucket's settings: `per_second` tokens are added each second, up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl RateLimit {
    /// The default for ordinary keys: generous, to stop runaway clients rather than real work.
    pub const DEFAULT: RateLimit = RateLimit {
        per_second: 1000.0,
        burst: 2000.0,
    };
}

/// How many keys' buckets are kept before full ones are dropped.
const MAX_BUCKETS: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one hub process.
pub(crate) struct RateLimiter {
    limit: Option<RateLimit>,
    limit_bootstrap: bool,
    exempt: Mutex<Vec<ApiKeyId>>,
    buckets: Mutex<HashMap<ApiKeyId, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: Option<RateLimit>, limit_bootstrap: bool) -> Self {
        Self {
            limit: limit.filter(|l| l.per_second > 0.0 && l.burst >= 1.0),
            limit_bootstrap,
            exempt: Mutex::new(Vec::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Marks the bootstrap key, exempt unless bootstrap limiting was asked for.
    pub(crate) fn bootstrap_key(&self, id: ApiKeyId) {
        if !self.limit_bootstrap
            && let Ok(mut exempt) = self.exempt.lock()
            && !exempt.contains(&id)
        {
            exempt.push(id);
        }
    }

    /// Takes a token of `key`'s bucket for each of `passwords` passwords about to be hashed
    /// or verified, after the request's own token. A batch costing more than the bucket holds
    /// is let through once the bucket is as full as the request left it, and runs it into debt:
    /// the key's next requests wait until the rate has paid for every password.
    pub(crate) fn charge_passwords(&self, key: ApiKeyId, passwords: usize) -> Result<(), ApiError> {
        if passwords == 0 {
            return Ok(());
        }
        self.take(key, passwords as f64, 1.0, Instant::now())
            .map_err(ApiError::rate_limited)
    }

    /// Takes `cost` tokens of `key`'s bucket when it holds them, or holds all it can with
    /// `spent` of them already taken by this request; `Err(seconds)` to wait otherwise, counted
    /// for the request sent again (which takes its `spent` tokens again first).
    fn take(&self, key: ApiKeyId, cost: f64, spent: f64, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        if self.exempt.lock().is_ok_and(|exempt| exempt.contains(&key)) {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, b| refill(b, limit, now) < limit.burst);
            if buckets.len() >= MAX_BUCKETS {
                // Everyone is busy: starting them all afresh errs on the generous side.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        bucket.tokens = refill(bucket, limit, now);
        bucket.at = now;
        let admitted_at = cost.min(limit.burst - spent);
        if bucket.tokens >= admitted_at {
            bucket.tokens -= cost;
            Ok(())
        } else {
            let wait = (admitted_at + spent - bucket.tokens) / limit.per_second;
            Err((wait.ceil() as u64).max(1))
        }
    }
}

/// The tokens a bucket holds at `now`.
fn refill(bucket: &Bucket, limit: RateLimit, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * limit.per_second).min(limit.burst)
}

/// Authenticates requests that carry a bearer secret (signed ones are already) and spends a
/// token of their key. Requests without credentials pass: their handlers answer 401 (or serve
/// them, for the unauthenticated endpoints).
pub(crate) async fn middleware(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if crate::OPEN_PATHS.contains(&request.uri().path()) {
        // They need no key, so a key sent along is not spent (a health check must not fail
        // because its key is busy elsewhere) nor even looked up.
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let caller = match parts.extensions.get::<Caller>() {
        Some(caller) => Some(caller.clone()),
        None if parts.headers.contains_key(AUTHORIZATION) => {
            // Bad credentials pass on: the handler answers them (or needs none).
            let caller = Caller::from_request_parts(&mut parts, &state).await.ok();
            if let Some(caller) = &caller {
                parts.extensions.insert(caller.clone());
            }
            caller
        }
        None => None,
    };
    if let Some(caller) = caller
        && let Err(wait) = state
            .rate_limiter()
            .take(caller.key.id, 1.0, 0.0, Instant::now())
    {
        return ApiError::rate_limited(wait).into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(Some(RateLimit { per_second, burst }), false)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let limiter = limiter(2.0, 3.0);
        let key = ApiKeyId::new();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(key, 1.0, 0.0, start), Ok(()));
        }
        assert_eq!(limiter.take(key, 1.0, 0.0, start), Err(1));
        assert_eq!(
            limiter.take(key, 1.0, 0.0, start + Duration::from_millis(500)),
            Ok(())
        );
        assert!(
            limiter
                .take(key, 1.0, 0.0, start + Duration::from_millis(500))
                .is_err()
        );
        // Another key has its own bucket.
        assert_eq!(limiter.take(ApiKeyId::new(), 1.0, 0.0, start), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        let limiter = limiter(0.1, 1.0);
        let key = ApiKeyId::new();
        let now = Instant::now();
        assert_eq!(limiter.take(key, 1.0, 0.0, now), Ok(()));
        assert_eq!(limiter.take(key, 1.0, 0.0, now), Err(10));
    }

    #[test]
    fn bootstrap_keys_are_exempt_unless_configured_and_no_limit_means_none() {
        let key = ApiKeyId::new();
        let now = Instant::now();
        let exempting = limiter(1.0, 1.0);
        exempting.bootstrap_key(key);
        for _ in 0..5 {
            assert_eq!(exempting.take(key, 1.0, 0.0, now), Ok(()));
        }
        let strict = RateLimiter::new(
            Some(RateLimit {
                per_second: 1.0,
                burst: 1.0,
            }),
            true,
        );
        strict.bootstrap_key(key);
        assert_eq!(strict.take(key, 1.0, 0.0, now), Ok(()));
        assert!(strict.take(key, 1.0, 0.0, now).is_err());
        let off = RateLimiter::new(None, false);
        for _ in 0..5 {
            assert_eq!(off.take(key, 1.0, 0.0, now), Ok(()));
        }
    }

    #[test]
    fn a_costly_request_takes_its_cost_and_may_run_the_bucket_into_debt() {
        let limiter = limiter(10.0, 20.0);
        let key = ApiKeyId::new();
        let now = Instant::now();
        assert_eq!(limiter.take(key, 15.0, 0.0, now), Ok(()));
        // 5 left: 15 more need a second's refill of 10.
        assert_eq!(limiter.take(key, 15.0, 0.0, now), Err(1));
        let later = now + Duration::from_secs(1);
        assert_eq!(limiter.take(key, 15.0, 0.0, later), Ok(()));
        // More than the bucket holds: let through when it is full, and paid for afterwards.
        let other = ApiKeyId::new();
        assert_eq!(limiter.take(other, 1000.0, 0.0, now), Ok(()));
        assert_eq!(limiter.take(other, 1.0, 0.0, now), Err(99));
        // A request that spent a token first is let through once the rest is back, and its
        // wait counts the token its next attempt spends again.
        let third = ApiKeyId::new();
        assert_eq!(limiter.take(third, 1.0, 0.0, now), Ok(()));
        assert_eq!(limiter.take(third, 10.0, 0.0, now), Ok(()));
        assert_eq!(limiter.take(third, 1.0, 0.0, now), Ok(()));
        assert_eq!(limiter.take(third, 100.0, 1.0, now), Err(2));
    }

    #[test]
    fn the_bucket_map_stays_bounded() {
        let limiter = limiter(1000.0, 1.0);
        let now = Instant::now();
        for _ in 0..(MAX_BUCKETS + 10) {
            let _ = limiter.take(ApiKeyId::new(), 1.0, 0.0, now);
        }
        assert!(limiter.buckets.lock().map(|b| b.len()).unwrap_or(0) <= MAX_BUCKETS);
    }
}
