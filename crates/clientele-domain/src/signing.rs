//! The signed-request scheme of `API.md` ("Authentication"), written once for the hub and for
//! clients: the string to sign, its lower-case hex HMAC-SHA256, and the constant-time check.
//! Pure: no clock, no storage; the window and the replay record are the hub's business.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Header naming the key a request is signed with.
pub const KEY_HEADER: &str = "x-clientele-key";
/// Header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-clientele-timestamp";
/// Header carrying the request's one-time nonce.
pub const NONCE_HEADER: &str = "x-clientele-nonce";
/// Header carrying the hex signature.
pub const SIGNATURE_HEADER: &str = "x-clientele-signature";
/// How far (either way) a signed request's timestamp may be from the server clock.
pub const WINDOW_SECONDS: i64 = 300;

/// `METHOD \n PATH_AND_QUERY \n TIMESTAMP \n NONCE \n hex(SHA-256(body))`.
pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_hash}")
}

/// Lower-case hex HMAC-SHA256 of `string_to_sign` under `secret`.
pub fn sign(secret: &[u8], string_to_sign: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(string_to_sign);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a hex HMAC-SHA256 signature in constant time (`hmac`'s `verify_slice`); false for
/// non-hex or a wrong length.
pub fn verify(secret: &[u8], string_to_sign: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    if signature.len() != 32 {
        return false;
    }
    let mut mac = new_mac(secret);
    mac.update(string_to_sign);
    mac.verify_slice(&signature).is_ok()
}

/// Whether a nonce has the documented shape: 8 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_nonce(nonce: &str) -> bool {
    (8..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Whether a timestamp (Unix seconds) is within [`WINDOW_SECONDS`] of `now` (Unix seconds).
pub fn within_window(timestamp: i64, now: i64) -> bool {
    timestamp.abs_diff(now) <= WINDOW_SECONDS.unsigned_abs()
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length (long keys are hashed).
        Err(_) => unreachable!("HMAC-SHA256 rejected a key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed vector computed independently (Python's `hmac` and `hashlib`), so that a client
    /// in another language can check its implementation against the same numbers.
    #[test]
    fn fixed_vector() {
        let sts = string_to_sign(
            "POST",
            "/v1/customers?upsert=email",
            "1700000000",
            "nonce-0001",
            br#"{"email":"a@example.com"}"#,
        );
        assert_eq!(
            sts,
            "POST\n/v1/customers?upsert=email\n1700000000\nnonce-0001\n\
             7f777fc16f227ee680879e727d3570771de182ef1de65af190f52b4dc878e6ed"
        );
        let signature = sign(b"ck_test_vector_secret", sts.as_bytes());
        assert_eq!(
            signature,
            "4cdfb2f59c7cf7e84870621b776e6ddf051bf587a3be56ac284491dfba0ffa3a"
        );
        assert!(verify(b"ck_test_vector_secret", sts.as_bytes(), &signature));
    }

    #[test]
    fn hmac_sha256_known_answer() {
        let message = b"The quick brown fox jumps over the lazy dog";
        let expected = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        assert_eq!(sign(b"key", message), expected);
        assert!(verify(b"key", message, expected));
    }

    #[test]
    fn empty_body_hashes_the_empty_string() {
        assert_eq!(
            string_to_sign(
                "GET",
                "/v1/customers?limit=10",
                "1700000000",
                "abcDEF12_-",
                b""
            ),
            "GET\n/v1/customers?limit=10\n1700000000\nabcDEF12_-\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn nonce_shape_and_window() {
        assert!(is_valid_nonce("abcDEF12"));
        assert!(is_valid_nonce(&"a".repeat(64)));
        assert!(!is_valid_nonce("short"));
        assert!(!is_valid_nonce(&"a".repeat(65)));
        assert!(!is_valid_nonce("has space"));
        assert!(!is_valid_nonce("dots.are.out"));
        assert!(within_window(1000, 1300));
        assert!(within_window(1300, 1000));
        assert!(!within_window(1000, 1301));
        assert!(!within_window(i64::MIN, i64::MAX));
    }

    #[test]
    fn verify_refuses_tampering() {
        let good = sign(b"key", b"message");
        assert!(!verify(b"other", b"message", &good));
        assert!(!verify(b"key", b"messagE", &good));
        assert!(!verify(b"key", b"message", &good[..62]));
        assert!(!verify(b"key", b"message", "zz"));
        assert!(!verify(b"key", b"message", ""));
    }
}
