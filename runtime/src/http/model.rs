//! The bodies of the HTTP API: every JSON answer and request body the handlers in
//! [`super::api`] produce or read, as types. The handlers serialise exactly these, and the
//! OpenAPI document ([`super::openapi`]) is derived from the same types, so the document
//! cannot describe a field the server does not send or miss one it does. Every object is
//! closed (`additionalProperties: false`) unless it passes on something open by nature
//! (the payload manifest).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::supervisor::SidecarState;
use crate::supervisor::SidecarStatus;
use crate::supervisor::logs::LogLine;

/// Every error: a stable machine-readable code and what to do about it.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// A stable word (one of the codes the API documents): what went wrong, for a program.
    pub error: String,
    /// What happened and what to do, in words.
    pub message: String,
}

/// `GET /health`: the OpenWork handshake. A server that answers anything else is not an
/// OpenWork server (a client then talks to opencode directly).
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Whether opencode is running and healthy.
    pub healthy: bool,
    /// This server's version.
    pub version: String,
}

/// One sidecar in `GET /system/health`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SidecarHealth {
    /// Its state.
    pub state: SidecarState,
    /// Its pid: present only when the request carried a token (pids tell another local
    /// user which processes to watch); null when no process runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub pid: Option<Option<u32>>,
}

/// `GET /system/health`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SystemHealth {
    /// Whether opencode is running and healthy.
    pub healthy: bool,
    /// This server's version.
    pub version: String,
    /// Every supervised sidecar by name (`opencode`, `opencode-router`).
    pub sidecars: BTreeMap<String, SidecarHealth>,
    /// The health panel's data: only with the host token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub panel: Option<HealthPanel>,
}

/// What a health panel shows (`GET /system/health` with the host token). All local: nothing
/// is sent anywhere.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct HealthPanel {
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Every sidecar's status: state, restarts, how the last process ended.
    pub sidecars: Vec<SidecarStatus>,
    /// Paired devices seen in the last 15 minutes.
    pub devices_seen_recently: Vec<Device>,
    /// Connection failures since the start.
    pub connection_failures: ConnectionFailures,
}

/// Connection failures since the start (`HealthPanel`).
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ConnectionFailures {
    /// TLS handshakes that failed or did not finish.
    pub tls_handshake: u64,
    /// Requests refused with 401.
    pub unauthorized: u64,
    /// Pairing attempts refused.
    pub pairing_refused: u64,
    /// Connections refused because every slot was taken.
    pub refused_connections: u64,
}

/// Where the payload came from (`GET /system/runtime`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    /// `embedded`, `bundle-flag`, `bundle-env` or `bundle-beside-executable`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub source: crate::source::SourceKind,
    /// The executable or bundle directory it was read from.
    pub path: String,
    /// The SHA-256 of its manifest.
    pub digest: String,
}

/// `GET /system/runtime`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct RuntimeInfo {
    /// This server's version.
    pub version: String,
    /// This server's pid.
    pub pid: u32,
    /// The payload's manifest (docs/FORMAT.md); absent in pure dev mode (`--sidecar` for
    /// every sidecar).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = false, value_type = Object))]
    pub manifest: Option<serde_json::Value>,
    /// Where the payload came from; absent in pure dev mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub payload: Option<PayloadInfo>,
    /// The runtime directory the sidecars run from; absent in pure dev mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub runtime_dir: Option<String>,
    /// The data directory.
    pub data_dir: String,
    /// The active workspace's directory.
    pub workspace: String,
    /// `--sidecar` overrides: sidecar name → executable.
    pub overrides: BTreeMap<String, String>,
    /// `<data dir>/opencode-router.json` when it exists.
    pub router_config: Option<String>,
    /// Every sidecar's status.
    pub sidecars: Vec<SidecarStatus>,
    /// TLS, when the server speaks it (every non-loopback bind); null for plain HTTP.
    pub tls: Option<TlsInfo>,
}

/// The certificate the server presents (`GET /system/runtime`, the ready line).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct TlsInfo {
    /// SHA-256 of the certificate (DER), 64 lowercase hex digits: what a client pins.
    pub fingerprint: String,
    /// The certificate file (generated in the data dir's `tls/`, or `--tls-cert`).
    pub certificate: String,
}

/// `POST /system/pairing`: a code for one device to pair with.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct PairingCode {
    /// Type it on the device (`ABCD-EFGH`; case and dashes do not matter). Single use.
    pub code: String,
    /// Seconds until it expires (300 unless changed for tests).
    pub expires_in_seconds: u64,
    /// `openwork://<ip>:<port>/pair?code=…&fingerprint=<64 hex>[&also=<ip>:<port>…]`:
    /// everything a device needs, for a QR code (IP literals; `also` names other addresses).
    pub url: String,
    /// The certificate fingerprint to pin (as in `GET /system/runtime`); null on plain HTTP.
    pub fingerprint: Option<String>,
    /// The addresses this server can be reached at, `host:port` (the first is in `url`).
    pub addresses: Vec<String>,
}

/// `POST /pair/start`: the device's first SPAKE2 message.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct PairStart {
    /// `msgA`: SPAKE2 side A over the code (see docs/RUNTIME.md), 33 bytes in standard
    /// base64 with padding (44 characters).
    #[cfg_attr(feature = "openapi", schema(min_length = 44, max_length = 44))]
    pub pake: String,
}

/// `POST /pair/start`: the server's answer. Nothing in it depends on the key yet.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct PairStarted {
    /// Names this exchange in `POST /pair/finish` (32 hex digits); valid for 60 s, from
    /// the same address only.
    pub session: String,
    /// `msgB`: SPAKE2 side B, 33 bytes in standard base64 with padding.
    pub pake: String,
}

/// `POST /pair/finish`: the device proves it holds the code (and saw this server's
/// certificate).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct PairFinish {
    /// The `session` of `POST /pair/start`.
    pub session: String,
    /// What to call this device in `GET /system/devices` (1 to 64 characters).
    pub device_name: String,
    /// `HMAC-SHA256(K, "openwork-pair-v1 client confirm" ‖ msgA ‖ msgB)`, 32 bytes in
    /// standard base64 with padding.
    #[cfg_attr(feature = "openapi", schema(min_length = 44, max_length = 44))]
    pub confirm: String,
}

/// `POST /pair/finish`: the device's own token, and the server's proof.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Paired {
    /// The device's id (for `DELETE /system/devices/{id}`).
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// Its token: send it as `Authorization: Bearer <token>`. Shown once; the server keeps
    /// only its SHA-256. Keep it only after `confirm` checks out.
    pub token: String,
    /// The server's certificate fingerprint (SHA-256, 64 hex digits; null without TLS):
    /// the one the device saw, now proven. Pin it from now on.
    pub fingerprint: Option<String>,
    /// `HMAC-SHA256(K, "openwork-pair-v1 server confirm" ‖ msgA ‖ msgB)`, standard base64:
    /// the server's proof that it holds the code.
    pub confirm: String,
}

/// One paired device.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Its id.
    pub id: String,
    /// The name it gave when pairing.
    pub name: String,
    /// When it paired, Unix time in milliseconds.
    pub created_ms: u64,
    /// When its token was last used, Unix time in milliseconds; null if never.
    pub last_seen_ms: Option<u64>,
}

/// `GET /system/devices`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Every paired device, oldest first.
    pub items: Vec<Device>,
}

/// `DELETE /system/devices/{id}`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The device whose token no longer works.
    pub revoked: String,
}

/// `GET /system/sidecars/{name}/logs`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// The sidecar.
    pub name: String,
    /// Its log file.
    pub file: String,
    /// The last lines, oldest first.
    pub lines: Vec<LogLine>,
}

/// `POST /system/shutdown`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ShuttingDown {
    /// Always true.
    pub shutting_down: bool,
}

/// `POST /system/sidecars/{name}/restart`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Restarting {
    /// The sidecar being restarted.
    pub restarting: String,
}

/// How a client reaches opencode for a workspace.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct OpencodeTarget {
    /// This server's `/opencode` proxy, as the client reached the server: give it to
    /// opencode's SDK as its base URL, with this server's token.
    pub base_url: String,
    /// The directory opencode serves for requests through the proxy that name none.
    pub directory: String,
}

/// A workspace as the OpenWork client handshake names it (`GET /workspaces` → `active`,
/// `GET /workspaces/active`, `PUT /workspaces/active`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActiveWorkspaceBody {
    /// Stable id: the first 16 hex digits of the SHA-256 of the directory path.
    pub id: String,
    /// The directory's name.
    pub name: String,
    /// How to reach opencode for it.
    pub opencode: OpencodeTarget,
}

/// One entry of `GET /workspaces`' `items`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkspaceItem {
    /// As in `active`.
    pub id: String,
    /// As in `active`.
    pub name: String,
    /// The directory.
    pub directory: String,
    /// Whether it is the active one (the only one, for now).
    pub active: bool,
    /// How to reach opencode for it.
    pub opencode: OpencodeTarget,
}

/// `GET /workspaces`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Workspaces {
    /// The active workspace, as the OpenWork client handshake names it.
    pub active: ActiveWorkspaceBody,
    /// Every workspace (today: the active one).
    pub items: Vec<WorkspaceItem>,
    /// The active workspace's id.
    pub active_id: String,
}

/// `PUT /workspaces/active`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SwitchWorkspace {
    /// An absolute path to an existing directory (canonicalised by the server).
    pub directory: String,
}

/// What a client can do with one kind of opencode extension through this server.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// It can be listed.
    pub read: bool,
    /// It can be added or changed.
    pub write: bool,
}

/// Where opencode is proxied.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ProxyInfo {
    /// Always true.
    pub proxy: bool,
    /// `/opencode`.
    pub base_path: String,
}

/// How to authenticate.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct AuthInfo {
    /// `Bearer`.
    pub scheme: String,
    /// The other header a token may travel in.
    pub header: String,
    /// The routes that need the host token.
    pub host_token_for: Vec<String>,
}

/// `GET /capabilities`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// `openwork-server-v2`.
    pub server: String,
    /// This server's version.
    pub version: String,
    /// Where opencode is proxied.
    pub opencode: ProxyInfo,
    /// The supervised sidecars.
    pub sidecars: Vec<String>,
    /// Every route, as `METHOD /path`.
    pub routes: Vec<String>,
    /// How to authenticate.
    pub auth: AuthInfo,
    /// Skills (`SKILL.md` instructions): opencode lists them (`GET /opencode/skill`); no
    /// route writes them.
    pub skills: Access,
    /// Plugins: read from and written to opencode's configuration (`GET`/`PATCH
    /// /opencode/config`, its `plugin` list).
    pub plugins: Access,
    /// MCP servers: listed (`GET /opencode/mcp`) and added (`POST /opencode/mcp`) through
    /// opencode.
    pub mcp: Access,
}

/// The `data:` of a `snapshot` frame: every sidecar's status, standing for every event up to
/// `seq`. It opens `GET /system/events` (without `Last-Event-ID`), and follows a `lagged`
/// frame. Its frame's `id:` is `<epoch>-<seq>`: a client that reconnects with it gets the
/// events after it.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// This server process's epoch (16 hex digits), the first part of every event id: a
    /// different one means the server was restarted.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{16}$"))]
    pub epoch: String,
    /// The newest event the snapshot includes (0 before the first).
    pub seq: u64,
    /// Every sidecar's status.
    pub sidecars: Vec<SidecarStatus>,
}

/// The `data:` of a `lagged` frame: the stream could not continue from where the client
/// was, and a `snapshot` follows instead of the events it missed.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Lagged {
    /// Why: `restarted` (a `Last-Event-ID` of another server process), `window` (older
    /// than the 256 remembered events), `slow` (the reader fell that far behind), `invalid`
    /// (no id this server gave).
    pub reason: crate::supervisor::events::LagReason,
    /// How many events the snapshot stands in for (after the client's position, up to the
    /// snapshot's `seq`); null when the position is not one of this process (`restarted`,
    /// `invalid`).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub missed: Option<u64>,
}

/// The `data:` of one `GET /system/events` frame, by its `event:` name: `snapshot`, `lagged`,
/// or one of the numbered supervisor events (`Event`, whose `event` field repeats the name).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // A schema only: the frames are written from the three types.
pub enum SystemEventData {
    /// A numbered event.
    Event(crate::supervisor::events::Event),
    /// The opening snapshot.
    Snapshot(Snapshot),
    /// Missed events.
    Lagged(Lagged),
}

/// `GET /system/identity`: the server's proof that it holds the identity key of
/// `<data dir>/server.json` (see docs/RUNTIME.md, "Local commands").
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Identity {
    /// The server's pid, as `server.json` names it.
    pub pid: u32,
    /// HMAC-SHA256 of the context `openwork-server-v2 identity v1\n` and the nonce's bytes,
    /// under the key: 64 hex digits.
    pub proof: String,
}
