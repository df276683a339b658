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

/// Why a probe failed.
#[derive(Debug)]
pub struct ProbeError {
    /// In words.
    pub reason: String,
    /// The probe could not even be made: this process is out of descriptors or memory. It
    /// says nothing about the sidecar.
    pub local_shortage: bool,
}

impl ProbeError {
    /// A failure of the sidecar's (no answer, a wrong answer).
    pub fn answer(reason: impl Into<String>) -> ProbeError {
        ProbeError {
            reason: reason.into(),
            local_shortage: false,
        }
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<String> for ProbeError {
    fn from(reason: String) -> ProbeError {
        ProbeError::answer(reason)
    }
}

/// Whether `error` means this process (or the system) ran out of descriptors, processes or
/// memory, rather than that something it talked to failed.
pub fn is_resource_shortage(error: &std::io::Error) -> bool {
    if error.kind() == std::io::ErrorKind::OutOfMemory {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::ENOBUFS)
        )
    }
    #[cfg(windows)]
    {
        // WSAEMFILE, WSAENOBUFS, ERROR_NOT_ENOUGH_MEMORY, ERROR_NO_SYSTEM_RESOURCES.
        matches!(error.raw_os_error(), Some(10024 | 10055 | 8 | 1450))
    }
    #[cfg(not(any(unix, windows)))]
    false
}

/// `GET path` on `addr`, with `authorization` if given; an error says why in words.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&HeaderValue>,
    timeout: Duration,
) -> Result<ProbeAnswer, ProbeError> {
    match tokio::time::timeout(timeout, probe_inner(addr, path, authorization)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::answer(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn probe_inner(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&HeaderValue>,
) -> Result<ProbeAnswer, ProbeError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError {
            reason: format!("connect: {e}"),
            local_shortage: is_resource_shortage(&e),
        })?;
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
    let result: Result<ProbeAnswer, ProbeError> = async {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_or_memory_is_ours_not_the_sidecars() {
        #[cfg(unix)]
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::EAGAIN] {
            assert!(is_resource_shortage(&std::io::Error::from_raw_os_error(
                code
            )));
        }
        #[cfg(unix)]
        for code in [
            libc::ECONNREFUSED,
            libc::ENOENT,
            libc::EACCES,
            libc::ETIMEDOUT,
        ] {
            assert!(!is_resource_shortage(&std::io::Error::from_raw_os_error(
                code
            )));
        }
        assert!(is_resource_shortage(
            &std::io::ErrorKind::OutOfMemory.into()
        ));
    }

    #[tokio::test]
    async fn a_refused_connection_is_the_sidecars_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = probe(addr, "/health", None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(!error.local_shortage, "{error}");
        assert!(error.reason.starts_with("connect:"), "{error}");
    }
}
