//! The OpenAPI 3.1 document of the HTTP API, generated from the code: the routes from the
//! `#[utoipa::path]` attributes on the handlers in [`super::api`], the bodies from the types
//! in [`super::model`] (which the handlers serialise), and what every route shares (the
//! `X-Request-Id` header, the errors the front door gives before any handler runs) added
//! here once, in [`generate`].
//!
//! The generator is behind the `openapi` feature: the server serves the checked-in
//! `docs/openapi.json` ([`document`]), and the test `openapi_document` in
//! `tests/tests/contract.rs` (built with the feature) fails when it differs from what the
//! code generates (regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p openwork-tests --test contract openapi_document`). So the
//! shipped binary carries the document but not the generator (0.44 MB of the stripped stub).

use std::sync::OnceLock;

use serde_json::Value;
#[cfg(feature = "openapi")]
use serde_json::json;
#[cfg(feature = "openapi")]
use utoipa::OpenApi;

#[cfg(feature = "openapi")]
use super::api;
#[cfg(feature = "openapi")]
use super::devices;
#[cfg(feature = "openapi")]
use super::model;
#[cfg(feature = "openapi")]
use crate::supervisor;

/// `docs/openapi.json`, as checked in.
const CHECKED_IN: &str = include_str!("../../../docs/openapi.json");

#[cfg(feature = "openapi")]
#[derive(OpenApi)]
#[openapi(
    info(
        title = "openwork-server-v2",
        description = "The single-file OpenWork server: the OpenWork handshake, the supervisor of opencode (and opencode-router), and opencode's own API passed through under `/opencode/`. Every answer carries `X-Request-Id`. Errors are `ErrorBody`, on every route and also for paths no route has (404 `not_found`) and methods a route does not take (405 `method_not_allowed`, with `Allow`).",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        api::health,
        api::openapi_json,
        api::system_health,
        api::system_runtime,
        api::system_events,
        api::shutdown,
        api::restart_sidecar,
        api::sidecar_logs,
        api::workspaces,
        api::active_workspace,
        api::switch_workspace,
        api::capabilities,
        devices::create_pairing,
        devices::pair,
        devices::list_devices,
        devices::revoke_device,
        api::proxy_to_opencode,
    ),
    components(schemas(
        model::ErrorBody,
        model::SystemEventData,
        supervisor::events::EventKind,
    )),
    tags(
        (name = "handshake", description = "What an OpenWork client asks first"),
        (name = "system", description = "The supervisor: sidecars, their logs and events, shutdown"),
        (name = "devices", description = "Pairing devices with a code the host approves, and revoking their tokens"),
        (name = "opencode", description = "opencode's API, passed through"),
    ),
)]
struct ApiDoc;

/// The document the server serves: `docs/openapi.json` as checked in (parsed once).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::from_str(CHECKED_IN).expect("docs/openapi.json is JSON"))
}

/// Every operation whose security requirements pass `filter`, as `METHOD /path`; the
/// pass-through, which takes any method, as `* /opencode/{path}`.
pub fn routes(filter: impl Fn(&[Value]) -> bool) -> Vec<String> {
    let mut routes = Vec::new();
    let Some(paths) = document()["paths"].as_object() else {
        return routes;
    };
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        let mut methods: Vec<String> = item
            .iter()
            .filter(|(_, op)| filter(op["security"].as_array().map_or(&[], Vec::as_slice)))
            .map(|(method, _)| method.to_ascii_uppercase())
            .collect();
        if methods.len() > 3 {
            methods = vec!["*".into()];
        }
        routes.extend(methods.into_iter().map(|method| format!("{method} {path}")));
    }
    routes
}

/// Every route and the host-token-only ones, as `/capabilities` lists them: read from the
/// document once, not per request.
pub fn capability_routes() -> &'static (Vec<String>, Vec<String>) {
    static ROUTES: OnceLock<(Vec<String>, Vec<String>)> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let host_only = serde_json::json!({ "hostToken": [] });
        (
            routes(|_| true),
            routes(|security| security == std::slice::from_ref(&host_only)),
        )
    })
}

#[cfg(feature = "openapi")]
fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "X-Request-Id": { "$ref": "#/components/headers/X-Request-Id" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// The document the code describes: what `docs/openapi.json` must be.
#[cfg(feature = "openapi")]
pub fn generate() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    // No version in the document: it would change with every release without the contract
    // changing, and make the checked-in copy drift for nothing.
    doc["info"]["version"] = json!("1");

    let components = &mut doc["components"];
    components["securitySchemes"] = json!({
        "clientToken": {
            "type": "http", "scheme": "bearer",
            "description": "The client token: OPENWORK_TOKEN, --token-file, or the file the ready line names as tokenFile.",
        },
        "hostToken": {
            "type": "http", "scheme": "bearer",
            "description": "The host token (the app that started the server): OPENWORK_HOST_TOKEN or the file the ready line names as hostTokenFile. Accepted wherever the client token is.",
        },
        "tokenHeader": {
            "type": "apiKey", "in": "header", "name": "X-OpenWork-Token",
            "description": "Either token, for clients that cannot set Authorization.",
        },
    });
    components["headers"] = json!({
        "X-Request-Id": {
            "description": "The request's id: the client's own X-Request-Id when it sent a sane one (1 to 128 of A-Z a-z 0-9 - _ . : / + =), else a generated one. The server's log line for the request names it.",
            "required": true,
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9._:/+=-]{1,128}$" },
        },
    });
    // Every numbered event is closed: no field beyond what its kind declares. (The kind's
    // fields come in through `allOf`, so `additionalProperties` cannot say it.)
    if let Some(event) = components["schemas"].get_mut("Event") {
        event["unevaluatedProperties"] = json!(false);
    }
    components["schemas"]["ErrorBody"]["properties"]["error"]["enum"] = json!(model::ERROR_CODES);

    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            // One handler serves every method of the pass-through; generated clients want a
            // name per method (`opencode_get`, …), not `proxy_to_opencode2`.
            if path == "/opencode/{path}" {
                operation["operationId"] = json!(format!("opencode_{method}"));
            }
            let secured = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| {
                    !s.iter()
                        .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
                });
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            // Before any handler: a Host that is not this server's, a head too large.
            responses.insert(
                "421".into(),
                error_response(
                    "`misdirected_request`: on a loopback bind, a Host that is not a loopback name or an --allow-host name (DNS rebinding)",
                ),
            );
            responses.insert(
                "431".into(),
                error_response("`headers_too_large`: request line and headers over 64 KiB"),
            );
            if secured {
                let mut unauthorized = error_response(
                    "`unauthorized`: no token or a wrong one (`WWW-Authenticate: Bearer`)",
                );
                unauthorized["headers"]["WWW-Authenticate"] =
                    json!({ "schema": { "type": "string", "const": "Bearer" } });
                responses.entry("401").or_insert(unauthorized);
            }
            for (_status, response) in responses.iter_mut() {
                if response.get("$ref").is_none() {
                    response["headers"]["X-Request-Id"] =
                        json!({ "$ref": "#/components/headers/X-Request-Id" });
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_switch_error_code() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let codes = &doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"];
        let probe = std::env::temp_dir();
        let active = crate::workspace::ActiveWorkspace::new(
            crate::workspace::Workspace::new(probe.clone()),
            probe.join("never-written.json"),
        );
        for refused in ["relative", "/no/such/dir/for/this/test"] {
            let code = active.switch(refused).unwrap_err().code();
            assert!(codes.as_array().unwrap().contains(&json!(code)), "{code}");
        }
        // The routes /capabilities lists come from here.
        let mut host_only = routes(|security| security == [json!({ "hostToken": [] })]);
        host_only.sort();
        assert_eq!(
            host_only,
            [
                "DELETE /system/devices/{id}",
                "GET /system/devices",
                "POST /system/pairing",
                "POST /system/shutdown",
                "POST /system/sidecars/{name}/restart",
                "PUT /workspaces/active"
            ]
        );
        let all = routes(|_| true);
        assert!(all.contains(&"* /opencode/{path}".to_string()), "{all:?}");
        assert!(
            all.contains(&"GET /workspaces/active".to_string()),
            "{all:?}"
        );
        assert_eq!(all.len(), 17, "{all:?}");
        // Every operation answers with the request id header.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    assert!(
                        response["headers"].get("X-Request-Id").is_some(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
