//! Prometheus metrics: requests by route and status, latency histograms, and the database pool.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::state::AppState;

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

pub(crate) fn recorder() -> PrometheusRecorder {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .map(PrometheusBuilder::build_recorder)
        .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_counter!(
            "db_create_groups_total",
            "Transactions that wrote a group of concurrent single creates"
        );
        metrics::describe_gauge!(
            "http_requests_in_flight",
            "Requests being served, by method and route"
        );
        metrics::describe_counter!(
            "db_grouped_creates_total",
            "Single creates written by those transactions (creates per group: this over groups)"
        );
    });
    recorder
}

/// Middleware: counts each request by route template and status, records its latency, and
/// keeps the requests in flight by route.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method()).to_owned();
    let in_flight = InFlight::start(metrics::with_local_recorder(
        state.recorder(),
        || metrics::gauge!("http_requests_in_flight", "method" => method.clone(), "route" => route.clone()),
    ));
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::with_local_recorder(state.recorder(), || {
        let labels = [("method", method), ("route", route), ("status", status)];
        metrics::counter!("http_requests_total", &labels).increment(1);
        metrics::histogram!("http_request_duration_seconds", &labels[..2]).record(elapsed);
    });
    response
}

/// The `method` label: one of the standard methods, or `other`. Anyone may send any method
/// name, and a label value per name would let unauthenticated requests grow the hub's memory
/// and its `/metrics` output without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// One request counted in `http_requests_in_flight` until it is dropped: when its response
/// is ready, or when the connection goes away and the request's future with it.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn start(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The Prometheus text exposition, with the pool gauges and group-commit counters read now.
pub(crate) fn render(state: &AppState) -> String {
    let pool = state.store().pool_stats();
    let grouped = state.store().group_commit_stats();
    let backend = state.store().backend();
    metrics::with_local_recorder(state.recorder(), || {
        metrics::gauge!("db_pool_connections", "backend" => backend).set(f64::from(pool.size));
        metrics::gauge!("db_pool_idle_connections", "backend" => backend).set(f64::from(pool.idle));
        metrics::counter!("db_create_groups_total", "backend" => backend).absolute(grouped.groups);
        metrics::counter!("db_grouped_creates_total", "backend" => backend)
            .absolute(grouped.creates);
    });
    state.recorder().handle().render()
}
