//! The server's side: a responder for one service instance, as a task on the server's
//! runtime (no thread of its own).
//!
//! It keeps nothing from what it receives. A response from the LAN is dropped once its
//! flags say it is one (we do not probe or resolve conflicts, see the parent module, so no
//! response is ever of use to us); a query is parsed, answered from [`Records`], and
//! dropped. What it sends is bounded by time, not by what it is sent: each record at most
//! once per [`RATE_LIMIT`] per interface and family (RFC 6762 §6), and legacy unicast
//! answers (queries from a port other than 5353, §6.7) at most
//! [`UNICAST_ANSWERS_PER_SECOND`] in all, so a query flood cannot make the server an
//! amplifier.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simple_dns::rdata::{A, AAAA, PTR, RData, SRV, TXT};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, ResourceRecord, TYPE};
use socket2::SockRef;
use tokio::net::UdpSocket;

use super::links::{self, Family, Link};
use super::wire::{self, GOODBYE_TTL, HOST_TTL, Header, LEGACY_TTL, OTHER_TTL};
use super::{Error, FINGERPRINT_PREFIX_LEN};

/// RFC 6762 §6: a record is multicast on an interface at most once a second.
pub const RATE_LIMIT: Duration = Duration::from_secs(1);
/// Legacy unicast answers per second, all sources together. Each goes to whatever address
/// the query claims to come from, so this is what a spoofed flood can aim at someone else.
pub const UNICAST_ANSWERS_PER_SECOND: u32 = 4;
/// RFC 6762 §8.3: at least two announcements one second apart, each gap at least double the
/// one before.
const ANNOUNCEMENTS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];
/// Address records in one response: enough for any real interface; an interface with more
/// addresses has them announced in part.
const MAX_ADDRESS_RECORDS: usize = 16;

/// A record this responder holds, and the unit of its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `_services._dns-sd._udp.local` PTR → the service type (RFC 6763 §9).
    Meta,
    /// The service type PTR → the instance.
    Ptr,
    /// The instance's SRV → host and port.
    Srv,
    /// The instance's TXT.
    Txt,
    /// The host's A records on one interface.
    V4,
    /// The host's AAAA records on one interface.
    V6,
}

const KINDS: [Kind; 6] = [
    Kind::Meta,
    Kind::Ptr,
    Kind::Srv,
    Kind::Txt,
    Kind::V4,
    Kind::V6,
];

/// A set of [`Kind`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kinds(u8);

impl Kinds {
    fn of(kinds: &[Kind]) -> Kinds {
        kinds.iter().fold(Kinds::default(), |set, k| set.with(*k))
    }
    fn with(self, kind: Kind) -> Kinds {
        Kinds(self.0 | (1 << kind as u8))
    }
    fn has(self, kind: Kind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }
    fn union(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }
    fn without(self, other: Kinds) -> Kinds {
        Kinds(self.0 & !other.0)
    }
    fn is_empty(self) -> bool {
        self.0 == 0
    }
    fn filter(self, keep: impl Fn(Kind) -> bool) -> Kinds {
        Kinds::of(
            &KINDS
                .into_iter()
                .filter(|k| self.has(*k) && keep(*k))
                .collect::<Vec<_>>(),
        )
    }
}

/// What a response is for: its TTLs and cache-flush bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Announcements and multicast answers.
    Multicast,
    /// A legacy unicast answer: TTL at most 10 s, no cache-flush bit (RFC 6762 §6.7).
    Legacy,
    /// TTL 0 (RFC 6762 §10.1).
    Goodbye,
}

/// Everything the responder ever says: one instance of our service.
#[derive(Debug)]
pub struct Records {
    meta: Name<'static>,
    service: Name<'static>,
    instance: Name<'static>,
    host: Name<'static>,
    port: u16,
    txt: Vec<String>,
}

impl Records {
    /// The records of the server listening on `port` of `host` (a DNS label), or `None` if
    /// a name or a TXT string cannot be one.
    pub fn new(host: &str, port: u16, version: &str, fingerprint: Option<&str>) -> Option<Records> {
        let mut txt = vec![
            format!("version={version}"),
            format!("tls={}", if fingerprint.is_some() { "1" } else { "0" }),
        ];
        if let Some(fingerprint) = fingerprint {
            let prefix = fingerprint
                .get(..FINGERPRINT_PREFIX_LEN)
                .unwrap_or(fingerprint);
            txt.push(format!("fp={prefix}"));
        }
        if txt.iter().any(|s| s.len() > 255) {
            return None;
        }
        Some(Records {
            meta: wire::services_meta(),
            service: wire::service_type(),
            instance: wire::name(&[&instance_label(host, port), "_openwork", "_tcp", "local"])?,
            host: wire::name(&[host, "local"])?,
            port,
            txt,
        })
    }

    /// What `question` asks of us: the kinds to answer with, and the additional ones that
    /// save the asker the next query (RFC 6763 §12).
    fn asked(&self, question: &Question<'_>) -> (Kinds, Kinds) {
        let none = (Kinds::default(), Kinds::default());
        if !matches!(question.qclass, QCLASS::ANY | QCLASS::CLASS(CLASS::IN)) {
            return none;
        }
        let wants = |t: TYPE| question.qtype == QTYPE::ANY || question.qtype == QTYPE::TYPE(t);
        let name = &question.qname;
        let addresses = Kinds::of(&[Kind::V4, Kind::V6]);
        if *name == self.service && wants(TYPE::PTR) {
            (
                Kinds::of(&[Kind::Ptr]),
                Kinds::of(&[Kind::Srv, Kind::Txt]).union(addresses),
            )
        } else if *name == self.meta && wants(TYPE::PTR) {
            (Kinds::of(&[Kind::Meta]), Kinds::default())
        } else if *name == self.instance {
            let mut answers = Kinds::default();
            if wants(TYPE::SRV) {
                answers = answers.with(Kind::Srv);
            }
            if wants(TYPE::TXT) {
                answers = answers.with(Kind::Txt);
            }
            let additional = if answers.has(Kind::Srv) {
                addresses
            } else {
                Kinds::default()
            };
            (answers, additional)
        } else if *name == self.host {
            let mut answers = Kinds::default();
            if wants(TYPE::A) {
                answers = answers.with(Kind::V4);
            }
            if wants(TYPE::AAAA) {
                answers = answers.with(Kind::V6);
            }
            (answers, Kinds::default())
        } else {
            none
        }
    }

    /// Whether `known` (a query's known answers, RFC 6762 §7.1) holds our PTR with at least
    /// half its TTL left, so that answering with it again is not wanted.
    fn ptr_known(&self, known: &[ResourceRecord<'_>]) -> bool {
        known.iter().any(|rr| {
            rr.name == self.service
                && rr.ttl >= OTHER_TTL / 2
                && matches!(&rr.rdata, RData::PTR(PTR(target)) if *target == self.instance)
        })
    }

    /// The records of `kinds` as said on `link`, appended to `out`.
    fn push<'a>(
        &'a self,
        kinds: Kinds,
        link: &Link,
        mode: Mode,
        out: &mut Vec<ResourceRecord<'a>>,
    ) {
        let record = |name: &'a Name<'static>, ttl: u32, unique: bool, rdata: RData<'a>| {
            let ttl = match mode {
                Mode::Multicast => ttl,
                Mode::Legacy => ttl.min(LEGACY_TTL),
                Mode::Goodbye => GOODBYE_TTL,
            };
            ResourceRecord::new(name.clone(), CLASS::IN, ttl, rdata)
                .with_cache_flush(unique && mode == Mode::Multicast)
        };
        for kind in KINDS.into_iter().filter(|k| kinds.has(*k)) {
            match kind {
                Kind::Meta => out.push(record(
                    &self.meta,
                    OTHER_TTL,
                    false,
                    RData::PTR(PTR(self.service.clone())),
                )),
                Kind::Ptr => out.push(record(
                    &self.service,
                    OTHER_TTL,
                    false,
                    RData::PTR(PTR(self.instance.clone())),
                )),
                Kind::Srv => out.push(record(
                    &self.instance,
                    HOST_TTL,
                    true,
                    RData::SRV(SRV {
                        priority: 0,
                        weight: 0,
                        port: self.port,
                        target: self.host.clone(),
                    }),
                )),
                Kind::Txt => {
                    let mut txt = TXT::new();
                    for string in &self.txt {
                        // Checked in `new`: every string fits in 255 bytes.
                        let _ = txt.add_string(string);
                    }
                    out.push(record(&self.instance, OTHER_TTL, true, RData::TXT(txt)));
                }
                Kind::V4 | Kind::V6 => {
                    let addresses = link
                        .addresses()
                        .filter(|ip| ip.is_ipv4() == (kind == Kind::V4))
                        .take(MAX_ADDRESS_RECORDS);
                    for ip in addresses {
                        let rdata = match ip {
                            IpAddr::V4(ip) => RData::A(A::from(ip)),
                            IpAddr::V6(ip) => RData::AAAA(AAAA::from(ip)),
                        };
                        out.push(record(&self.host, HOST_TTL, true, rdata));
                    }
                }
            }
        }
    }

    /// A response on `link` with `answers` (none of which may come out empty, else `None`)
    /// and `additional`.
    fn response(
        &self,
        id: u16,
        questions: &[Question<'_>],
        answers: Kinds,
        additional: Kinds,
        link: &Link,
        mode: Mode,
    ) -> Option<Vec<u8>> {
        let mut packet = Packet::new_reply(id);
        packet.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
        packet.questions.extend(questions.iter().cloned());
        self.push(answers, link, mode, &mut packet.answers);
        if packet.answers.is_empty() {
            return None;
        }
        self.push(additional, link, mode, &mut packet.additional_records);
        packet.build_bytes_vec_compressed().ok()
    }
}

/// The instance label: `openwork-server-v2 on <host> (<port>)`, the host shortened if
/// needed to fit a DNS label (63 bytes); the port, which tells two servers on one machine
/// apart, is always whole.
pub fn instance_label(host: &str, port: u16) -> String {
    const PREFIX: &str = "openwork-server-v2 on ";
    let suffix = format!(" ({port})");
    let mut room = (63 - PREFIX.len() - suffix.len()).min(host.len());
    while !host.is_char_boundary(room) {
        room -= 1;
    }
    format!("{PREFIX}{}{suffix}", &host[..room])
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// To the group, out of link number `.1` (an index into the responder's links).
    Group(Family, usize),
    /// To one address (a legacy unicast answer).
    Unicast(SocketAddr),
}

/// What the responder has done, for the log line at stop (and the tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Queries read.
    pub queries: u64,
    /// Responses sent (announcements and goodbyes not counted).
    pub answered: u64,
    /// Answers not sent because of the rate limits.
    pub held_back: u64,
    /// Responses from the LAN, dropped unread.
    pub responses_ignored: u64,
    /// Packets that are not plausible mDNS.
    pub malformed: u64,
}

/// The responder's logic, apart from its sockets (so that tests can drive it).
#[derive(Debug)]
struct Responder {
    records: Records,
    links: Vec<Link>,
    /// Per family and link (`family as usize * links.len() + link`), when each kind was
    /// last multicast there.
    last_sent: Vec<[Option<Instant>; KINDS.len()]>,
    /// The legacy unicast answers' current one-second window: its start and its count.
    unicast_window: (Instant, u32),
    counters: Counters,
}

impl Responder {
    fn new(records: Records, links: Vec<Link>, now: Instant) -> Responder {
        Responder {
            last_sent: vec![[None; KINDS.len()]; 2 * links.len()],
            records,
            links,
            unicast_window: (now, 0),
            counters: Counters::default(),
        }
    }

    fn slot(&self, family: Family, link: usize) -> usize {
        (family as usize) * self.links.len() + link
    }

    /// The links that speak `family`, by index.
    fn links_of(&self, family: Family) -> impl Iterator<Item = usize> + '_ {
        (0..self.links.len()).filter(move |i| self.links[*i].speaks(family))
    }

    /// What to send for a packet received over `family` from `from`.
    fn receive(
        &mut self,
        family: Family,
        packet: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Vec<(Destination, Vec<u8>)> {
        let Some(header) = Header::read(packet) else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        if header.response {
            // Nothing in another host's response is of use to a responder that does not
            // probe: not even parsed.
            self.counters.responses_ignored += 1;
            return Vec::new();
        }
        let Some((header, query)) = wire::parse(packet) else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        self.counters.queries += 1;
        let (mut answers, mut additional) = (Kinds::default(), Kinds::default());
        for question in &query.questions {
            let (a, b) = self.records.asked(question);
            answers = answers.union(a);
            additional = additional.union(b);
        }
        if answers.has(Kind::Ptr) && self.records.ptr_known(&query.answers) {
            answers = answers.without(Kinds::of(&[Kind::Ptr]));
            additional = Kinds::default();
        }
        additional = additional.without(answers);
        if answers.is_empty() {
            return Vec::new();
        }
        // The link the query came over; one we cannot place is answered on every link of
        // its family (each still at most once a second).
        let mut on: Vec<usize> = self
            .links_of(family)
            .filter(|i| self.links[*i].holds(from))
            .collect();
        if on.is_empty() {
            on = self.links_of(family).collect();
        }
        if from.port() != wire::PORT {
            return self.legacy_answer(
                header,
                &query.questions,
                answers,
                additional,
                on.first().copied(),
                from,
                now,
            );
        }
        let mut out = Vec::new();
        for link in on {
            let slot = self.slot(family, link);
            let fresh = |kind: Kind| {
                self.last_sent[slot][kind as usize]
                    .is_none_or(|at| now.duration_since(at) >= RATE_LIMIT)
            };
            let (send, also) = (answers.filter(fresh), additional.filter(fresh));
            if send.is_empty() {
                self.counters.held_back += 1;
                continue;
            }
            let Some(bytes) =
                self.records
                    .response(0, &[], send, also, &self.links[link], Mode::Multicast)
            else {
                continue;
            };
            for kind in KINDS.into_iter().filter(|k| send.union(also).has(*k)) {
                self.last_sent[slot][kind as usize] = Some(now);
            }
            self.counters.answered += 1;
            out.push((Destination::Group(family, link), bytes));
        }
        out
    }

    /// RFC 6762 §6.7: a query from a port other than 5353 is answered by unicast, with its
    /// id and questions, within [`UNICAST_ANSWERS_PER_SECOND`].
    #[allow(clippy::too_many_arguments)]
    fn legacy_answer(
        &mut self,
        header: Header,
        questions: &[Question<'_>],
        answers: Kinds,
        additional: Kinds,
        link: Option<usize>,
        from: SocketAddr,
        now: Instant,
    ) -> Vec<(Destination, Vec<u8>)> {
        let (start, used) = &mut self.unicast_window;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            (*start, *used) = (now, 0);
        }
        let Some(link) = link else {
            return Vec::new();
        };
        if *used >= UNICAST_ANSWERS_PER_SECOND {
            self.counters.held_back += 1;
            return Vec::new();
        }
        *used += 1;
        let response = self.records.response(
            header.id,
            questions,
            answers,
            additional,
            &self.links[link],
            Mode::Legacy,
        );
        self.counters.answered += u64::from(response.is_some());
        response
            .map(|bytes| (Destination::Unicast(from), bytes))
            .into_iter()
            .collect()
    }

    /// Every record, on every link of every family in `families`, in `mode` (an
    /// announcement or a goodbye).
    fn everything(
        &mut self,
        families: &[Family],
        mode: Mode,
        now: Instant,
    ) -> Vec<(Destination, Vec<u8>)> {
        let all = Kinds::of(&[Kind::Ptr, Kind::Srv, Kind::Txt, Kind::V4, Kind::V6]);
        let mut out = Vec::new();
        for &family in families {
            for link in self.links_of(family).collect::<Vec<_>>() {
                let Some(bytes) =
                    self.records
                        .response(0, &[], all, Kinds::default(), &self.links[link], mode)
                else {
                    continue;
                };
                if mode == Mode::Multicast {
                    let slot = self.slot(family, link);
                    for kind in KINDS.into_iter().filter(|k| all.has(*k)) {
                        self.last_sent[slot][kind as usize] = Some(now);
                    }
                }
                out.push((Destination::Group(family, link), bytes));
            }
        }
        out
    }
}

/// The responder's sockets and state, shared by its task and the [`Advertisement`] (which
/// sends the goodbye).
struct Shared {
    sockets: Vec<(Family, UdpSocket)>,
    responder: Mutex<Responder>,
}

impl Shared {
    fn families(&self) -> Vec<Family> {
        self.sockets.iter().map(|(family, _)| *family).collect()
    }

    fn send(&self, outgoing: Vec<(Destination, Vec<u8>)>) {
        let Ok(responder) = self.responder.lock() else {
            return;
        };
        for (to, bytes) in outgoing {
            let family = match to {
                Destination::Group(family, _) => family,
                Destination::Unicast(addr) => Family::of(addr.ip()),
            };
            let Some((_, socket)) = self.sockets.iter().find(|(f, _)| *f == family) else {
                continue;
            };
            match to {
                Destination::Group(family, link) => links::multicast(
                    SockRef::from(socket),
                    family,
                    &responder.links[link],
                    &bytes,
                ),
                Destination::Unicast(addr) => links::unicast(SockRef::from(socket), addr, &bytes),
            }
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Responder) -> T) -> Option<T> {
        self.responder
            .lock()
            .ok()
            .map(|mut responder| f(&mut responder))
    }
}

/// An advertisement: withdrawn (a goodbye is sent) when dropped.
pub struct Advertisement {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Advertisement {
    /// Starts advertising the server listening at `local` (an unspecified address: every
    /// non-loopback interface address of its family, both for `::`), on the runtime this is
    /// called from.
    pub fn start(
        local: SocketAddr,
        version: &str,
        fingerprint: Option<&str>,
    ) -> Result<Advertisement, Error> {
        let host = crate::remote::host_name().unwrap_or_else(|| "openwork".into());
        let records =
            Records::new(&host, local.port(), version, fingerprint).ok_or_else(|| Error::Name {
                name: instance_label(&host, local.port()),
            })?;
        let bound = local.ip();
        let links = links::links(|ip| {
            if bound.is_unspecified() {
                bound.is_ipv6() || ip.is_ipv4()
            } else {
                ip == bound
            }
        });
        if links.is_empty() {
            let seen: Vec<String> = links::links(|_| true).into_iter().map(|l| l.name).collect();
            return Err(Error::NoInterface {
                wanted: bound,
                seen: if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                },
            });
        }
        let mut sockets = Vec::new();
        let mut first_error = None;
        for family in [Family::V4, Family::V6] {
            if !links.iter().any(|l| l.speaks(family)) {
                continue;
            }
            let opened = links::open(family, wire::PORT, &links).and_then(|socket| {
                UdpSocket::from_std(socket).map_err(|source| Error::Socket {
                    action: "register the socket with the runtime",
                    source,
                })
            });
            match opened {
                Ok(socket) => sockets.push((family, socket)),
                Err(e) => {
                    tracing::debug!(?family, error = %e, "mDNS over this family is not available");
                    first_error.get_or_insert(e);
                }
            }
        }
        if sockets.is_empty() {
            return Err(first_error.unwrap_or(Error::NoMulticast {
                tried: "none".into(),
            }));
        }
        tracing::info!(
            instance = %records.instance,
            interfaces = %links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", "),
            "advertising over mDNS"
        );
        let shared = Arc::new(Shared {
            sockets,
            responder: Mutex::new(Responder::new(records, links, Instant::now())),
        });
        let task = tokio::spawn(run(shared.clone()));
        Ok(Advertisement { shared, task })
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        // The task runs on this thread (the server's one runtime thread), so after abort it
        // is never polled again and the goodbye below is the last thing sent.
        self.task.abort();
        let families = self.shared.families();
        let now = Instant::now();
        if let Some(goodbye) = self
            .shared
            .with(|r| r.everything(&families, Mode::Goodbye, now))
        {
            self.shared.send(goodbye);
        }
        if let Some(c) = self.shared.with(|r| r.counters) {
            tracing::info!(
                queries = c.queries,
                answered = c.answered,
                held_back = c.held_back,
                responses_ignored = c.responses_ignored,
                malformed = c.malformed,
                "mDNS advertisement withdrawn (goodbye sent)"
            );
        }
    }
}

/// The responder's task: announce, then answer, until aborted.
async fn run(shared: Arc<Shared>) {
    let socket = |family| {
        shared
            .sockets
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, s)| s)
    };
    let (v4, v6) = (socket(Family::V4), socket(Family::V6));
    let families = shared.families();
    let (mut buf_v4, mut buf_v6) = (vec![0u8; wire::MAX_PACKET], vec![0u8; wire::MAX_PACKET]);
    let start = tokio::time::Instant::now();
    let mut announcements = ANNOUNCEMENTS.iter().map(|at| start + *at);
    let mut next_announcement = announcements.next();
    loop {
        let (family, received) = tokio::select! {
            received = links::receive(v4, &mut buf_v4) => (Family::V4, received),
            received = links::receive(v6, &mut buf_v6) => (Family::V6, received),
            () = async {
                match next_announcement {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                if let Some(announcement) = shared.with(|r| r.everything(&families, Mode::Multicast, now)) {
                    shared.send(announcement);
                }
                next_announcement = announcements.next();
                continue;
            }
        };
        match received {
            Ok((len, from)) => {
                let buf = if family == Family::V4 {
                    &buf_v4
                } else {
                    &buf_v6
                };
                let now = Instant::now();
                if let Some(outgoing) = shared.with(|r| r.receive(family, &buf[..len], from, now)) {
                    shared.send(outgoing);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "mDNS receive failed");
                tokio::time::sleep(links::RECEIVE_ERROR_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::mdns::browser::Browser;
    use rand::{Rng, SeedableRng};

    const VERSION: &str = "1.2.3";
    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn link() -> Link {
        Link {
            name: "eth0".into(),
            index: 2,
            v4: vec![(
                "192.168.1.20".parse().unwrap(),
                "255.255.255.0".parse().unwrap(),
            )],
            v6: vec![("fe80::20".parse().unwrap(), 64)],
        }
    }

    fn responder(now: Instant) -> Responder {
        let records = Records::new("box", 4433, VERSION, Some(FINGERPRINT)).unwrap();
        Responder::new(records, vec![link()], now)
    }

    const PEER: &str = "192.168.1.7:5353";

    /// A query with `questions` and `known` answers.
    fn query(questions: &[(&str, TYPE)], known: Vec<ResourceRecord<'static>>) -> Vec<u8> {
        let names: Vec<Name<'static>> = questions
            .iter()
            .map(|(name, _)| wire::name(&name.split('.').collect::<Vec<_>>()).unwrap())
            .collect();
        let mut packet = Packet::new_query(7);
        for (name, (_, t)) in names.iter().zip(questions) {
            packet.questions.push(Question::new(
                name.clone(),
                QTYPE::TYPE(*t),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
        packet.answers = known;
        packet.build_bytes_vec_compressed().unwrap()
    }

    fn service_query() -> Vec<u8> {
        query(&[("_openwork._tcp.local", TYPE::PTR)], Vec::new())
    }

    #[test]
    fn a_query_for_the_service_gets_the_instance_its_srv_txt_and_addresses() {
        let now = Instant::now();
        let mut r = responder(now);
        let out = r.receive(Family::V4, &service_query(), PEER.parse().unwrap(), now);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, Destination::Group(Family::V4, 0));
        let packet = Packet::parse(&out[0].1).unwrap();
        assert!(packet.has_flags(PacketFlag::RESPONSE | PacketFlag::AUTHORITATIVE_ANSWER));
        assert_eq!(
            packet.id(),
            0,
            "multicast responses carry id 0 (RFC 6762 §18.1)"
        );
        assert_eq!(packet.answers.len(), 1);
        let RData::PTR(PTR(instance)) = &packet.answers[0].rdata else {
            panic!("{:?}", packet.answers);
        };
        assert_eq!(
            instance.to_string(),
            "openwork-server-v2 on box (4433)._openwork._tcp.local"
        );
        let types: Vec<TYPE> = packet
            .additional_records
            .iter()
            .map(|rr| rr.rdata.type_code())
            .collect();
        assert_eq!(types, [TYPE::SRV, TYPE::TXT, TYPE::A, TYPE::AAAA]);
        let txt = packet
            .additional_records
            .iter()
            .find_map(|rr| match &rr.rdata {
                RData::TXT(txt) => Some(txt.clone()),
                _ => None,
            })
            .unwrap();
        let strings: Vec<String> = txt
            .iter_raw()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v.unwrap())
                )
            })
            .collect();
        assert_eq!(strings, ["version=1.2.3", "tls=1", "fp=0123456789abcdef"]);
        // Unique records say so; the shared PTR does not.
        assert!(!packet.answers[0].cache_flush);
        assert!(packet.additional_records.iter().all(|rr| rr.cache_flush));
    }

    #[test]
    fn responses_from_the_lan_are_not_read_and_change_nothing() {
        let now = Instant::now();
        let mut r = responder(now);
        let before = format!("{r:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..2_000 {
            let response = flood_response(&mut rng);
            assert!(
                r.receive(Family::V4, &response, PEER.parse().unwrap(), now)
                    .is_empty()
            );
        }
        let counters = r.counters;
        r.counters = Counters::default();
        assert_eq!(
            format!("{r:?}"),
            before,
            "the responder keeps nothing it is sent"
        );
        assert_eq!(counters.responses_ignored, 2_000);
        assert_eq!(counters.queries, 0);
    }

    /// A response like the LAN attack's: no PTR, A/AAAA/TXT/SRV records with random names
    /// and long TTLs, about 1.3 KB.
    fn flood_response(rng: &mut impl Rng) -> Vec<u8> {
        let mut packet = Packet::new_reply(0);
        let names: Vec<String> = (0..8)
            .map(|_| format!("h{:016x}", rng.random::<u64>()))
            .collect();
        let txt: String = (0..200).map(|_| rng.random_range('a'..='z')).collect();
        for name in &names {
            let name = wire::name(&[name.as_str(), "local"]).unwrap();
            let ttl = 86_400 * 7;
            let rdata = match rng.random_range(0..4) {
                0 => RData::A(A::from(std::net::Ipv4Addr::from(rng.random::<u32>()))),
                1 => RData::AAAA(AAAA::from(std::net::Ipv6Addr::from(rng.random::<u128>()))),
                2 => RData::TXT(TXT::new().with_string(&txt).unwrap().into_owned()),
                _ => RData::SRV(SRV {
                    priority: 0,
                    weight: 0,
                    port: 1,
                    target: name.clone(),
                }),
            };
            packet
                .answers
                .push(ResourceRecord::new(name, CLASS::IN, ttl, rdata));
        }
        packet.build_bytes_vec().unwrap()
    }

    #[test]
    fn each_record_is_multicast_at_most_once_a_second_per_link() {
        let start = Instant::now();
        let mut r = responder(start);
        let from = PEER.parse().unwrap();
        let mut sent = 0;
        // 1,000 queries a second for 3 seconds.
        for i in 0..3_000u64 {
            let now = start + Duration::from_millis(i);
            sent += r.receive(Family::V4, &service_query(), from, now).len();
        }
        assert_eq!(sent, 3, "one answer a second");
        assert_eq!(r.counters.held_back, 2_997);
        // Each record has its own limit: the service list went out never, the SRV (as an
        // additional record of the last answer) 999 ms ago.
        let now = start + Duration::from_millis(2_999);
        let meta = query(&[("_services._dns-sd._udp.local", TYPE::PTR)], Vec::new());
        assert_eq!(r.receive(Family::V4, &meta, from, now).len(), 1);
        let srv = query(
            &[(
                "openwork-server-v2 on box (4433)._openwork._tcp.local",
                TYPE::SRV,
            )],
            Vec::new(),
        );
        assert!(r.receive(Family::V4, &srv, from, now).is_empty());
        let out = r.receive(Family::V4, &srv, from, now + Duration::from_millis(1));
        let packet = Packet::parse(&out[0].1).unwrap();
        assert_eq!(packet.answers[0].rdata.type_code(), TYPE::SRV);
    }

    #[test]
    fn legacy_unicast_queries_get_unicast_answers_within_the_budget() {
        let start = Instant::now();
        let mut r = responder(start);
        let from: SocketAddr = "192.168.1.7:40000".parse().unwrap();
        let out: Vec<_> = (0..100)
            .flat_map(|_| r.receive(Family::V4, &service_query(), from, start))
            .collect();
        assert_eq!(out.len(), UNICAST_ANSWERS_PER_SECOND as usize);
        assert_eq!(out[0].0, Destination::Unicast(from));
        let packet = Packet::parse(&out[0].1).unwrap();
        assert_eq!(packet.id(), 7, "the query's id");
        assert_eq!(packet.questions.len(), 1, "the question repeated");
        let all = packet.answers.iter().chain(&packet.additional_records);
        assert!(
            all.clone()
                .all(|rr| rr.ttl <= LEGACY_TTL && !rr.cache_flush)
        );
        // The next second has a new budget.
        let later = start + Duration::from_secs(1);
        assert_eq!(
            r.receive(Family::V4, &service_query(), from, later).len(),
            1
        );
    }

    #[test]
    fn a_known_answer_with_half_its_ttl_left_is_not_repeated() {
        let now = Instant::now();
        let records = Records::new("box", 4433, VERSION, None).unwrap();
        let known = |ttl| {
            vec![ResourceRecord::new(
                records.service.clone(),
                CLASS::IN,
                ttl,
                RData::PTR(PTR(records.instance.clone())),
            )]
        };
        let question = [("_openwork._tcp.local", TYPE::PTR)];
        let from = PEER.parse().unwrap();
        assert!(
            responder(now)
                .receive(Family::V4, &query(&question, known(OTHER_TTL)), from, now)
                .is_empty()
        );
        assert_eq!(
            responder(now)
                .receive(Family::V4, &query(&question, known(10)), from, now)
                .len(),
            1
        );
    }

    #[test]
    fn questions_about_the_host_and_the_service_list_are_answered() {
        let now = Instant::now();
        let from = PEER.parse().unwrap();
        let answer = |question: (&str, TYPE)| -> Vec<TYPE> {
            let out =
                responder(now).receive(Family::V4, &query(&[question], Vec::new()), from, now);
            out.iter()
                .flat_map(|(_, bytes)| {
                    Packet::parse(bytes)
                        .unwrap()
                        .answers
                        .into_iter()
                        .map(|rr| rr.rdata.type_code())
                })
                .collect()
        };
        assert_eq!(answer(("box.local", TYPE::A)), [TYPE::A]);
        assert_eq!(
            answer(("BOX.local", TYPE::AAAA)),
            [TYPE::AAAA],
            "names compare without case"
        );
        assert_eq!(
            answer(("_services._dns-sd._udp.local", TYPE::PTR)),
            [TYPE::PTR]
        );
        assert!(answer(("other.local", TYPE::A)).is_empty());
        assert!(answer(("_http._tcp.local", TYPE::PTR)).is_empty());
    }

    #[test]
    fn a_query_from_another_subnet_is_answered_on_every_link_and_one_from_ours_on_its_own() {
        let now = Instant::now();
        let records = Records::new("box", 4433, VERSION, None).unwrap();
        let mut other = link();
        other.name = "wlan0".into();
        other.index = 3;
        other.v4 = vec![("10.0.0.5".parse().unwrap(), "255.0.0.0".parse().unwrap())];
        let mut r = Responder::new(records, vec![link(), other], now);
        let ours = r.receive(
            Family::V4,
            &service_query(),
            "10.1.2.3:5353".parse().unwrap(),
            now,
        );
        assert_eq!(
            ours.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
            [Destination::Group(Family::V4, 1)]
        );
        let packet = Packet::parse(&ours[0].1).unwrap();
        let a: Vec<_> = packet
            .additional_records
            .iter()
            .filter(|rr| rr.rdata.type_code() == TYPE::A)
            .collect();
        assert!(
            matches!(&a[..], [rr] if rr.rdata == RData::A(A::from("10.0.0.5".parse::<std::net::Ipv4Addr>().unwrap()))),
            "that link's address only"
        );
        let stranger = r.receive(
            Family::V4,
            &service_query(),
            "172.16.0.1:5353".parse().unwrap(),
            now,
        );
        assert_eq!(
            stranger.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
            [Destination::Group(Family::V4, 0)],
            "link 1 answered < 1 s ago"
        );
    }

    #[test]
    fn the_announcement_resolves_in_a_browser_and_the_goodbye_withdraws_it() {
        let now = Instant::now();
        let mut r = responder(now);
        let from: SocketAddr = "192.168.1.20:5353".parse().unwrap();
        let mut browser = Browser::default();
        let announcement = r.everything(&[Family::V4], Mode::Multicast, now);
        assert_eq!(announcement.len(), 1);
        browser.absorb(&announcement[0].1, from);
        let found = browser.found();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "openwork-server-v2 on box (4433)");
        assert_eq!(found[0].host, "box.local.");
        assert_eq!(found[0].port, 4433);
        assert_eq!(found[0].version.as_deref(), Some(VERSION));
        assert!(found[0].tls);
        assert_eq!(
            found[0].fingerprint_prefix.as_deref(),
            Some(&FINGERPRINT[..16])
        );
        assert_eq!(
            found[0].addresses,
            [
                "192.168.1.20".parse::<IpAddr>().unwrap(),
                "fe80::20".parse().unwrap()
            ]
        );
        // Announcing counts as sending: a query right after it waits for the second.
        assert!(
            r.receive(Family::V4, &service_query(), PEER.parse().unwrap(), now)
                .is_empty()
        );

        let goodbye = r.everything(&[Family::V4], Mode::Goodbye, now);
        let packet = Packet::parse(&goodbye[0].1).unwrap();
        assert!(packet.answers.iter().all(|rr| rr.ttl == 0));
        assert_eq!(packet.answers.len(), 5, "PTR, SRV, TXT, A, AAAA");
        browser.absorb(&goodbye[0].1, from);
        assert!(browser.found().is_empty());
    }

    #[test]
    fn a_long_host_name_is_shortened_to_fit_the_instance_label_and_the_port_kept() {
        let host = "h".repeat(63);
        let label = instance_label(&host, 65535);
        assert_eq!(label.len(), 63);
        assert!(label.ends_with("h (65535)"), "{label}");
        assert!(Records::new(&host, 65535, VERSION, None).is_some());
        assert_eq!(instance_label("box", 1), "openwork-server-v2 on box (1)");
    }

    /// Hostile bytes: valid packets of both kinds cut, bit-flipped, spliced and filled with
    /// compression pointers, and plain noise. Neither side may panic (an abort in release)
    /// or keep anything outside its budget.
    #[test]
    fn hostile_packets_never_panic_either_side() {
        let now = Instant::now();
        let mut r = responder(now);
        let mut browser = Browser::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(24);
        let from: SocketAddr = PEER.parse().unwrap();
        let mut seeds = vec![service_query(), flood_response(&mut rng)];
        seeds.extend(
            r.everything(&[Family::V4], Mode::Multicast, now)
                .into_iter()
                .map(|(_, b)| b),
        );
        for round in 0..200_000 {
            let mut packet = seeds[round % seeds.len()].clone();
            match rng.random_range(0..5) {
                0 => packet.truncate(rng.random_range(0..=packet.len())),
                1 => {
                    for _ in 0..rng.random_range(1..8) {
                        let at = rng.random_range(0..packet.len());
                        packet[at] ^= 1 << rng.random_range(0..8);
                    }
                }
                2 => {
                    // Compression pointers anywhere, forwards and backwards and at themselves.
                    for _ in 0..rng.random_range(1..6) {
                        let at = rng.random_range(12..packet.len() - 1);
                        let to = rng.random_range(0..packet.len()) as u16;
                        packet[at..at + 2].copy_from_slice(&(0xc000 | to).to_be_bytes());
                    }
                }
                3 => {
                    // Counts that lie.
                    let at = rng.random_range(4..12);
                    packet[at] = rng.random();
                }
                _ => {
                    packet = (0..rng.random_range(0..600))
                        .map(|_| rng.random())
                        .collect();
                    if packet.len() > 2 {
                        packet[2] &= 0x87;
                    }
                }
            }
            let _ = r.receive(
                Family::V4,
                &packet,
                from,
                now + Duration::from_secs(round as u64),
            );
            browser.absorb(&packet, from);
        }
        assert!(browser.instances_heard() <= super::super::browser::MAX_INSTANCES);
    }
}
