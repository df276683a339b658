//! Remote access that is safe to switch on: a server on an address other machines can
//! reach speaks TLS only, devices get tokens of their own through a pairing code the host
//! approves, each revocable alone, and the server can be found on the LAN.
//!
//! | concern | module | what it guarantees |
//! |---|---|---|
//! | transport | [`tls`] | TLS 1.3 on every non-loopback bind (plain HTTP there exits 16); a self-signed ECDSA P-256 certificate made on the first remote start (key 0600), valid a year and renewed while the server runs (a statement signed by the old key leads paired devices to the new one), rotated by `tls rotate`, or the user's PEM files; clients pin its SHA-256 |
//! | pairing | [`pairing`], [`pake`] | a short single-use code valid 5 minutes, issued only with the host token, never sent: SPAKE2 over it binds the certificate fingerprint the device saw, so a relay cannot pair in the device's place; 5 wrong guesses per source (IPv4 address, IPv6 /64), 4,096 in all |
//! | joining | [`pair_client`] | the device's side (`openwork-server-v2 join`): learns or pins the certificate, runs the exchange, keeps the token only when the server has proven the code |
//! | devices | [`devices`] | one token per device, stored as SHA-256 only; revoking it fails its next request and closes its connections, event streams and WebSockets |
//! | discovery | [`mdns`] | `_openwork._tcp` advertised while the server runs with remote access (TXT: version, TLS, fingerprint prefix; never a token); `discover` lists servers |
//! | local commands | [`client`], [`identity`] | `pair` finds the running server through `<data dir>/server.json` and the host token, pins the certificate it names, and sends a token only to a server that proves it holds the key that file names (a stale file names a port anyone may bind) |
//!
//! Loopback binds stay plain HTTP unless `--tls on` (the bench compares both): on loopback
//! the bytes never leave the machine, and other local users are kept out by the token.

pub mod client;
pub mod devices;
pub mod identity;
pub mod mdns;
pub mod pair_client;
pub mod pairing;
pub mod pake;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Whether the server speaks TLS (`--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// On for every non-loopback bind, off on loopback.
    #[default]
    Auto,
    /// Always (loopback too).
    On,
    /// Never: refused on a non-loopback bind (exit 16).
    Off,
}

impl TlsMode {
    /// Whether a server bound to `ip` speaks TLS; plain HTTP on an address other machines
    /// can reach is refused.
    pub fn resolve(self, ip: IpAddr) -> Result<bool> {
        match self {
            TlsMode::On => Ok(true),
            TlsMode::Auto => Ok(!ip.is_loopback()),
            TlsMode::Off if ip.is_loopback() => Ok(false),
            TlsMode::Off => Err(Error::InsecureTransport(format!(
                "refusing plain HTTP on {ip}: tokens, opencode's traffic and your files would cross the network readable by anyone on it; drop --tls off (remote access always uses TLS), or bind 127.0.0.1"
            ))),
        }
    }
}

/// What `<data dir>/server.json` says about the running server, for local commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerFile {
    /// The server's pid.
    pub pid: u32,
    /// Its URL (`http://` or `https://`, the bound address).
    pub url: String,
    /// The certificate fingerprint when it speaks TLS.
    pub fingerprint: Option<String>,
    /// This server process's identity key, 64 hex digits ([`identity`]): what it proves it
    /// holds before a local command sends it a token. Absent in files of servers older than
    /// the proof, which local commands then refuse to talk to.
    #[serde(default)]
    pub identity_key: Option<String>,
}

impl ServerFile {
    /// Writes it (0600, through a temp file and a rename).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::trust::write_private_atomic(&data_dir.join(crate::layout::SERVER_FILE), &bytes)
    }

    /// Removes it if it still names this process (another server may have started since,
    /// with the same data dir).
    pub fn remove_if_ours(data_dir: &Path) {
        let path = data_dir.join(crate::layout::SERVER_FILE);
        if Self::read(data_dir).is_ok_and(|file| file.pid == std::process::id()) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes a file left by a server that no longer runs (killed, crashed): its port is
    /// anyone's to bind now. A file that names a live process is left alone (another server
    /// with this data dir; this one replaces the file when it is ready).
    pub fn remove_if_stale(data_dir: &Path) -> Result<()> {
        let path = data_dir.join(crate::layout::SERVER_FILE);
        let stale = match Self::read(data_dir) {
            Ok(file) if crate::process::is_alive(file.pid) => return Ok(()),
            Ok(file) => format!("left by pid {}, which has exited", file.pid),
            // Not ours, or a link: refused (exit 15), as everywhere in the data dir.
            Err(e @ Error::Untrusted { .. }) => return Err(e),
            Err(_) if !path.exists() => return Ok(()),
            Err(_) => "unreadable".to_string(),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed a stale server.json ({stale})");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove the stale {}", path.display()), e)),
        }
    }

    /// Reads it: only when it is ours (exit 15 otherwise), never through a link.
    pub fn read(data_dir: &Path) -> Result<ServerFile> {
        let path = data_dir.join(crate::layout::SERVER_FILE);
        let Some(file) = crate::trust::open_trusted(&path, "the running server's file")? else {
            return Err(Error::BadInput(format!(
                "no server is running with the data dir {} ({} is missing); start `openwork-server-v2 serve` first, or pass its --data-dir",
                data_dir.display(),
                path.display()
            )));
        };
        serde_json::from_reader(file).map_err(|e| {
            Error::BadInput(format!(
                "{} is not readable ({e}); restart the server",
                path.display()
            ))
        })
    }
}

/// What the HTTP handlers need for pairing and devices.
#[derive(Debug)]
pub struct RemoteState {
    /// This process's identity key, which `GET /system/identity` proves it holds.
    pub identity: identity::IdentityKey,
    /// The pending pairing code.
    pub pairing: pairing::Pairing,
    /// Paired devices.
    pub devices: Arc<devices::Devices>,
    /// The bound address.
    pub local: SocketAddr,
    /// The certificate presented now, when the server speaks TLS.
    pub certificate: Option<tls::LiveCertificate>,
}

impl RemoteState {
    /// The fingerprint of the certificate presented now, when the server speaks TLS.
    pub fn fingerprint(&self) -> Option<String> {
        self.certificate
            .as_ref()
            .map(tls::LiveCertificate::fingerprint)
    }

    /// The addresses a device can reach this server at, as `host:port`: the bound address,
    /// or for an unspecified one (`0.0.0.0`, `::`) every non-loopback interface address,
    /// IPv4 first (what a phone on the same Wi-Fi most likely routes).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let ip = self.local.ip();
        let mut ips = if ip.is_unspecified() {
            let mut found: Vec<IpAddr> = interface_addresses()
                .into_iter()
                .filter(|a| !a.is_loopback() && (ip.is_ipv6() || a.is_ipv4()))
                .collect();
            found.sort_by_key(|a| (a.is_ipv6(), *a));
            found
        } else {
            vec![ip]
        };
        if ips.is_empty() {
            ips.push(ip);
        }
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, self.local.port()))
            .collect()
    }

    /// The URL a device is given, for a QR code: the addresses (IP literals, the first
    /// preferred), the code and the full fingerprint ([`pairing::PairingUrl`]).
    pub fn pairing_url(&self, addresses: &[SocketAddr], code: &str) -> String {
        pairing::PairingUrl {
            addresses: addresses.iter().map(ToString::to_string).collect(),
            code: Some(code.to_string()),
            fingerprint: self.fingerprint(),
        }
        .to_string()
    }
}

/// This machine's host name, if it is a usable DNS label (letters, digits, `-`).
pub fn host_name() -> Option<String> {
    let name = raw_host_name()?;
    let name = name.split('.').next().unwrap_or_default().to_string();
    (!name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then_some(name)
}

#[cfg(unix)]
fn raw_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0)?;
    ok.then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(not(unix))]
fn raw_host_name() -> Option<String> {
    // Windows keeps the machine's name in the environment: a fact about the machine, not a
    // setting of ours, so not the CLI's to read.
    std::env::var("COMPUTERNAME").ok()
}

/// Every address of every interface (loopback included), or none if they cannot be listed.
pub fn interface_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|interfaces| interfaces.iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback_only() {
        let lan: IpAddr = "192.0.2.7".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(TlsMode::Auto.resolve(lan).unwrap());
        assert!(!TlsMode::Auto.resolve(loopback).unwrap());
        assert!(TlsMode::On.resolve(loopback).unwrap());
        assert!(!TlsMode::Off.resolve(loopback).unwrap());
        let refused = TlsMode::Off.resolve(lan).unwrap_err();
        assert_eq!(
            refused.exit_code(),
            crate::ExitCode::InsecureTransport,
            "{refused}"
        );
    }
}
