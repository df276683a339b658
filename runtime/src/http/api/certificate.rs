//! `GET /tls/succession`: the statements that lead a device from the certificate it pinned
//! to the one the server presents now (what they are and how a device checks them is in
//! [`crate::remote::tls::succession`]).

use http::{Response, StatusCode};

use super::{AppState, query_value};
use crate::http::response::{self, ApiError, ResponseBody};

#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/tls/succession", tag = "devices",
    summary = "Statements that lead from a pinned certificate to the one presented now (no token needed)",
    description = "When the server replaces its generated certificate (renewal before expiry, or `tls rotate`), the old key signs a statement naming the new certificate's fingerprint. A device whose pinned fingerprint no longer matches asks for the statements over a connection that accepted the new certificate, checks every one (the SHA-256 of `oldCertificate` is what it pinned or what the previous statement named, the signature verifies with that certificate's key, the last names the certificate of this very connection), and only then pins the new fingerprint (docs/RUNTIME.md, \"Following a new certificate\"). The statements prove themselves and hold no secret.",
    params(("from" = String, Query, description = "The fingerprint the device pinned: SHA-256 of the certificate, 64 hex digits")),
    responses(
        (status = 200, description = "The statements leading from `from`, oldest first; empty when `from` is the certificate presented now", body = crate::remote::tls::Succession),
        (status = 400, description = "`bad_request`: `from` is not 64 hex digits", body = crate::http::model::ErrorBody),
        (status = 404, description = "`unknown_certificate`: nothing leads from `from` (another server's certificate, one replaced with `tls rotate --forget`, or older than the statements kept); also on a server without TLS. Pair again.", body = crate::http::model::ErrorBody),
    ),
    security(()),
))]
pub(in crate::http) fn tls_succession(
    state: &AppState,
    query: Option<&str>,
) -> Response<ResponseBody> {
    let from = query_value(query, "from").unwrap_or_default();
    if from.len() != 64 || !from.bytes().all(|b| b.is_ascii_hexdigit()) {
        return response::error(
            ApiError::BadRequest,
            "from must be the SHA-256 fingerprint of the certificate you pinned, 64 hex digits: GET /tls/succession?from=<fingerprint>",
        );
    }
    let Some(certificate) = &state.remote.certificate else {
        return response::error(
            ApiError::UnknownCertificate,
            "this server speaks plain HTTP: it presents no certificate to follow",
        );
    };
    match certificate.succession_from(from) {
        Some(succession) => response::json(StatusCode::OK, &succession),
        None => response::error(
            ApiError::UnknownCertificate,
            "no statement leads from this certificate to the one presented now: it is another server's, was replaced with `tls rotate --forget`, or is older than the statements kept; pair again",
        ),
    }
}
