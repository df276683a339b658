//! Pairing and paired devices over HTTP: `POST /system/pairing` and `POST /pair`,
//! `GET /system/devices` and `DELETE /system/devices/{id}` (what they guarantee is in
//! [`crate::remote`]).

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{AppState, host_token_required, read_json};
use crate::http::model;
use crate::http::response::{self, ApiError, ResponseBody};
use crate::remote::pairing::Refusal;

/// The largest `POST /pair` body read: a code and a device name.
const MAX_PAIR_BODY: usize = 4 * 1024;

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/system/pairing", tag = "devices",
    summary = "A pairing code for one new device (host token)",
    description = "The code is single use, valid for 5 minutes, and burned by 5 wrong guesses; asking again replaces it. `url` carries address, port, code and certificate fingerprint (for a QR code); `openwork-server-v2 pair` asks for one and prints all three.",
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
            url: state.remote.pairing_url(addresses[0], &issued.code),
            code: issued.code,
            expires_in_seconds: issued.valid_for.as_secs(),
            fingerprint: state.remote.fingerprint(),
            addresses: addresses.iter().map(ToString::to_string).collect(),
        },
    )
}

#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/pair", tag = "devices",
    summary = "Pair this device with a code the host showed: its own token (no token needed)",
    description = "Every refusal is the same 401 `pairing_refused` (wrong, expired, used or burned code), so a guesser learns nothing; the server's log says which, with the caller's address. Store the token: it is shown once.",
    request_body(content = model::PairRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Paired", body = model::Paired),
        (status = 400, description = "`bad_request`: not `{code, deviceName}`, or an unusable name (empty, over 64 characters, or with a control, bidirectional, zero-width or other invisible character); the message says which character and what is allowed", body = model::ErrorBody),
        (status = 401, description = "`pairing_refused`", body = model::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 4 KiB", body = model::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = model::ErrorBody),
        (status = 500, description = "`devices_not_saved`: nothing was paired (the code is used up)", body = model::ErrorBody),
    ),
    security(()),
))]
pub(in crate::http) async fn pair(
    request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let asked: model::PairRequest = match read_json(
        &parts.headers,
        body,
        MAX_PAIR_BODY,
        "{\"code\": \"ABCD-EFGH\", \"deviceName\": \"My phone\"}",
    )
    .await
    {
        Ok(asked) => asked,
        Err(answer) => return answer,
    };
    if let Err(refusal) = state.remote.pairing.redeem(&asked.code) {
        state
            .failures
            .pairing_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reason = refusal.describe();
        if refusal == Refusal::Burned {
            tracing::warn!(%peer, "pairing code burned: {reason}");
        } else {
            tracing::warn!(%peer, "pairing refused: {reason}");
        }
        return response::error(
            ApiError::PairingRefused,
            "the pairing code is wrong, expired or used; ask the host for a new one (`openwork-server-v2 pair`)",
        );
    }
    match state.remote.devices.add(&asked.device_name) {
        Ok((device, token)) => {
            tracing::info!(%peer, device = %device.id, "device paired");
            response::json(
                StatusCode::CREATED,
                &model::Paired {
                    device_id: device.id,
                    name: device.name,
                    token,
                },
            )
        }
        Err(e @ crate::remote::devices::AddError::BadName(_)) => {
            response::error(ApiError::BadRequest, &e.to_string())
        }
        Err(e) => response::error(ApiError::DevicesNotSaved, &e.to_string()),
    }
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
