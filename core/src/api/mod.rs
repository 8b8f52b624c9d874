//! The admin API and web console that `vprov serve` offers over HTTPS (`docs/api.md`
//! is the reference; `/api/v1/openapi.json` the machine-readable form).
//!
//! - [`auth`]: who is calling — console sessions (cookie) and bearer tokens, roles,
//!   rate-limited sign-in;
//! - [`keys`]: key batches, keys, exports and the provisioning password;
//! - [`devices`]: devices, agentless management, alerts, plugins, audit log;
//! - [`events`]: the server-sent event stream of device and alert changes;
//! - [`tls`]: the server certificate (issued by vprov's CA unless configured).
//!
//! Handlers never block an async worker: store work goes to the store thread, and
//! anything slow (key generation, reading and decrypting a batch's keys, talking to
//! a device, plugin calls) runs on a blocking thread with a store connection of its
//! own, so the store thread stays free for hellos.

pub mod auth;
pub mod devices;
pub mod events;
pub mod keys;
pub mod pki;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::alerts::AlertLog;
use crate::management::{ManagementError, Reach};
use crate::plugins::PluginHost;
use crate::store::{Store, StoreError, StoreOptions};
use crate::store_thread::{StoreClosed, StoreHandle};

/// How `vprov serve` offers the API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// A certificate chain and key (PEM) replacing the one vprov's CA issues.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Host names the CA-issued certificate names besides the listen address.
    pub names: Vec<String>,
    /// How long a console session lasts.
    pub session_ttl: Duration,
    /// For work on connections of its own (key generation, device management).
    pub store_options: StoreOptions,
    pub reach: Reach,
    /// What key sheets and setup.bin name as the provisioning server.
    pub export_server: (String, u16),
    /// Event streams one account may have open at once.
    pub event_streams_per_account: usize,
    /// Days before expiry that a provisioning chain is shown as expiring soon.
    pub expiry_warning_days: u32,
}

/// What every handler shares.
pub struct ApiState {
    pub settings: ApiSettings,
    pub store: StoreHandle,
    pub alerts: AlertLog,
    pub plugins: PluginHost,
    pub events: events::EventBus,
    pub limiter: auth::SignInLimiter,
    pub generations: Mutex<BTreeMap<u64, keys::Generation>>,
    /// Turns true when the server stops (event streams end then).
    pub stop: tokio::sync::watch::Receiver<bool>,
}

pub type State = axum::extract::State<Arc<ApiState>>;

/// An error answer: a status and a message for a human, as `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("admin API: {}", self.message);
        }
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::UnknownDevice(_)
            | StoreError::UnknownPid(_)
            | StoreError::BatchNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<StoreClosed> for ApiError {
    fn from(e: StoreClosed) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<ManagementError> for ApiError {
    fn from(e: ManagementError) -> ApiError {
        let status = match e {
            ManagementError::Store(s) => return ApiError::from(s),
            ManagementError::UnknownDevice(_) => StatusCode::NOT_FOUND,
            ManagementError::NotManaged(_) | ManagementError::NoAddress { .. } => {
                StatusCode::CONFLICT
            }
            ManagementError::Device(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body; a malformed one is a `{"error": …}` answer like every other.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> ApiResult<Body<T>> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// Query parameters; malformed ones are a `{"error": …}` answer.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> ApiResult<Params<T>> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// A path segment (an id, a UUID); a malformed one is a `{"error": …}` answer.
pub struct Segment<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for Segment<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> ApiResult<Segment<T>> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Segment(value)),
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

impl ApiState {
    /// The state of an API on the running server's store thread, alert log and
    /// plugin host; `stop` turns true when the server stops.
    pub fn new(
        settings: ApiSettings,
        store: StoreHandle,
        alerts: AlertLog,
        plugins: PluginHost,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> ApiState {
        ApiState {
            settings,
            store,
            alerts,
            plugins,
            events: Default::default(),
            limiter: Default::default(),
            generations: Default::default(),
            stop,
        }
    }

    /// Runs `f` on the store thread.
    pub async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> ApiResult<T> {
        Ok(self.store.call(f).await??)
    }

    /// Runs `f` on a blocking thread with a store connection of its own (for work
    /// that must not hold up the store thread).
    pub async fn own_store<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T, E> + Send + 'static,
    ) -> ApiResult<T> {
        let options = self.settings.store_options.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&options).map_err(ApiError::from)?;
            f(store).map_err(Into::into)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    }
}

/// The router: API under `/api/v1`, the console at `/`.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route(
            "/session",
            get(auth::whoami).post(auth::sign_in).delete(auth::sign_out),
        )
        .route("/openapi.json", get(openapi))
        .route("/dashboard", get(devices::dashboard))
        .route("/batches", get(keys::batches).post(keys::generate))
        .route("/generations/{id}", get(keys::generation))
        .route("/batches/{id}/keys", get(keys::batch_keys))
        .route("/batches/{id}/revoke", post(keys::revoke_batch))
        .route("/batches/{id}/export", get(keys::export))
        .route("/keys/revoke", post(keys::revoke_keys))
        .route("/export-formats", get(keys::export_formats))
        .route(
            "/password",
            get(keys::password_status).put(keys::set_password),
        )
        .route("/devices", get(devices::list))
        .route("/devices/manage", post(devices::manage))
        .route("/devices/unmanage", post(devices::unmanage))
        .route("/devices/{uuid}", get(devices::detail))
        .route("/devices/{uuid}/power", post(devices::power))
        .route("/devices/{uuid}/inventory", post(devices::inventory))
        .route("/devices/{uuid}/retry", post(devices::retry))
        .route("/agent-profiles", get(devices::agent_profiles))
        .route("/alerts", get(devices::alerts))
        .route("/alerts/{id}/acknowledge", post(devices::acknowledge))
        .route("/plugins", get(devices::plugins))
        .route("/pki/chains", get(pki::list).post(pki::import))
        .route("/pki/chains/{name}", delete(pki::remove))
        .route("/pki/chains/{name}/setupbin", post(pki::setup_bin))
        .route("/pki/own-root", post(pki::create_own_root))
        .route("/audit", get(devices::audit))
        .route("/events", get(events::stream));
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(console_page))
        .route("/console.js", get(console_script))
        .route("/console.css", get(console_style))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// No caching of API answers, no framing, no sniffing; the console loads nothing
/// from elsewhere.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("header"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().expect("header"),
    );
    h.insert(header::X_FRAME_OPTIONS, "DENY".parse().expect("header"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'"
            .parse()
            .expect("header"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000".parse().expect("header"),
    );
    response
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

async fn console_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("console/index.html"),
    )
}

async fn console_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console/console.js"),
    )
}

async fn console_style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console/console.css"),
    )
}

/// Connections the API serves at once.
const MAX_CONNECTIONS: usize = 256;

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves the API on `listener` over TLS until `stop` turns true, then stops
/// accepting connections and lets requests in progress finish for up to `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<ApiState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(state.clone());
    // Connections served at once (event streams stay open); more wait in the
    // kernel's queue.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let poller = tokio::spawn(events::watch_store(state.clone(), stop.clone()));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            _ = stopped(&mut stop) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("admin API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            serve_connection(tls, peer, app, stop).await;
        });
        while connections.try_join_next().is_some() {}
    }
    // New connections are refused from here on; each open one answers the request
    // it is reading or answering and closes (event streams end at `stop`).
    drop(listener);
    poller.abort();
    let finished = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            "admin API: {} connections still busy after {} s; closing them",
            connections.len(),
            grace.as_secs()
        );
    }
    connections.abort_all();
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::TokioIo;
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(auth::Peer(peer));
            let mut app = app.clone();
            async move {
                use tower_service::Service;
                app.call(request.map(axum::body::Body::new)).await
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => return,
        _ = stopped(&mut stop) => {}
    }
    // The request in progress is answered, then the connection closes (an idle one
    // at once); `serve` bounds how long that may take.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

#[cfg(test)]
mod openapi_tests;

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::alerts::AlertSinks;
    use crate::device::DeviceTimeouts;
    use crate::plugins::HostSettings;

    /// The API's state on a store in `dir` holding one batch of `keys` keys (its id
    /// comes with it), with the store thread running and no plugins.
    pub(crate) fn state(dir: &std::path::Path, keys: u32) -> (Arc<ApiState>, i64) {
        let options = StoreOptions::new(dir);
        let mut store = Store::open(&options).expect("store");
        let batch = store
            .generate_batch(keys, None, "test", |_| {})
            .expect("keys")
            .id;
        let store = StoreHandle::spawn(store);
        let (alerts, _writer) = AlertLog::start(
            store.clone(),
            AlertSinks::default(),
            Default::default(),
            "test".into(),
        );
        let plugins = PluginHost::new(
            HostSettings {
                plugin_dir: dir.join("plugins"),
                config_path: dir.join("plugins").join("plugins.toml"),
                data_dir: dir.to_path_buf(),
                call_timeout: Duration::from_secs(10),
                max_calls_per_instance: 4,
                sink_queue: 16,
                kinds: vprov_sdk::PluginKinds::KEY_EXPORTER,
                publishes_status: false,
            },
            None,
            AlertSinks::default(),
        );
        let state = ApiState::new(
            ApiSettings {
                certificate: None,
                names: Vec::new(),
                session_ttl: Duration::from_secs(3600),
                store_options: options,
                reach: Reach {
                    device_port: 16993,
                    timeouts: DeviceTimeouts::default(),
                },
                export_server: ("vprov.example".into(), 9971),
                event_streams_per_account: 4,
                expiry_warning_days: 30,
            },
            store,
            alerts,
            plugins,
            tokio::sync::watch::channel(false).1,
        );
        (Arc::new(state), batch)
    }

    /// Keeps the store thread busy until the returned sender is dropped.
    pub(crate) async fn occupy(store: &StoreHandle) -> std::sync::mpsc::Sender<()> {
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let store = store.clone();
        tokio::spawn(async move {
            store
                .call(move |_| {
                    let _ = entered_tx.send(());
                    let _ = release_rx.recv();
                })
                .await
        });
        entered_rx.await.expect("the store thread runs the call");
        release_tx
    }
}
