//! Who is calling: the API key behind a bearer secret, its role, and the bootstrap of the first
//! admin key. Secrets are looked up by a keyed hash, never stored or compared in plain text.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use clientele_domain::{ApiKey, ApiKeyId, NewApiKey, Role, Scope, Timestamp};

use crate::problem::{ApiError, ErrorCode};
use crate::secrets::{MasterKey, generate_secret};
use crate::state::AppState;

/// The authenticated API key of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: ApiKey,
}

impl Caller {
    /// The customers this caller may see and change.
    pub fn scope(&self) -> Scope {
        self.key.scope()
    }

    /// 403 unless the key's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.key.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "this needs the {} role; the key has {}",
                    needed.as_str(),
                    self.key.role.as_str()
                ),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already authenticated by the idempotency middleware.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let secret = bearer_secret(parts)?;
        let lookup_hash = state.master_key().lookup_hash(secret);
        if let Some(key) = state.keys().get(&lookup_hash) {
            return Ok(Caller { key });
        }
        // The lookup is by an HMAC of the secret: an equality match on a keyed hash reveals
        // nothing through timing about the secret itself.
        match state.store().api_key_by_lookup(&lookup_hash).await? {
            Some(key) => {
                state.keys().put(lookup_hash, key.clone());
                Ok(Caller { key })
            }
            None => Err(unauthorized("the API key is unknown or revoked")),
        }
    }
}

/// The caller of an endpoint that needs the `write` role. As an extractor placed before the
/// query, headers and body, it answers 403 to a key without the role whatever else it sends.
#[derive(Clone, Debug)]
pub struct WriteCaller(pub Caller);

impl FromRequestParts<AppState> for WriteCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(Role::Write)?;
        Ok(WriteCaller(caller))
    }
}

/// The caller of an endpoint that needs the `admin` role; see [`WriteCaller`].
#[derive(Clone, Debug)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(Role::Admin)?;
        Ok(AdminCaller(caller))
    }
}

/// The caller of a write to what every team shares (the schema, the groups): the role, and a
/// key not restricted to teams. A restricted key changing them would change them for teams it
/// may not see; it may read them.
fn shared_settings_writer(caller: Caller, needed: Role) -> Result<Caller, ApiError> {
    caller.require(needed)?;
    if caller.key.teams.is_empty() {
        Ok(caller)
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "a key restricted to teams cannot change what every team shares (the schema, the \
             groups)",
        ))
    }
}

/// [`WriteCaller`] for writes to what every team shares; see [`shared_settings_writer`].
#[derive(Clone, Debug)]
pub struct SharedWriteCaller(pub Caller);

impl FromRequestParts<AppState> for SharedWriteCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        shared_settings_writer(caller, Role::Write).map(SharedWriteCaller)
    }
}

/// [`AdminCaller`] for writes to what every team shares; see [`shared_settings_writer`].
#[derive(Clone, Debug)]
pub struct SharedAdminCaller(pub Caller);

impl FromRequestParts<AppState> for SharedAdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        shared_settings_writer(caller, Role::Admin).map(SharedAdminCaller)
    }
}

/// Keys recently looked up by their secret's hash, for one second: a busy client costs one key
/// query per second instead of one per request. A revocation clears the cache at once: through
/// this process directly, through another hub process on the same PostgreSQL database by its
/// notification (`Store::on_key_revoked`); only while that notification cannot arrive (a lost
/// listener connection) does the second bound how long a revoked key is still taken.
#[derive(Default)]
pub(crate) struct KeyCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (ApiKey, std::time::Instant)>>,
}

const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
const KEY_CACHE_ENTRIES: usize = 10_000;

impl KeyCache {
    fn get(&self, lookup_hash: &[u8; 32]) -> Option<ApiKey> {
        let entries = self.entries.lock().ok()?;
        let (key, at) = entries.get(lookup_hash)?;
        (at.elapsed() < KEY_CACHE_TTL).then(|| key.clone())
    }

    fn put(&self, lookup_hash: [u8; 32], key: ApiKey) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= KEY_CACHE_ENTRIES {
                entries.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
                if entries.len() >= KEY_CACHE_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(lookup_hash, (key, std::time::Instant::now()));
        }
    }

    /// Forgets every cached key (after a revocation).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

fn bearer_secret(parts: &Parts) -> Result<&str, ApiError> {
    let mut headers = parts.headers.get_all(AUTHORIZATION).iter();
    let header = headers
        .next()
        .ok_or_else(|| unauthorized("send Authorization: Bearer <API key secret>"))?;
    if headers.next().is_some() {
        // Which of two credentials would count is anyone's guess (a proxy's and the client's,
        // say); RFC 9110 allows the field once.
        return Err(ApiError::header(
            "Authorization",
            "Authorization may be given only once",
        ));
    }
    let value = header
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    let (scheme, secret) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("send Authorization: Bearer <API key secret>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(unauthorized("send Authorization: Bearer <API key secret>"));
    }
    Ok(secret.trim())
}

pub(crate) fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, detail)
}

/// A new key with a fresh id, ready to store, for the given secret.
pub fn new_api_key(
    master_key: &MasterKey,
    secret: &str,
    name: String,
    role: Role,
    teams: Vec<String>,
) -> NewApiKey {
    NewApiKey {
        key: ApiKey {
            id: ApiKeyId::new(),
            name,
            role,
            teams,
            created_at: Timestamp::now(),
            secret_encrypted: master_key.encrypt(secret.as_bytes()),
        },
        lookup_hash: master_key.lookup_hash(secret).to_vec(),
    }
}

/// What start-up did about the first admin key.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// `CLIENTELE_BOOTSTRAP_KEY` names a key, which exists now.
    FromEnvironment,
    /// No keys existed: this admin secret was created and must be shown once.
    Generated(String),
    /// Keys exist already; nothing to do.
    Nothing,
}

/// Fewest characters of a bootstrap secret that is taken as random, not chosen to be recalled.
pub const STRONG_SECRET_CHARS: usize = 32;

/// Whether a bootstrap secret is long enough not to be guessed ([`STRONG_SECRET_CHARS`]).
pub fn is_strong_secret(secret: &str) -> bool {
    secret.chars().count() >= STRONG_SECRET_CHARS
}

/// Ensures an admin key exists: the one `bootstrap_secret` names, or a new one when the store
/// has no keys at all. The bootstrap key is exempt from rate limits (unless configured
/// otherwise) only if its secret [`is_strong_secret`]: a key that may be guessed gets no
/// privilege beyond its role.
pub async fn bootstrap(
    state: &AppState,
    bootstrap_secret: Option<&str>,
) -> Result<Bootstrap, ApiError> {
    let store = state.store();
    if let Some(secret) = bootstrap_secret {
        let key = new_api_key(
            state.master_key(),
            secret,
            "bootstrap".into(),
            Role::Admin,
            vec![],
        );
        store.restore_api_key(&key).await?;
        // The stored key may be older than this start (another id): find it by its secret.
        if let Some(stored) = store.api_key_by_lookup(&key.lookup_hash).await?
            && is_strong_secret(secret)
        {
            state.rate_limiter().bootstrap_key(stored.id);
        }
        return Ok(Bootstrap::FromEnvironment);
    }
    if store.count_api_keys().await? > 0 {
        return Ok(Bootstrap::Nothing);
    }
    let secret = generate_secret();
    let key = new_api_key(
        state.master_key(),
        &secret,
        "initial admin".into(),
        Role::Admin,
        vec![],
    );
    store.insert_api_key(&key, None).await?;
    Ok(Bootstrap::Generated(secret))
}
