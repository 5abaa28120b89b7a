//! Customer passwords: the password policy and Argon2id hashing.
//!
//! Hashes are PHC strings from `Argon2::default()` (Argon2id, version 19, m=19456 KiB, t=2,
//! p=1) with a random 16-byte salt. Hashing and verification are CPU- and memory-heavy, so
//! both run on tokio's blocking pool ([`tokio::task::spawn_blocking`]), never on an async
//! worker, and on at most half the cores at a time ([`ARGON2_SLOTS`]): each takes 19 MiB, and
//! the blocking pool would otherwise run up to 512 of them at once (10 GB) for anyone who sends
//! enough wrong passwords, and the other half of the cores keeps serving everything else. The
//! rest wait their turn, at the cost of an async task each.
//! Passwords longer than [`MAX_PASSWORD_BYTES`] are never handed to Argon2.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use tokio::sync::Semaphore;

/// Argon2 computations allowed at once in this process: one per two cores, at least one.
static ARGON2_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(argon2_slots()));

fn argon2_slots() -> usize {
    (std::thread::available_parallelism().map_or(2, std::num::NonZero::get) / 2).max(1)
}

/// Minimum password length, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Maximum password length, in bytes (bounds the Argon2 input).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("password hashing task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// The password policy: at least 8 characters and at most 1024 bytes.
/// The error is a reason suitable for a validation message.
pub fn check_password(password: &str) -> Result<(), &'static str> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err("password must be at most 1024 bytes");
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err("password must be at least 8 characters");
    }
    Ok(())
}

/// Hashes a password with Argon2id and a random salt; returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$...`). Does not apply the minimum-length policy (call
/// [`check_password`] first) but refuses more than [`MAX_PASSWORD_BYTES`].
pub async fn hash_password(password: String) -> Result<String, PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    // `Err` only for a closed semaphore, and this one is never closed.
    let slot = ARGON2_SLOTS.acquire().await.ok();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(PasswordError::Hash)
    })
    .await
    .map_err(PasswordError::Task)?
}

/// Checks a password against a PHC string; false on mismatch, on a malformed hash, and for
/// passwords longer than [`MAX_PASSWORD_BYTES`] (which can never have been stored).
pub async fn verify_password(password: String, phc: String) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let slot = ARGON2_SLOTS.acquire().await.ok();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let Ok(hash) = PasswordHash::new(&phc) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_waits_for_a_free_slot() {
        let slots = u32::try_from(argon2_slots()).unwrap();
        let all = ARGON2_SLOTS.acquire_many(slots).await.unwrap();
        let waiting = tokio::spawn(hash_password("correct horse battery".to_owned()));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "Argon2 ran without a slot");
        drop(all);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hash = hash_password("correct horse battery".to_owned())
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery".to_owned(), hash.clone()).await);
        assert!(!verify_password("correct horse battery!".to_owned(), hash.clone()).await);
        assert!(!verify_password(String::new(), hash).await);
    }

    #[tokio::test]
    async fn same_password_gets_different_salts() {
        let a = hash_password("password123".to_owned()).await.unwrap();
        let b = hash_password("password123".to_owned()).await.unwrap();
        assert_ne!(a, b);
        assert!(verify_password("password123".to_owned(), a).await);
        assert!(verify_password("password123".to_owned(), b).await);
    }

    #[tokio::test]
    async fn malformed_hash_is_false() {
        for phc in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$abc",
        ] {
            assert!(!verify_password("password123".to_owned(), phc.to_owned()).await);
        }
    }

    #[tokio::test]
    async fn oversized_passwords_are_refused() {
        let long = "a".repeat(MAX_PASSWORD_BYTES + 1);
        assert!(matches!(
            hash_password(long.clone()).await,
            Err(PasswordError::TooLong)
        ));
        let hash = hash_password("a".repeat(MAX_PASSWORD_BYTES)).await.unwrap();
        assert!(verify_password("a".repeat(MAX_PASSWORD_BYTES), hash.clone()).await);
        assert!(!verify_password(long, hash).await);
    }

    #[test]
    fn policy_bounds() {
        assert!(check_password("").is_err());
        assert_eq!(
            check_password("1234567"),
            Err("password must be at least 8 characters")
        );
        assert_eq!(check_password("12345678"), Ok(()));
        // Characters, not bytes: 8 two-byte characters are enough, 7 are not.
        assert_eq!(check_password(&"é".repeat(8)), Ok(()));
        assert!(check_password(&"é".repeat(7)).is_err());
        assert_eq!(check_password(&"a".repeat(MAX_PASSWORD_BYTES)), Ok(()));
        assert_eq!(
            check_password(&"a".repeat(MAX_PASSWORD_BYTES + 1)),
            Err("password must be at most 1024 bytes")
        );
        // 512 two-byte characters are 1024 bytes; one more is over.
        assert_eq!(check_password(&"é".repeat(512)), Ok(()));
        assert!(check_password(&"é".repeat(513)).is_err());
    }
}
