//! A typed client for the Clientele hub API (`API.md`): bearer or signed requests, retries with
//! exponential backoff and jitter on network errors, 429 (honouring `Retry-After`) and 5xx, and an
//! `Idempotency-Key` on every mutating call so a retry never applies anything twice.
//!
//! The client speaks JSON values for customers on purpose: the hub's customer is an open,
//! evolving shape (custom fields, write-only fields), and the agent moves whole rows through it.
//! The envelopes around them (sync results, the change feed, problems) are typed.

mod auth;
mod retry;
mod types;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use auth::Credentials;
pub use retry::RetryPolicy;
pub use types::*;

/// What went wrong with a call, once retries are spent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be reached (connection refused, DNS, timeout...).
    #[error("the hub at {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The hub answered with a problem (4xx, or 5xx after the retries).
    #[error("the hub refused {method} {path}: {status} {}", problem_summary(.problem))]
    Problem {
        method: Method,
        path: String,
        status: u16,
        problem: Box<Problem>,
    },
    /// The hub answered 2xx with a body this client cannot read.
    #[error("unexpected response from {path}: {message}")]
    Decode { path: String, message: String },
}

fn problem_summary(problem: &Problem) -> String {
    let mut text = problem.code.clone().unwrap_or_default();
    if let Some(detail) = &problem.detail {
        text.push_str(": ");
        text.push_str(detail);
    }
    text
}

impl ClientError {
    /// The HTTP status the hub answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The hub still runs (or, after a crash, holds until its lease ends) a request with the same
    /// `Idempotency-Key`.
    pub fn is_idempotency_in_flight(&self) -> bool {
        self.problem()
            .is_some_and(|problem| problem.code.as_deref() == Some("idempotency_in_flight"))
    }

    /// The hub's problem object, if it answered with one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// A 2xx response: status, the decoded body and whether it was an idempotent replay.
#[derive(Debug)]
pub struct Response<T> {
    pub status: u16,
    pub body: T,
    pub replayed: bool,
}

/// One hub, one set of credentials.
#[derive(Clone, Debug)]
pub struct Client {
    base_url: String,
    credentials: Credentials,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl Client {
    /// A client for the hub at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, credentials: Credentials) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: base_url.to_owned(),
                source,
            })?;
        Ok(Client {
            base_url: base_url.trim_end_matches('/').to_owned(),
            credentials,
            http,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Client {
        self.retry = retry;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /v1/customers/sync`: the batch is applied once even if this call is retried, since
    /// it carries `idempotency_key`.
    pub async fn sync_customers(
        &self,
        request: &SyncRequest<'_>,
        idempotency_key: &str,
    ) -> Result<Response<SyncResponse>, ClientError> {
        let body = serde_json::to_vec(request).map_err(|error| ClientError::Decode {
            path: "/v1/customers/sync".into(),
            message: error.to_string(),
        })?;
        self.send(
            Method::POST,
            "/v1/customers/sync",
            Some(body),
            Some(idempotency_key),
            &[],
        )
        .await
    }

    /// `GET /v1/changes`.
    pub async fn changes(
        &self,
        after: i64,
        limit: u32,
        wait: Option<u32>,
    ) -> Result<ChangePage, ClientError> {
        let mut path = format!("/v1/changes?after={after}&limit={limit}");
        if let Some(wait) = wait {
            path.push_str(&format!("&wait={wait}"));
        }
        Ok(self.send(Method::GET, &path, None, None, &[]).await?.body)
    }

    /// `GET /v1/customers/{id}`.
    pub async fn get_customer(&self, id: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/customers/{}", encode_segment(id));
        Ok(self.send(Method::GET, &path, None, None, &[]).await?.body)
    }

    /// `GET /v1/customers/{key}/{value}`: the customer a unique key (`external_id`, `email`,
    /// `username`) names.
    pub async fn get_customer_by(&self, key: &str, value: &str) -> Result<Value, ClientError> {
        let path = format!(
            "/v1/customers/{}/{}",
            encode_segment(key),
            encode_segment(value)
        );
        Ok(self.send(Method::GET, &path, None, None, &[]).await?.body)
    }

    /// `POST /v1/customers`: create, 201 + the customer.
    pub async fn create_customer(
        &self,
        body: &Value,
        idempotency_key: &str,
    ) -> Result<Response<Value>, ClientError> {
        self.send_json(Method::POST, "/v1/customers", body, idempotency_key, &[])
            .await
    }

    /// `PATCH /v1/customers/{id}`, with `If-Match` when `expected_version` is given.
    pub async fn patch_customer(
        &self,
        id: &str,
        body: &Value,
        expected_version: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Response<Value>, ClientError> {
        let path = format!("/v1/customers/{}", encode_segment(id));
        let if_match = expected_version.map(|version| format!("\"{version}\""));
        let headers: Vec<(&str, &str)> = if_match
            .as_deref()
            .map(|value| vec![("if-match", value)])
            .unwrap_or_default();
        self.send_json(Method::PATCH, &path, body, idempotency_key, &headers)
            .await
    }

    /// `POST /v1/api-keys` (admin only).
    pub async fn create_api_key(
        &self,
        body: &Value,
        idempotency_key: &str,
    ) -> Result<Response<Value>, ClientError> {
        self.send_json(Method::POST, "/v1/api-keys", body, idempotency_key, &[])
            .await
    }

    /// Any call: JSON body in, JSON body out. For endpoints this client has no typed method for.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Response<T>, ClientError> {
        let body = body.map(|value| serde_json::to_vec(value).unwrap_or_default());
        self.send(method, path_and_query, body, idempotency_key, &[])
            .await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        idempotency_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<T>, ClientError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.send(method, path, Some(body), Some(idempotency_key), headers)
            .await
    }

    /// One call with its retries. The body is built once and re-sent as is, so a retried
    /// mutating call carries the same `Idempotency-Key` over the same bytes and is replayed.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Response<T>, ClientError> {
        let url = format!("{}{}", self.base_url, path_and_query);
        let mut attempt = 0u32;
        let mut throttled = 0u32;
        loop {
            let mut builder = self.http.request(method.clone(), &url);
            let bytes = body.as_deref().unwrap_or_default();
            for (name, value) in self
                .credentials
                .headers(method.as_str(), path_and_query, bytes)
            {
                builder = builder.header(name, value);
            }
            if let Some(key) = idempotency_key {
                builder = builder.header("idempotency-key", key);
            }
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if let Some(body) = &body {
                builder = builder
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let outcome = builder.send().await;
            let response = match outcome {
                Ok(response) => response,
                Err(source) => {
                    if let Some(delay) = self.retry.delay(attempt, None) {
                        tracing::debug!(%url, %source, attempt, "network error, retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(ClientError::Unreachable { url, source });
                }
            };
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = retry::retry_after(response.headers());
                if let Some(delay) = self.retry.throttled_delay(throttled, retry_after) {
                    tracing::debug!(%url, throttled, "rate limited, waiting");
                    tokio::time::sleep(delay).await;
                    throttled += 1;
                    continue;
                }
            } else if retryable(status) {
                let retry_after = retry::retry_after(response.headers());
                if let Some(delay) = self.retry.delay(attempt, retry_after) {
                    tracing::debug!(%url, %status, attempt, "retryable status, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
            }
            let decoded = decode(method.clone(), path_and_query, response).await;
            // A few short waits only: a first attempt whose client died holds its key until the
            // hub's lease runs out, and callers that can use a fresh key would rather do so.
            if in_flight_elsewhere(&decoded)
                && attempt < IN_FLIGHT_RETRIES
                && let Some(delay) = self.retry.delay(attempt, None)
            {
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            return decoded;
        }
    }
}

const IN_FLIGHT_RETRIES: u32 = 3;

/// A retry whose first attempt (lost on the network) is still running on the hub gets 409: it is
/// worth waiting for, since the next try gets the first attempt's replay.
fn in_flight_elsewhere<T>(decoded: &Result<Response<T>, ClientError>) -> bool {
    matches!(decoded, Err(ClientError::Problem { problem, .. })
        if problem.code.as_deref() == Some("idempotency_in_flight"))
}

/// 5xx is worth another try (429 is waited out apart); other statuses are the hub's answer.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
}

async fn decode<T: DeserializeOwned>(
    method: Method,
    path: &str,
    response: reqwest::Response,
) -> Result<Response<T>, ClientError> {
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => {
            return Err(ClientError::Decode {
                path: path.to_owned(),
                message: error.to_string(),
            });
        }
    };
    if status.is_success() {
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        let body = serde_json::from_slice(bytes).map_err(|error| ClientError::Decode {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        return Ok(Response {
            status: status.as_u16(),
            body,
            replayed,
        });
    }
    let problem = serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| Problem {
        status: Some(status.as_u16()),
        title: status.canonical_reason().map(str::to_owned),
        detail: Some(String::from_utf8_lossy(&bytes).chars().take(500).collect()),
        ..Problem::default()
    });
    Err(ClientError::Problem {
        method,
        path: path.to_owned(),
        status: status.as_u16(),
        problem: Box::new(problem),
    })
}

/// Percent-encodes one path segment (a customer id or key value).
pub fn encode_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
