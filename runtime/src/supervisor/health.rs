//! Health probes: one `GET` over a fresh loopback connection, bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Answers bigger than this are not health answers.
const MAX_BODY: usize = 64 * 1024;

/// A probe's answer.
#[derive(Debug)]
pub struct ProbeAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body (at most 64 KiB).
    pub body: Bytes,
}

/// `GET path` on `addr`, with `authorization` if given; an error says why in words.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<ProbeAnswer, String> {
    match tokio::time::timeout(timeout, probe_inner(addr, path, authorization)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn probe_inner(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&HeaderValue>,
) -> Result<ProbeAnswer, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, value.clone());
    }
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(ProbeAnswer { status, body })
    }
    .await;
    driver.abort();
    result
}
