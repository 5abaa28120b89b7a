//! The connection loop: accepts TCP connections and serves the app on each, HTTP/1.1 or
//! HTTP/2, until shutdown.
//!
//! It is axum's `serve` with what that one leaves out: a client gets a bounded time to send a
//! request's headers (`ApiConfig::header_read_timeout`), so connections that trickle them in,
//! or never finish them, are closed instead of held for ever (over HTTP/2, which has no such
//! timeout, a peer that stops answering keep-alive PINGs is); `TCP_NODELAY`, so a small
//! response is not held back waiting for an acknowledgement; and room in hyper's buffers for
//! heads that `request_limits` refuses with a problem.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use crate::request_limits;

/// How long to wait before accepting again after an error such as too many open files, which
/// would otherwise spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Longest an HTTP/2 peer has to answer a keep-alive PING (sent after each head timeout's
/// worth of silence; the answer is due within the same time, or this).
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's own refusals have empty bodies: its bounds sit well above the ones
    // `request_limits` answers with a problem, so only a grossly oversized head meets them.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(4 * request_limits::MAX_HEADER_COUNT);
    // HTTP/2 has no head timeout: a peer that answers no PING within the timeout is dropped,
    // so connections opened and left (a preface and nothing more) do not pile up.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(header_read_timeout)
        .keep_alive_timeout(header_read_timeout.min(H2_PING_TIMEOUT))
        .max_header_list_size((4 * request_limits::MAX_HEADER_BYTES) as u32);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY could not be set");
        }
        let service = app
            .clone()
            .map_request(|request: hyper::Request<Incoming>| request.map(Body::new));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%error, "a connection ended with an error");
            }
        });
    }
    // No new connections; those open finish their requests in flight, for at most `grace`.
    drop(listener);
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still running after the shutdown grace period; stopping");
        }
    }
}
