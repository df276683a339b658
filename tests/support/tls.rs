//! Talking to a server over TLS the way a paired device does: pinning the certificate by its
//! SHA-256, whatever name or CA it claims, and taking note of a renewed one. The pinning
//! verifier is written here again, apart from the server's own
//! (`openwork_runtime::remote::tls`), so a bug there cannot hide here; succession statements
//! are checked with the runtime's `verify_succession`, the one verifier of that format.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};

/// A TLS connection to the server.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {got} is not the pinned {}",
                self.sha256
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts whatever certificate the server presents and keeps it (the handshake's
/// signature is still verified, so the server holds that certificate's key): the second
/// connection of a device whose pin failed, which then follows the server's succession
/// statements to the certificate kept here, or refuses it.
#[derive(Debug)]
struct Presented {
    seen: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Presented {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to `127.0.0.1:port` that accepted whatever certificate the server
/// presented, and that certificate (DER).
pub fn connect_presented(port: u16) -> std::io::Result<(TlsStream, Vec<u8>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(std::sync::Mutex::new(None));
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Presented {
            seen: seen.clone(),
            provider,
        }))
        .with_no_client_auth();
    let stream = handshake(port, config)?;
    let presented = seen
        .lock()
        .unwrap()
        .take()
        .expect("a certificate was presented");
    Ok((stream, presented))
}

/// The SHA-256 (hex) of the certificate the server at `127.0.0.1:port` presents now.
pub fn presented_fingerprint(port: u16) -> String {
    let (_, der) = connect_presented(port).unwrap();
    hex::encode(Sha256::digest(der))
}

/// A client configuration that accepts only the certificate with this SHA-256 (hex).
pub fn pinned_config(sha256: &str) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            sha256: sha256.to_ascii_lowercase(),
            provider,
        }))
        .with_no_client_auth()
}

/// A blocking reqwest client over rustls that pins `sha256`.
pub fn pinned_client(sha256: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(pinned_config(sha256))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A TLS connection to `127.0.0.1:port`, the handshake done; errors when the certificate is
/// not the pinned one.
pub fn connect(port: u16, sha256: &str) -> std::io::Result<TlsStream> {
    handshake(port, pinned_config(sha256))
}

fn handshake(port: u16, config: rustls::ClientConfig) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_nodelay(true)?;
    let connection =
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(std::io::Error::other)?;
    }
    Ok(stream)
}

/// Sends a request head (and `body`) over a fresh pinned connection and reads the response
/// head; the reader is left at the body (an event stream, or upgraded bytes).
pub fn open(
    port: u16,
    sha256: &str,
    head: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, BufReader<TlsStream>) {
    let mut stream = connect(port, sha256).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    let mut reader = BufReader::new(stream);
    let (status, headers) = crate::http::read_head(&mut reader).unwrap();
    (status, headers, reader)
}

/// Reads until the peer closes the stream or `timeout` passes: true if it closed.
pub fn closes_within(reader: &mut BufReader<TlsStream>, timeout: Duration) -> bool {
    reader
        .get_ref()
        .sock
        .set_read_timeout(Some(timeout))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) if started.elapsed() < timeout => continue,
            Ok(_) => return false,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            // A reset, or a close without close_notify: closed all the same.
            Err(_) => return true,
        }
    }
}
