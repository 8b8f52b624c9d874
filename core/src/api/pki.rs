//! Provisioning certificate chains over the admin API: list (any role, with the
//! expiry warning), import, vprov's own root, remove and the setup.bin download
//! (admins), with the same checks and audit as `vprov pki`.

use std::net::Ipv4Addr;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::auth::Caller;
use super::{ApiError, ApiResult, Body, Segment, State};
use crate::pki::chain::subjects_of_pem;
use crate::pki::ProvisioningChain;
use crate::store::ChainRecord;
use crate::views::time_ms as time;

/// A chain as the API shows it (no key); `expires_soon` when it expires within
/// `warn_days` (`[pki] expiry_warning_days`) or has expired.
pub fn chain_json(c: &ChainRecord, warn_days: u32) -> Value {
    let now = crate::store::now_ms() / 1000;
    json!({
        "name": c.name,
        "common_name": c.common_name,
        "domain": c.domain,
        "not_after": time(c.not_after * 1000),
        "expires_soon": c.not_after <= now + i64::from(warn_days) * 86_400,
        "root_sha1": hex::encode(&c.root.sha1),
        "root_sha256": hex::encode(&c.root.sha256),
        "root_sha384": hex::encode(&c.root.sha384),
        "certificates": subjects_of_pem(&c.chain_pem),
        "imported_at": time(c.imported_at),
        "imported_by": c.imported_by,
    })
}

/// `GET /pki/chains`.
pub async fn list(state: State, _caller: Caller) -> ApiResult<Json<Value>> {
    let chains = state.store(|s| s.provisioning_chains()).await?;
    let days = state.settings.expiry_warning_days;
    Ok(Json(Value::Array(
        chains.iter().map(|c| chain_json(c, days)).collect(),
    )))
}

/// An import: PEM certificates and key, or a base64 PFX with its password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    name: String,
    pem: Option<String>,
    key_pem: Option<String>,
    pfx_base64: Option<String>,
    password: Option<String>,
}

/// `POST /pki/chains` (admins): 422 names the rule a refused chain breaks.
pub async fn import(
    state: State,
    caller: Caller,
    Body(body): Body<Import>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin("import provisioning chains")?;
    crate::store::check_chain_name(&body.name)?;
    let password = Zeroizing::new(body.password.unwrap_or_default());
    let key_pem = body.key_pem.map(Zeroizing::new);
    let now = crate::store::now_ms() / 1000;
    let refused = |e: crate::pki::ChainError| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the chain was refused: {e}"),
        )
    };
    let chain = match (body.pem, body.pfx_base64) {
        (Some(pem), None) => ProvisioningChain::from_pem(
            pem.as_bytes(),
            key_pem.as_ref().map(|k| k.as_bytes()),
            password.as_bytes(),
            now,
        )
        .map_err(refused)?,
        (None, Some(pfx)) => {
            let der = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(pfx.trim())
                    .map_err(|_| {
                        ApiError::new(StatusCode::BAD_REQUEST, "pfx_base64 is not base64")
                    })?,
            );
            ProvisioningChain::from_pfx(&der, &password, now).map_err(refused)?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give either pem (with key_pem unless the key is in it) or pfx_base64",
            ))
        }
    };
    store_chain(&state, body.name, chain, caller.actor()).await
}

/// Stores a checked chain under `name` (audited as `actor`) and answers 201 with it.
async fn store_chain(
    state: &State,
    name: String,
    chain: ProvisioningChain,
    actor: String,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let record = state
        .store(move |s| s.add_provisioning_chain(&name, &chain, &actor))
        .await?;
    let days = state.settings.expiry_warning_days;
    Ok((StatusCode::CREATED, Json(chain_json(&record, days))))
}

/// vprov's own provisioning root for a DNS suffix.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnRoot {
    name: String,
    domain: String,
}

/// `POST /pki/own-root` (admins): creates vprov's own root and leaf for a DNS suffix
/// (`vprov pki create-root`); the keys are generated on a blocking thread.
pub async fn create_own_root(
    state: State,
    caller: Caller,
    Body(body): Body<OwnRoot>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin("create provisioning roots")?;
    crate::store::check_chain_name(&body.name)?;
    let domain = body.domain.trim_end_matches('.').to_ascii_lowercase();
    crate::pki::select::check_domain(&domain).map_err(ApiError::bad_request)?;
    let now = crate::store::now_ms() / 1000;
    let chain = tokio::task::spawn_blocking(move || crate::pki::own_root::create(&domain, now))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    store_chain(&state, body.name, chain, caller.actor()).await
}

/// Where the devices a setup.bin touches send their hellos (defaults: `[export]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupBinTarget {
    server: Option<Ipv4Addr>,
    port: Option<u16>,
}

/// `POST /pki/chains/{name}/setupbin` (admins): the USB setup.bin that makes devices
/// trust the chain's root (`vprov pki setupbin`). It carries the provisioning
/// password, so it is audited like a key export.
pub async fn setup_bin(
    state: State,
    caller: Caller,
    Segment(name): Segment<String>,
    Body(body): Body<SetupBinTarget>,
) -> ApiResult<Response> {
    caller.require_admin("download setup.bin (it carries the provisioning password)")?;
    let (address, default_port) = state.settings.export_server.clone();
    let server = match body.server {
        Some(s) => s,
        None => address.parse().map_err(|_| {
            ApiError::bad_request(
                "give vprov's IPv4 address as devices reach it in \"server\" (or set [export] server_address)",
            )
        })?,
    };
    let port = body.port.unwrap_or(default_port);
    let actor = caller.actor();
    let (_, bytes) = state
        .store(move |s| s.provisioning_setup_bin(&name, server, port, &actor))
        .await?
        .ok_or_else(|| ApiError::not_found("no such chain"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"setup.bin\"",
            ),
        ],
        bytes.to_vec(),
    )
        .into_response())
}

/// `DELETE /pki/chains/{name}` (admins).
pub async fn remove(
    state: State,
    caller: Caller,
    Segment(name): Segment<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin("remove provisioning chains")?;
    let actor = caller.actor();
    if state
        .store(move |s| s.remove_provisioning_chain(&name, &actor))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such chain"))
    }
}
