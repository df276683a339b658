//! Pairing and paired devices over HTTP: `POST /system/pairing`, `POST /pair/start` and
//! `POST /pair/finish` (and the retired `POST /pair`), `GET /system/devices` and
//! `DELETE /system/devices/{id}` (what they guarantee is in [`crate::remote`]).

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{AppState, host_token_required, read_json};
use crate::http::model;
use crate::http::response::{self, ApiError, ResponseBody};
use crate::remote::devices::{self, AddError};
use crate::remote::pairing::{FinishError, Refusal, Source, StartError};
use crate::remote::pake;

/// The largest `POST /pair/start` or `/pair/finish` body read: two short base64 strings and
/// a device name.
const MAX_PAIR_BODY: usize = 4 * 1024;

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/system/pairing", tag = "devices",
    summary = "A pairing code for one new device (host token)",
    description = "The code is single use and valid for 5 minutes; each address (IPv4, or IPv6 /64) may guess wrong 5 times and is then refused for it, and 4,096 wrong guesses in all burn it; asking again replaces it. `url` carries the addresses (IP literals), the code and the full certificate fingerprint (for a QR code); `openwork-server-v2 pair` asks for one and prints all three.",
    responses(
        (status = 201, description = "The code", body = model::PairingCode),
        (status = 403, description = "`host_token_required`", body = model::ErrorBody),
    ),
    security(("hostToken" = [])),
))]
pub(in crate::http) fn create_pairing(state: &AppState, host: bool) -> Response<ResponseBody> {
    if !host {
        return host_token_required();
    }
    let issued = state.remote.pairing.issue();
    let addresses = state.remote.addresses();
    tracing::info!(
        valid_for_s = issued.valid_for.as_secs(),
        "pairing code issued"
    );
    response::json(
        StatusCode::CREATED,
        &model::PairingCode {
            url: state.remote.pairing_url(&addresses, &issued.code),
            code: issued.code,
            expires_in_seconds: issued.valid_for.as_secs(),
            fingerprint: state.remote.fingerprint(),
            addresses: addresses.iter().map(ToString::to_string).collect(),
        },
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/pair", tag = "devices",
    summary = "Retired: pairing by sending the code (410 `pake_required`)",
    description = "Sending the code itself let a relay on the network (a LAN attacker answering with its own certificate) pair in the device's place. Every request here gets 410 `pake_required`, whatever its body, and spends nothing: pair with `POST /pair/start` and `POST /pair/finish`.",
    responses(
        (status = 410, description = "`pake_required`: use `/pair/start` and `/pair/finish`", body = model::ErrorBody),
    ),
    security(()),
))]
pub(in crate::http) fn retired_pair() -> Response<ResponseBody> {
    response::error(
        ApiError::PakeRequired,
        "POST /pair with the code in the body is retired: a relay on the network could take the code and pair in this device's place. Pair with POST /pair/start and POST /pair/finish (SPAKE2 over the code, bound to the server's certificate; see the Pairing section of docs/RUNTIME.md), or run `openwork-server-v2 join`",
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/pair/start", tag = "devices",
    summary = "Pairing, step 1: the device's SPAKE2 message over the code; the server's in return (no token needed)",
    description = "`pake` is SPAKE2 side A (Ed25519 group) with password = the code (upper case, without dashes or spaces), idA = `openwork-pair-v1 client`, idB = `openwork-pair-v1 server ` + the SHA-256 of the certificate the device saw in its TLS handshake (64 lowercase hex digits). The answer carries side B's message and a session id; nothing in it depends on the key, so it lets no one test a guess. Costs no guess. Refused (401 `pairing_refused`, the same for every reason) when no code is pending, it expired, or this address has used its wrong guesses for it.",
    request_body(content = model::PairStart, content_type = "application/json"),
    responses(
        (status = 201, description = "The exchange is under way", body = model::PairStarted),
        (status = 400, description = "`bad_request`: not `{pake}`, not base64, or not a SPAKE2 side A message", body = model::ErrorBody),
        (status = 401, description = "`pairing_refused`", body = model::ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within 10 s", body = model::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 4 KiB", body = model::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = model::ErrorBody),
    ),
    security(()),
))]
pub(in crate::http) async fn pair_start(
    request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let asked: model::PairStart = match read_json(
        &parts.headers,
        body,
        MAX_PAIR_BODY,
        "{\"pake\": \"<base64 of SPAKE2 message A>\"}",
    )
    .await
    {
        Ok(asked) => asked,
        Err(answer) => return answer,
    };
    let Ok(msg_a) = BASE64.decode(asked.pake.trim()) else {
        return response::error(
            ApiError::BadRequest,
            "pake must be standard base64 (with padding) of the 33-byte SPAKE2 side A message",
        );
    };
    let source = Source::of(peer.ip());
    match state
        .remote
        .pairing
        .start(source, &msg_a, state.remote.fingerprint().as_deref())
    {
        Ok(started) => response::json(
            StatusCode::CREATED,
            &model::PairStarted {
                session: started.session,
                pake: BASE64.encode(started.msg_b),
            },
        ),
        Err(StartError::BadMessage(e)) => response::error(
            ApiError::BadRequest,
            &format!(
                "pake: {e}; send SPAKE2 side A's message over the code (see the Pairing section of docs/RUNTIME.md)"
            ),
        ),
        Err(StartError::Refused(refusal)) => refused(state, peer, refusal),
    }
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/pair/finish", tag = "devices",
    summary = "Pairing, step 2: the device's proof; its own token and the server's proof in return (no token needed)",
    description = "The name is checked first (400, nothing spent, the session kept). Then the confirmation, in constant time: a wrong one is one wrong guess for this address (401 `pairing_refused`, whatever the reason: wrong code, another certificate seen, out of guesses, expired or used code; the server's log says which, with the address, never the code). A right one pairs the device. The device must check `confirm` before keeping the token, then pin `fingerprint`. Each session takes one confirmation.",
    request_body(content = model::PairFinish, content_type = "application/json"),
    responses(
        (status = 201, description = "Paired", body = model::Paired),
        (status = 400, description = "`bad_request`: not `{session, deviceName, confirm}`, an unusable name, or a confirmation that is not 32 bytes of base64", body = model::ErrorBody),
        (status = 401, description = "`pairing_refused`", body = model::ErrorBody),
        (status = 404, description = "`unknown_pairing_session`: no such session from this address (expired after 60 s, already confirmed, or its code was used or replaced): start again", body = model::ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within 10 s", body = model::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 4 KiB", body = model::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = model::ErrorBody),
        (status = 500, description = "`devices_not_saved`: nothing was paired; the code still works", body = model::ErrorBody),
    ),
    security(()),
))]
pub(in crate::http) async fn pair_finish(
    request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let asked: model::PairFinish = match read_json(
        &parts.headers,
        body,
        MAX_PAIR_BODY,
        "{\"session\": \"<from /pair/start>\", \"deviceName\": \"My phone\", \"confirm\": \"<base64 of the HMAC>\"}",
    )
    .await
    {
        Ok(asked) => asked,
        Err(answer) => return answer,
    };
    // Input errors first: none of them may cost a guess.
    if let Err(e) = devices::check_name(&asked.device_name) {
        return response::error(ApiError::BadRequest, &e.to_string());
    }
    let confirm: Option<pake::Confirm> = BASE64
        .decode(asked.confirm.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok());
    let Some(confirm) = confirm else {
        return response::error(
            ApiError::BadRequest,
            "confirm must be standard base64 (with padding) of the 32-byte HMAC-SHA256 confirmation",
        );
    };
    let source = Source::of(peer.ip());
    let finished = state
        .remote
        .pairing
        .finish(source, &asked.session, &confirm, || {
            state.remote.devices.add(&asked.device_name)
        });
    match finished {
        Ok(((device, token), server_confirm)) => {
            tracing::info!(%peer, device = %device.id, "device paired");
            response::json(
                StatusCode::CREATED,
                &model::Paired {
                    device_id: device.id,
                    name: device.name,
                    token,
                    fingerprint: state.remote.fingerprint(),
                    confirm: BASE64.encode(server_confirm),
                },
            )
        }
        Err(FinishError::Refused(refusal)) => refused(state, peer, refusal),
        Err(FinishError::UnknownSession) => {
            if state
                .failures
                .log
                .admit(("pairing session unknown", 404))
                .is_some()
            {
                tracing::info!(%peer, "pairing session unknown or expired");
            }
            response::error(
                ApiError::UnknownPairingSession,
                "no such pairing session from this address (it expired after 60 s, was already confirmed, or its code was used or replaced); start again with POST /pair/start",
            )
        }
        Err(FinishError::NotPaired(e @ AddError::BadName(_))) => {
            response::error(ApiError::BadRequest, &e.to_string())
        }
        Err(FinishError::NotPaired(e)) => response::error(
            ApiError::DevicesNotSaved,
            &format!("{e}; the code still works: start again with POST /pair/start"),
        ),
    }
}

/// The one answer to every refusal (a guesser learns nothing); the log says which, with the
/// caller's address and never the code.
fn refused(state: &AppState, peer: SocketAddr, refusal: Refusal) -> Response<ResponseBody> {
    state
        .failures
        .pairing_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let reason = refusal.describe();
    match refusal {
        Refusal::Burned { .. } => tracing::error!(%peer, "{reason}"),
        // A few lines a second of each kind: a flood of guesses must not flood the log.
        _ => match state.failures.log.admit((refusal.kind(), 401)) {
            Some(0) => tracing::warn!(%peer, "pairing refused: {reason}"),
            Some(untold) => tracing::warn!(
                %peer,
                untold,
                "pairing refused: {reason} (and {untold} more refused pairings since the last such line)"
            ),
            None => {}
        },
    }
    response::error(
        ApiError::PairingRefused,
        "the pairing code is wrong, expired or used, or this device is not talking to the server directly; check the code, or ask the host for a new one (`openwork-server-v2 pair`)",
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/system/devices", tag = "devices",
    summary = "Paired devices: id, name, when paired and last seen (host token)",
    responses(
        (status = 200, description = "The devices", body = model::Devices),
        (status = 403, description = "`host_token_required`", body = model::ErrorBody),
    ),
    security(("hostToken" = [])),
))]
pub(in crate::http) fn list_devices(state: &AppState, host: bool) -> Response<ResponseBody> {
    if !host {
        return host_token_required();
    }
    response::json(
        StatusCode::OK,
        &model::Devices {
            items: state.remote.devices.list(),
        },
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    delete, path = "/system/devices/{id}", tag = "devices",
    summary = "Revoke a device (host token): its token fails at once, its streams and WebSockets are closed",
    params(("id" = String, Path, description = "The device's id")),
    responses(
        (status = 200, description = "Revoked", body = model::Revoked),
        (status = 403, description = "`host_token_required`", body = model::ErrorBody),
        (status = 404, description = "`unknown_device`", body = model::ErrorBody),
        (status = 500, description = "`devices_not_saved`: nothing was revoked", body = model::ErrorBody),
    ),
    security(("hostToken" = [])),
))]
pub(in crate::http) fn revoke_device(
    state: &AppState,
    host: bool,
    id: &str,
) -> Response<ResponseBody> {
    if !host {
        return host_token_required();
    }
    match state.remote.devices.revoke(id) {
        Ok(true) => {
            tracing::info!(device = %id, "device revoked");
            response::json(
                StatusCode::OK,
                &model::Revoked {
                    revoked: id.to_string(),
                },
            )
        }
        Ok(false) => response::error(
            ApiError::UnknownDevice,
            &format!("no paired device {id:?}; see GET /system/devices"),
        ),
        Err(e) => response::error(
            ApiError::DevicesNotSaved,
            &format!("the devices file could not be written ({e}); nothing was revoked, try again"),
        ),
    }
}
