//! The OpenAPI 3.1 document of the HTTP API, generated from the code: the routes from the
//! `#[utoipa::path]` attributes on the handlers in [`super::api`], the bodies from the types
//! in [`super::model`] (which the handlers serialise), and what every route shares (the
//! `X-Request-Id` header, the errors the front door gives before any handler runs) added
//! here once, in `generate` (a module of its own: it depends on the handlers, which depend
//! on the [`document`] served here).
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
mod generate;
#[cfg(feature = "openapi")]
pub use generate::generate;

/// `docs/openapi.json`, as checked in.
const CHECKED_IN: &str = include_str!("../../../docs/openapi.json");

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
        assert_eq!(all.len(), 21, "{all:?}");
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
