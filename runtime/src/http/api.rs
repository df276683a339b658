//! Routing and the handlers of the HTTP API. Every route is described by the OpenAPI document
//! generated from the `#[utoipa::path]` attributes here (see [`super::openapi`]).
//!
//! - [`devices`]: the handlers of pairing and paired devices.
//! - [`certificate`]: the statements that lead paired devices to a renewed certificate.

pub mod certificate;
pub mod devices;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header, uri::PathAndQuery};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;
use tracing::Instrument;

use super::auth::{Access, Caller, Tokens};
use super::connections::{ConnectionTicket, FailureCounts};
use super::model;
use super::proxy::{self, Proxy, Upstream};
use super::response::{self, ApiError, ResponseBody};
use super::sse;
use super::{MAX_HEAD_BYTES, OPENCODE_PREFIX, TOKEN_HEADER};
use crate::remote::RemoteState;
use crate::supervisor::Supervisor;
use crate::supervisor::events::EventKind;
use crate::workspace::{ActiveWorkspace, Workspace};

/// The header in which opencode takes the directory a request is about (percent-encoded:
/// opencode decodes it, so any path fits in a header).
pub const OPENCODE_DIRECTORY_HEADER: &str = "x-opencode-directory";

/// Percent-encodes everything in `path` but unreserved characters and `/`: what opencode's
/// `decodeURIComponent` turns back into the path, and a plain path (the common case) stays
/// readable.
fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What the handlers need.
pub struct AppState {
    /// The supervisor.
    pub supervisor: Supervisor,
    /// The tokens.
    pub tokens: Tokens,
    /// This server's version.
    pub version: &'static str,
    /// For `GET /system/runtime`: manifest, payload source, runtime and data dirs (the
    /// live fields are filled in per request).
    pub runtime: model::RuntimeInfo,
    /// The active workspace.
    pub workspace: Arc<ActiveWorkspace>,
    /// The server's own base URL (`http://host:port`): the bound address, for requests
    /// that name no `Host`.
    pub base_url: String,
    /// Origins allowed to call from a browser; empty = no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Which `Host` names are served.
    pub host_check: HostCheck,
    /// Set to true to shut the server down.
    pub shutdown: watch::Sender<bool>,
    /// The opencode proxy: its limits and its pool of connections to opencode.
    pub proxy: Proxy,
    /// Pairing, paired devices, and where the server listens.
    pub remote: RemoteState,
    /// Connection failures, for the health panel.
    pub failures: FailureCounts,
    /// When the server started.
    pub started: std::time::Instant,
}

impl AppState {
    /// `https` when the server speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.remote.certificate.is_some() {
            "https"
        } else {
            "http"
        }
    }
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

/// The header that names a request, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest request id taken from a client; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's own `X-Request-Id` when it is sane (1 to 128 characters, each a letter, a
/// digit or one of `-_.:/+=`: enough for UUIDs, ULIDs and base64 ids; nothing that could
/// forge a log line or smuggle markup), else a fresh one (32 hex digits).
pub fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    let sane = |v: &&HeaderValue| {
        let bytes = v.as_bytes();
        (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
    };
    match headers.get(REQUEST_ID_HEADER).filter(sane) {
        Some(value) => value.clone(),
        None => HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>()))
            .expect("hex digits are a valid header value"),
    }
}

/// Handles one request; never fails (errors are JSON responses). Every answer carries
/// `X-Request-Id`, and the request's log line (and every line logged while it is handled)
/// names the same id, so a client's report can be matched to the log.
pub async fn handle(
    mut request: Request<Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let id = request_id(request.headers());
    // opencode sees the same id (a bad one from the client is replaced, not passed on).
    request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    let id_text = id.to_str().unwrap_or_default().to_owned();
    let span = tracing::info_span!("request", id = %id_text);
    let mut response = handle_inner(request, state, peer).instrument(span).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

async fn handle_inner(
    request: Request<Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let started = std::time::Instant::now();
    let origin = allowed_origin(&state, request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut access = Access::None;
    let mut response = if !state.host_check.allows(request.headers().get(header::HOST)) {
        response::error(
            ApiError::MisdirectedRequest,
            "this server answers to localhost and loopback addresses only; a reverse proxy's name can be allowed with --allow-host NAME",
        )
    } else if head_size(&request) > MAX_HEAD_BYTES {
        // hyper's buffer limit only bites when a head arrives in pieces; this holds always.
        response::error(
            ApiError::HeadersTooLarge,
            &format!("the request's headers exceed {} KiB", MAX_HEAD_BYTES / 1024),
        )
    } else if method == Method::OPTIONS && origin.is_some() {
        preflight()
    } else {
        let caller = state.tokens.authenticate(request.headers());
        access = caller.access;
        route(request, &state, peer, caller).await
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        // So a browser client can read the id for its bug report.
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id"),
        );
    }
    // Only the path: a query may carry a token (EventSource cannot set headers).
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if access == Access::None && status >= 400 {
        // Refused without a token: a flood of these must not flood the log.
        if let Some(untold) = state.failures.log.admit(("refused request", status)) {
            if untold > 0 {
                tracing::info!(%method, path = %path, status, elapsed_ms, untold, "request (and {untold} more refused with this status since the last such line)");
            } else {
                tracing::info!(%method, path = %path, status, elapsed_ms, "request");
            }
        }
    } else {
        tracing::info!(%method, path = %path, status, elapsed_ms, "request");
    }
    response
}

async fn route(
    request: Request<Incoming>,
    state: &Arc<AppState>,
    peer: SocketAddr,
    caller: Caller,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();

    let Caller { access, device } = caller;
    let mut request = request;
    if access != Access::None
        && let Some(ticket) = request.extensions().get::<Arc<ConnectionTicket>>()
    {
        ticket.authenticated();
        // Revoking the device closes this connection (and its streams) too.
        if let Some(device) = &device {
            state.remote.devices.bind_connection(&device.id, ticket);
        }
    }
    if let Some(device) = device {
        // For the connections that leave HTTP behind (WebSockets): they end on revocation.
        request
            .extensions_mut()
            .insert(proxy::Revocation(device.revoked));
    }

    // The handshake, the health overview, pairing and the certificate's succession need no
    // token (pids only with one).
    match path.as_str() {
        "/health" => return only(&method, &[Method::GET], || health(state)),
        "/openapi.json" => return only(&method, &[Method::GET], openapi_json),
        "/system/health" => {
            return only(&method, &[Method::GET], || system_health(state, access));
        }
        "/system/identity" => {
            return only(&method, &[Method::GET], || {
                system_identity(state, request.uri().query())
            });
        }
        "/pair" => return only(&method, &[Method::POST], devices::retired_pair),
        "/pair/start" => {
            return match method {
                Method::POST => devices::pair_start(request, state, peer).await,
                _ => method_not_allowed(&[Method::POST]),
            };
        }
        "/pair/finish" => {
            return match method {
                Method::POST => devices::pair_finish(request, state, peer).await,
                _ => method_not_allowed(&[Method::POST]),
            };
        }
        "/tls/succession" => {
            return only(&method, &[Method::GET], || {
                certificate::tls_succession(state, request.uri().query())
            });
        }
        _ => {}
    }

    if access == Access::None {
        state
            .failures
            .unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut response = response::error(
            ApiError::Unauthorized,
            "missing or wrong token: send `Authorization: Bearer <token>` (the token is in the file named by the ready line's tokenFile)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }

    if path == OPENCODE_PREFIX
        || path
            .strip_prefix(OPENCODE_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
    {
        return proxy_to_opencode(request, state, peer).await;
    }

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let host = access == Access::Host;
    match segments.as_slice() {
        ["system", "runtime"] => only(&method, &[Method::GET], || system_runtime(state)),
        ["system", "events"] => only(&method, &[Method::GET], || {
            system_events(state, request.headers())
        }),
        ["system", "shutdown"] => only(&method, &[Method::POST], || shutdown(state, host)),
        ["system", "sidecars", name, "restart"] => only(&method, &[Method::POST], || {
            restart_sidecar(state, host, name)
        }),
        ["system", "sidecars", name, "logs"] => only(&method, &[Method::GET], || {
            sidecar_logs(state, name, request.uri().query())
        }),
        ["workspaces"] => only(&method, &[Method::GET], || {
            workspaces(state, request.headers())
        }),
        ["workspaces", "active"] => match method {
            Method::GET | Method::HEAD => active_workspace(state, request.headers()),
            Method::PUT if !host => host_token_required(),
            Method::PUT => switch_workspace(request, state).await,
            _ => method_not_allowed(&[Method::GET, Method::PUT]),
        },
        ["capabilities"] => only(&method, &[Method::GET], || capabilities(state)),
        ["system", "pairing"] => only(&method, &[Method::POST], || {
            devices::create_pairing(state, host)
        }),
        ["system", "devices"] => only(&method, &[Method::GET], || {
            devices::list_devices(state, host)
        }),
        ["system", "devices", id] => only(&method, &[Method::DELETE], || {
            devices::revoke_device(state, host, id)
        }),
        _ => response::error(
            ApiError::NotFound,
            &format!("no route {path}; see GET /capabilities"),
        ),
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/system/events", tag = "system",
    summary = "Supervisor events as Server-Sent Events",
    description = "Opens with `retry: 2000`, then (without `Last-Event-ID`) an `event: snapshot` frame of every sidecar's status, then numbered frames as things happen (`event:` = the event's `event` field), and `: keepalive` comments every 15 s. Every frame's `data:` is one JSON document described by `SystemEventData`.\n\nIds: `id:` is `<epoch>-<seq>`, where the epoch (16 hex digits, also in the snapshot) is drawn anew by every server process and `seq` counts its events from 1; the snapshot frame's id is that of the newest event it includes. `Last-Event-ID` (which an `EventSource` sends when it reconnects) resumes: an id of this process within the 256 remembered events replays exactly the events after it (no snapshot); any other id gets an `event: lagged` frame (`reason`: `restarted` for an id of another server process or a bare number, `window` for one older than the remembered events, `invalid` for anything else; `missed`: how many events the snapshot stands in for, null when unknown) and a fresh snapshot, then live events. A reader that falls 256 events behind gets `lagged` (`slow`) and a fresh snapshot too: the stream never skips events silently.\n\nAt shutdown the stream carries `shuttingDown` (sidecar `server`), each sidecar's `stopped`, and last `stopped` of sidecar `server`, and then ends; a stream that ends without that last event was cut.",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (`<epoch>-<seq>`, as the server sent it)")),
    responses(
        (status = 200, description = "The event stream; each frame's `data:` is a `SystemEventData`", content_type = "text/event-stream", body = model::SystemEventData),
    ),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn system_events(state: &AppState, headers: &http::HeaderMap) -> Response<ResponseBody> {
    // Not UTF-8 is not an id this server gave: it becomes `invalid`, not "none".
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .filter(|v| !v.is_empty());
    sse::events_response(&state.supervisor, last_event_id.as_deref())
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/system/shutdown", tag = "system",
    summary = "Stop the server cleanly (host token)",
    responses(
        (status = 202, description = "Stopping: the router, then opencode, then the server exits 0", body = model::ShuttingDown),
        (status = 403, description = "`host_token_required`: the client token is not enough", body = model::ErrorBody),
    ),
    security(("hostToken" = [])),
))]
pub(super) fn shutdown(state: &AppState, host: bool) -> Response<ResponseBody> {
    if !host {
        return host_token_required();
    }
    tracing::info!("shutdown requested over the API");
    state.shutdown.send_replace(true);
    response::json(
        StatusCode::ACCEPTED,
        &model::ShuttingDown {
            shutting_down: true,
        },
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/system/sidecars/{name}/restart", tag = "system",
    summary = "Restart a sidecar from any state, `failed` included (host token)",
    description = "A restart asked for while one is under way (asked for earlier and not yet started, or the sidecar is pending, starting or stopping) is answered 202 and changes nothing. Restarts are budgeted per sidecar: a burst of 3, then one every 20 s; beyond that, 429 `too_many_restarts` with `Retry-After`.",
    params(("name" = String, Path, description = "`opencode` or `opencode-router`")),
    responses(
        (status = 202, description = "Restarting (or already restarting); its failures are forgotten", body = model::Restarting),
        (status = 403, description = "`host_token_required`", body = model::ErrorBody),
        (status = 404, description = "`unknown_sidecar`: no such sidecar runs here", body = model::ErrorBody),
        (status = 429, description = "`too_many_restarts`: the sidecar's restart budget is spent; `Retry-After` says when the next restart may be asked for", body = model::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a restart is allowed again"))),
    ),
    security(("hostToken" = [])),
))]
pub(super) fn restart_sidecar(state: &AppState, host: bool, name: &str) -> Response<ResponseBody> {
    use crate::supervisor::RestartAnswer;
    if !host {
        return host_token_required();
    }
    match state.supervisor.request_restart(name) {
        RestartAnswer::Restarting | RestartAnswer::AlreadyUnderway => response::json(
            StatusCode::ACCEPTED,
            &model::Restarting {
                restarting: name.to_string(),
            },
        ),
        RestartAnswer::TooSoon {
            retry_after,
            policy,
        } => {
            let seconds = response::retry_after_seconds(retry_after);
            response::with_retry_after(
                response::error(
                    ApiError::TooManyRestarts,
                    &format!(
                        "{name} was restarted too often (a burst of {}, then one every {} s): ask again in {seconds} s",
                        policy.burst,
                        policy.refill.as_secs_f64()
                    ),
                ),
                retry_after,
            )
        }
        RestartAnswer::Unknown => unknown_sidecar(name, &state.supervisor),
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/system/sidecars/{name}/logs", tag = "system",
    summary = "The last lines of a sidecar's output and the supervisor's notes about it",
    params(
        ("name" = String, Path, description = "`opencode` or `opencode-router`"),
        ("tail" = Option<u64>, Query, description = "How many lines (default 200)"),
    ),
    responses(
        (status = 200, description = "The last lines, oldest first", body = model::Logs),
        (status = 400, description = "`bad_request`: `tail` is not a whole number", body = model::ErrorBody),
        (status = 404, description = "`unknown_sidecar`", body = model::ErrorBody),
    ),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn sidecar_logs(
    state: &AppState,
    name: &str,
    query: Option<&str>,
) -> Response<ResponseBody> {
    let Some(log) = state.supervisor.log(name) else {
        return unknown_sidecar(name, &state.supervisor);
    };
    let tail = match query_value(query, "tail") {
        None => 200,
        Some(value) => match value.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return response::error(
                    ApiError::BadRequest,
                    "tail must be a whole number of lines, e.g. ?tail=100",
                );
            }
        },
    };
    response::json(
        StatusCode::OK,
        &model::Logs {
            name: name.to_string(),
            file: log.path().to_string_lossy().into_owned(),
            lines: log.tail(tail),
        },
    )
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
        ApiError::MethodNotAllowed,
        &format!("use {}", list.join(" or ")),
    );
    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

pub(super) fn host_token_required() -> Response<ResponseBody> {
    response::error(
        ApiError::HostTokenRequired,
        "this route needs the host token (OPENWORK_HOST_TOKEN, or the file named by the ready line's hostTokenFile)",
    )
}

fn unknown_sidecar(name: &str, supervisor: &Supervisor) -> Response<ResponseBody> {
    let known: Vec<&str> = supervisor.statuses().iter().map(|s| s.name).collect();
    response::error(
        ApiError::UnknownSidecar,
        &format!("no sidecar {name:?}; running here: {}", known.join(", ")),
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/health", tag = "handshake",
    summary = "The OpenWork handshake: is this an OpenWork server, and is opencode up",
    responses((status = 200, description = "Always 200 once the server listens", body = model::Health)),
))]
pub(super) fn health(state: &AppState) -> Response<ResponseBody> {
    response::json(
        StatusCode::OK,
        &model::Health {
            healthy: state.supervisor.opencode_healthy(),
            version: state.version.to_string(),
        },
    )
}

/// Pids only for a caller with a token (pids tell another local user which processes to
/// watch); the health panel only for the host.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/system/health", tag = "system",
    summary = "Every sidecar's state; with a token, their pids; with the host token, the health panel",
    responses((status = 200, description = "The overview", body = model::SystemHealth)),
    security((), ("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn system_health(state: &AppState, access: Access) -> Response<ResponseBody> {
    let with_pids = access != Access::None;
    let statuses = state.supervisor.statuses();
    let sidecars = statuses
        .iter()
        .map(|s| {
            let entry = model::SidecarHealth {
                state: s.state,
                pid: with_pids.then_some(s.pid),
            };
            (s.name.to_string(), entry)
        })
        .collect();
    let panel = (access == Access::Host).then(|| {
        use std::sync::atomic::Ordering::Relaxed;
        let failures = &state.failures;
        model::HealthPanel {
            uptime_ms: state.started.elapsed().as_millis() as u64,
            sidecars: statuses,
            devices_seen_recently: state
                .remote
                .devices
                .seen_since(crate::supervisor::events::unix_ms().saturating_sub(RECENTLY_MS)),
            connection_failures: model::ConnectionFailures {
                tls_handshake: failures.tls_handshake.load(Relaxed),
                unauthorized: failures.unauthorized.load(Relaxed),
                pairing_refused: failures.pairing_refused.load(Relaxed),
                refused_connections: failures.refused_connections.load(Relaxed),
            },
        }
    });
    response::json(
        StatusCode::OK,
        &model::SystemHealth {
            healthy: state.supervisor.opencode_healthy(),
            version: state.version.to_string(),
            sidecars,
            panel,
        },
    )
}

/// The proof a local command asks for before it sends a token (see
/// [`crate::remote::identity`]): no token needed, since it is asked before one is sent.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/system/identity", tag = "system",
    summary = "Prove this is the server that wrote `server.json`, before a local command sends it a token",
    description = "The answer's `proof` is the HMAC-SHA256, under the identity key that this server process wrote into `<data dir>/server.json` (`identityKey`, 64 hex digits, a new one every start), of the bytes `openwork-server-v2 identity v1\\n` followed by the nonce's 32 bytes. A local command (`openwork-server-v2 pair`) sends a random nonce and sends its token (on the same connection) only when the proof verifies: a stale `server.json` names a port anyone may bind once the server is gone.",
    params(("nonce" = String, Query, description = "32 random bytes as 64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    responses(
        (status = 200, description = "The proof", body = model::Identity),
        (status = 400, description = "`bad_request`: the nonce is not 64 hex digits", body = model::ErrorBody),
    ),
    security(()),
))]
pub(super) fn system_identity(state: &AppState, query: Option<&str>) -> Response<ResponseBody> {
    let nonce = query_value(query, "nonce")
        .and_then(|n| hex::decode(n).ok())
        .filter(|n| n.len() == crate::remote::identity::LEN);
    let Some(nonce) = nonce else {
        return response::error(
            ApiError::BadRequest,
            "send ?nonce= with 32 random bytes as 64 hex digits",
        );
    };
    response::json(
        StatusCode::OK,
        &model::Identity {
            pid: std::process::id(),
            proof: hex::encode(state.remote.identity.prove(&nonce)),
        },
    )
}

/// "Seen recently" on the health panel: the last 15 minutes.
const RECENTLY_MS: u64 = 15 * 60 * 1000;

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/openapi.json", tag = "handshake",
    summary = "This document (no token: it holds no secret)",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)),
))]
pub(super) fn openapi_json() -> Response<ResponseBody> {
    response::json(StatusCode::OK, super::openapi::document())
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/system/runtime", tag = "system",
    summary = "What runs: manifest, payload, directories, and every sidecar's status",
    responses((status = 200, description = "The runtime", body = model::RuntimeInfo)),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn system_runtime(state: &AppState) -> Response<ResponseBody> {
    let mut body = state.runtime.clone();
    body.workspace = state
        .workspace
        .get()
        .directory
        .to_string_lossy()
        .into_owned();
    body.sidecars = state.supervisor.statuses();
    if let (Some(tls), Some(fingerprint)) = (body.tls.as_mut(), state.remote.fingerprint()) {
        tls.fingerprint = fingerprint;
    }
    response::json(StatusCode::OK, &body)
}

/// The base URL of this server as the client reached it: its `Host` (already allowed by
/// the host check) when it is a plain `name[:port]`, else the bound address. A client on
/// `localhost`, or behind an `--allow-host` reverse proxy, gets a URL it can use; a Host
/// with anything else in it (a path, user info) is not echoed into a URL.
fn base_url(state: &AppState, headers: &http::HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .filter(|a| !a.as_str().contains('@'));
    match host {
        Some(authority) => format!("{}://{authority}", state.scheme()),
        None => state.base_url.clone(),
    }
}

fn opencode_target(
    state: &AppState,
    headers: &http::HeaderMap,
    workspace: &Workspace,
) -> model::OpencodeTarget {
    model::OpencodeTarget {
        base_url: format!("{}{OPENCODE_PREFIX}", base_url(state, headers)),
        directory: workspace.directory.to_string_lossy().into_owned(),
    }
}

fn active_body(
    state: &AppState,
    headers: &http::HeaderMap,
    workspace: &Workspace,
) -> model::ActiveWorkspaceBody {
    model::ActiveWorkspaceBody {
        id: workspace.id.clone(),
        name: workspace.name.clone(),
        opencode: opencode_target(state, headers, workspace),
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/workspaces", tag = "handshake",
    summary = "The active workspace and how to reach opencode for it",
    description = "`active.opencode.baseUrl` is this server's `/opencode` proxy as the client reached the server (its `Host`): give it to opencode's SDK with this server's token.",
    responses((status = 200, description = "The workspaces", body = model::Workspaces)),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn workspaces(state: &AppState, headers: &http::HeaderMap) -> Response<ResponseBody> {
    let workspace = state.workspace.get();
    let item = model::WorkspaceItem {
        id: workspace.id.clone(),
        name: workspace.name.clone(),
        directory: workspace.directory.to_string_lossy().into_owned(),
        active: true,
        opencode: opencode_target(state, headers, &workspace),
    };
    response::json(
        StatusCode::OK,
        &model::Workspaces {
            active: active_body(state, headers, &workspace),
            items: vec![item],
            active_id: workspace.id.clone(),
        },
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/workspaces/active", tag = "handshake",
    summary = "The active workspace (`GET /workspaces`' `active`)",
    responses((status = 200, description = "The active workspace", body = model::ActiveWorkspaceBody)),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn active_workspace(
    state: &AppState,
    headers: &http::HeaderMap,
) -> Response<ResponseBody> {
    let workspace = state.workspace.get();
    response::json(StatusCode::OK, &active_body(state, headers, &workspace))
}

/// The largest `PUT /workspaces/active` body read: a path and some JSON around it.
const MAX_SWITCH_BODY: usize = 64 * 1024;

/// Reads a JSON request body of at most `limit` bytes as `T`; else the answer to give (415
/// for another content type, 413 when too large, 400 when unreadable or not a `T`, with
/// `example` in the message).
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &http::HeaderMap,
    body: Incoming,
    limit: usize,
    example: &str,
) -> Result<T, Response<ResponseBody>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(response::error(
            ApiError::UnsupportedMediaType,
            &format!("send the body as Content-Type: application/json, e.g. {example}"),
        ));
    }
    let too_large = || {
        response::error(
            ApiError::PayloadTooLarge,
            &format!("the body exceeds {} KiB", limit / 1024),
        )
    };
    // A `Content-Length` over the limit is refused before a byte of the body is read (and
    // before hyper answers an `Expect: 100-continue`).
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    let collect = http_body_util::Limited::new(body, limit).collect();
    let bytes = match tokio::time::timeout(super::BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => {
            return Err(response::error(
                ApiError::BadRequest,
                "the request body could not be read",
            ));
        }
        Err(_) => {
            return Err(response::error(
                ApiError::RequestTimeout,
                &format!(
                    "the request body did not arrive within {} s; send it with the head",
                    super::BODY_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        response::error(
            ApiError::BadRequest,
            &format!("the body must be like {example}: {e}"),
        )
    })
}

/// `PUT /workspaces/active` (host token, checked by the caller): switch, tell
/// `/system/events`, restart the router in the new directory.
#[cfg_attr(feature = "openapi", utoipa::path(
    put, path = "/workspaces/active", tag = "handshake",
    summary = "Switch the active workspace (host token)",
    description = "The directory must exist; it is canonicalised and remembered in the data directory (a restart keeps it unless `--workspace` is given). `/system/events` then carries a `workspaceChanged` event; opencode serves the new directory from the next proxied request on (no restart); opencode-router, if it runs, is restarted in it. Switching to the active workspace again changes nothing and sends no event.",
    request_body(content = model::SwitchWorkspace, content_type = "application/json"),
    responses(
        (status = 200, description = "The workspace now active", body = model::ActiveWorkspaceBody),
        (status = 400, description = "`bad_request`: the body is not `{\"directory\": string}`", body = model::ErrorBody),
        (status = 403, description = "`host_token_required`", body = model::ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within 10 s", body = model::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = model::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = model::ErrorBody),
        (status = 422, description = "`workspace_not_absolute`, `workspace_not_found` or `workspace_not_a_directory`", body = model::ErrorBody),
        (status = 500, description = "`workspace_not_saved` or `internal_error`: nothing was switched", body = model::ErrorBody),
    ),
    security(("hostToken" = [])),
))]
pub(super) async fn switch_workspace(
    request: Request<Incoming>,
    state: &AppState,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let switch: model::SwitchWorkspace = match read_json(
        &parts.headers,
        body,
        MAX_SWITCH_BODY,
        "{\"directory\": \"/home/me/project\"}",
    )
    .await
    {
        Ok(switch) => switch,
        Err(answer) => return answer,
    };
    let active = state.workspace.clone();
    let switched = tokio::task::spawn_blocking(move || active.switch(&switch.directory)).await;
    let (workspace, changed) = match switched {
        Ok(Ok(switched)) => switched,
        Ok(Err(e)) => {
            return response::error(e.api_error(), &e.to_string());
        }
        Err(_) => {
            return response::error(
                ApiError::InternalError,
                "the switch failed unexpectedly; nothing was switched",
            );
        }
    };
    if changed {
        tracing::info!(directory = %workspace.directory.display(), "active workspace switched");
        state.supervisor.events().publish(
            "server",
            EventKind::WorkspaceChanged {
                id: workspace.id.clone(),
                name: workspace.name.clone(),
                directory: workspace.directory.to_string_lossy().into_owned(),
            },
        );
        // opencode takes the directory per request (see proxy_to_opencode); the router only
        // on its command line.
        if state
            .supervisor
            .has(crate::supervisor::SidecarKind::Router.name())
        {
            state
                .supervisor
                .restart(crate::supervisor::SidecarKind::Router.name());
        }
    }
    response::json(
        StatusCode::OK,
        &active_body(state, &parts.headers, &workspace),
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/capabilities", tag = "handshake",
    summary = "What this server offers: routes, auth, and what a client can do with skills, plugins and MCP servers",
    responses((status = 200, description = "The capabilities", body = model::Capabilities)),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) fn capabilities(state: &AppState) -> Response<ResponseBody> {
    let sidecars = state
        .supervisor
        .statuses()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    // Through the proxied opencode API (see model::Capabilities for the routes).
    let access = |read, write| model::Access { read, write };
    // From the document, so the lists cannot drift from what is served.
    let (routes, host_only) = super::openapi::capability_routes();
    response::json(
        StatusCode::OK,
        &model::Capabilities {
            server: "openwork-server-v2".into(),
            version: state.version.to_string(),
            opencode: model::ProxyInfo {
                proxy: true,
                base_path: OPENCODE_PREFIX.into(),
            },
            sidecars,
            routes: routes.clone(),
            auth: model::AuthInfo {
                scheme: "Bearer".into(),
                header: TOKEN_HEADER.into(),
                host_token_for: host_only.clone(),
            },
            skills: access(true, false),
            plugins: access(true, true),
            mcp: access(true, true),
        },
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    method(get, post, put, patch, delete, head, options), path = "/opencode/{path}", tag = "opencode",
    summary = "opencode's own API, passed through",
    description = "Any method, any path under `/opencode/`, WebSocket upgrades included: the request goes to opencode with opencode's password in place of this server's token, and opencode's answer comes back as it is, streamed (its own API is described by opencode's `GET /opencode/doc`). A request that names no directory (`x-opencode-directory` header or `directory` query parameter) is about the active workspace. Errors of the proxy itself are this server's JSON errors.",
    params(("path" = String, Path, description = "opencode's path, e.g. `session` or `global/health`")),
    responses(
        (status = "default", description = "opencode's answer, unchanged"),
        (status = 413, description = "`payload_too_large`: a request body over 64 MiB", body = model::ErrorBody),
        (status = 502, description = "`bad_gateway` (opencode failed the request) or `opencode_unauthorized` (opencode refused its own password)", body = model::ErrorBody),
        (status = 503, description = "`opencode_unavailable`: opencode is starting, restarting or failed; `Retry-After` says when to ask again (while a restart is scheduled, the seconds until it plus 1; when `failed`, 5; otherwise 1); or `too_many_upgrades`: every place for a WebSocket is taken (`Retry-After: 5`)", body = model::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`opencode_timeout`: no answer in time", body = model::ErrorBody),
    ),
    security(("clientToken" = []), ("hostToken" = []), ("tokenHeader" = [])),
))]
pub(super) async fn proxy_to_opencode(
    mut request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let Some(endpoint) = state.supervisor.opencode() else {
        // Its connections are to a process that is gone.
        state.proxy.forget();
        let retry_after = state.supervisor.opencode_retry_after();
        return response::with_retry_after(
            response::error(
                ApiError::OpencodeUnavailable,
                "opencode is not running right now (starting, restarting or failed); retry after the seconds in Retry-After, or see GET /system/runtime",
            ),
            retry_after,
        );
    };
    let rest = &request.uri().path()[OPENCODE_PREFIX.len()..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let target = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    let Ok(path_and_query) = target.parse::<PathAndQuery>() else {
        return response::error(ApiError::BadRequest, "invalid path");
    };
    let upstream = Upstream {
        addr: endpoint.addr,
        authorization: endpoint.authorization(),
    };
    // opencode serves whichever directory a request names (`x-opencode-directory`, or a
    // `directory` query parameter); a request that names none gets the active workspace,
    // so a switch takes effect without restarting opencode.
    let names_directory = request.headers().contains_key(OPENCODE_DIRECTORY_HEADER)
        || query_value(request.uri().query(), "directory").is_some();
    if !names_directory {
        let directory = state.workspace.get().directory;
        if let Ok(value) = HeaderValue::from_str(&percent_encode_path(&directory.to_string_lossy()))
        {
            request
                .headers_mut()
                .insert(OPENCODE_DIRECTORY_HEADER, value);
        }
    }
    request.extensions_mut().insert(proxy::ClientAddr(peer));
    if proxy::is_upgrade(request.headers()) {
        // An upgraded connection holds its place (and two descriptors) for as long as it
        // lives: there are only so many places for them (see `super::connections`).
        let reservation = request
            .extensions()
            .get::<Arc<ConnectionTicket>>()
            .map(ConnectionTicket::reserve_upgrade);
        match reservation {
            Some(Some(reservation)) => {
                request.extensions_mut().insert(reservation);
            }
            Some(None) => {
                // No time is known when a place frees; a few seconds spares the server a
                // client that retries at once.
                return response::with_retry_after(
                    response::error(
                        ApiError::TooManyUpgrades,
                        "every place for a WebSocket (or other upgraded connection) is taken; close one and retry, or raise the server's open-file limit",
                    ),
                    std::time::Duration::from_secs(5),
                );
            }
            // Not from the front door's accept loop (a test calling the handler): no bound.
            None => {}
        }
    }
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
        HeaderValue::from_static(
            "authorization, content-type, x-openwork-token, last-event-id, x-request-id",
        ),
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
    fn a_sane_request_id_is_kept_and_anything_else_is_replaced() {
        let with = |value: &[u8]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(REQUEST_ID_HEADER, HeaderValue::from_bytes(value).unwrap());
            request_id(&headers)
        };
        for sane in [
            "a",
            "0f8e-ULID_01.x:y/z+w=",
            &"x".repeat(MAX_REQUEST_ID_LEN),
        ] {
            assert_eq!(with(sane.as_bytes()), sane);
        }
        let generated = |id: HeaderValue| {
            let text = id.to_str().unwrap().to_owned();
            assert_eq!(text.len(), 32);
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
            text
        };
        let too_long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        for insane in [
            too_long.as_bytes(),
            b"a b",
            b"<b>",
            b"\"quoted\"",
            b"",
            b"caf\xc3\xa9",
        ] {
            generated(with(insane));
        }
        let (a, b) = (
            generated(request_id(&http::HeaderMap::new())),
            generated(request_id(&http::HeaderMap::new())),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn a_directory_is_percent_encoded_as_opencode_decodes_it() {
        assert_eq!(
            percent_encode_path("/home/me/project-1.x_y~"),
            "/home/me/project-1.x_y~"
        );
        assert_eq!(percent_encode_path("/tmp/a b/%"), "/tmp/a%20b/%25");
        assert_eq!(percent_encode_path("/tmp/café"), "/tmp/caf%C3%A9");
        assert_eq!(percent_encode_path("C:\\Users\\me"), "C%3A%5CUsers%5Cme");
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
