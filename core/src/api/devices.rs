//! Devices, agentless management, alerts, plugins, the audit log and the dashboard
//! over the admin API. Talking to a device (power, inventory) runs on a blocking
//! thread with a store connection of its own, exactly as `vprov devices …` does.

use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::keys::time;
use super::{ApiError, ApiResult, Body, Params, Segment, State};
use crate::management::{power_state_name, ManagedDevice, PowerAction};
use crate::store::{
    AlertFilter, AlertRecord, AuditRecord, DeviceFilter, DeviceRecord, DeviceState, ManagementMode,
    Severity,
};

/// A device as the API shows it (no credentials).
pub fn device_json(d: &DeviceRecord) -> Value {
    json!({
        "uuid": d.uuid,
        "host_name": d.host_name,
        "address": d.address,
        "amt_version": d.amt_version,
        "state": d.state,
        "management_mode": d.management_mode,
        "agent_profile": d.agent_profile,
        "ssh_host_key": d.ssh_host_key,
        "provisioned_pid": d.provisioned_pid,
        "provisioned_at": time(d.provisioned_at),
        "last_contact_at": d.last_contact_at.map(time),
        "reachable": d.reachable,
        "control_mode": d.control_mode,
        "provisioning_path": d.provisioning_path,
        "pki_chain": d.pki_chain,
    })
}

pub fn alert_json(a: &AlertRecord) -> Value {
    json!({
        "id": a.id,
        "at": time(a.at),
        "last_seen": time(a.last_seen),
        "count": a.count,
        "severity": a.severity,
        "source": a.source,
        "message": a.message,
        "pid": a.pid,
        "device_uuid": a.device_uuid,
        "address": a.address,
        "acknowledged_at": a.acknowledged_at.map(time),
        "acknowledged_by": a.acknowledged_by,
    })
}

pub fn audit_json(e: &AuditRecord) -> Value {
    json!({
        "id": e.id,
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "detail": e.detail,
    })
}

/// `GET /dashboard`.
pub async fn dashboard(state: State, _caller: Caller) -> ApiResult<Json<Value>> {
    let (batches, devices, alerts) = state
        .store(|s| {
            Ok((
                s.batches()?,
                s.devices(&DeviceFilter::default())?,
                s.alerts(None, 10)?,
            ))
        })
        .await?;
    let sum = |f: fn(&crate::store::BatchSummary) -> u64| batches.iter().map(f).sum::<u64>();
    let count = |st: DeviceState| devices.iter().filter(|d| d.state == st).count();
    Ok(Json(json!({
        "keys": {
            "available": sum(|b| b.available),
            "used": sum(|b| b.used),
            "revoked": sum(|b| b.revoked),
        },
        "devices": {
            "unmanaged": count(DeviceState::Unmanaged),
            "managed": count(DeviceState::Managed),
        },
        "alerts": alerts.iter().map(alert_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<DeviceState>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    offset: usize,
}

fn default_limit() -> usize {
    50
}

/// `GET /devices?state=&limit=&offset=`.
pub async fn list(
    state: State,
    _caller: Caller,
    Params(q): Params<ListQuery>,
) -> ApiResult<Json<Value>> {
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let filter = DeviceFilter { state: q.state };
    let devices = state.store(move |s| s.devices(&filter)).await?;
    let page: Vec<Value> = devices
        .iter()
        .skip(q.offset)
        .take(q.limit)
        .map(device_json)
        .collect();
    Ok(Json(json!({ "total": devices.len(), "devices": page })))
}

fn canonical(uuid: &str) -> String {
    uuid.trim().to_ascii_lowercase()
}

/// `GET /devices/{uuid}`: the device and its stored inventory.
pub async fn detail(
    state: State,
    _caller: Caller,
    Segment(uuid): Segment<String>,
) -> ApiResult<Json<Value>> {
    let uuid = canonical(&uuid);
    let u = uuid.clone();
    let (device, inventory) = state
        .store(move |s| Ok((s.device(&u)?, s.device_inventory(&u)?)))
        .await?;
    let device =
        device.ok_or_else(|| ApiError::not_found(format!("no device with UUID {uuid}")))?;
    let mut v = device_json(&device);
    if let Some((text, at)) = inventory {
        v["inventory"] = serde_json::from_str(&text).unwrap_or(Value::Null);
        v["inventory_at"] = Value::String(time(at));
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManageRequest {
    uuids: Vec<String>,
    mode: String,
    profile: Option<String>,
}

/// `POST /devices/manage`: agentless moves all or none; agent deployments go one
/// device at a time, each moving only when its deployment succeeded.
pub async fn manage(
    state: State,
    caller: Caller,
    Body(body): Body<ManageRequest>,
) -> ApiResult<Json<Value>> {
    let uuids: Vec<String> = body.uuids.iter().map(|u| canonical(u)).collect();
    if uuids.is_empty() {
        return Err(ApiError::bad_request("name at least one device"));
    }
    let actor = caller.actor();
    match body.mode.as_str() {
        "agentless" => {
            if body.profile.is_some() {
                return Err(ApiError::bad_request("a profile is for mode \"agent\""));
            }
            let (u, a) = (uuids.clone(), actor.clone());
            state
                .store(move |s| {
                    let refs: Vec<&str> = u.iter().map(String::as_str).collect();
                    s.set_device_management(
                        &refs,
                        Some(ManagementMode::Agentless),
                        None,
                        &a,
                        Value::Null,
                    )
                })
                .await?;
            Ok(Json(json!({ "managed": uuids, "failed": [] })))
        }
        "agent" => {
            let u = uuids.clone();
            let devices = state
                .store(move |s| {
                    u.iter()
                        .map(|uuid| {
                            s.device(uuid)?.ok_or_else(|| {
                                crate::store::StoreError::UnknownDevice(uuid.clone())
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            let (mut managed, mut failed) = (Vec::new(), Vec::new());
            for device in devices {
                let uuid = device.uuid.clone();
                match state
                    .plugins
                    .deploy_and_manage(device, body.profile.clone(), &actor)
                    .await
                {
                    Ok(_) => managed.push(uuid),
                    Err(error) => failed.push(json!({ "uuid": uuid, "error": error })),
                }
            }
            Ok(Json(json!({ "managed": managed, "failed": failed })))
        }
        other => Err(ApiError::bad_request(format!(
            "mode {other:?}: use \"agentless\" or \"agent\""
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uuids {
    uuids: Vec<String>,
}

/// `POST /devices/unmanage`: all or none.
pub async fn unmanage(
    state: State,
    caller: Caller,
    Body(body): Body<Uuids>,
) -> ApiResult<Json<Value>> {
    let uuids: Vec<String> = body.uuids.iter().map(|u| canonical(u)).collect();
    let (u, actor) = (uuids.clone(), caller.actor());
    state
        .store(move |s| {
            let refs: Vec<&str> = u.iter().map(String::as_str).collect();
            s.set_device_management(&refs, None, None, &actor, Value::Null)
        })
        .await?;
    Ok(Json(json!({ "unmanaged": uuids })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    action: PowerAction,
}

/// Management alerts raised by API requests go through the server's alert log, so
/// the alert sinks see them like every other alert.
fn management_alerts(state: &State) -> crate::management::RaiseAlert {
    let alerts = state.alerts.clone();
    std::sync::Arc::new(move |alert| alerts.raise(alert))
}

/// `POST /devices/{uuid}/power`.
pub async fn power(
    state: State,
    caller: Caller,
    Segment(uuid): Segment<String>,
    Body(body): Body<PowerRequest>,
) -> ApiResult<Json<Value>> {
    let reach = state.settings.reach;
    let actor = caller.actor();
    let raise = management_alerts(&state);
    let power = state
        .own_store(move |store| {
            ManagedDevice::open(store, &uuid, reach)?
                .alerts_to(raise)
                .power(body.action, &actor)
        })
        .await?;
    Ok(Json(json!({ "power": power_state_name(power) })))
}

/// `POST /devices/{uuid}/retry`: the device's next hello starts a provisioning job
/// at once, though its last one failed. `{"waiting": false}` when it was not waiting.
pub async fn retry(
    state: State,
    caller: Caller,
    Segment(uuid): Segment<String>,
) -> ApiResult<Json<Value>> {
    let (uuid, actor) = (canonical(&uuid), caller.actor());
    let waiting = state.store(move |s| s.retry_device(&uuid, &actor)).await?;
    Ok(Json(match waiting {
        Some(b) => json!({ "waiting": true, "failures": b.failures, "cause": b.cause }),
        None => json!({ "waiting": false }),
    }))
}

/// `POST /devices/{uuid}/inventory`: read now and stored.
pub async fn inventory(
    state: State,
    _caller: Caller,
    Segment(uuid): Segment<String>,
) -> ApiResult<Json<Value>> {
    let reach = state.settings.reach;
    let raise = management_alerts(&state);
    let inventory = state
        .own_store(move |store| {
            ManagedDevice::open(store, &uuid, reach)?
                .alerts_to(raise)
                .read_inventory()
        })
        .await?;
    Ok(Json(serde_json::to_value(inventory).unwrap_or(Value::Null)))
}

/// `GET /agent-profiles`: every profile the agent deployers offer.
pub async fn agent_profiles(state: State, _caller: Caller) -> Json<Value> {
    Json(json!(state.plugins.agent_profiles().await))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    severity: Option<Severity>,
    acknowledged: Option<bool>,
    #[serde(default = "default_alerts")]
    limit: u32,
}

fn default_alerts() -> u32 {
    100
}

/// `GET /alerts`.
pub async fn alerts(
    state: State,
    _caller: Caller,
    Params(q): Params<AlertsQuery>,
) -> ApiResult<Json<Value>> {
    let filter = AlertFilter {
        min_severity: q.severity,
        acknowledged: q.acknowledged,
        seen_since: None,
        limit: q.limit.clamp(1, 10_000),
    };
    let alerts = state.store(move |s| s.alerts_where(&filter)).await?;
    Ok(Json(Value::Array(alerts.iter().map(alert_json).collect())))
}

/// `POST /alerts/{id}/acknowledge`.
pub async fn acknowledge(
    state: State,
    caller: Caller,
    Segment(id): Segment<i64>,
) -> ApiResult<StatusCode> {
    let actor = caller.actor();
    if state
        .store(move |s| s.acknowledge_alert(id, &actor))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no alert {id}")))
    }
}

/// `GET /plugins`: libraries and instances as the server has them.
pub async fn plugins(state: State, _caller: Caller) -> Json<Value> {
    Json(json!({
        "libraries": state.plugins.library_reports().await,
        "instances": state.plugins.instance_reports().await,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default = "default_alerts")]
    limit: u32,
}

/// `GET /audit`.
pub async fn audit(
    state: State,
    _caller: Caller,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.clamp(1, 10_000);
    let entries = state.store(move |s| s.audit_log(limit)).await?;
    Ok(Json(Value::Array(entries.iter().map(audit_json).collect())))
}
