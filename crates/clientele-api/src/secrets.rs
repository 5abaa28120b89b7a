//! API key secrets, request signatures and the master key.
//!
//! This module owns every piece of cryptography behind API keys:
//!
//! - [`generate_secret`] makes a new bearer secret (`ck_` + 43 characters of URL-safe base64).
//! - [`MasterKey::lookup_hash`] turns a bearer secret into the value stored in the database to
//!   find its key, so the secret itself is never stored in plain text.
//! - [`MasterKey::encrypt`] / [`MasterKey::decrypt`] keep the secret itself encrypted
//!   (ChaCha20-Poly1305), because signed requests need it back to check an HMAC signature.
//! - [`string_to_sign`], [`sign`] and [`verify_signature`] implement the signed-request scheme of
//!   `API.md` ("Authentication").
//!
//! # Where the master key lives
//!
//! The master key never lives in the database. At start-up the hub takes it from:
//!
//! 1. the environment variable `CLIENTELE_MASTER_KEY` (64 hex characters), if set; otherwise
//! 2. the file named by `--master-key-file` / `CLIENTELE_MASTER_KEY_FILE`, by default
//!    `clientele.key` in the working directory. If that file does not exist it is created on
//!    first start, with mode 0600, holding a fresh random key as 64 hex characters.
//!
//! Several hub processes sharing one PostgreSQL database must all use the same master key
//! (set the same `CLIENTELE_MASTER_KEY`, or point them at the same file). Back the key up:
//! losing or changing it invalidates every stored API key (bearer lookups stop matching and
//! stored secrets can no longer be decrypted), and they must then be re-issued.
//!
//! Three purpose-specific subkeys are derived from the master key
//! (`HMAC-SHA256(master, "clientele lookup v1")`, `… "clientele encrypt v1"` and
//! `… "clientele fingerprint v1"`) so the same key bytes are never used for two purposes.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use rand::rngs::OsRng;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable holding the master key as 64 hex characters.
pub const MASTER_KEY_ENV: &str = "CLIENTELE_MASTER_KEY";
/// Environment variable naming the master key file (also `--master-key-file`).
pub const MASTER_KEY_FILE_ENV: &str = "CLIENTELE_MASTER_KEY_FILE";
/// Master key file used when neither the environment nor the command line names one.
pub const DEFAULT_MASTER_KEY_FILE: &str = "clientele.key";
/// Prefix of every API key bearer secret.
pub const SECRET_PREFIX: &str = "ck_";

const MASTER_KEY_LEN: usize = 32;
const MASTER_KEY_HEX_LEN: usize = 2 * MASTER_KEY_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const LOOKUP_LABEL: &[u8] = b"clientele lookup v1";
const ENCRYPT_LABEL: &[u8] = b"clientele encrypt v1";
const FINGERPRINT_LABEL: &[u8] = b"clientele fingerprint v1";

/// Errors of this module. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "master key from {origin} must be {MASTER_KEY_HEX_LEN} hex characters (32 bytes), found {found} characters"
    )]
    MasterKeyLength { origin: String, found: usize },
    #[error(
        "master key from {origin} is not valid hex (expected {MASTER_KEY_HEX_LEN} characters 0-9, a-f)"
    )]
    MasterKeyNotHex { origin: String },
    #[error("cannot read master key file {}: {error}", path.display())]
    MasterKeyRead { path: PathBuf, error: io::Error },
    #[error("cannot create master key file {}: {error}", path.display())]
    MasterKeyCreate { path: PathBuf, error: io::Error },
    #[error("cannot decrypt: the data is corrupt or was encrypted under a different master key")]
    Decrypt,
}

/// Where the master key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// 64 hex characters, normally the value of `CLIENTELE_MASTER_KEY`.
    Hex(String),
    /// A key file, created (mode 0600) with a random key if it does not exist.
    File(PathBuf),
}

impl MasterKeySource {
    /// The documented choice: `CLIENTELE_MASTER_KEY` if set and non-empty, else the given
    /// file (from `--master-key-file` / `CLIENTELE_MASTER_KEY_FILE`), else `clientele.key`.
    pub fn from_env(master_key_file: Option<PathBuf>) -> MasterKeySource {
        Self::choose(std::env::var(MASTER_KEY_ENV).ok(), master_key_file)
    }

    fn choose(env_hex: Option<String>, master_key_file: Option<PathBuf>) -> MasterKeySource {
        match env_hex {
            Some(hex) if !hex.trim().is_empty() => MasterKeySource::Hex(hex),
            _ => MasterKeySource::File(
                master_key_file.unwrap_or_else(|| PathBuf::from(DEFAULT_MASTER_KEY_FILE)),
            ),
        }
    }
}

impl fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterKeySource::Hex(_) => f.write_str("Hex(..)"),
            MasterKeySource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The hub's 32-byte master key, held as its three derived subkeys.
#[derive(Clone)]
pub struct MasterKey {
    lookup_key: [u8; 32],
    encrypt_key: [u8; 32],
    fingerprint_key: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Builds a master key from its 32 raw bytes (tests, tools).
    pub fn from_bytes(master: [u8; MASTER_KEY_LEN]) -> MasterKey {
        MasterKey {
            lookup_key: hmac_sha256(&master, &[LOOKUP_LABEL]),
            encrypt_key: hmac_sha256(&master, &[ENCRYPT_LABEL]),
            fingerprint_key: hmac_sha256(&master, &[FINGERPRINT_LABEL]),
        }
    }

    /// Loads the master key; for [`MasterKeySource::File`] creates the file with a new random
    /// key if it does not exist. Blocking (file I/O): call it at start-up.
    pub fn load(config: &MasterKeySource) -> Result<MasterKey, SecretsError> {
        match config {
            MasterKeySource::Hex(hex) => parse_hex_key(hex, MASTER_KEY_ENV),
            MasterKeySource::File(path) => load_file(path),
        }
    }

    /// The value stored to find an API key by its bearer secret:
    /// HMAC-SHA256 of the secret under the lookup subkey.
    pub fn lookup_hash(&self, secret: &str) -> [u8; 32] {
        hmac_sha256(&self.lookup_key, &[secret.as_bytes()])
    }

    /// The stored fingerprint of a request (its parts, each followed by a newline): HMAC-SHA256
    /// under the fingerprint subkey. A bare hash would let anyone who reads the database test
    /// guesses of a password a request carried at hash speed, around Argon2.
    pub fn fingerprint(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = new_mac(&self.fingerprint_key);
        for part in parts {
            mac.update(part);
            mac.update(b"\n");
        }
        mac.finalize().into_bytes().into()
    }

    /// Encrypts with ChaCha20-Poly1305 under the encryption subkey and a random nonce.
    /// Output: 12-byte nonce followed by ciphertext and 16-byte tag.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.encrypt_key));
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = match cipher.encrypt(&Nonce::from(nonce), plaintext) {
            Ok(ciphertext) => ciphertext,
            // Only fails for plaintexts beyond ChaCha20's 256 GiB limit.
            Err(_) => unreachable!("ChaCha20-Poly1305 plaintext too long"),
        };
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Reverses [`MasterKey::encrypt`]; fails if the data was altered, truncated or
    /// encrypted under another master key.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, SecretsError> {
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Decrypt);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let cipher = ChaCha20Poly1305::new(&Key::from(self.encrypt_key));
        cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretsError::Decrypt)
    }
}

/// A new bearer secret: `ck_` + URL-safe base64 (no padding, 43 characters) of 32 random bytes.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 43);
    secret.push_str(SECRET_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut secret);
    secret
}

/// The signed-request scheme lives in the domain, where clients can reuse it.
pub use clientele_domain::signing::{sign, string_to_sign, verify as verify_signature};

/// Constant-time equality (for equal lengths; a length mismatch returns false early).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as hmac::Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length (long keys are hashed).
        Err(_) => unreachable!("HMAC-SHA256 rejected a key"),
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = new_mac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn parse_hex_key(text: &str, origin: &str) -> Result<MasterKey, SecretsError> {
    let text = text.trim();
    let found = text.chars().count();
    if found != MASTER_KEY_HEX_LEN {
        return Err(SecretsError::MasterKeyLength {
            origin: origin.to_owned(),
            found,
        });
    }
    let mut master = [0u8; MASTER_KEY_LEN];
    hex::decode_to_slice(text, &mut master).map_err(|_| SecretsError::MasterKeyNotHex {
        origin: origin.to_owned(),
    })?;
    Ok(MasterKey::from_bytes(master))
}

fn file_origin(path: &Path) -> String {
    format!("file {}", path.display())
}

fn read_key_file(path: &Path) -> Result<String, SecretsError> {
    fs::read_to_string(path).map_err(|error| SecretsError::MasterKeyRead {
        path: path.to_owned(),
        error,
    })
}

fn load_file(path: &Path) -> Result<MasterKey, SecretsError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            parse_hex_key(&text, &file_origin(path))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => create_key_file(path),
        Err(error) => Err(SecretsError::MasterKeyRead {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Creates the key file whole or not at all: the key is written and synced to a temporary file
/// beside it, then hard-linked to the final name, which fails if another process got there
/// first. So a process starting at the same moment never reads an empty or partial file, and
/// two processes starting together cannot end up with different keys: the loser reads the
/// winner's.
fn create_key_file(path: &Path) -> Result<MasterKey, SecretsError> {
    let create_error = |error| SecretsError::MasterKeyCreate {
        path: path.to_owned(),
        error,
    };
    let mut suffix = [0u8; 8];
    OsRng.fill_bytes(&mut suffix);
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", hex::encode(suffix)));
    let temporary = std::path::PathBuf::from(temporary);

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut master = [0u8; MASTER_KEY_LEN];
    OsRng.fill_bytes(&mut master);
    let contents = format!("{}\n", hex::encode(master));
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| fs::hard_link(&temporary, path));
    // The temporary name goes whatever happened; the key lives on under `path` if linked.
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            return parse_hex_key(&read_key_file(path)?, &file_origin(path));
        }
        Err(error) => return Err(create_error(error)),
    }
    sync_parent_dir(path);
    tracing::info!(path = %path.display(), "created a new master key file; back it up: losing it invalidates every API key");
    Ok(MasterKey::from_bytes(master))
}

/// Best effort: make the new directory entry durable.
fn sync_parent_dir(path: &Path) {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Ok(dir) = fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = fs::metadata(path) {
            let mode = metadata.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "master key file is accessible by group or others; consider chmod 600"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let mut random = [0u8; 8];
        OsRng.fill_bytes(&mut random);
        let dir = std::env::temp_dir().join(format!(
            "clientele-secrets-{name}-{}-{}",
            std::process::id(),
            hex::encode(random)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; 32])
    }

    #[test]
    fn encrypt_decrypt_round_trip() {
        let key = key(7);
        for plaintext in [&b""[..], b"x", b"ck_some-secret-value"] {
            let data = key.encrypt(plaintext);
            assert_eq!(data.len(), NONCE_LEN + plaintext.len() + TAG_LEN);
            assert_eq!(key.decrypt(&data).unwrap(), plaintext);
        }
    }

    #[test]
    fn encrypt_uses_a_fresh_nonce() {
        let key = key(7);
        assert_ne!(key.encrypt(b"same"), key.encrypt(b"same"));
    }

    #[test]
    fn decrypt_detects_tampering() {
        let key = key(7);
        let data = key.encrypt(b"ck_secret");
        for i in 0..data.len() {
            let mut tampered = data.clone();
            tampered[i] ^= 0x01;
            assert!(
                matches!(key.decrypt(&tampered), Err(SecretsError::Decrypt)),
                "byte {i}"
            );
        }
        assert!(key.decrypt(&data[..data.len() - 1]).is_err());
        assert!(key.decrypt(&data[..NONCE_LEN]).is_err());
        assert!(key.decrypt(&[]).is_err());
    }

    #[test]
    fn decrypt_fails_under_another_master_key() {
        let data = key(1).encrypt(b"ck_secret");
        assert!(matches!(key(2).decrypt(&data), Err(SecretsError::Decrypt)));
    }

    #[test]
    fn lookup_hash_depends_on_master_key_and_secret() {
        let a = key(1);
        let b = key(2);
        assert_eq!(a.lookup_hash("ck_one"), a.lookup_hash("ck_one"));
        assert_ne!(a.lookup_hash("ck_one"), b.lookup_hash("ck_one"));
        assert_ne!(a.lookup_hash("ck_one"), a.lookup_hash("ck_two"));
    }

    #[test]
    fn subkeys_differ_from_master_and_each_other() {
        let master = [9u8; 32];
        let key = MasterKey::from_bytes(master);
        assert_ne!(key.lookup_key, key.encrypt_key);
        assert_ne!(key.fingerprint_key, key.lookup_key);
        assert_ne!(key.fingerprint_key, key.encrypt_key);
        assert_ne!(key.fingerprint_key, master);
        assert_ne!(key.lookup_key, master);
        assert_ne!(key.encrypt_key, master);
        // The lookup hash is HMAC under the derived subkey, not under the master key itself.
        assert_ne!(key.lookup_hash("ck_x"), hmac_sha256(&master, &[b"ck_x"]));
    }

    #[test]
    fn debug_never_prints_key_material() {
        assert_eq!(format!("{:?}", key(0xab)), "MasterKey(..)");
        let hex = "ab".repeat(32);
        let source = MasterKeySource::Hex(hex.clone());
        assert!(!format!("{source:?}").contains(&hex));
    }

    #[test]
    fn hex_source_loads_and_tolerates_whitespace() {
        let hex = "0f".repeat(32);
        let a = MasterKey::load(&MasterKeySource::Hex(hex.clone())).unwrap();
        let b =
            MasterKey::load(&MasterKeySource::Hex(format!("  {}\n", hex.to_uppercase()))).unwrap();
        assert_eq!(a.lookup_hash("ck_x"), b.lookup_hash("ck_x"));
        assert_eq!(a.lookup_hash("ck_x"), key(0x0f).lookup_hash("ck_x"));
    }

    #[test]
    fn hex_source_errors() {
        let short = MasterKey::load(&MasterKeySource::Hex("ab".repeat(31))).unwrap_err();
        assert!(matches!(
            short,
            SecretsError::MasterKeyLength { found: 62, .. }
        ));
        assert!(short.to_string().contains(MASTER_KEY_ENV));

        let long = MasterKey::load(&MasterKeySource::Hex("ab".repeat(33))).unwrap_err();
        assert!(matches!(
            long,
            SecretsError::MasterKeyLength { found: 66, .. }
        ));

        let not_hex = format!("zz{}", "ab".repeat(31));
        let err = MasterKey::load(&MasterKeySource::Hex(not_hex.clone())).unwrap_err();
        assert!(matches!(err, SecretsError::MasterKeyNotHex { .. }));
        assert!(!err.to_string().contains(&not_hex));

        let non_ascii = format!("é{}", "a".repeat(63));
        assert!(matches!(
            MasterKey::load(&MasterKeySource::Hex(non_ascii)).unwrap_err(),
            SecretsError::MasterKeyNotHex { .. }
        ));
    }

    #[test]
    fn file_is_created_0600_and_reread() {
        let dir = temp_dir("create");
        let path = dir.join("clientele.key");
        let first = MasterKey::load(&MasterKeySource::File(path.clone())).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let second = MasterKey::load(&MasterKeySource::File(path.clone())).unwrap();
        assert_eq!(first.lookup_hash("ck_x"), second.lookup_hash("ck_x"));
        let data = first.encrypt(b"secret");
        assert_eq!(second.decrypt(&data).unwrap(), b"secret");

        // Creating again after the race path: create_key_file finds the file and reads it.
        let third = create_key_file(&path).unwrap();
        assert_eq!(first.lookup_hash("ck_x"), third.lookup_hash("ck_x"));

        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        // Every start, however it interleaves with the one creating the file, reads a whole key.
        for _ in 0..20 {
            let dir = temp_dir("race");
            let path = dir.join("clientele.key");
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        MasterKey::load(&MasterKeySource::File(path))
                            .unwrap()
                            .lookup_hash("ck_x")
                    })
                })
                .collect();
            let hashes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(hashes.windows(2).all(|w| w[0] == w[1]));
            let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
            assert_eq!(left.len(), 1, "only the key file, no temporary one");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn existing_file_is_read_with_whitespace() {
        let dir = temp_dir("existing");
        let path = dir.join("k");
        fs::write(&path, format!("\n  {}  \n\n", "11".repeat(32))).unwrap();
        let loaded = MasterKey::load(&MasterKeySource::File(path)).unwrap();
        assert_eq!(loaded.lookup_hash("ck_x"), key(0x11).lookup_hash("ck_x"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = temp_dir("errors");

        let short = dir.join("short.key");
        fs::write(&short, "abcd").unwrap();
        let err = MasterKey::load(&MasterKeySource::File(short.clone())).unwrap_err();
        assert!(matches!(
            err,
            SecretsError::MasterKeyLength { found: 4, .. }
        ));
        assert!(err.to_string().contains(&short.display().to_string()));

        let bad = dir.join("bad.key");
        fs::write(&bad, "g".repeat(64)).unwrap();
        let err = MasterKey::load(&MasterKeySource::File(bad.clone())).unwrap_err();
        assert!(matches!(err, SecretsError::MasterKeyNotHex { .. }));
        assert!(err.to_string().contains(&bad.display().to_string()));

        // A directory cannot be read as a key file.
        let err = MasterKey::load(&MasterKeySource::File(dir.clone())).unwrap_err();
        assert!(matches!(err, SecretsError::MasterKeyRead { .. }));
        assert!(err.to_string().contains(&dir.display().to_string()));

        // The file cannot be created in a missing directory.
        let missing = dir.join("no-such-dir").join("clientele.key");
        let err = MasterKey::load(&MasterKeySource::File(missing.clone())).unwrap_err();
        assert!(matches!(err, SecretsError::MasterKeyCreate { .. }));
        assert!(err.to_string().contains(&missing.display().to_string()));

        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn source_choice_follows_the_documented_order() {
        let hex = "ab".repeat(32);
        assert_eq!(
            MasterKeySource::choose(Some(hex.clone()), Some(PathBuf::from("/x"))),
            MasterKeySource::Hex(hex)
        );
        assert_eq!(
            MasterKeySource::choose(Some(String::new()), Some(PathBuf::from("/x"))),
            MasterKeySource::File(PathBuf::from("/x"))
        );
        assert_eq!(
            MasterKeySource::choose(None, None),
            MasterKeySource::File(PathBuf::from(DEFAULT_MASTER_KEY_FILE))
        );
    }

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        for secret in [&a, &b] {
            let body = secret.strip_prefix(SECRET_PREFIX).unwrap();
            assert_eq!(body.len(), 43);
            assert!(
                body.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            );
            assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        }
    }

    #[test]
    fn verify_signature_rejects_bad_signatures() {
        let message = b"The quick brown fox jumps over the lazy dog";
        let good = sign(b"key", message);
        assert!(!verify_signature(b"other", message, &good));
        assert!(!verify_signature(b"key", b"another message", &good));
        assert!(!verify_signature(b"key", message, &good[..62]));
        assert!(!verify_signature(b"key", message, &format!("{good}00")));
        assert!(!verify_signature(
            b"key",
            message,
            &format!("{}zz", &good[..62])
        ));
        assert!(!verify_signature(b"key", message, ""));
        let mut flipped = good.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(!verify_signature(
            b"key",
            message,
            std::str::from_utf8(&flipped).unwrap()
        ));
    }

    #[test]
    fn signed_request_round_trip() {
        let secret = generate_secret();
        let sts = string_to_sign("DELETE", "/v1/api-keys/key_1", "42", "n0nce-n0nce", b"");
        let signature = sign(secret.as_bytes(), sts.as_bytes());
        assert_eq!(signature, signature.to_lowercase());
        assert!(verify_signature(
            secret.as_bytes(),
            sts.as_bytes(),
            &signature
        ));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
