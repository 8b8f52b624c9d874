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

/// Recent failed sign-ins, by account name and by client address.
#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl SignInLimiter {
    fn keys(name: &str, ip: IpAddr) -> [String; 2] {
        [format!("name:{name}"), format!("ip:{ip}")]
    }

    /// Seconds until another attempt is allowed, if the limit is reached.
    fn blocked(&self, name: &str, ip: IpAddr) -> Option<u64> {
        let mut failures = self.failures.lock().expect("limiter lock");
        let now = Instant::now();
        let mut wait = None;
        for key in Self::keys(name, ip) {
            if let Some(times) = failures.get_mut(&key) {
                times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
                if times.len() >= MAX_FAILURES {
                    let until = FAILURE_WINDOW - now.duration_since(times[0]);
                    wait = wait.max(Some(until.as_secs().max(1)));
                }
            }
        }
        failures.retain(|_, times| !times.is_empty());
        wait
    }

    fn failed(&self, name: &str, ip: IpAddr) {
        let mut failures = self.failures.lock().expect("limiter lock");
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED {
            // Someone is spraying names or addresses: forget what has aged out, and
            // if that is not enough, everything (memory stays bounded).
            failures.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
                !times.is_empty()
            });
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        for key in Self::keys(name, ip) {
            let times = failures.entry(key).or_default();
            times.push(now);
            if times.len() > MAX_FAILURES {
                times.remove(0);
            }
        }
    }

    fn succeeded(&self, name: &str) {
        let mut failures = self.failures.lock().expect("limiter lock");
        failures.remove(&format!("name:{name}"));
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
    if let Some(wait) = state.limiter.blocked(&body.name, ip) {
        return Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins: try again in {wait} s"),
            )
        });
    }
    let name = body.name.clone();
    let found = state.store(move |s| s.admin_password_hash(&name)).await?;
    let password = zeroize::Zeroizing::new(body.password);
    // Hashing is deliberately slow: off the async workers. An unknown name costs the
    // same as a wrong password.
    let role = tokio::task::spawn_blocking(move || match found {
        Some((hash, role)) => accounts::verify_password(&hash, &password).then_some(role),
        None => {
            let _ = accounts::verify_password(dummy_hash(), &password);
            None
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let Some(role) = role else {
        state.limiter.failed(&body.name, ip);
        tracing::warn!(name = %body.name, client = %ip, "admin API: failed sign-in");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong name or password",
        ));
    };
    state.limiter.succeeded(&body.name);
    let token = accounts::new_token();
    let hash = accounts::token_hash(&token);
    let ttl = state.settings.session_ttl;
    let expires = crate::store::now_ms() + ttl.as_millis() as i64;
    let admin = body.name.clone();
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
    let mut response = Json(json!({ "name": body.name, "role": role })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, ttl.as_secs())
            .parse()
            .expect("cookie header"),
    );
    Ok(response)
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
    fn sign_in_is_blocked_after_repeated_failures_per_name_and_address() {
        let limiter = SignInLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.blocked("ann", ip), None);
            limiter.failed("ann", ip);
        }
        assert!(limiter.blocked("ann", ip).is_some());
        // The name is blocked from anywhere, the address for any name.
        assert!(limiter.blocked("ann", other).is_some());
        assert!(limiter.blocked("bob", ip).is_some());
        assert_eq!(limiter.blocked("bob", other), None);
    }

    #[test]
    fn sprayed_names_cost_bounded_memory() {
        let limiter = SignInLimiter::default();
        for i in 0..(3 * MAX_TRACKED) {
            let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            limiter.failed(&format!("user{i}"), ip);
        }
        assert!(limiter.failures.lock().unwrap().len() <= MAX_TRACKED + 2);
    }

    #[test]
    fn the_dummy_hash_is_a_valid_hash_nobody_matches() {
        assert!(dummy_hash().starts_with("$argon2id$"));
        assert!(!accounts::verify_password(dummy_hash(), ""));
    }
}
