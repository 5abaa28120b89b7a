//! What every handler shares: the store, the master key, the metrics recorder and the settings.

use std::sync::Arc;

use clientele_domain::Store;
use metrics_exporter_prometheus::PrometheusRecorder;

use crate::secrets::MasterKey;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// The token bucket of every API key, per hub process; `None` turns rate limiting off.
    pub rate_limit: Option<crate::rate_limit::RateLimit>,
    /// Whether the `CLIENTELE_BOOTSTRAP_KEY` key is rate limited too (it is exempt by default).
    pub rate_limit_bootstrap: bool,
    /// How long a client has to send a request's headers: a connection that trickles them in,
    /// or never finishes them, is closed after this.
    pub header_read_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            rate_limit: Some(crate::rate_limit::RateLimit::DEFAULT),
            rate_limit_bootstrap: false,
            header_read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    master_key: MasterKey,
    config: ApiConfig,
    /// Per application rather than global, so that several hubs can run in one process (tests).
    recorder: PrometheusRecorder,
    keys: crate::auth::KeyCache,
    rate_limiter: crate::rate_limit::RateLimiter,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, master_key: MasterKey, config: ApiConfig) -> Self {
        let recorder = crate::metrics::recorder();
        let rate_limiter =
            crate::rate_limit::RateLimiter::new(config.rate_limit, config.rate_limit_bootstrap);
        let inner = Arc::new(Inner {
            rate_limiter,
            store,
            master_key,
            config,
            recorder,
            keys: crate::auth::KeyCache::default(),
        });
        // A key revoked through another hub process on the same database is refused here at
        // once too, not when its cache entry ages out. Weak: the store must not keep the state
        // that owns it alive.
        let weak = Arc::downgrade(&inner);
        inner.store.on_key_revoked(Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.keys.clear();
            }
        }));
        Self { inner }
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn master_key(&self) -> &MasterKey {
        &self.inner.master_key
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.inner.recorder
    }

    pub(crate) fn keys(&self) -> &crate::auth::KeyCache {
        &self.inner.keys
    }

    pub(crate) fn rate_limiter(&self) -> &crate::rate_limit::RateLimiter {
        &self.inner.rate_limiter
    }
}
