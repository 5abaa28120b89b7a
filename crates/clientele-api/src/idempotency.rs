//! `Idempotency-Key` on POST, PUT, PATCH and DELETE: for 24 hours, per API key, a repeat of the
//! same request (method, path and body) gets the first response again with
//! `Idempotent-Replayed: true` and changes nothing; the key with another request is 422; a repeat
//! while the first still runs is 409.
//!
//! The middleware claims the key in the database (so it holds across restarts and across hub
//! processes) before the handler runs. Handlers whose success writes data record the response in
//! the same transaction as the write ([`IdempotencyContext::completion`]), so a write is never
//! committed without the response its retry replays. Refusals, which write nothing, are
//! recorded afterwards here; server errors, 415s (a wrong `Content-Type`, which the
//! fingerprint does not cover), refusals for want of rights (403) and of rate (429: a request
//! whose passwords are over its key's budget) release the key, so that the request may be
//! retried and a key without rights stores nothing.
//! A request whose client went away still runs to its end ([`crate::detach`]), so its retry
//! replays its answer. A request whose key a retry took over (its process taken for gone, see
//! the store's claim rules) commits nothing: recording its response is refused, and its
//! transaction rolls back with it (409).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clientele_domain::{
    ClaimOutcome, Completion, DomainError, IdempotencyClaim, StoredResponse, Timestamp,
};

use crate::auth::Caller;
use crate::extract::read_body;
use crate::problem::{ApiError, ErrorCode};
use crate::response::replay;
use crate::state::AppState;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Marks a stored body encrypted under the master key (it held a secret); never sent.
const SEALED: &str = "x-clientele-sealed";
const MAX_KEY_LENGTH: usize = 255;

/// The claimed key of the request being handled, for handlers to complete in their transaction.
#[derive(Clone, Debug)]
pub struct IdempotencyContext {
    pub claim: IdempotencyClaim,
    completed: Arc<AtomicBool>,
}

impl IdempotencyContext {
    /// The completion to pass to the store; once the store succeeded with it, call
    /// [`IdempotencyContext::completed`].
    pub fn completion<'a, T>(
        &'a self,
        render: &'a (dyn Fn(&T) -> StoredResponse + Send + Sync),
    ) -> Completion<'a, T> {
        Completion {
            claim: &self.claim,
            render,
        }
    }

    pub fn completed(&self) {
        self.completed.store(true, Ordering::Release);
    }
}

/// The idempotency context of the request, if it carries a claimed key.
pub struct Idempotency(pub Option<IdempotencyContext>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Idempotency(
            parts.extensions.get::<IdempotencyContext>().cloned(),
        ))
    }
}

impl Idempotency {
    /// The store completion for this request, rendering with `render`.
    pub fn completion<'a, T>(
        &'a self,
        render: &'a (dyn Fn(&T) -> StoredResponse + Send + Sync),
    ) -> Option<Completion<'a, T>> {
        self.0.as_ref().map(|context| context.completion(render))
    }

    pub fn completed(&self) {
        if let Some(context) = &self.0 {
            context.completed();
        }
    }
}

pub(crate) async fn middleware(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let Some(header) = request.headers().get(&IDEMPOTENCY_KEY).filter(|_| mutating) else {
        return next.run(request).await;
    };
    if request
        .headers()
        .get_all(&IDEMPOTENCY_KEY)
        .iter()
        .nth(1)
        .is_some()
    {
        return ApiError::header("Idempotency-Key", "Idempotency-Key may be given only once")
            .into_response();
    }
    let key = match header.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LENGTH => key.to_owned(),
        _ => {
            return ApiError::header(
                "Idempotency-Key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters"),
            )
            .into_response();
        }
    };
    match claim_and_run(&state, key, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn claim_and_run(
    state: &AppState,
    key: String,
    request: Request,
    next: Next,
) -> Result<Response, Response> {
    let (mut parts, body) = request.into_parts();
    let caller = Caller::from_request_parts(&mut parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let bytes = read_body(body, state.config().max_body_bytes)
        .await
        .map_err(IntoResponse::into_response)?;
    let claim = IdempotencyClaim {
        api_key: caller.key.id,
        key,
        fingerprint: fingerprint(state, &parts, &bytes),
        at: Timestamp::now(),
    };
    parts.extensions.insert(caller);
    let store = state.store();
    match store.claim_idempotency(&claim).await.map_err(problem)? {
        ClaimOutcome::Replay(stored) => return Ok(replayed(state, stored)),
        ClaimOutcome::InFlight => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyInFlight,
                "a request with this Idempotency-Key is still running; retry later",
            )
            .into_response());
        }
        ClaimOutcome::Reused => {
            let mut error = ApiError::field(
                "Idempotency-Key",
                "idempotency_key_reused",
                "this key was used with a different request (method, path or body)",
            );
            error.code = ErrorCode::IdempotencyKeyReused;
            return Err(error.into_response());
        }
        ClaimOutcome::Claimed => {}
    }

    let context = IdempotencyContext {
        claim,
        completed: Arc::new(AtomicBool::new(false)),
    };
    parts.extensions.insert(context.clone());
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if context.completed.load(Ordering::Acquire) {
        return Ok(response);
    }
    // A server error, or a body sent with the wrong Content-Type (which the fingerprint does not
    // cover: a client that fixes the header and retries must not get the refusal back), is not
    // kept: the key may be used again. Nor is a refusal for want of rights: a key that may do
    // nothing must not fill the table with the rows of its refused attempts. Nor a 429, which
    // asks for the same request again later.
    let status = response.status();
    // (A 401 never gets here: the caller is authenticated before the key is claimed.)
    let kept = !(status.is_server_error()
        || status == StatusCode::UNSUPPORTED_MEDIA_TYPE
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::TOO_MANY_REQUESTS);
    if !kept {
        release(state, context.claim).await;
        return Ok(response);
    }
    record(state, &context.claim, response).await
}

/// How often a failed release is tried again, and the longest wait between two tries: a few
/// minutes in all, well within the lease after which another request may take the key over.
const RELEASE_RETRIES: u32 = 12;
const RELEASE_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Gives the key back, so that the request may be sent again. What made the response a server
/// error (a database that refuses sessions) often fails the release too; it is then tried again
/// in the background, with backoff, rather than leaving a retry refused as "in flight" until
/// the claim's lease ends.
async fn release(state: &AppState, claim: IdempotencyClaim) {
    let Err(error) = state.store().release_idempotency(&claim).await else {
        return;
    };
    tracing::warn!(error = %error, "releasing an idempotency key failed; trying again");
    let state = state.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        for _ in 0..RELEASE_RETRIES {
            tokio::time::sleep(delay).await;
            match state.store().release_idempotency(&claim).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "releasing an idempotency key failed again");
                }
            }
            delay = (delay * 2).min(RELEASE_BACKOFF_CAP);
        }
        tracing::error!("an idempotency key stays claimed until its lease ends");
    });
}

/// Stores a response the handler did not record itself (a refusal, which wrote nothing), then
/// returns it.
async fn record(
    state: &AppState,
    claim: &IdempotencyClaim,
    response: Response,
) -> Result<Response, Response> {
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX)
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "internal error").into_response())?;
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != "x-request-id")
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers,
        body: bytes.to_vec(),
    };
    match state.store().complete_idempotency(claim, &stored).await {
        Ok(()) => {}
        // A retry runs the request now, and its answer is the one kept.
        Err(DomainError::IdempotencyKeyTakenOver) => {
            tracing::info!("an idempotency key was taken over by a retry before its answer");
        }
        Err(error) => {
            // Not recorded, so not replayable: the key is given back rather than left in flight.
            tracing::error!(error = %error, "recording an idempotent response failed");
            release(state, claim.clone()).await;
        }
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// A response whose body holds a secret, as stored for replays: encrypted under the master key.
pub fn sealed(state: &AppState, mut response: StoredResponse) -> StoredResponse {
    response.body = state.master_key().encrypt(&response.body);
    response.headers.push((SEALED.to_owned(), "1".to_owned()));
    response
}

fn replayed(state: &AppState, mut stored: StoredResponse) -> Response {
    if let Some(position) = stored.headers.iter().position(|(name, _)| name == SEALED) {
        stored.headers.remove(position);
        match state.master_key().decrypt(&stored.body) {
            Ok(body) => stored.body = body,
            Err(_) => {
                tracing::error!(
                    "a sealed idempotent response does not decrypt under this master key"
                );
                return ApiError::new(ErrorCode::Internal, "internal error").into_response();
            }
        }
    }
    let mut response = replay(stored);
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The keyed hash of method, path with query, and body (see [`crate::secrets::MasterKey`]): a
/// body may carry a password.
fn fingerprint(state: &AppState, parts: &Parts, body: &[u8]) -> Vec<u8> {
    let path = crate::key_paths::sent_path_and_query(parts);
    let parts: [&[u8]; 3] = [parts.method.as_str().as_bytes(), path.as_bytes(), body];
    state.master_key().fingerprint(&parts).to_vec()
}

/// Forgets idempotency keys older than their 24 hours, every `every`, until the process stops.
pub async fn purge_expired(state: AppState, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let cutoff = Timestamp::from_micros(
            Timestamp::now().as_micros() - clientele_domain::store::IDEMPOTENCY_TTL_MICROS,
        );
        match state.store().purge_idempotency(cutoff).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "forgot expired idempotency keys"),
            Err(error) => tracing::warn!(error = %error, "purging idempotency keys failed"),
        }
    }
}

fn problem(error: clientele_domain::DomainError) -> Response {
    ApiError::from(error).into_response()
}
