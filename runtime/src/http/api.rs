//! Routing and the handlers of the HTTP API (docs/RUNTIME.md lists every route).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header, uri::PathAndQuery};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::watch;

use super::auth::{Access, Tokens};
use super::proxy::{self, Proxy, Upstream};
use super::response::{self, ResponseBody};
use super::server::ConnectionTicket;
use super::sse;
use crate::supervisor::Supervisor;

/// The prefix under which opencode is reachable.
pub const OPENCODE_PREFIX: &str = "/opencode";

/// What the handlers need.
pub struct AppState {
    /// The supervisor.
    pub supervisor: Supervisor,
    /// The tokens.
    pub tokens: Tokens,
    /// This server's version.
    pub version: &'static str,
    /// For `GET /system/runtime`: manifest, payload source, runtime and data dirs.
    pub runtime: serde_json::Value,
    /// The active workspace.
    pub workspace: Workspace,
    /// The server's own base URL (`http://host:port`).
    pub base_url: String,
    /// Origins allowed to call from a browser; empty = no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Which `Host` names are served.
    pub host_check: HostCheck,
    /// Set to true to shut the server down.
    pub shutdown: watch::Sender<bool>,
    /// The opencode proxy: its limits and its pool of connections to opencode.
    pub proxy: Proxy,
}

/// Which names a request may address the server by (its `Host` header).
///
/// On a loopback bind only loopback names are served: a web page that rebinds its own DNS
/// name to 127.0.0.1 (DNS rebinding) reaches the port, but its requests still carry its own
/// name, and get `421 Misdirected Request` before any handler runs. A request without `Host`
/// (HTTP/1.0) is served: no browser sends one.
#[derive(Debug, Clone)]
pub enum HostCheck {
    /// Any name (a non-loopback bind: remote clients use whatever name reaches the host).
    Any,
    /// `localhost`, `*.localhost`, loopback IP literals, and these names (lowercase).
    Loopback(Vec<String>),
}

impl HostCheck {
    /// The check for a server bound to `ip`, with the `--allow-host` names.
    pub fn for_bind(ip: IpAddr, allowed: &[String]) -> HostCheck {
        if ip.is_loopback() {
            HostCheck::Loopback(
                allowed
                    .iter()
                    .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
            )
        } else {
            HostCheck::Any
        }
    }

    /// Whether a request with this `Host` header is served.
    pub fn allows(&self, host: Option<&HeaderValue>) -> bool {
        let HostCheck::Loopback(allowed) = self else {
            return true;
        };
        let Some(host) = host else { return true };
        let Ok(host) = host.to_str() else {
            return false;
        };
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        let ip = name.trim_start_matches('[').trim_end_matches(']');
        name == "localhost"
            || name.ends_with(".localhost")
            || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || allowed.contains(&name)
    }
}

/// The name part of a `Host` value: without its port, brackets kept around an IPv6 address.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The active workspace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workspace {
    /// Stable id: the first 16 hex digits of the SHA-256 of the directory path.
    pub id: String,
    /// The directory's name.
    pub name: String,
    /// The directory.
    pub directory: PathBuf,
}

impl Workspace {
    /// The workspace for `directory` (already absolute).
    pub fn new(directory: PathBuf) -> Workspace {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(directory.to_string_lossy().as_bytes());
        Workspace {
            id: hex::encode(&digest[..8]),
            name: directory
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| directory.to_string_lossy().into_owned()),
            directory,
        }
    }
}

/// Handles one request; never fails (errors are JSON responses).
pub async fn handle(
    request: Request<Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let origin = allowed_origin(&state, request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = if !state.host_check.allows(request.headers().get(header::HOST)) {
        response::error(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "this server answers to localhost and loopback addresses only; a reverse proxy's name can be allowed with --allow-host NAME",
        )
    } else if head_size(&request) > super::server::MAX_HEAD_BYTES {
        // hyper's buffer limit only bites when a head arrives in pieces; this holds always.
        response::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "the request's headers exceed {} KiB",
                super::server::MAX_HEAD_BYTES / 1024
            ),
        )
    } else if method == Method::OPTIONS && origin.is_some() {
        preflight()
    } else {
        route(request, &state, peer).await
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    tracing::debug!(%method, path = %path, status = response.status().as_u16(), "request");
    response
}

async fn route(
    request: Request<Incoming>,
    state: &Arc<AppState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();

    let access = state.tokens.access(request.headers());
    if access != Access::None
        && let Some(ticket) = request.extensions().get::<Arc<ConnectionTicket>>()
    {
        ticket.authenticated();
    }

    // The handshake and the health overview need no token (pids only with one).
    match path.as_str() {
        "/health" => return only(&method, &[Method::GET], || health(state)),
        "/system/health" => {
            return only(&method, &[Method::GET], || {
                system_health(state, access != Access::None)
            });
        }
        _ => {}
    }

    if access == Access::None {
        let mut response = response::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong token: send `Authorization: Bearer <token>` (the token is in the file named by the ready line's tokenFile)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }

    if path == OPENCODE_PREFIX || path.starts_with("/opencode/") {
        return proxy_to_opencode(request, state, peer).await;
    }

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["system", "runtime"] => only(&method, &[Method::GET], || system_runtime(state)),
        ["system", "events"] => {
            if method != Method::GET {
                return method_not_allowed(&[Method::GET]);
            }
            let last_event_id = request
                .headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            sse::events_response(&state.supervisor, last_event_id, state.shutdown.subscribe())
        }
        ["system", "shutdown"] => {
            if method != Method::POST {
                return method_not_allowed(&[Method::POST]);
            }
            if access != Access::Host {
                return host_token_required();
            }
            tracing::info!("shutdown requested over the API");
            state.shutdown.send_replace(true);
            response::json(StatusCode::ACCEPTED, &json!({ "shuttingDown": true }))
        }
        ["system", "sidecars", name, "restart"] => {
            if method != Method::POST {
                return method_not_allowed(&[Method::POST]);
            }
            if access != Access::Host {
                return host_token_required();
            }
            if state.supervisor.restart(name) {
                response::json(StatusCode::ACCEPTED, &json!({ "restarting": name }))
            } else {
                unknown_sidecar(name, &state.supervisor)
            }
        }
        ["system", "sidecars", name, "logs"] => {
            if method != Method::GET {
                return method_not_allowed(&[Method::GET]);
            }
            let Some(log) = state.supervisor.log(name) else {
                return unknown_sidecar(name, &state.supervisor);
            };
            let tail = match query_value(request.uri().query(), "tail") {
                None => 200,
                Some(value) => match value.parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => {
                        return response::error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "tail must be a whole number of lines, e.g. ?tail=100",
                        );
                    }
                },
            };
            response::json(
                StatusCode::OK,
                &json!({ "name": name, "file": log.path(), "lines": log.tail(tail) }),
            )
        }
        ["workspaces"] => only(&method, &[Method::GET], || workspaces(state)),
        ["capabilities"] => only(&method, &[Method::GET], || capabilities(state)),
        _ => response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {path}; see GET /capabilities"),
        ),
    }
}

fn only(
    method: &Method,
    allowed: &[Method],
    handler: impl FnOnce() -> Response<ResponseBody>,
) -> Response<ResponseBody> {
    if allowed.contains(method) || (method == Method::HEAD && allowed.contains(&Method::GET)) {
        handler()
    } else {
        method_not_allowed(allowed)
    }
}

fn method_not_allowed(allowed: &[Method]) -> Response<ResponseBody> {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut response = response::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {}", list.join(" or ")),
    );
    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

fn host_token_required() -> Response<ResponseBody> {
    response::error(
        StatusCode::FORBIDDEN,
        "host_token_required",
        "this route needs the host token (OPENWORK_HOST_TOKEN, or the file named by the ready line's hostTokenFile)",
    )
}

fn unknown_sidecar(name: &str, supervisor: &Supervisor) -> Response<ResponseBody> {
    let known: Vec<&str> = supervisor.statuses().iter().map(|s| s.name).collect();
    response::error(
        StatusCode::NOT_FOUND,
        "unknown_sidecar",
        &format!("no sidecar {name:?}; running here: {}", known.join(", ")),
    )
}

fn health(state: &AppState) -> Response<ResponseBody> {
    response::json(
        StatusCode::OK,
        &json!({ "healthy": state.supervisor.opencode_healthy(), "version": state.version }),
    )
}

/// `with_pids`: only for a caller with a token; pids tell another local user which processes
/// to watch.
fn system_health(state: &AppState, with_pids: bool) -> Response<ResponseBody> {
    let sidecars: serde_json::Map<String, serde_json::Value> = state
        .supervisor
        .statuses()
        .into_iter()
        .map(|s| {
            let mut entry = json!({ "state": s.state });
            if with_pids {
                entry["pid"] = json!(s.pid);
            }
            (s.name.to_string(), entry)
        })
        .collect();
    response::json(
        StatusCode::OK,
        &json!({
            "healthy": state.supervisor.opencode_healthy(),
            "version": state.version,
            "sidecars": sidecars,
        }),
    )
}

fn system_runtime(state: &AppState) -> Response<ResponseBody> {
    let mut body = state.runtime.clone();
    body["version"] = json!(state.version);
    body["pid"] = json!(std::process::id());
    body["sidecars"] = json!(state.supervisor.statuses());
    response::json(StatusCode::OK, &body)
}

fn workspaces(state: &AppState) -> Response<ResponseBody> {
    let workspace = &state.workspace;
    let item = json!({
        "id": workspace.id,
        "name": workspace.name,
        "directory": workspace.directory,
        "active": true,
        "opencode": { "baseUrl": format!("{}{OPENCODE_PREFIX}", state.base_url) },
    });
    response::json(
        StatusCode::OK,
        &json!({ "items": [item], "activeId": workspace.id }),
    )
}

fn capabilities(state: &AppState) -> Response<ResponseBody> {
    let sidecars: Vec<&str> = state.supervisor.statuses().iter().map(|s| s.name).collect();
    response::json(
        StatusCode::OK,
        &json!({
            "server": "openwork-server-v2",
            "version": state.version,
            "opencode": { "proxy": true, "basePath": OPENCODE_PREFIX },
            "sidecars": sidecars,
            "routes": [
                "GET /health", "GET /system/health", "GET /system/runtime",
                "GET /system/events", "POST /system/sidecars/{name}/restart",
                "GET /system/sidecars/{name}/logs?tail=N", "POST /system/shutdown",
                "GET /workspaces", "GET /capabilities", "* /opencode/*",
            ],
            "auth": { "scheme": "Bearer", "header": super::auth::TOKEN_HEADER, "hostTokenFor": ["POST /system/shutdown", "POST /system/sidecars/{name}/restart"] },
        }),
    )
}

async fn proxy_to_opencode(
    mut request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let Some(endpoint) = state.supervisor.opencode() else {
        // Its connections are to a process that is gone.
        state.proxy.forget();
        return response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "opencode_unavailable",
            "opencode is not running right now (starting or restarting); retry shortly, or see GET /system/runtime",
        );
    };
    let rest = &request.uri().path()[OPENCODE_PREFIX.len()..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let target = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    let Ok(path_and_query) = target.parse::<PathAndQuery>() else {
        return response::error(StatusCode::BAD_REQUEST, "bad_request", "invalid path");
    };
    let upstream = Upstream {
        addr: endpoint.addr,
        authorization: endpoint.authorization(),
    };
    request.extensions_mut().insert(proxy::ClientAddr(peer));
    state
        .proxy
        .forward(request, &upstream, path_and_query)
        .await
}

fn allowed_origin(state: &AppState, headers: &http::HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    state
        .cors_origins
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

fn preflight() -> Response<ResponseBody> {
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-openwork-token, last-event-id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

fn head_size<B>(request: &Request<B>) -> usize {
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    headers + request.uri().to_string().len()
}

fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(check: &HostCheck, host: &str) -> bool {
        check.allows(Some(&HeaderValue::from_str(host).unwrap()))
    }

    #[test]
    fn a_loopback_bind_serves_loopback_names_and_allowed_ones_only() {
        let check = HostCheck::for_bind("127.0.0.1".parse().unwrap(), &["Proxy.Example.".into()]);
        for host in [
            "localhost",
            "LOCALHOST:4321",
            "localhost.:80",
            "app.localhost:9",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.3.4.5:1",
            "[::1]",
            "[::1]:8080",
            "proxy.example",
            "proxy.example:443",
        ] {
            assert!(allows(&check, host), "{host} should be served");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "192.168.1.10:8080",
            "[2001:db8::1]:80",
            "0.0.0.0",
            "",
        ] {
            assert!(!allows(&check, host), "{host} should get 421");
        }
        assert!(check.allows(None), "no Host header: not a browser");
        let remote = HostCheck::for_bind("192.0.2.1".parse().unwrap(), &[]);
        assert!(allows(&remote, "evil.example"));
    }
}
