//! Runs every request on its own task, so a client that goes away cannot cancel it halfway.
//!
//! The server drops a request's future when its connection closes. Dropped between two awaits,
//! a handler would abandon a database transaction mid-flight (on SQLite even a `BEGIN` whose
//! transaction object never came to exist, leaving the writer connection inside a transaction)
//! and an `Idempotency-Key` claim without its answer. Run to completion instead, the work
//! commits or rolls back as a unit, and a retry of an abandoned request replays its answer.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::problem::{ApiError, ErrorCode};

pub async fn run_to_completion(request: Request, next: Next) -> Response {
    let task = tokio::spawn(next.run(request).in_current_span());
    match task.await {
        Ok(response) => response,
        // Handed on to the panic layer outside, which answers with a problem.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => {
            ApiError::new(ErrorCode::Unavailable, "the server is shutting down").into_response()
        }
    }
}
