//! A response rendered to bytes: what handlers answer with, and exactly what an idempotent
//! replay answers with later.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clientele_domain::StoredResponse;
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct Rendered {
    pub status: StatusCode,
    /// Headers besides the content type, e.g. `ETag`, `Location`.
    pub headers: Vec<(HeaderName, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Rendered {
    pub fn json(status: StatusCode, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub fn serialize(status: StatusCode, value: &impl Serialize) -> Self {
        Self::json(status, serde_json::to_vec(value).unwrap_or_default())
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            content_type: "",
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The form kept for idempotent replays.
    pub fn to_stored(&self) -> StoredResponse {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
            .collect();
        if !self.content_type.is_empty() {
            headers.push((
                CONTENT_TYPE.as_str().to_owned(),
                self.content_type.to_owned(),
            ));
        }
        StoredResponse {
            status: self.status.as_u16(),
            headers,
            body: self.body.clone(),
        }
    }
}

impl IntoResponse for Rendered {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if !self.content_type.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        }
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// A stored response as an HTTP response again.
pub fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}
