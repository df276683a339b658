//! The interfaces mDNS runs on ("links"), and its sockets: one per address family, bound to
//! port 5353 beside any other responder on this machine, in the group on every link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::Error;
use super::wire::{GROUP_V4, GROUP_V6};

/// An address family mDNS runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 224.0.0.251
    V4,
    /// ff02::fb
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// One network interface and the addresses of it that mDNS speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its name (`eth0`, `en0`, …).
    pub name: String,
    /// Its index (IPv6 scope id, and the IPv6 multicast interface); 0 if unknown.
    pub index: u32,
    /// IPv4 addresses and their netmasks.
    pub v4: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// IPv6 addresses and their prefix lengths.
    pub v6: Vec<(Ipv6Addr, u8)>,
}

impl Link {
    /// Its addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.v4.iter().map(|(ip, _)| IpAddr::V4(*ip));
        v4.chain(self.v6.iter().map(|(ip, _)| IpAddr::V6(*ip)))
    }

    /// Whether mDNS can run over `family` here.
    pub fn speaks(&self, family: Family) -> bool {
        match family {
            Family::V4 => !self.v4.is_empty(),
            Family::V6 => !self.v6.is_empty() && self.index != 0,
        }
    }

    /// Whether a packet from `source` came over this link: an IPv4 source in one of its
    /// subnets, an IPv6 one with its scope id or in one of its prefixes.
    pub fn holds(&self, source: SocketAddr) -> bool {
        match source {
            SocketAddr::V4(source) => self.v4.iter().any(|(ip, mask)| {
                u32::from(*ip) & u32::from(*mask) == u32::from(*source.ip()) & u32::from(*mask)
            }),
            SocketAddr::V6(source) if source.scope_id() != 0 => source.scope_id() == self.index,
            SocketAddr::V6(source) => self.v6.iter().any(|(ip, prefix)| {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(*prefix)))
                    .unwrap_or(0);
                u128::from(*ip) & mask == u128::from(*source.ip()) & mask
            }),
        }
    }
}

/// The non-loopback interfaces, each with the addresses `keep` accepts; interfaces left
/// with none are not links.
pub fn links(keep: impl Fn(IpAddr) -> bool) -> Vec<Link> {
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut links: Vec<Link> = Vec::new();
    for interface in interfaces {
        let ip = interface.ip();
        if interface.is_loopback() || ip.is_loopback() || !keep(ip) {
            continue;
        }
        let at = match links.iter().position(|l| l.name == interface.name) {
            Some(at) => at,
            None => {
                links.push(Link {
                    name: interface.name.clone(),
                    index: interface.index.unwrap_or(0),
                    v4: Vec::new(),
                    v6: Vec::new(),
                });
                links.len() - 1
            }
        };
        match interface.addr {
            if_addrs::IfAddr::V4(v4) => links[at].v4.push((v4.ip, v4.netmask)),
            if_addrs::IfAddr::V6(v6) => links[at].v6.push((v6.ip, v6.prefixlen)),
        }
    }
    links
}

/// An error of `action`, for `map_err`.
fn fail(action: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Socket { action, source }
}

/// A socket for `family` bound to `port` (5353, or 0 for a browser that cannot have it),
/// shared with other responders, with multicast looped back (a browser and a server on one
/// machine hear each other), TTL 255 (RFC 6762 §11), and in the group on every link of
/// `links` that speaks `family`. Non-blocking, for tokio.
pub fn open(family: Family, port: u16, links: &[Link]) -> Result<std::net::UdpSocket, Error> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let socket =
        Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(fail("open a UDP socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(fail("share the port (SO_REUSEADDR)"))?;
    // Avahi and mDNSResponder set SO_REUSEADDR and, where it exists, SO_REUSEPORT; Linux and
    // the BSDs let a second socket bind only if it sets what the first did.
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket
        .set_reuse_port(true)
        .map_err(fail("share the port (SO_REUSEPORT)"))?;
    let any: SocketAddr = match family {
        Family::V4 => (Ipv4Addr::UNSPECIFIED, port).into(),
        Family::V6 => {
            socket
                .set_only_v6(true)
                .map_err(fail("keep the IPv6 socket to IPv6"))?;
            (Ipv6Addr::UNSPECIFIED, port).into()
        }
    };
    socket.bind(&SockAddr::from(any)).map_err(fail("bind"))?;
    match family {
        Family::V4 => {
            socket
                .set_multicast_loop_v4(true)
                .map_err(fail("loop multicast back"))?;
            socket
                .set_multicast_ttl_v4(255)
                .map_err(fail("set the multicast TTL"))?;
            socket.set_ttl_v4(255).map_err(fail("set the TTL"))?;
        }
        Family::V6 => {
            socket
                .set_multicast_loop_v6(true)
                .map_err(fail("loop multicast back"))?;
            socket
                .set_multicast_hops_v6(255)
                .map_err(fail("set the multicast hop limit"))?;
            socket
                .set_unicast_hops_v6(255)
                .map_err(fail("set the hop limit"))?;
        }
    }
    let mut joined = 0;
    let mut tried = Vec::new();
    for link in links.iter().filter(|l| l.speaks(family)) {
        let result = match family {
            Family::V4 => socket.join_multicast_v4(&GROUP_V4, &link.v4[0].0),
            Family::V6 => socket.join_multicast_v6(&GROUP_V6, link.index),
        };
        match result {
            Ok(()) => joined += 1,
            Err(e) => tried.push(format!("{}: {e}", link.name)),
        }
    }
    if joined == 0 {
        if tried.is_empty() {
            tried.push("no interface".into());
        }
        return Err(Error::NoMulticast {
            tried: tried.join(", "),
        });
    }
    socket
        .set_nonblocking(true)
        .map_err(fail("make the socket non-blocking"))?;
    Ok(socket.into())
}

/// After a receive error (some systems report an ICMP "port unreachable" for an earlier
/// unicast send on the next receive), wait this long before the next receive, so that an
/// error that repeats cannot spin the runtime.
pub const RECEIVE_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Receives from `socket`; without one, never.
pub async fn receive(
    socket: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Sends `packet` to the group on `link` (which must speak `family`).
///
/// Through the socket itself rather than tokio's readiness: it is also how the goodbye
/// leaves from a destructor. A full send buffer (`WouldBlock`) loses the packet, as a
/// congested link would; mDNS repeats what matters.
pub fn multicast(socket: SockRef<'_>, family: Family, link: &Link, packet: &[u8]) {
    let sent = match family {
        Family::V4 => socket.set_multicast_if_v4(&link.v4[0].0).and_then(|()| {
            socket.send_to(
                packet,
                &SockAddr::from(SocketAddr::from((GROUP_V4, super::wire::PORT))),
            )
        }),
        Family::V6 => socket.set_multicast_if_v6(link.index).and_then(|()| {
            let to = std::net::SocketAddrV6::new(GROUP_V6, super::wire::PORT, 0, link.index);
            socket.send_to(packet, &SockAddr::from(to))
        }),
    };
    if let Err(e) = sent {
        tracing::debug!(link = %link.name, error = %e, "mDNS send failed");
    }
}

/// Sends `packet` to `to` (a legacy unicast answer).
pub fn unicast(socket: SockRef<'_>, to: SocketAddr, packet: &[u8]) {
    if let Err(e) = socket.send_to(packet, &SockAddr::from(to)) {
        tracing::debug!(error = %e, "mDNS unicast send failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            name: "eth0".into(),
            index: 3,
            v4: vec![(
                "192.168.1.20".parse().unwrap(),
                "255.255.255.0".parse().unwrap(),
            )],
            v6: vec![("2001:db8::20".parse().unwrap(), 64)],
        }
    }

    #[test]
    fn a_source_is_placed_on_the_link_whose_subnet_or_scope_it_is_in() {
        let link = link();
        assert!(link.holds("192.168.1.7:5353".parse().unwrap()));
        assert!(!link.holds("192.168.2.7:5353".parse().unwrap()));
        assert!(link.holds("[2001:db8::7]:5353".parse().unwrap()));
        assert!(!link.holds("[2001:db9::7]:5353".parse().unwrap()));
        assert!(link.holds("[fe80::7%3]:5353".parse().unwrap()));
        assert!(!link.holds("[fe80::7%4]:5353".parse().unwrap()));
        assert_eq!(
            link.addresses().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.168.1.20", "2001:db8::20"]
        );
    }
}
