//! The generator of the OpenAPI document (the `openapi` feature): the routes from the
//! `#[utoipa::path]` attributes on the handlers in [`crate::http::api`], the bodies from
//! [`crate::http::model`], and what every route shares added once, in [`generate`].

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::http::api::{self, certificate, devices};
use crate::http::model;
use crate::http::response::ApiError;
use crate::supervisor;

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
        api::system_identity,
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
        devices::retired_pair,
        devices::pair_start,
        devices::pair_finish,
        devices::list_devices,
        devices::revoke_device,
        certificate::tls_succession,
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

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "X-Request-Id": { "$ref": "#/components/headers/X-Request-Id" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// The document the code describes: what `docs/openapi.json` must be.
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
    components["schemas"]["ErrorBody"]["properties"]["error"]["enum"] =
        json!(ApiError::ALL.iter().map(|e| e.code()).collect::<Vec<_>>());

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
