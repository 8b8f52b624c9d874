//! Who is calling the admin API: a console session (the `vprov_session` cookie,
//! `HttpOnly; Secure; SameSite=Strict`) or a bearer token, each found by its hash in
//! the store; the caller's role; sign-in with argon2-checked passwords, rate limited
//! per account name and per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, ApiState, Body, State};
use crate::accounts;
use crate::store::{CredentialKind, Role};

/// The session cookie's name.
pub const COOKIE: &str = "vprov_session";
/// The header cookie-authenticated changes must carry (a cross-site form cannot).
pub const CONSOLE_HEADER: &str = "x-vprov-console";

/// Failed sign-ins allowed per account name or client address within the window.
const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Account names and addresses whose failures are remembered at most.
const MAX_TRACKED: usize = 10_000;

/// The client's address, put on each request by the connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The audit log's actor.
    pub fn actor(&self) -> String {
        format!("api:{}", self.name)
    }

    /// Refuses operators what only admins may do.
    pub fn require_admin(&self, what: &str) -> ApiResult<()> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Operator => Err(ApiError::forbidden(format!("operators may not {what}"))),
        }
    }
}

fn cookie_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn bearer_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> ApiResult<Caller> {
        let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "sign in first");
        let (token, via_cookie) = match (bearer_token(parts), cookie_token(parts)) {
            (Some(t), _) => (t, false),
            (None, Some(t)) => (t, true),
            (None, None) => return Err(unauthorized()),
        };
        let hash = accounts::token_hash(&token);
        let credential = state
            .store(move |s| s.credential(&hash))
            .await?
            .ok_or_else(unauthorized)?;
        let expected = if via_cookie {
            CredentialKind::Session
        } else {
            CredentialKind::Token
        };
        if credential.kind != expected {
            return Err(unauthorized());
        }
        if via_cookie && parts.method != Method::GET && !parts.headers.contains_key(CONSOLE_HEADER)
        {
            return Err(ApiError::forbidden(format!(
                "changes made with a console session must carry the {CONSOLE_HEADER} header"
            )));
        }
        Ok(Caller {
            name: credential.admin,
            role: credential.role,
        })
    }
}

/// Recent sign-in attempts, by account name and by client address. An attempt is
/// counted *before* its password is checked, so concurrent guesses cannot all be
/// checked before the first failure is recorded; a success takes its own attempt
/// back. Names are kept only as a short hash.
#[derive(Default)]
pub struct SignInLimiter {
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

/// A short, non-reversible form of an account name for the limiter and the log
/// (the first 8 bytes of its SHA-256, in hex): a password typed into the name field
/// is never kept or written out.
fn name_tag(name: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    hex::encode(&digest[..8])
}

impl SignInLimiter {
    fn keys(name: &str, ip: IpAddr) -> [String; 2] {
        [format!("name:{}", name_tag(name)), format!("ip:{ip}")]
    }

    /// Counts an attempt for `name` from `ip` before it is checked; if either has
    /// used up its attempts within the window, nothing is counted and the answer is
    /// the seconds until another attempt is allowed.
    fn attempt(&self, name: &str, ip: IpAddr) -> Result<(), u64> {
        let mut attempts = self.attempts.lock().expect("limiter lock");
        let now = Instant::now();
        let keys = Self::keys(name, ip);
        let mut wait = None;
        for key in &keys {
            if let Some(times) = attempts.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
                if times.len() >= MAX_FAILURES {
                    let until = FAILURE_WINDOW - now.duration_since(times[0]);
                    wait = wait.max(Some(until.as_secs().max(1)));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        if attempts.len() + 2 > MAX_TRACKED {
            // Someone is spraying names or addresses: forget what has aged out, and
            // if that is not enough, everything (memory stays bounded).
            attempts.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
                !times.is_empty()
            });
            if attempts.len() + 2 > MAX_TRACKED {
                attempts.clear();
            }
        }
        for key in keys {
            attempts.entry(key).or_default().push(now);
        }
        Ok(())
    }

    /// The attempt succeeded: the name's attempts are forgotten, and this one is
    /// taken back from the address.
    fn succeeded(&self, name: &str, ip: IpAddr) {
        let mut attempts = self.attempts.lock().expect("limiter lock");
        let [name_key, ip_key] = Self::keys(name, ip);
        attempts.remove(&name_key);
        if let Some(times) = attempts.get_mut(&ip_key) {
            times.pop();
            if times.is_empty() {
                attempts.remove(&ip_key);
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    name: String,
    password: String,
}

fn session_cookie(value: &str, max_age: u64) -> String {
    format!("{COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}")
}

/// `POST /api/v1/session`: checks the password, starts a session (cookie).
pub async fn sign_in(
    state: State,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    Body(body): Body<SignIn>,
) -> ApiResult<Response> {
    let ip = peer.ip();
    // No account has a name outside these rules: such a name is refused before it
    // is counted, checked or logged (a password typed into it stays unseen).
    if accounts::check_name(&body.name).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "an account name is 1 to 64 letters, digits, '.', '-', '_' or '@'",
        ));
    }
    if let Err(wait) = state.limiter.attempt(&body.name, ip) {
        return Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins: try again in {wait} s"),
            )
        });
    }
    let role = check_password(&state, &body.name, body.password, ip).await?;
    state.limiter.succeeded(&body.name, ip);
    let token = start_session(&state, &body.name, ip).await?;
    let ttl = state.settings.session_ttl;
    let mut response = Json(json!({ "name": body.name, "role": role })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, ttl.as_secs())
            .parse()
            .expect("cookie header"),
    );
    Ok(response)
}

/// The role of account `name` if `password` is its password. Hashing is deliberately
/// slow: off the async workers, and an unknown name costs the same as a wrong
/// password. A failure is logged (an unknown name only as a hash).
async fn check_password(
    state: &ApiState,
    name: &str,
    password: String,
    ip: IpAddr,
) -> ApiResult<Role> {
    let lookup = name.to_string();
    let found = state.store(move |s| s.admin_password_hash(&lookup)).await?;
    let known = found.is_some();
    let password = zeroize::Zeroizing::new(password);
    let role = tokio::task::spawn_blocking(move || match found {
        Some((hash, role)) => accounts::verify_password(&hash, &password).then_some(role),
        None => {
            let _ = accounts::verify_password(dummy_hash(), &password);
            None
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    role.ok_or_else(|| {
        // An existing account's name is logged; any other name only as a hash, in
        // case it was a password typed into the wrong field.
        if known {
            tracing::warn!(name = %name, client = %ip, "admin API: failed sign-in");
        } else {
            tracing::warn!(name_sha256 = %name_tag(name), client = %ip,
                "admin API: failed sign-in with an unknown account name");
        }
        ApiError::new(StatusCode::UNAUTHORIZED, "wrong name or password")
    })
}

/// Records a new session of `name` (audited as a sign-in from `ip`); its token.
async fn start_session(
    state: &ApiState,
    name: &str,
    ip: IpAddr,
) -> ApiResult<zeroize::Zeroizing<String>> {
    let token = accounts::new_token();
    let hash = accounts::token_hash(&token);
    let ttl = state.settings.session_ttl;
    let expires = crate::store::now_ms() + ttl.as_millis() as i64;
    let admin = name.to_string();
    state
        .store(move |s| {
            let actor = format!("api:{admin}");
            s.add_credential(
                &hash,
                &admin,
                CredentialKind::Session,
                None,
                Some(expires),
                &actor,
            )?;
            s.record_audit(
                &actor,
                "admin.sign_in",
                &json!({ "client": ip.to_string() }),
            )
        })
        .await?;
    Ok(token)
}

/// A hash of a random secret, so an unknown account name takes as long to refuse as
/// a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        accounts::hash_password(&accounts::new_token()).expect("a token is long enough")
    })
}

/// What the sign-in page says while no account exists (the first run).
pub const NO_ACCOUNT_HINT: &str = "no admin account exists yet: create the first on the \
     server with `vprov admin add NAME`, then sign in here";

/// `GET /api/v1/session`: who is signed in. Unauthenticated while no account exists,
/// the 401 says how to create the first (`"admin_accounts": false`), which the
/// sign-in page shows.
pub async fn whoami(state: State, caller: Result<Caller, ApiError>) -> ApiResult<Response> {
    match caller {
        Ok(caller) => Ok(Json(json!({ "name": caller.name, "role": caller.role })).into_response()),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            if state.store(|s| s.admins()).await?.is_empty() {
                Ok((
                    StatusCode::UNAUTHORIZED,
                    Json(json!({ "error": NO_ACCOUNT_HINT, "admin_accounts": false })),
                )
                    .into_response())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// `DELETE /api/v1/session`: ends the console session.
pub async fn sign_out(state: State, request: axum::extract::Request) -> ApiResult<Response> {
    let (mut parts, _) = request.into_parts();
    if let Some(token) = cookie_token(&parts) {
        let _caller = Caller::from_request_parts(&mut parts, &state).await?;
        let hash = accounts::token_hash(&token);
        state.store(move |s| s.remove_session(&hash)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie("", 0).parse().expect("cookie header"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_before_they_are_checked_per_name_and_address() {
        let limiter = SignInLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        // Attempts in flight count: the sixth is refused before any failed.
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.attempt("ann", ip), Ok(()));
        }
        assert!(limiter.attempt("ann", ip).is_err());
        // The name is blocked from anywhere, the address for any name.
        assert!(limiter.attempt("ann", other).is_err());
        assert!(limiter.attempt("bob", ip).is_err());
        assert_eq!(limiter.attempt("bob", other), Ok(()));
    }

    #[test]
    fn a_success_takes_its_attempt_back() {
        let limiter = SignInLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..(3 * MAX_FAILURES) {
            assert_eq!(limiter.attempt("ann", ip), Ok(()));
            limiter.succeeded("ann", ip);
        }
        assert!(limiter.attempts.lock().unwrap().is_empty());
    }

    #[test]
    fn sprayed_names_cost_bounded_memory_and_are_kept_as_hashes() {
        let limiter = SignInLimiter::default();
        for i in 0..(3 * MAX_TRACKED) {
            let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let _ = limiter.attempt(&format!("secret-password-{i}"), ip);
        }
        let attempts = limiter.attempts.lock().unwrap();
        assert!(attempts.len() <= MAX_TRACKED);
        assert!(attempts.keys().all(|k| !k.contains("secret")));
    }

    #[test]
    fn the_dummy_hash_is_a_valid_hash_nobody_matches() {
        assert!(dummy_hash().starts_with("$argon2id$"));
        assert!(!accounts::verify_password(dummy_hash(), ""));
    }
}
