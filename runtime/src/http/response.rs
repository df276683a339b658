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

/// A JSON error: `{"error": code, "message": message}`. `code` is a stable machine-readable
/// word (`unauthorized`, `not_found`, …); `message` says what to do.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    json(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}
