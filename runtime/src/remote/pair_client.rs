//! The device's side of pairing (`openwork-server-v2 join`, and the tests): given where the
//! server is, the code the host showed and a name, it connects over TLS (pinning the
//! certificate when the fingerprint is known, else accepting the one it sees only to learn
//! its fingerprint), runs the exchange of [`super::pake`], and returns the device's token
//! and the certificate fingerprint only after the server has proven that it holds the code
//! and saw the same certificate. Through a relay the server refuses the exchange; nothing
//! is returned.
//!
//! One connection carries both requests (HTTP/1.1 keep-alive), so the certificate the
//! fingerprint came from is the one both requests went to. The HTTP client is hyper's
//! connection API, as in [`super::client`] (whose requests carry a host token and no body:
//! a different contract, so it is not shared).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::pairing::PairingUrl;
use super::pake::ClientStart;
use super::tls;
use crate::error::Error;

/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the exchange may take once connected.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A device just paired.
pub struct Joined {
    /// The address that answered (`host:port`).
    pub address: String,
    /// The device's id on the server.
    pub device_id: String,
    /// Its name, as the server keeps it.
    pub name: String,
    /// Its token (`Authorization: Bearer …`).
    pub token: String,
    /// The server's certificate fingerprint, proven by the exchange: pin it.
    pub fingerprint: String,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Joined")
            .field("address", &self.address)
            .field("device_id", &self.device_id)
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why joining failed. Nothing is kept in any case.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No address answered over TLS (or the pinned certificate was not the one shown).
    #[error(
        "cannot reach the server over TLS: {0}; is it running with --remote-access, and is the address right?"
    )]
    Unreachable(String),
    /// The server refused the exchange: the code is wrong, expired or used, this address
    /// has used its guesses, or something between this computer and the server answered
    /// with another certificate.
    #[error(
        "the server refused the pairing: the code is wrong, expired or used, or this computer is not talking to the server directly (the certificate seen here is SHA-256 {fingerprint}; compare it with what `openwork-server-v2 pair` prints on the host); check the code, or ask the host for a new one"
    )]
    Refused {
        /// The certificate this device saw.
        fingerprint: String,
    },
    /// The answers do not follow the protocol, or the server's proof is wrong: whatever
    /// answered is not the server that issued the code.
    #[error("{0}; nothing was kept")]
    NotTheServer(String),
    /// The server answered with another error (a bad name, say).
    #[error("the server answered {status} {code}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The `error` code.
        code: String,
        /// The server's message.
        message: String,
    },
}

impl From<JoinError> for Error {
    fn from(e: JoinError) -> Error {
        match e {
            JoinError::NotTheServer(_) => Error::InsecureTransport(e.to_string()),
            _ => Error::BadInput(e.to_string()),
        }
    }
}

/// Pairs with the server `target` names (its addresses in order; its fingerprint, if any,
/// is pinned) using `code`, as a device called `name`.
pub async fn join(target: &PairingUrl, code: &str, name: &str) -> Result<Joined, JoinError> {
    let mut failures = Vec::new();
    for address in &target.addresses {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect(address, target.fingerprint.as_deref()),
        )
        .await
        {
            Ok(Ok((sender, fingerprint))) => {
                return tokio::time::timeout(
                    EXCHANGE_TIMEOUT,
                    exchange(sender, address, fingerprint, code, name),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(JoinError::Unreachable(format!(
                        "{address} did not answer within {} s",
                        EXCHANGE_TIMEOUT.as_secs()
                    )))
                });
            }
            Ok(Err(e)) => failures.push(format!("{address}: {e}")),
            Err(_) => failures.push(format!(
                "{address}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
    Err(JoinError::Unreachable(failures.join("; ")))
}

/// TCP, TLS (pinned, or first sight), then HTTP/1.1: the request sender and the
/// fingerprint of the certificate the server showed.
async fn connect(
    address: &str,
    pinned: Option<&str>,
) -> Result<(SendRequest<Full<Bytes>>, String), String> {
    let config = match pinned {
        Some(fingerprint) => tls::pinned_client_config(fingerprint).map_err(|e| e.to_string())?,
        None => tls::first_sight_client_config(),
    };
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let host = host.split('%').next().unwrap_or(host);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a host name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or("TLS: the server showed no certificate")?;
    let fingerprint = tls::fingerprint(leaf);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok((sender, fingerprint))
}

async fn exchange(
    mut sender: SendRequest<Full<Bytes>>,
    address: &str,
    fingerprint: String,
    code: &str,
    name: &str,
) -> Result<Joined, JoinError> {
    let (client, msg_a) = ClientStart::new(code, Some(&fingerprint));
    let started = post(
        &mut sender,
        address,
        "/pair/start",
        &json!({ "pake": BASE64.encode(msg_a) }),
    )
    .await?;
    let answer = expect(started, StatusCode::CREATED, &fingerprint)?;
    let session = text(&answer, "session")?;
    let msg_b = BASE64
        .decode(text(&answer, "pake")?)
        .map_err(|_| JoinError::NotTheServer("the server's pake is not base64".into()))?;
    let transcript = client
        .finish(&msg_b)
        .map_err(|e| JoinError::NotTheServer(format!("the server's SPAKE2 message: {e}")))?;
    let finished = post(
        &mut sender,
        address,
        "/pair/finish",
        &json!({
            "session": session,
            "deviceName": name,
            "confirm": BASE64.encode(transcript.client_confirm()),
        }),
    )
    .await?;
    let paired = expect(finished, StatusCode::CREATED, &fingerprint)?;
    let proof = BASE64.decode(text(&paired, "confirm")?).unwrap_or_default();
    if !transcript.verify_server(&proof) {
        return Err(JoinError::NotTheServer(
            "the server's proof of the code is wrong: whatever answered is not the server that issued it".into(),
        ));
    }
    if paired["fingerprint"].as_str() != Some(fingerprint.as_str()) {
        return Err(JoinError::NotTheServer(format!(
            "the server names certificate {} but showed {fingerprint}",
            paired["fingerprint"]
        )));
    }
    Ok(Joined {
        address: address.to_string(),
        device_id: text(&paired, "deviceId")?,
        name: text(&paired, "name")?,
        token: text(&paired, "token")?,
        fingerprint,
    })
}

/// The answer's JSON if it has `status`; the refusal or error it is otherwise.
fn expect(
    (status, body): (StatusCode, Value),
    wanted: StatusCode,
    fingerprint: &str,
) -> Result<Value, JoinError> {
    if status == wanted {
        return Ok(body);
    }
    let code = body["error"].as_str().unwrap_or_default().to_string();
    if code == "pairing_refused" {
        return Err(JoinError::Refused {
            fingerprint: fingerprint.to_string(),
        });
    }
    Err(JoinError::Server {
        status: status.as_u16(),
        message: body["message"]
            .as_str()
            .unwrap_or("(no message: is this an openwork server?)")
            .to_string(),
        code,
    })
}

fn text(body: &Value, key: &str) -> Result<String, JoinError> {
    body[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| JoinError::NotTheServer(format!("the server's answer has no {key}")))
}

async fn post(
    sender: &mut SendRequest<Full<Bytes>>,
    address: &str,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Value), JoinError> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, address)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let lost = |e: hyper::Error| JoinError::Unreachable(format!("{address}: {e}"));
    sender.ready().await.map_err(lost)?;
    let response = sender.send_request(request).await.map_err(lost)?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(lost)?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}
