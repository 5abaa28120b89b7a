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
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
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
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, master_key: MasterKey, config: ApiConfig) -> Self {
        let recorder = crate::metrics::recorder();
        Self {
            inner: Arc::new(Inner {
                store,
                master_key,
                config,
                recorder,
                keys: crate::auth::KeyCache::default(),
            }),
        }
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
}
