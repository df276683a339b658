//! The body type every handler returns, and the JSON responses built once for all routes.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// Errors a response body can produce while streaming (an upstream that drops, say).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming response body: a whole JSON document, an SSE stream, or a proxied body.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A JSON response with `status`.
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    // The API's bodies are plain data (no maps with non-string keys, no failing Serialize).
    let mut bytes = serde_json::to_vec(value).expect("an API body always serialises");
    bytes.push(b'\n');
    let mut response = Response::new(boxed(Full::new(Bytes::from(bytes))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON error: `{"error": code, "message": message}` with the error's status. The code is
/// a stable machine-readable word (`unauthorized`, `not_found`, …); `message` says what to do.
pub fn error(error: ApiError, message: &str) -> Response<ResponseBody> {
    json(
        error.status(),
        &serde_json::json!({ "error": error.code(), "message": message }),
    )
}

/// `response` with `Retry-After: <seconds>` ([`retry_after_seconds`]).
pub fn with_retry_after(
    mut response: Response<ResponseBody>,
    after: std::time::Duration,
) -> Response<ResponseBody> {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_seconds(after)),
    );
    response
}

/// A wait as `Retry-After` says it: whole seconds, rounded up, at least 1 (0 would invite a
/// client to retry at once, in a loop).
pub fn retry_after_seconds(after: std::time::Duration) -> u64 {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    seconds.max(1)
}

/// Every error the API answers with, in one table: its stable code (the body's `error`)
/// and its status. The OpenAPI document lists the codes as the `error` field's `enum`, so a
/// client can switch over them; docs/RUNTIME.md's error table mirrors this one, and
/// `tests/tests/docs.rs` checks both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// A malformed query or body.
    BadRequest,
    /// No token, or a wrong or revoked one (with `WWW-Authenticate: Bearer`).
    Unauthorized,
    /// The route needs the host token; the client token is not enough.
    HostTokenRequired,
    /// No route has this path.
    NotFound,
    /// No such sidecar runs here.
    UnknownSidecar,
    /// Restarts of this sidecar were asked for too often (with `Retry-After`).
    TooManyRestarts,
    /// The route does not take this method (with `Allow`).
    MethodNotAllowed,
    /// The request body is over the route's limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// On a loopback bind, a `Host` that is not a loopback name or an `--allow-host` name.
    MisdirectedRequest,
    /// Request line and headers over 64 KiB.
    HeadersTooLarge,
    /// The workspace directory is not an absolute path.
    WorkspaceNotAbsolute,
    /// The workspace directory does not exist.
    WorkspaceNotFound,
    /// The workspace path is not a directory.
    WorkspaceNotADirectory,
    /// The workspace choice could not be saved; nothing was switched.
    WorkspaceNotSaved,
    /// An unexpected failure; nothing was changed.
    InternalError,
    /// Opencode is starting, restarting or failed.
    OpencodeUnavailable,
    /// Opencode did not answer in time.
    OpencodeTimeout,
    /// Opencode failed the request.
    BadGateway,
    /// Opencode refused the server's own password.
    OpencodeUnauthorized,
    /// The pairing code is wrong, expired or used.
    PairingRefused,
    /// No such pairing session from this address: start again.
    UnknownPairingSession,
    /// `POST /pair` with a bare code is retired: pair with `/pair/start` and `/pair/finish`.
    PakeRequired,
    /// No paired device has this id.
    UnknownDevice,
    /// The device list could not be saved; nothing was changed.
    DevicesNotSaved,
    /// A request body without a token did not arrive in time.
    RequestTimeout,
    /// Every place for an upgraded connection (WebSocket) is taken.
    TooManyUpgrades,
    /// No succession statement leads from this certificate (or the server has none).
    UnknownCertificate,
}

impl ApiError {
    /// Every error, in the document's order.
    pub const ALL: &[ApiError] = &[
        ApiError::BadRequest,
        ApiError::Unauthorized,
        ApiError::HostTokenRequired,
        ApiError::NotFound,
        ApiError::UnknownSidecar,
        ApiError::TooManyRestarts,
        ApiError::MethodNotAllowed,
        ApiError::PayloadTooLarge,
        ApiError::UnsupportedMediaType,
        ApiError::MisdirectedRequest,
        ApiError::HeadersTooLarge,
        ApiError::WorkspaceNotAbsolute,
        ApiError::WorkspaceNotFound,
        ApiError::WorkspaceNotADirectory,
        ApiError::WorkspaceNotSaved,
        ApiError::InternalError,
        ApiError::OpencodeUnavailable,
        ApiError::OpencodeTimeout,
        ApiError::BadGateway,
        ApiError::OpencodeUnauthorized,
        ApiError::PairingRefused,
        ApiError::UnknownPairingSession,
        ApiError::PakeRequired,
        ApiError::UnknownDevice,
        ApiError::DevicesNotSaved,
        ApiError::RequestTimeout,
        ApiError::TooManyUpgrades,
        ApiError::UnknownCertificate,
    ];

    /// The stable machine-readable word a client switches over.
    pub fn code(self) -> &'static str {
        match self {
            ApiError::BadRequest => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::HostTokenRequired => "host_token_required",
            ApiError::NotFound => "not_found",
            ApiError::UnknownSidecar => "unknown_sidecar",
            ApiError::TooManyRestarts => "too_many_restarts",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MisdirectedRequest => "misdirected_request",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::WorkspaceNotAbsolute => "workspace_not_absolute",
            ApiError::WorkspaceNotFound => "workspace_not_found",
            ApiError::WorkspaceNotADirectory => "workspace_not_a_directory",
            ApiError::WorkspaceNotSaved => "workspace_not_saved",
            ApiError::InternalError => "internal_error",
            ApiError::OpencodeUnavailable => "opencode_unavailable",
            ApiError::OpencodeTimeout => "opencode_timeout",
            ApiError::BadGateway => "bad_gateway",
            ApiError::OpencodeUnauthorized => "opencode_unauthorized",
            ApiError::PairingRefused => "pairing_refused",
            ApiError::UnknownPairingSession => "unknown_pairing_session",
            ApiError::PakeRequired => "pake_required",
            ApiError::UnknownDevice => "unknown_device",
            ApiError::DevicesNotSaved => "devices_not_saved",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManyUpgrades => "too_many_upgrades",
            ApiError::UnknownCertificate => "unknown_certificate",
        }
    }

    /// The HTTP status it comes with.
    pub fn status(self) -> StatusCode {
        match self {
            ApiError::BadRequest => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::HostTokenRequired => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UnknownSidecar => StatusCode::NOT_FOUND,
            ApiError::TooManyRestarts => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::WorkspaceNotAbsolute => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::WorkspaceNotFound => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::WorkspaceNotADirectory => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::WorkspaceNotSaved => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::OpencodeUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OpencodeTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BadGateway => StatusCode::BAD_GATEWAY,
            ApiError::OpencodeUnauthorized => StatusCode::BAD_GATEWAY,
            ApiError::PairingRefused => StatusCode::UNAUTHORIZED,
            ApiError::UnknownPairingSession => StatusCode::NOT_FOUND,
            ApiError::PakeRequired => StatusCode::GONE,
            ApiError::UnknownDevice => StatusCode::NOT_FOUND,
            ApiError::DevicesNotSaved => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyUpgrades => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UnknownCertificate => StatusCode::NOT_FOUND,
        }
    }
}
