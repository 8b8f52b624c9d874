//! `openapi.json` against the API as built: the router's routes (read from
//! [`super::router`]'s source) and the documented operations are the same set, every
//! documented operation reaches a handler, and the JSON a few routes actually serve
//! has the documented shape.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower_service::Service;

use super::testing::state;
use super::{auth, router, ApiState};
use crate::store::{
    CredentialKind, KeyFilter, NewAlert, ProvisionedDevice, Role, Severity, Store, StoreError,
};

const PREFIX: &str = "/api/v1";

fn document() -> Value {
    serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON")
}

/// `(method, path)` of every documented operation.
fn documented() -> BTreeSet<(String, String)> {
    let doc = document();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// `(method, path)` of every API route in `router`'s source: each `.route("…", …)`
/// call of the API router, with the method routers it chains.
fn routed(source: &str) -> BTreeSet<(String, String)> {
    let start = source.find("pub fn router(").expect("router");
    let body = &source[start..];
    let end = body.find(".nest(").expect("the API is nested");
    let mut ops = BTreeSet::new();
    for call in body[..end].split(".route(").skip(1) {
        let path = call.split('"').nth(1).expect("a route path");
        for method in ["get", "post", "put", "delete", "patch"] {
            let chained =
                call.contains(&format!(".{method}(")) || call.contains(&format!(" {method}("));
            let first = call
                .split_once(',')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{method}(")));
            if chained || first {
                ops.insert((method.to_uppercase(), format!("{PREFIX}{path}")));
            }
        }
    }
    ops
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_has() {
    let routes = routed(include_str!("mod.rs"));
    let documented = documented();
    assert!(routes.len() > 20, "{routes:?}");
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes openapi.json lacks: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "documented routes the router lacks: {missing:?}"
    );
}

#[test]
fn route_calls_are_read_with_all_their_methods() {
    let source = r#"pub fn router(state: S) -> Router {
        let api = Router::new()
            .route(
                "/session",
                get(auth::whoami).post(auth::sign_in).delete(auth::sign_out),
            )
            .route("/keys/revoke", post(keys::revoke_keys));
        Router::new().nest("/api/v1", api)
    }"#;
    let ops: Vec<_> = routed(source)
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        ops,
        [
            "DELETE /api/v1/session",
            "GET /api/v1/session",
            "POST /api/v1/keys/revoke",
            "POST /api/v1/session"
        ]
    );
}

/// Sends one request to the router, as the server would (with the peer address).
async fn send(
    state: &Arc<ApiState>,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut request = request.body(Body::empty()).expect("request");
    request
        .extensions_mut()
        .insert(auth::Peer("127.0.0.1:1".parse().expect("address")));
    let response = router(state.clone())
        .call(request)
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_documented_operation_reaches_a_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = state(dir.path(), 1);
    for (method, path) in documented() {
        if path.ends_with("/events") {
            continue; // a stream; it too asks for a caller first (below)
        }
        let concrete = path
            .replace("{id}", "1")
            .replace("{uuid}", "00000000-0000-0000-0000-000000000000");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = send(&state, method.clone(), &concrete, None).await;
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && body["error"] != "no such page",
            "{method} {concrete}: {status} {body}"
        );
    }
    // And the check can fail: an undocumented path is the fallback's.
    let (status, body) = send(&state, Method::GET, "/api/v1/nowhere", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no such page"))
    );
}

/// Resolves a `$ref` into the document's components.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("a reference");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Where `value` departs from `schema`: types, enumerations, and object properties
/// both ways (a served field the document lacks, a required field not served).
fn mismatches(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        return; // optional fields are served as null
    }
    let ty = schema["type"].as_str().or_else(|| {
        schema["type"]
            .as_array()
            .and_then(|t| t.iter().filter_map(Value::as_str).find(|t| *t != "null"))
    });
    let fits = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !fits {
        out.push(format!("{at}: {value} is not {ty:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (key, v) in obj {
            match props.get(key) {
                Some(s) => mismatches(doc, s, v, &format!("{at}.{key}"), out),
                None => out.push(format!("{at}.{key} is served but not documented")),
            }
        }
        // Properties are optional unless the schema requires them.
        let required = schema["required"].as_array().into_iter().flatten();
        for key in required.filter_map(Value::as_str) {
            if !obj.contains_key(key) {
                out.push(format!("{at}.{key} is required but not served"));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            mismatches(doc, items, v, &format!("{at}[{i}]"), out);
        }
    }
}

/// One provisioned device (the batch's first key) and one alert, so that lists
/// carry items.
fn record_device_and_alert(s: &mut Store) -> Result<(), StoreError> {
    let mut first = None;
    s.for_each_key(&KeyFilter::default(), |k| {
        first.get_or_insert(k.pid);
        Ok::<_, StoreError>(())
    })?;
    let pid = first.expect("a key");
    let uuid = "00112233-4455-6677-8899-aabbccddeeff";
    let intent = s
        .begin_job(&pid, uuid, "127.0.0.2", "P@ssw0rd-device")?
        .expect("an available key");
    let device = ProvisionedDevice {
        uuid: uuid.into(),
        host_name: Some("amt-1".into()),
        address: "127.0.0.2".into(),
        amt_version: Some("16.1.25".into()),
        admin_user: "admin".into(),
        certificate_der: vec![1, 2, 3],
    };
    s.complete_job(intent.id, &device, "P@ssw0rd-device")?;
    let alert = NewAlert {
        severity: Severity::Warning,
        source: "test".into(),
        message: "something to see".into(),
        pid: Some(pid.as_str().into()),
        device_uuid: Some(uuid.into()),
        address: Some("127.0.0.2".into()),
    };
    s.insert_alerts(&[alert], None).map(drop)
}

#[tokio::test]
async fn served_json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = state(dir.path(), 3);
    let token = "openapi-test-token";
    state
        .store(move |s| {
            s.add_admin("alice", "unused", Role::Admin, "test")?;
            record_device_and_alert(s)?;
            s.add_credential(
                &crate::accounts::token_hash(token),
                "alice",
                CredentialKind::Token,
                None,
                None,
                "test",
            )
        })
        .await
        .expect("an account");
    let doc = document();
    let mut checked_items = false;
    for template in [
        "/dashboard",
        "/batches",
        "/batches/{id}/keys",
        "/devices",
        "/alerts",
        "/session",
    ] {
        let path = template.replace("{id}", "1");
        let (status, body) =
            send(&state, Method::GET, &format!("{PREFIX}{path}"), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let schema = &doc["paths"][format!("{PREFIX}{template}")]["get"]["responses"]["200"]
            ["content"]["application/json"]["schema"];
        assert!(!schema.is_null(), "{path} documents no JSON answer");
        let mut out = Vec::new();
        mismatches(&doc, schema, &body, &path, &mut out);
        assert!(out.is_empty(), "{path}: {out:#?}");
        checked_items |= body
            .to_string()
            .contains("00112233-4455-6677-8899-aabbccddeeff");
    }
    assert!(
        checked_items,
        "no list carried the recorded device or alert"
    );
}

#[test]
fn a_shape_mismatch_is_reported() {
    let doc = serde_json::json!({"components": {"schemas": {"A": {
        "type": "object",
        "required": ["s"],
        "properties": {"n": {"type": "integer"}, "s": {"type": "string"}, "e": {"enum": ["a"]}}
    }}}});
    let schema = serde_json::json!({"$ref": "#/components/schemas/A"});
    let mut out = Vec::new();
    mismatches(
        &doc,
        &schema,
        &serde_json::json!({"n": "x", "extra": 1}),
        "a",
        &mut out,
    );
    assert_eq!(out.len(), 3, "{out:?}");
}
