//! Signed requests (`API.md`, "Authentication"): `X-Clientele-Key`, `-Timestamp`, `-Nonce` and
//! `-Signature` instead of a bearer secret. The signature covers the body hash, so this
//! middleware buffers the body (bounded by the body limit), checks the timestamp window, the
//! HMAC (in constant time) and then records the nonce in the database, so that a signature is
//! accepted once even across several hub processes. The verified key goes into the request
//! extensions as the [`Caller`], where every later layer and extractor finds it.
//!
//! A nonce is spent by a request that had (or may have had) an effect. A server error changed
//! nothing, since every write commits its whole effect in one transaction, so its nonce is
//! released and the client may send the very same signed request again; the exception is a
//! failed commit ([`OutcomeUnknown`]), which may have applied, so its nonce stays spent. While a
//! request runs its nonce is held, so a concurrent copy is refused.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clientele_domain::signing::{
    self, KEY_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WINDOW_SECONDS,
};
use clientele_domain::{ApiKeyId, Timestamp, ValidationErrors};

use crate::auth::Caller;
use crate::extract::read_body;
use crate::problem::{ApiError, ErrorCode, OutcomeUnknown};
use crate::state::AppState;

/// The names of the signed-request headers as documented (problems name them so).
const KEY: &str = "X-Clientele-Key";
const TIMESTAMP: &str = "X-Clientele-Timestamp";
const NONCE: &str = "X-Clientele-Nonce";
const SIGNATURE: &str = "X-Clientele-Signature";

pub(crate) async fn middleware(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let signed = [KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER]
        .iter()
        .any(|name| headers.contains_key(*name));
    if !signed {
        return next.run(request).await;
    }
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        // Which of two credentials counts would be a guess (a proxy's bearer beside the
        // client's signature, say), so neither does.
        return crate::auth::unauthorized(
            "send one credential: a signature or an Authorization bearer key, not both",
        )
        .into_response();
    }
    let (request, key, nonce) = match verify(&state, request).await {
        Ok(verified) => verified,
        Err(error) => return error.into_response(),
    };
    let response = next.run(request).await;
    // A server error changed nothing (its transaction rolled back), unless its commit went
    // unconfirmed: then the nonce stays spent, as a replay could apply the request twice.
    if response.status().is_server_error()
        && response.extensions().get::<OutcomeUnknown>().is_none()
        && let Err(error) = state.store().release_nonce(key, &nonce).await
    {
        tracing::error!(error = %error, "releasing a signed request's nonce failed");
    }
    response
}

/// The request with its body buffered again and its [`Caller`] set, with the key and the nonce
/// it spent; or the 401 to answer.
async fn verify(
    state: &AppState,
    request: Request,
) -> Result<(Request, ApiKeyId, String), ApiError> {
    let now = Timestamp::now();
    let (mut parts, body) = request.into_parts();
    let key_id = header(&parts.headers, KEY_HEADER, KEY)?;
    let timestamp = header(&parts.headers, TIMESTAMP_HEADER, TIMESTAMP)?;
    let nonce = header(&parts.headers, NONCE_HEADER, NONCE)?;
    let signature = header(&parts.headers, SIGNATURE_HEADER, SIGNATURE)?;

    let seconds = parse_seconds(timestamp).ok_or_else(|| {
        refused(
            ErrorCode::SignatureInvalid,
            TIMESTAMP,
            "must be Unix seconds",
        )
    })?;
    if !signing::within_window(seconds, now.as_micros().div_euclid(1_000_000)) {
        return Err(refused(
            ErrorCode::SignatureExpired,
            TIMESTAMP,
            &format!("more than {WINDOW_SECONDS} s away from the server clock; sign anew"),
        ));
    }
    if !signing::is_valid_nonce(nonce) {
        return Err(refused(
            ErrorCode::SignatureInvalid,
            NONCE,
            "must be 8 to 64 characters of [A-Za-z0-9_-]",
        ));
    }
    let unknown_key = || {
        refused(
            ErrorCode::SignatureInvalid,
            KEY,
            "the API key is unknown or revoked",
        )
    };
    let id: ApiKeyId = key_id.parse().map_err(|_| unknown_key())?;
    let key = state
        .store()
        .api_key_by_id(id)
        .await?
        .ok_or_else(unknown_key)?;
    let secret = state
        .master_key()
        .decrypt(&key.secret_encrypted)
        .map_err(|_| {
            tracing::error!(key = %key.id, "a stored key secret does not decrypt under this master key");
            ApiError::new(ErrorCode::Internal, "internal error")
        })?;

    let bytes = read_body(body, state.config().max_body_bytes).await?;
    let path_and_query = crate::key_paths::sent_path_and_query(&parts);
    let string_to_sign = signing::string_to_sign(
        parts.method.as_str(),
        path_and_query,
        timestamp,
        nonce,
        &bytes,
    );
    if !signing::verify(&secret, string_to_sign.as_bytes(), signature) {
        return Err(refused(
            ErrorCode::SignatureInvalid,
            SIGNATURE,
            "does not match HMAC-SHA256(secret, string_to_sign)",
        ));
    }
    // Only a verified request spends its nonce: a forger cannot burn a client's nonces.
    if !state.store().record_nonce(key.id, nonce, now).await? {
        return Err(refused(
            ErrorCode::SignatureReplayed,
            NONCE,
            "this nonce was used already; every signed request needs a new one",
        ));
    }
    let (id, nonce) = (key.id, nonce.to_owned());
    parts.extensions.insert(Caller { key });
    Ok((Request::from_parts(parts, Body::from(bytes)), id, nonce))
}

fn header<'a>(headers: &'a HeaderMap, name: &str, shown: &str) -> Result<&'a str, ApiError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or_else(|| {
        refused(
            ErrorCode::SignatureMissing,
            shown,
            "a signed request needs X-Clientele-Key, -Timestamp, -Nonce and -Signature",
        )
    })?;
    if values.next().is_some() {
        return Err(refused(
            ErrorCode::SignatureInvalid,
            shown,
            "given more than once",
        ));
    }
    value
        .to_str()
        .map_err(|_| refused(ErrorCode::SignatureInvalid, shown, "not valid text"))
}

/// Unix seconds as plain decimal digits (an optional leading `-` aside, nothing else).
fn parse_seconds(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn refused(code: ErrorCode, header: &str, message: &str) -> ApiError {
    let mut error = ApiError::invalid(ValidationErrors::single(
        header.to_owned(),
        code.as_str(),
        message.to_owned(),
    ));
    error.code = code;
    error.detail = format!("{header}: {message}");
    error
}

/// How much longer than 2 × the window a nonce is kept: the window is checked on whole seconds
/// of the server clock, and hub processes sharing one database have clocks apart.
const NONCE_MARGIN_SECONDS: i64 = 60;

/// Forgets nonces that no acceptable request can carry any more, every `every`, until the
/// process stops. A timestamp is acceptable for 2 × the window around itself, so a nonce seen
/// at `t` can only be replayed before `t` + 2 × window (plus the margin).
pub async fn purge_expired(state: AppState, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let kept = 2 * WINDOW_SECONDS + NONCE_MARGIN_SECONDS;
        let cutoff = Timestamp::from_micros(Timestamp::now().as_micros() - kept * 1_000_000);
        match state.store().purge_nonces(cutoff).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "forgot expired signed-request nonces"),
            Err(error) => tracing::warn!(error = %error, "purging signed-request nonces failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_plain_digits() {
        assert_eq!(parse_seconds("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_seconds("-5"), Some(-5));
        assert_eq!(parse_seconds(""), None);
        assert_eq!(parse_seconds("+5"), None);
        assert_eq!(parse_seconds("1.5"), None);
        assert_eq!(parse_seconds(" 5"), None);
        assert_eq!(parse_seconds("9999999999999999999999"), None);
    }
}
