//! LAN discovery over mDNS (DNS-SD): a server with remote access advertises
//! `_openwork._tcp`, and `openwork-server-v2 discover` lists who does.
//!
//! The TXT record carries what a client needs to choose and to pin, and nothing that opens
//! anything: `version`, `tls` (`1` or `0`) and `fp`, the first 16 hex digits of the
//! certificate's SHA-256 (enough to tell servers apart and to check a pairing URL against;
//! the full fingerprint comes with the pairing code). Never a token.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::Serialize;

/// The service type.
pub const SERVICE_TYPE: &str = "_openwork._tcp.local.";
/// Hex digits of the fingerprint in the TXT record.
pub const FINGERPRINT_PREFIX_LEN: usize = 16;

/// An advertisement: withdrawn (a goodbye packet is sent) when dropped.
pub struct Advertisement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Advertisement {
    /// Starts advertising the server listening at `local` (an unspecified address: every
    /// interface's addresses).
    pub fn start(
        local: SocketAddr,
        version: &str,
        fingerprint: Option<&str>,
    ) -> Result<Advertisement, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        let host = super::host_name().unwrap_or_else(|| "openwork".into());
        // One instance per server on this machine: the port tells two apart.
        let instance = format!("openwork-server-v2 on {host} ({})", local.port());
        let mut properties = vec![
            ("version".to_string(), version.to_string()),
            (
                "tls".to_string(),
                if fingerprint.is_some() { "1" } else { "0" }.to_string(),
            ),
        ];
        if let Some(fingerprint) = fingerprint {
            properties.push((
                "fp".to_string(),
                fingerprint[..FINGERPRINT_PREFIX_LEN.min(fingerprint.len())].to_string(),
            ));
        }
        let addresses: Vec<IpAddr> = if local.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![local.ip()]
        };
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{host}.local."),
            addresses.as_slice(),
            local.port(),
            properties.as_slice(),
        )?;
        if local.ip().is_unspecified() {
            info = info.enable_addr_auto();
        }
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        Ok(Advertisement { daemon, fullname })
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        // The goodbye is sent by the daemon's thread; wait for it briefly so that it leaves
        // before the process does.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// A server found on the LAN.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    /// The instance name.
    pub name: String,
    /// Its mDNS host name.
    pub host: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its port.
    pub port: u16,
    /// The server's version.
    pub version: Option<String>,
    /// Whether it speaks TLS.
    pub tls: bool,
    /// The first hex digits of its certificate's SHA-256.
    pub fingerprint_prefix: Option<String>,
}

/// Listens for `wait` and returns the servers that answered, by name.
pub fn discover(wait: Duration) -> Result<Vec<Found>, mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    let events = daemon.browse(SERVICE_TYPE)?;
    let deadline = Instant::now() + wait;
    let mut found = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(service)) => {
                let mut addresses: Vec<IpAddr> = service
                    .get_addresses()
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .collect();
                addresses.sort();
                let txt = |key: &str| service.get_property_val_str(key).map(str::to_string);
                found.insert(
                    service.fullname.clone(),
                    Found {
                        name: service
                            .fullname
                            .strip_suffix(&format!(".{SERVICE_TYPE}"))
                            .unwrap_or(&service.fullname)
                            .to_string(),
                        host: service.host.clone(),
                        addresses,
                        port: service.port,
                        version: txt("version"),
                        tls: txt("tls").as_deref() == Some("1"),
                        fingerprint_prefix: txt("fp"),
                    },
                );
            }
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                found.remove(&fullname);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(Duration::from_secs(1));
    }
    Ok(found.into_values().collect())
}
