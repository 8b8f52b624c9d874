//! Key batches, keys, exports and the provisioning password over the admin API.
//! Generating a batch runs on a store connection of its own and reports its progress
//! as `generation` events; listing and revealing a batch's keys and reading them for
//! an export run on connections of their own too, so they never hold up the store
//! thread hellos are looked up on. Reveals and exports are admin-only and audited
//! before any PPS is read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, ApiResult, ApiState, Body, Params, Segment, State};
use crate::keys::Pid;
use crate::password::ProvisioningPassword;
use crate::plugins::export;
use crate::store::{BatchSummary, KeyFilter, KeyRecord, KeyState, StoreError};
use crate::views::time_ms as time;
use vprov_sdk::abi::{ExportFormat, ExportRequest};

/// The largest batch the API reveals at once (an export carries any size).
const MAX_REVEAL: u64 = 100_000;

fn batch_json(b: &BatchSummary) -> Value {
    json!({
        "id": b.id,
        "created_at": time(b.created_at),
        "comment": b.comment,
        "size": b.size,
        "available": b.available,
        "used": b.used,
        "revoked": b.revoked,
    })
}

/// `GET /batches`.
pub async fn batches(state: State, _caller: Caller) -> ApiResult<Json<Value>> {
    let batches = state.store(|s| s.batches()).await?;
    Ok(Json(Value::Array(batches.iter().map(batch_json).collect())))
}

/// A batch being generated.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub id: u64,
    pub count: u32,
    pub generated: u64,
    pub done: bool,
    pub batch: Option<i64>,
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    count: u32,
    comment: Option<String>,
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// `POST /batches`: starts generating; `202 {"generation": id}`.
pub async fn generate(
    state: State,
    caller: Caller,
    Body(body): Body<GenerateRequest>,
) -> ApiResult<Response> {
    if !(1..=crate::keys::MAX_BATCH).contains(&body.count) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("count must be 1 to {}", crate::keys::MAX_BATCH),
        ));
    }
    let id = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
    let mut generation = Generation {
        id,
        count: body.count,
        generated: 0,
        done: false,
        batch: None,
        error: None,
    };
    state
        .generations
        .lock()
        .expect("generations lock")
        .insert(id, generation.clone());
    let shared = state.0.clone();
    let comment = body.comment.filter(|c| !c.trim().is_empty());
    tokio::task::spawn_blocking(move || {
        let report = |g: &Generation| {
            shared
                .generations
                .lock()
                .expect("generations lock")
                .insert(g.id, g.clone());
            shared
                .events
                .publish("generation", serde_json::to_value(g).expect("serializes"));
        };
        let mut last = Instant::now();
        let result = crate::store::Store::open(&shared.settings.store_options).and_then(|mut s| {
            s.generate_batch(body.count, comment.as_deref(), &caller.actor(), |n| {
                if last.elapsed() >= Duration::from_millis(200) {
                    last = Instant::now();
                    generation.generated = n;
                    report(&generation);
                }
            })
        });
        generation.done = true;
        match result {
            Ok(batch) => {
                generation.generated = batch.size;
                generation.batch = Some(batch.id);
            }
            Err(e) => generation.error = Some(e.to_string()),
        }
        report(&generation);
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "generation": id }))).into_response())
}

/// `GET /generations/{id}`.
pub async fn generation(
    state: State,
    _caller: Caller,
    Segment(id): Segment<u64>,
) -> ApiResult<Json<Generation>> {
    let generations = state.generations.lock().expect("generations lock");
    generations
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no generation {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    state: Option<KeyState>,
    #[serde(default)]
    reveal: bool,
}

fn key_json(k: &KeyRecord) -> Value {
    let mut v = json!({
        "pid": k.pid.dashed(),
        "state": k.state,
        "device_uuid": k.device_uuid,
    });
    if let Some(pps) = &k.pps {
        v["pps"] = Value::String(pps.expose_dashed().to_string());
    }
    v
}

/// `GET /batches/{id}/keys`: PIDs; with `reveal=true` (admins, audited) PPSs too.
pub async fn batch_keys(
    state: State,
    caller: Caller,
    Segment(batch): Segment<i64>,
    Params(q): Params<KeysQuery>,
) -> ApiResult<Json<Value>> {
    if q.reveal {
        caller.require_admin("reveal PPSs")?;
    }
    let filter = KeyFilter {
        batch: Some(batch),
        state: q.state,
        pid: None,
    };
    let actor = caller.actor();
    // Up to MAX_REVEAL keys read (and decrypted) on a connection of its own: hellos
    // are looked up on the store thread meanwhile.
    let keys = state
        .own_store(move |mut s| {
            let size = s
                .batches()?
                .into_iter()
                .find(|b| b.id == batch)
                .ok_or(StoreError::BatchNotFound(batch))?
                .size;
            if size > MAX_REVEAL {
                return Err(StoreError::InvalidInput(format!(
                    "batch {batch} has {size} keys; list at most {MAX_REVEAL} here, export larger batches"
                )));
            }
            let mut keys = Vec::new();
            let push = |k: KeyRecord| {
                keys.push(key_json(&k));
                Ok::<(), StoreError>(())
            };
            if q.reveal {
                s.reveal_keys(&filter, &actor, push)?;
            } else {
                s.for_each_key(&filter, push)?;
            }
            Ok::<_, StoreError>(keys)
        })
        .await?;
    Ok(Json(Value::Array(keys)))
}

/// `POST /batches/{id}/revoke`.
pub async fn revoke_batch(
    state: State,
    caller: Caller,
    Segment(batch): Segment<i64>,
) -> ApiResult<Json<Value>> {
    let actor = caller.actor();
    let revoked = state.store(move |s| s.revoke_batch(batch, &actor)).await?;
    Ok(Json(json!({ "revoked": revoked })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeys {
    pids: Vec<String>,
}

/// `POST /keys/revoke`: all named PIDs or, if one is unknown, none.
pub async fn revoke_keys(
    state: State,
    caller: Caller,
    Body(body): Body<RevokeKeys>,
) -> ApiResult<Json<Value>> {
    let pids = body
        .pids
        .iter()
        .map(|p| {
            p.parse::<Pid>()
                .map_err(|e| ApiError::bad_request(format!("{p}: {e}")))
        })
        .collect::<ApiResult<Vec<Pid>>>()?;
    let actor = caller.actor();
    let outcomes = state.store(move |s| s.revoke_pids(&pids, &actor)).await?;
    let revoked = outcomes
        .iter()
        .filter(|(_, o)| *o == crate::store::RevokeOutcome::Revoked)
        .count();
    Ok(Json(json!({ "revoked": revoked })))
}

/// `GET /export-formats`.
pub async fn export_formats(state: State, _caller: Caller) -> Json<Value> {
    let offers = export::offers(&state.plugins).await;
    Json(Value::Array(
        offers
            .iter()
            .map(|(_, f)| {
                json!({
                    "name": f.name.as_str(),
                    "description": f.description.as_str(),
                    "extension": f.extension.as_str(),
                })
            })
            .collect(),
    ))
}

impl From<export::ExportError> for ApiError {
    fn from(e: export::ExportError) -> ApiError {
        let status = match &e {
            export::ExportError::NoBatch(_) => StatusCode::NOT_FOUND,
            export::ExportError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Reads the batch's keys for an export (audited). Every PPS of the batch (up to a
/// million) is decrypted on a connection of its own, not on the store thread that
/// hellos are looked up on.
async fn export_request(
    state: &ApiState,
    batch: i64,
    format: ExportFormat,
    plugin: String,
    options: BTreeMap<String, String>,
    actor: String,
) -> ApiResult<ExportRequest> {
    let (address, port) = state.settings.export_server.clone();
    let (request, _count) = state
        .own_store(move |mut s| {
            let target = export::ExportTarget {
                batch,
                format: &format,
                plugin: &plugin,
                options: &options,
                destination: None,
                server: (&address, port),
            };
            export::request(&mut s, &target, &actor)
        })
        .await?;
    Ok(request)
}

/// `GET /batches/{id}/export?format=F&option=k=v…`: the exported file (admins).
pub async fn export(
    state: State,
    caller: Caller,
    Segment(batch): Segment<i64>,
    Params(query): Params<Vec<(String, String)>>,
) -> ApiResult<Response> {
    caller.require_admin("export keys (exports carry PPSs)")?;
    let mut format = None;
    let mut options = BTreeMap::new();
    for (key, value) in query {
        match key.as_str() {
            "format" => format = Some(value),
            "option" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("option {value:?}: expected key=value"))
                    })?;
                options.insert(k.to_string(), v.to_string());
            }
            other => return Err(ApiError::bad_request(format!("unknown parameter {other}"))),
        }
    }
    let format = format.ok_or_else(|| ApiError::bad_request("format=… is required"))?;
    let offers = export::offers(&state.plugins).await;
    let (instance, format) =
        export::choose(&offers, &format, &state.plugins.settings().plugin_dir)?;
    let request = export_request(
        &state,
        batch,
        format.clone(),
        instance.plugin.clone(),
        options,
        caller.actor(),
    )
    .await?;
    let file = instance
        .call("export", move |p| p.export_keys(&request))
        .await
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let name = file
        .file_name
        .to_string()
        .replace(['"', '\\', '\r', '\n'], "_");
    Ok((
        [
            (header::CONTENT_TYPE, file.mime_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        file.bytes.into_vec(),
    )
        .into_response())
}

/// `GET /password`.
pub async fn password_status(state: State, _caller: Caller) -> ApiResult<Json<Value>> {
    let status = state.store(|s| s.password_status()).await?;
    Ok(Json(json!({
        "set": status.set,
        "changed_at": status.changed_at.map(time),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    password: String,
}

/// `PUT /password` (admins): AMT's rules apply; 422 names the rule broken.
pub async fn set_password(
    state: State,
    caller: Caller,
    Body(body): Body<SetPassword>,
) -> ApiResult<StatusCode> {
    caller.require_admin("change the provisioning password")?;
    let typed = zeroize::Zeroizing::new(body.password);
    let password = ProvisioningPassword::new(&typed)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let actor = caller.actor();
    state
        .store(move |s| s.set_provisioning_password(&password, &actor))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Caller;
    use crate::api::testing;
    use crate::store::Role;

    /// Long enough for any machine to read 50 keys; a handler that needs the store
    /// thread waits for ever here, since the test holds it.
    const NEVER: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn reveals_and_exports_do_not_wait_for_the_store_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (state, batch) = testing::state(dir.path(), 50);
        // Busy as with a flood of hellos (or wedged): both still answer.
        let release = testing::occupy(&state.store).await;
        let ann = Caller {
            name: "ann".into(),
            role: Role::Admin,
        };
        let revealed = tokio::time::timeout(
            NEVER,
            batch_keys(
                axum::extract::State(state.clone()),
                ann.clone(),
                Segment(batch),
                Params(KeysQuery {
                    state: None,
                    reveal: true,
                }),
            ),
        )
        .await
        .expect("the reveal ran on the store thread")
        .unwrap();
        let keys = revealed.0.as_array().unwrap().clone();
        assert_eq!(keys.len(), 50);
        assert!(keys.iter().all(|k| k["pps"].is_string()));

        let csv = ExportFormat {
            name: "csv".into(),
            description: "CSV".into(),
            extension: "csv".into(),
            mime_type: "text/csv".into(),
            needs_provisioning_password: false,
        };
        let request = tokio::time::timeout(
            NEVER,
            export_request(
                &state,
                batch,
                csv,
                "export-csv".into(),
                BTreeMap::new(),
                ann.actor(),
            ),
        )
        .await
        .expect("the export ran on the store thread")
        .unwrap();
        assert_eq!(request.pairs.len(), 50);
        drop(release);
    }
}
