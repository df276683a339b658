//! The server's contract, `docs/openapi.json`, as a checker of live answers: for a request
//! (method and concrete path) and the answer it got, the status must be one the document
//! lists for that operation (or `default`), every answer must carry `X-Request-Id` as
//! documented, and a JSON body must validate, with a JSON Schema 2020-12 validator, against
//! the schema the document gives for that status, `$ref`s resolved inside the document.
//! Every documented object is closed, so a field the document does not describe fails.
//!
//! It also counts which operations were checked, so a test can insist that every one was.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::http::HttpResponse;

/// `docs/openapi.json`.
pub fn document_path() -> PathBuf {
    crate::workspace_root().join("docs/openapi.json")
}

/// The checked-in document.
pub fn checked_in_document() -> Value {
    let path = document_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A checker of answers against one document.
pub struct Contract {
    doc: Value,
    checked: BTreeSet<(String, String)>,
}

/// Escapes a key for a JSON pointer inside a URI fragment (`$ref`): `~` and `/` as the
/// pointer syntax wants, and the characters a URI may not hold as percent escapes.
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

impl Contract {
    /// A checker for `doc`.
    pub fn new(doc: Value) -> Contract {
        Contract {
            doc,
            checked: BTreeSet::new(),
        }
    }

    /// The document's path template that `path` (no query) matches, if any: literal
    /// segments first, so `/workspaces/active` is not taken for a parameter.
    pub fn template_for(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(usize, String)> = None;
        for template in self.doc["paths"].as_object()?.keys() {
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            // `{path}` as the last part takes the rest (the opencode pass-through).
            let rest = parts.last() == Some(&"{path}");
            let fits = if rest {
                segments.len() >= parts.len()
            } else {
                segments.len() == parts.len()
            };
            if !fits {
                continue;
            }
            let mut literal = 0;
            let matched = parts.iter().zip(&segments).all(|(part, segment)| {
                if part.starts_with('{') {
                    !segment.is_empty()
                } else {
                    literal += 1;
                    part == segment
                }
            });
            if matched && best.as_ref().is_none_or(|(score, _)| literal > *score) {
                best = Some((literal, template.clone()));
            }
        }
        best.map(|(_, template)| template)
    }

    /// The methods the document has for `template`, upper-case.
    pub fn methods(&self, template: &str) -> Vec<String> {
        self.doc["paths"][template]
            .as_object()
            .map(|item| {
                item.keys()
                    .filter(|k| {
                        ["get", "put", "post", "delete", "options", "head", "patch"]
                            .contains(&k.as_str())
                    })
                    .map(|k| k.to_ascii_uppercase())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every documented (template, METHOD).
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        if let Some(paths) = self.doc["paths"].as_object() {
            for template in paths.keys() {
                for method in self.methods(template) {
                    all.insert((template.clone(), method));
                }
            }
        }
        all
    }

    /// The (template, METHOD) pairs checked so far.
    pub fn checked(&self) -> &BTreeSet<(String, String)> {
        &self.checked
    }

    /// Validates `instance` against the schema at `pointer` in the document; the errors, in
    /// words.
    pub fn validate_at(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        // The document itself is the root, so every `#/components/...` reference resolves;
        // the schema to apply is referenced from there. (Keywords JSON Schema does not know,
        // like `paths`, are ignored.)
        let mut root = self.doc.clone();
        root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        root["$ref"] = json!(format!("#{pointer}"));
        let validator = jsonschema::validator_for(&root)
            .map_err(|e| format!("the schema at {pointer} does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} (at {})", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Validates against a named component schema.
    pub fn validate_component(&self, name: &str, instance: &Value) -> Result<(), String> {
        self.validate_at(&format!("/components/schemas/{name}"), instance)
    }

    /// Checks one live answer to `METHOD path` (the path may carry a query); panics with
    /// everything needed to see why it does not conform.
    pub fn check(&mut self, method: &str, path: &str, response: &HttpResponse) {
        if let Err(problem) = self.conforms(method, path, response) {
            panic!(
                "{method} {path} → {}: does not conform to docs/openapi.json: {problem}\nbody: {}",
                response.status,
                response.text()
            );
        }
    }

    /// [`Contract::check`], returning the problem instead of panicking.
    pub fn conforms(
        &mut self,
        method: &str,
        path: &str,
        response: &HttpResponse,
    ) -> Result<(), String> {
        let request_id = response
            .header("x-request-id")
            .ok_or("no X-Request-Id header")?;
        self.validate_at(
            "/components/headers/X-Request-Id/schema",
            &json!(request_id),
        )
        .map_err(|e| format!("X-Request-Id {request_id:?}: {e}"))?;

        let bare = path.split('?').next().unwrap_or(path);
        let method = method.to_ascii_uppercase();
        let Some(template) = self.template_for(bare) else {
            // No route: only the documented 404 error.
            return self.routeless(404, response);
        };
        let methods = self.methods(&template);
        let documented_method =
            methods.contains(&method) || (method == "HEAD" && methods.contains(&"GET".to_string()));
        if !documented_method {
            // A method the route does not take: the documented 405 error, with `Allow`.
            let allow = response.header("allow").ok_or("405 without Allow")?;
            let mut allowed: Vec<String> = allow.split(',').map(|m| m.trim().to_string()).collect();
            allowed.sort();
            let mut expected = methods.clone();
            expected.sort();
            if allowed != expected {
                return Err(format!("Allow: {allow}, the document has {expected:?}"));
            }
            return self.routeless(405, response);
        }
        let op_method = if methods.contains(&method) {
            method.to_ascii_lowercase()
        } else {
            "get".into()
        };
        self.checked
            .insert((template.clone(), op_method.to_ascii_uppercase()));
        let responses = &self.doc["paths"][&template][&op_method]["responses"];
        let status = response.status.to_string();
        let key = if responses.get(&status).is_some() {
            status
        } else if responses.get("default").is_some() {
            "default".to_string()
        } else {
            return Err(format!(
                "status {status} is not documented for {op_method} {template} (documented: {:?})",
                responses.as_object().map(|r| r.keys().collect::<Vec<_>>())
            ));
        };
        let documented = &responses[&key];
        let content_type = response
            .header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            if key != "default" && !response.body.is_empty() && method != "HEAD" {
                return Err(format!("a {content_type} body where the document has none"));
            }
            return Ok(());
        };
        if method == "HEAD" || response.status == 204 {
            return Ok(());
        }
        if !content.contains_key(&content_type) {
            return Err(format!(
                "Content-Type {content_type:?}, the document has {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        }
        if content_type == "application/json" {
            let body: Value = serde_json::from_slice(&response.body)
                .map_err(|e| format!("the body is not JSON: {e}"))?;
            let pointer = format!(
                "/paths/{}/{op_method}/responses/{key}/content/{}/schema",
                pointer_key(&template),
                pointer_key(&content_type)
            );
            self.validate_at(&pointer, &body)?;
        }
        Ok(())
    }

    /// Answers no operation owns (404 for no route, 405 for another method): a JSON
    /// `ErrorBody` with the documented code.
    fn routeless(&self, status: u16, response: &HttpResponse) -> Result<(), String> {
        if response.status != status {
            return Err(format!(
                "expected {status} (no operation is documented for this request)"
            ));
        }
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| format!("the body is not JSON: {e}"))?;
        self.validate_component("ErrorBody", &body)?;
        let code = if status == 404 {
            "not_found"
        } else {
            "method_not_allowed"
        };
        if body["error"] != code {
            return Err(format!(
                "error {} where {code} is documented",
                body["error"]
            ));
        }
        Ok(())
    }
}
