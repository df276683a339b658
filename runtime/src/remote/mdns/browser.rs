//! `discover`: asks the LAN for `_openwork._tcp` and keeps only what answers that question
//! and the ones it leads to, within a fixed budget.
//!
//! The chain: the service type's PTR records name instances (at most [`MAX_INSTANCES`],
//! the first ones heard); an instance's SRV names its host and port, its TXT the version,
//! TLS and fingerprint prefix; the A/AAAA records of that host are its addresses (at most
//! [`MAX_ADDRESSES`]). A record outside the chain is dropped whatever its TTL, and so is
//! one that arrives before the record that asks for it (the next query asks again). So a
//! LAN that floods `discover` with instances or addresses gets [`MAX_INSTANCES`] ×
//! [`MAX_ADDRESSES`] of them into its output at most, and nothing into its memory beyond
//! that.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use simple_dns::rdata::{PTR, RData};
use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, ResourceRecord, TYPE};
use socket2::SockRef;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::Error;
use super::links::{self, Family, Link};
use super::wire::{self, Header};

/// Instances kept (and printed) at most; the rest are ignored.
pub const MAX_INSTANCES: usize = 64;
/// Addresses kept per instance at most.
pub const MAX_ADDRESSES: usize = 16;
/// Follow-up questions (SRV/TXT of an instance, A/AAAA of a host) per query at most.
const MAX_FOLLOW_UPS: usize = 16;
/// The first gap between queries; each next one is twice the last (RFC 6762 §5.2).
const FIRST_QUERY_GAP: Duration = Duration::from_secs(1);

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

/// What an instance's SRV record says.
#[derive(Debug, Clone)]
struct Target {
    host: Name<'static>,
    /// `host` as a key ([`key`]).
    host_key: String,
    port: u16,
}

/// What an instance's TXT record says, of what we print.
#[derive(Debug, Clone, Default)]
struct Txt {
    version: Option<String>,
    tls: bool,
    fingerprint_prefix: Option<String>,
}

/// One instance heard of, as far as it is resolved.
#[derive(Debug)]
struct Instance {
    name: Name<'static>,
    target: Option<Target>,
    txt: Option<Txt>,
    addresses: BTreeSet<IpAddr>,
}

/// A name as a map key: DNS names compare without ASCII case.
fn key(name: &Name<'_>) -> String {
    name.to_string().to_ascii_lowercase()
}

/// The browser's state: what it has been told that answers its questions.
#[derive(Debug)]
pub struct Browser {
    service: Name<'static>,
    instances: BTreeMap<String, Instance>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser {
            service: wire::service_type(),
            instances: BTreeMap::new(),
        }
    }
}

impl Browser {
    /// Takes from `packet` (received from `from`) what answers our question chain.
    pub fn absorb(&mut self, packet: &[u8], from: SocketAddr) {
        // RFC 6762 §6: responses come from port 5353; anything else is not mDNS.
        let Some(header) = Header::read(packet) else {
            return;
        };
        if !header.response || header.rcode != 0 || from.port() != wire::PORT {
            return;
        }
        let Some((_, parsed)) = wire::parse(packet) else {
            return;
        };
        let records: Vec<&ResourceRecord<'_>> = parsed
            .answers
            .iter()
            .chain(&parsed.additional_records)
            .filter(|rr| rr.class == CLASS::IN)
            .collect();
        // In chain order, so that one response carrying all of it (as ours does) resolves.
        for rr in &records {
            self.take_instance(rr);
        }
        for rr in &records {
            self.take_srv_or_txt(rr);
        }
        for rr in &records {
            self.take_address(rr);
        }
    }

    /// A PTR of the service type names an instance (or, with TTL 0, withdraws one).
    fn take_instance(&mut self, rr: &ResourceRecord<'_>) {
        let RData::PTR(PTR(instance)) = &rr.rdata else {
            return;
        };
        let one_label_under = instance.is_subdomain_of(&self.service)
            && instance.get_labels().len() == self.service.get_labels().len() + 1;
        if rr.name != self.service || !one_label_under {
            return;
        }
        let key = key(instance);
        if rr.ttl == wire::GOODBYE_TTL {
            self.instances.remove(&key);
        } else if self.instances.len() < MAX_INSTANCES || self.instances.contains_key(&key) {
            self.instances.entry(key).or_insert_with(|| Instance {
                name: instance.clone().into_owned(),
                target: None,
                txt: None,
                addresses: BTreeSet::new(),
            });
        }
    }

    /// An SRV or TXT record of an instance we know.
    fn take_srv_or_txt(&mut self, rr: &ResourceRecord<'_>) {
        if !matches!(rr.rdata, RData::SRV(_) | RData::TXT(_)) {
            return;
        }
        let Some(instance) = self.instances.get_mut(&key(&rr.name)) else {
            return;
        };
        let gone = rr.ttl == wire::GOODBYE_TTL;
        match &rr.rdata {
            RData::SRV(srv) => {
                let host_key = key(&srv.target);
                if gone
                    || instance
                        .target
                        .as_ref()
                        .is_some_and(|t| t.host_key != host_key)
                {
                    instance.addresses.clear();
                }
                instance.target = (!gone).then(|| Target {
                    host: srv.target.clone().into_owned(),
                    host_key,
                    port: srv.port,
                });
            }
            RData::TXT(txt) => {
                instance.txt = (!gone).then(|| {
                    let mut read = Txt::default();
                    for (k, v) in txt.iter_raw() {
                        let v = v.map(|v| String::from_utf8_lossy(v).into_owned());
                        // Keys compare without ASCII case (RFC 6763 §6.4).
                        match k.to_ascii_lowercase().as_slice() {
                            b"version" => read.version = v,
                            b"tls" => read.tls = v.as_deref() == Some("1"),
                            b"fp" => read.fingerprint_prefix = v,
                            _ => {}
                        }
                    }
                    read
                });
            }
            _ => {}
        }
    }

    /// An A or AAAA record of a host an instance's SRV names.
    fn take_address(&mut self, rr: &ResourceRecord<'_>) {
        let ip = match &rr.rdata {
            RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
            RData::AAAA(aaaa) => IpAddr::V6(Ipv6Addr::from(aaaa.address)),
            _ => return,
        };
        let host = key(&rr.name);
        for instance in self.instances.values_mut() {
            if instance.target.as_ref().is_none_or(|t| t.host_key != host) {
                continue;
            }
            if rr.ttl == wire::GOODBYE_TTL {
                instance.addresses.remove(&ip);
            } else if instance.addresses.len() < MAX_ADDRESSES {
                instance.addresses.insert(ip);
            }
        }
    }

    /// How many instances it keeps (resolved or not).
    pub fn instances_heard(&self) -> usize {
        self.instances.len()
    }

    /// The next query: the service type's PTR, and what the instances heard of still lack.
    pub fn query(&self) -> Option<Vec<u8>> {
        let question = |name: &Name<'static>, t: TYPE| {
            Question::new(
                name.clone(),
                QTYPE::TYPE(t),
                QCLASS::CLASS(CLASS::IN),
                false,
            )
        };
        let mut packet = Packet::new_query(0);
        packet.questions.push(question(&self.service, TYPE::PTR));
        let follow_ups = self.instances.values().flat_map(|instance| {
            let mut asks = Vec::new();
            if instance.target.is_none() {
                asks.push(question(&instance.name, TYPE::SRV));
            }
            if instance.txt.is_none() {
                asks.push(question(&instance.name, TYPE::TXT));
            }
            if let Some(target) = instance
                .target
                .as_ref()
                .filter(|_| instance.addresses.is_empty())
            {
                asks.push(question(&target.host, TYPE::A));
                asks.push(question(&target.host, TYPE::AAAA));
            }
            asks
        });
        packet.questions.extend(follow_ups.take(MAX_FOLLOW_UPS));
        packet.build_bytes_vec_compressed().ok()
    }

    /// The instances resolved to a host, a port and at least one address, by name.
    pub fn found(&self) -> Vec<Found> {
        let mut found = Vec::new();
        for instance in self.instances.values() {
            let Some(target) = &instance.target else {
                continue;
            };
            if instance.addresses.is_empty() {
                continue;
            }
            let txt = instance.txt.clone().unwrap_or_default();
            let label: &[u8] = instance
                .name
                .get_labels()
                .first()
                .map_or(&[], |l| l.as_ref());
            found.push(Found {
                name: String::from_utf8_lossy(label).into_owned(),
                host: format!("{}.", target.host),
                addresses: instance.addresses.iter().copied().collect(),
                port: target.port,
                version: txt.version,
                tls: txt.tls,
                fingerprint_prefix: txt.fingerprint_prefix,
            });
        }
        found
    }
}

/// Listens for `wait` and returns the servers that answered, by name.
///
/// Port 5353 (shared) where it can be had: then answers multicast to the group, including
/// those to other hosts' queries, are heard. Elsewhere an unused port, where responders
/// answer by unicast to us alone (RFC 6762 §6.7), within their own limits.
pub fn discover(wait: Duration) -> Result<Vec<Found>, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| Error::Socket {
            action: "start the async runtime",
            source,
        })?;
    runtime.block_on(browse(wait))
}

async fn browse(wait: Duration) -> Result<Vec<Found>, Error> {
    let links = links::links(|_| true);
    let mut sockets: Vec<(Family, UdpSocket)> = Vec::new();
    let mut first_error = None;
    for family in [Family::V4, Family::V6] {
        if !links.iter().any(|l| l.speaks(family)) {
            continue;
        }
        let opened = links::open(family, wire::PORT, &links)
            .or_else(|_| links::open(family, 0, &links))
            .and_then(|socket| {
                UdpSocket::from_std(socket).map_err(|source| Error::Socket {
                    action: "register the socket with the runtime",
                    source,
                })
            });
        match opened {
            Ok(socket) => sockets.push((family, socket)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if sockets.is_empty() {
        return match first_error {
            Some(e) => Err(e),
            // No interface but loopback: nobody to ask.
            None => Ok(Vec::new()),
        };
    }
    let socket = |family| sockets.iter().find(|(f, _)| *f == family).map(|(_, s)| s);
    let (v4, v6) = (socket(Family::V4), socket(Family::V6));
    let (mut buf_v4, mut buf_v6) = (vec![0u8; wire::MAX_PACKET], vec![0u8; wire::MAX_PACKET]);
    let deadline = Instant::now() + wait;
    let mut browser = Browser::default();
    let mut next_query = Instant::now();
    let mut gap = FIRST_QUERY_GAP;
    loop {
        let (family, received) = tokio::select! {
            received = links::receive(v4, &mut buf_v4) => (Family::V4, received),
            received = links::receive(v6, &mut buf_v6) => (Family::V6, received),
            () = tokio::time::sleep_until(next_query) => {
                if let Some(query) = browser.query() {
                    send_everywhere(&sockets, &links, &query);
                }
                next_query += gap;
                gap *= 2;
                continue;
            }
            () = tokio::time::sleep_until(deadline) => break,
        };
        match received {
            Ok((len, from)) => {
                let buf = if family == Family::V4 {
                    &buf_v4
                } else {
                    &buf_v6
                };
                browser.absorb(&buf[..len], from);
            }
            Err(_) => tokio::time::sleep(links::RECEIVE_ERROR_PAUSE).await,
        }
    }
    Ok(browser.found())
}

fn send_everywhere(sockets: &[(Family, UdpSocket)], links: &[Link], packet: &[u8]) {
    for (family, socket) in sockets {
        for link in links.iter().filter(|l| l.speaks(*family)) {
            links::multicast(SockRef::from(socket), *family, link, packet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, SRV, TXT};

    const FROM: &str = "192.168.1.9:5353";

    fn name(text: &str) -> Name<'static> {
        wire::name(&text.split('.').collect::<Vec<_>>()).unwrap()
    }

    fn response(records: Vec<ResourceRecord<'static>>) -> Vec<u8> {
        let mut packet = Packet::new_reply(0);
        packet.answers = records;
        packet.build_bytes_vec_compressed().unwrap()
    }

    fn ptr(instance: &str, ttl: u32) -> ResourceRecord<'static> {
        ResourceRecord::new(
            wire::service_type(),
            CLASS::IN,
            ttl,
            RData::PTR(PTR(name(&format!("{instance}._openwork._tcp.local")))),
        )
    }

    fn srv(instance: &str, host: &str) -> ResourceRecord<'static> {
        ResourceRecord::new(
            name(&format!("{instance}._openwork._tcp.local")),
            CLASS::IN,
            120,
            RData::SRV(SRV {
                priority: 0,
                weight: 0,
                port: 443,
                target: name(host),
            }),
        )
    }

    fn a(host: &str, ip: u32) -> ResourceRecord<'static> {
        ResourceRecord::new(name(host), CLASS::IN, 120, RData::A(A { address: ip }))
    }

    #[test]
    fn records_outside_the_question_chain_are_not_kept() {
        let mut browser = Browser::default();
        let from = FROM.parse().unwrap();
        // Addresses and an SRV for an instance nobody pointed us to, and a PTR of another
        // service type.
        browser.absorb(&response(vec![srv("x", "x.local"), a("x.local", 1)]), from);
        let other = ResourceRecord::new(
            name("_http._tcp.local"),
            CLASS::IN,
            4500,
            RData::PTR(PTR(name("y._http._tcp.local"))),
        );
        browser.absorb(&response(vec![other]), from);
        assert_eq!(browser.instances_heard(), 0);
        // An address before the SRV that names its host: dropped, and asked for again.
        browser.absorb(&response(vec![ptr("x", 4500), a("x.local", 1)]), from);
        assert!(browser.found().is_empty());
        browser.absorb(&response(vec![srv("x", "x.local")]), from);
        let query = Packet::parse(&browser.query().unwrap())
            .unwrap()
            .questions
            .len();
        assert_eq!(query, 4, "PTR, x's TXT, and A and AAAA of x.local");
        browser.absorb(&response(vec![a("x.local", 1)]), from);
        assert_eq!(browser.found().len(), 1);
        // An address of a host no SRV names is not kept.
        browser.absorb(&response(vec![a("y.local", 2)]), from);
        assert_eq!(browser.found()[0].addresses.len(), 1);
    }

    #[test]
    fn a_flood_of_instances_and_addresses_stays_within_the_budget() {
        let mut browser = Browser::default();
        let from = FROM.parse().unwrap();
        for i in 0..1_000u32 {
            let instance = format!("fake{i}");
            let host = format!("fake{i}.local");
            let mut records = vec![ptr(&instance, 4500), srv(&instance, &host)];
            records.extend((0..40).map(|n| a(&host, i << 8 | n)));
            browser.absorb(&response(records), from);
        }
        let found = browser.found();
        assert_eq!(found.len(), MAX_INSTANCES);
        assert!(found.iter().all(|f| f.addresses.len() == MAX_ADDRESSES));
        let query = browser.query().unwrap();
        let questions = Packet::parse(&query).unwrap().questions.len();
        assert_eq!(
            questions,
            1 + MAX_FOLLOW_UPS,
            "every instance lacks its TXT: capped"
        );
    }

    #[test]
    fn queries_and_packets_not_from_port_5353_are_not_answers() {
        let mut browser = Browser::default();
        let records = vec![ptr("x", 4500), srv("x", "x.local"), a("x.local", 1)];
        browser.absorb(
            &response(records.clone()),
            "192.168.1.9:40000".parse().unwrap(),
        );
        let mut query = Packet::new_query(0);
        query.answers = records;
        browser.absorb(&query.build_bytes_vec().unwrap(), FROM.parse().unwrap());
        assert_eq!(browser.instances_heard(), 0);
    }

    #[test]
    fn a_txt_record_gives_version_tls_and_fingerprint_and_keys_ignore_case() {
        let mut browser = Browser::default();
        let txt = TXT::new()
            .with_string("VERSION=9")
            .unwrap()
            .with_string("tls=1")
            .unwrap()
            .with_string("fp=abcd")
            .unwrap()
            .with_string("other=x")
            .unwrap();
        let instance = name("x._openwork._tcp.local");
        let records = vec![
            ptr("x", 4500),
            srv("x", "x.local"),
            ResourceRecord::new(instance, CLASS::IN, 4500, RData::TXT(txt)),
            a("x.local", 0x0a00_0001),
        ];
        browser.absorb(&response(records), FROM.parse().unwrap());
        let found = browser.found();
        assert_eq!(found[0].version.as_deref(), Some("9"));
        assert!(found[0].tls);
        assert_eq!(found[0].fingerprint_prefix.as_deref(), Some("abcd"));
        assert_eq!(found[0].addresses, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
