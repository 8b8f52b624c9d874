//! Provisioning certificate chains over the admin API: list (any role), import and
//! remove (admins), with the same checks and audit as `vprov pki`.

use axum::http::StatusCode;
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

/// A chain as the API shows it (no key).
pub fn chain_json(c: &ChainRecord) -> Value {
    json!({
        "name": c.name,
        "common_name": c.common_name,
        "domain": c.domain,
        "not_after": time(c.not_after * 1000),
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
    Ok(Json(Value::Array(chains.iter().map(chain_json).collect())))
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
    let (name, actor) = (body.name, caller.actor());
    let record = state
        .store(move |s| s.add_provisioning_chain(&name, &chain, &actor))
        .await?;
    Ok((StatusCode::CREATED, Json(chain_json(&record))))
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
