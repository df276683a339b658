//! The client side of local commands (`pair`): one request to the running server named by
//! `<data dir>/server.json`, over TLS pinned to the fingerprint that file names when the
//! server speaks TLS. The file is trusted only when it is ours (see [`crate::trust`]), so a
//! planted one cannot point the host token at someone else's listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::ServerFile;
use crate::error::{Error, Result};

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `method path` with `token` to the server `server` describes: its status and body.
pub async fn request(
    server: &ServerFile,
    method: Method,
    path: &str,
    token: &str,
) -> Result<(StatusCode, Bytes)> {
    let address = connect_address(&server.url)?;
    let unreachable = |detail: String| {
        Error::BadInput(format!(
            "cannot reach the server at {} ({detail}); is it still running? start it, or pass the --data-dir it uses",
            server.url
        ))
    };
    let exchange = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match &server.fingerprint {
            Some(fingerprint) => {
                let config = super::tls::pinned_client_config(fingerprint)?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                send(tls, address, method, path, token).await
            }
            None => send(tcp, address, method, path, token).await,
        }
        .map_err(|e| unreachable(e.to_string()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", TIMEOUT.as_secs())))?
}

async fn send<S>(
    stream: S,
    address: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
) -> std::result::Result<(StatusCode, Bytes), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, address.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
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
