//! Signed requests from tests: a key's id and secret, and requests signed with them exactly as
//! `API.md` describes (through the domain's signing function, which clients share).

use clientele_domain::Role;
use clientele_domain::signing::{sign, string_to_sign};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::TestHub;

/// An API key as a signing client holds it.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub id: String,
    pub secret: String,
}

impl TestHub {
    /// Creates a key with this role (through the API) and returns its id and secret.
    pub async fn create_key_pair(&self, role: Role) -> KeyPair {
        let response = self
            .post("/v1/api-keys")
            .json(&json!({"name": format!("{} key", role.as_str()), "role": role.as_str()}))
            .send()
            .await
            .expect("create key");
        assert_eq!(response.status(), 201, "creating a key");
        let body: Value = response.json().await.expect("key json");
        KeyPair {
            id: body["id"].as_str().expect("id").to_owned(),
            secret: body["secret"].as_str().expect("secret").to_owned(),
        }
    }

    /// A request signed now with a fresh nonce; the body (if any) is sent as JSON.
    pub fn signed(&self, key: &KeyPair, method: Method, path: &str, body: &[u8]) -> RequestBuilder {
        let nonce = format!("n{}", ulid::Ulid::new());
        self.signed_with(key, method, path, body, unix_now(), &nonce)
    }

    /// A request signed with this timestamp and nonce, without a bearer secret.
    pub fn signed_with(
        &self,
        key: &KeyPair,
        method: Method,
        path: &str,
        body: &[u8],
        timestamp: i64,
        nonce: &str,
    ) -> RequestBuilder {
        let timestamp = timestamp.to_string();
        let sts = string_to_sign(method.as_str(), path, &timestamp, nonce, body);
        let signature = sign(key.secret.as_bytes(), sts.as_bytes());
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("X-Clientele-Key", &key.id)
            .header("X-Clientele-Timestamp", timestamp)
            .header("X-Clientele-Nonce", nonce)
            .header("X-Clientele-Signature", signature);
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        request
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
