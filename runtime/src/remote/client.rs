//! The client side of local commands (`pair`): one request to the running server named by
//! `<data dir>/server.json`, over TLS pinned to the fingerprint that file names when the
//! server speaks TLS. The file is trusted only when it is ours (see [`crate::trust`]), so a
//! planted one cannot point the host token at someone else's listener; and a token is sent
//! only once what answers has proved it is the server that wrote the file (its pid still
//! runs, and it holds the identity key the file names: [`super::identity`]), so a stale one
//! cannot either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::ServerFile;
use super::identity::{self, IdentityKey};
use crate::error::{Error, Result};

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a pairing code, an identity proof: a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Why an exchange with the running server failed.
enum Failed {
    /// No connection, no answer, or a broken one.
    Unreachable(String),
    /// What answers is not the server that wrote `server.json`.
    NotTheServer(String),
}

/// `method path` with `token` to the server `server` describes: its status and body. The
/// token is sent only to a server that proves it is the one `server` describes.
pub async fn request(
    server: &ServerFile,
    method: Method,
    path: &str,
    token: &str,
) -> Result<(StatusCode, Bytes)> {
    let address = connect_address(&server.url)?;
    let key = server
        .identity_key
        .as_deref()
        .and_then(IdentityKey::from_hex)
        .ok_or_else(|| {
            Error::UnverifiedServer(format!(
                "the running server's file names no identity key (a server older than this command wrote it, or it is damaged), so what answers at {} cannot prove it is that server; nothing was sent: restart the server",
                server.url
            ))
        })?;
    if !crate::process::is_alive(server.pid) {
        return Err(Error::BadInput(format!(
            "no server is running: server.json was left by pid {}, which has exited (a crash or a kill); start `openwork-server-v2 serve` again (it removes the stale file), or pass the --data-dir of the one that runs",
            server.pid
        )));
    }
    let exchange = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| Failed::Unreachable(e.to_string()))?;
        match &server.fingerprint {
            Some(fingerprint) => {
                let config = super::tls::pinned_client_config(fingerprint)
                    .map_err(|e| Failed::NotTheServer(e.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Failed::NotTheServer(format!("TLS: {e}")))?;
                send(tls, address, server.pid, &key, method, path, token).await
            }
            None => send(tcp, address, server.pid, &key, method, path, token).await,
        }
    };
    let outcome = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(Failed::Unreachable(format!(
                "no answer within {} s",
                TIMEOUT.as_secs()
            )))
        });
    outcome.map_err(|failed| match failed {
        Failed::Unreachable(detail) => Error::BadInput(format!(
            "cannot reach the server at {} ({detail}); is it still running? start it, or pass the --data-dir it uses",
            server.url
        )),
        Failed::NotTheServer(detail) => Error::UnverifiedServer(format!(
            "what answers at {} is not the server that wrote server.json ({detail}): a stale record whose port another program holds now, or a program posing as the server; nothing was sent to it. Restart the server (it replaces the file), and see who listens on that port",
            server.url
        )),
    })
}

/// Asks for the identity proof, then (on the same connection, so that nothing else can
/// take the port in between) sends the request with the token.
async fn send<S>(
    stream: S,
    address: SocketAddr,
    pid: u32,
    key: &IdentityKey,
    method: Method,
    path: &str,
    token: &str,
) -> std::result::Result<(StatusCode, Bytes), Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |e: hyper::Error| Failed::Unreachable(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    tokio::spawn(connection);
    let nonce = identity::nonce();
    let (status, body) = exchange(
        &mut sender,
        address,
        Method::GET,
        &format!("/system/identity?nonce={}", hex::encode(nonce)),
        None,
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let proof = answer["proof"].as_str().and_then(|p| hex::decode(p).ok());
    let proved = status == StatusCode::OK
        && answer["pid"].as_u64() == Some(u64::from(pid))
        && proof.is_some_and(|proof| key.verify(&nonce, &proof));
    if !proved {
        return Err(Failed::NotTheServer(format!(
            "it answered the identity challenge with {status} and no valid proof"
        )));
    }
    exchange(&mut sender, address, method, path, Some(token)).await
}

async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    address: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> std::result::Result<(StatusCode, Bytes), Failed> {
    let broken = |e: hyper::Error| Failed::Unreachable(e.to_string());
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, address.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    sender.ready().await.map_err(broken)?;
    let response = sender.send_request(request).await.map_err(broken)?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| Failed::Unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// Where to connect for `url`: its address, with an unspecified one (`0.0.0.0`, `::`)
/// replaced by loopback (the server listens there too).
fn connect_address(url: &str) -> Result<SocketAddr> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    let address: SocketAddr = authority.parse().map_err(|_| {
        Error::BadInput(format!(
            "the running server's file names {url:?}, not an address; restart the server"
        ))
    })?;
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, address.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_reached_through_loopback() {
        assert_eq!(
            connect_address("https://0.0.0.0:4321").unwrap(),
            "127.0.0.1:4321".parse().unwrap()
        );
        assert_eq!(
            connect_address("https://[::]:4321").unwrap(),
            "[::1]:4321".parse().unwrap()
        );
        assert_eq!(
            connect_address("http://192.0.2.1:80").unwrap(),
            "192.0.2.1:80".parse().unwrap()
        );
        assert!(connect_address("http://example.com:80").is_err());
    }
}
