//! Connection standing and limits: how many connections are served at once, which one
//! makes room for a newcomer, and the failure counts the health panel shows. The accept
//! loop that applies them is [`super::server`]; the API marks a connection authenticated
//! through its [`ConnectionTicket`].
//!
//! Why connections are bounded this way:
//!
//! - **Every connection costs a descriptor** (two while proxied or upgraded), and a server
//!   that runs out cannot connect to opencode for its health checks or start it again. The
//!   bound ([`ConnectionLimits::for_open_file_limit`]) leaves descriptors in reserve for
//!   those.
//! - **Anyone on the machine (or, with remote access, the LAN) can connect; only token
//!   holders should be able to stay.** A connection counts as *unauthenticated* until one of
//!   its requests carries a valid token. When the bound is reached, a newcomer takes the
//!   place of an unauthenticated connection, whatever it is doing: silent, halfway through a
//!   TLS handshake, idle between requests, or in the middle of a request whose body never
//!   comes (an attacker's favourite: a complete `POST` head and no body). The order is
//!   the address holding the most first (a peer that floods evicts itself, never someone
//!   on another address), then [`Standing`]'s, then the oldest.
//! - **Everyone gets a moment.** A connection that has sent something is not evicted
//!   before it is [`ConnectionLimits::tenure`] old: time enough for a real client to finish a
//!   TLS handshake and a request, even over Wi-Fi; one that has sent nothing yet gets
//!   [`ConnectionLimits::silent_grace`], time enough for the first bytes that follow the TCP
//!   handshake. When every place is held by such a young connection, the accept loop waits
//!   ([`Connections::admit`]) and newcomers queue in the kernel's backlog, first come first
//!   served, instead of being accepted and dropped. A flood then costs a real client some
//!   latency, never its connection: without these moments, a flood that reconnects as fast
//!   as it is evicted churned through every place faster than a TLS client could finish its
//!   handshake (17-20 % of new connections failed), and evicted a client accepted a moment
//!   before its first bytes arrived.
//! - **Upgraded connections (WebSockets) keep their place**, for as long as they live (they
//!   hold two descriptors each, like a proxied request), and at most
//!   [`ConnectionLimits::max_upgraded`] of them exist at once, so the rest is always there
//!   for ordinary requests.
//! - **Only when nothing unauthenticated is left** does an authenticated connection with
//!   nothing in progress (an idle keep-alive connection) make room; one with a request or a
//!   response under way (an event stream) never does.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Descriptors kept free for what the server itself needs while connections come and go:
/// health probes, sidecar spawns (three pipes each), log files, the run record and leases.
const RESERVED_DESCRIPTORS: u64 = 64;
/// More connections than this are never needed by a desktop server's clients.
const MAX_CONNECTIONS: usize = 4096;
/// Fewer than this would leave too little for a real client's parallel requests.
const MIN_CONNECTIONS: usize = 16;
/// A connection that has spoken keeps its place at least this long: a TLS 1.3 handshake and
/// a request are two round trips, under 100 ms on a home network; 250 ms leaves room for a
/// slow Wi-Fi while bounding what a flood costs a client waiting in the backlog (the bound
/// divided by this many admissions a second: 96 places, 384 a second).
const TENURE: Duration = Duration::from_millis(250);
/// A connection that has not spoken yet keeps its place this long. A client sends its first
/// bytes together with the last packet of the TCP handshake, but the server may accept the
/// connection a moment before they arrive: evicting it as silent then (as the first version
/// did) threw out exactly the newest real client whenever a flood reconnected faster than
/// clients spoke.
const SILENT_GRACE: Duration = Duration::from_millis(50);

/// How many connections are served at once, and how long unauthenticated ones may idle.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Upgraded connections (WebSockets) at most, out of `max_connections`.
    pub max_upgraded: usize,
    /// An unauthenticated connection with no request in progress is closed after this long,
    /// and so is a TLS handshake that has not finished.
    pub unauthenticated_idle: Duration,
    /// A connection that has sent something is not evicted younger than this.
    pub tenure: Duration,
    /// A connection that has sent nothing is not evicted younger than this.
    pub silent_grace: Duration,
}

impl ConnectionLimits {
    /// Limits for a process that may have `open_files` descriptors (`None`: no such limit
    /// is known, as on Windows): each connection may need two (client and upstream), and
    /// [`RESERVED_DESCRIPTORS`] stay free. Half the connections may be upgraded.
    pub fn for_open_file_limit(open_files: Option<u64>) -> ConnectionLimits {
        let max_connections = match open_files {
            Some(limit) => {
                let usable = limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
                usize::try_from(usable)
                    .unwrap_or(MAX_CONNECTIONS)
                    .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
            }
            None => MAX_CONNECTIONS,
        };
        ConnectionLimits {
            max_connections,
            max_upgraded: max_connections / 2,
            unauthenticated_idle: Duration::from_secs(10),
            tenure: TENURE,
            silent_grace: SILENT_GRACE,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::for_open_file_limit(None)
    }
}

/// Where an unauthenticated connection stands when room is needed: the earlier, the sooner
/// it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    /// Has never sent a byte: a real client sends its request (or TLS hello) as soon as it
    /// connects; a flood holds connections open and silent.
    Silent,
    /// Halfway through a TLS handshake, for longer than the tenure.
    Handshaking,
    /// Between requests.
    Idle,
    /// In the middle of a request (its head read, its body perhaps never coming).
    InRequest,
}

/// One connection's standing, shared between the accept loop and its requests (a request
/// finds it in its extensions). The API marks it authenticated when a request's token is
/// valid. The connection keeps its place among the open ones for as long as anything holds
/// its ticket: its connection task, and, once upgraded, the task that copies its bytes.
#[derive(Debug)]
pub struct ConnectionTicket {
    pub(super) id: u64,
    /// The peer's address (an IPv6 one reduced to its /64: one host has them all).
    source: IpAddr,
    accepted: Instant,
    authenticated: AtomicBool,
    /// Requests whose response has not ended yet (a streamed body counts until its end).
    busy: AtomicUsize,
    /// Whether the client has sent a byte yet.
    pub(super) spoken: AtomicBool,
    /// A TLS handshake is under way.
    pub(super) handshaking: AtomicBool,
    /// Upgraded (or upgrading) to another protocol: counted against the upgrade bound.
    upgraded: AtomicBool,
    /// When the last response ended (or the connection was accepted) while idle; when the
    /// oldest request under way began while busy.
    idle_since: Mutex<Instant>,
    pub(super) evict: Notify,
    connections: Weak<Connections>,
}

impl ConnectionTicket {
    /// A request on this connection carried a valid token: it may stay.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// Closes the connection now, whatever it is doing (a revoked device's token was used
    /// on it).
    pub fn close(&self) {
        self.evict.notify_one();
    }

    /// Reserves one of the places for upgraded connections, for this connection: `None`
    /// when they are all taken. The reservation holds the connection's place until it is
    /// dropped, so the task that copies an upgraded connection's bytes keeps it.
    pub fn reserve_upgrade(self: &Arc<Self>) -> Option<UpgradeReservation> {
        let connections = self.connections.upgrade()?;
        let taken = connections
            .upgraded
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < connections.limits.max_upgraded).then_some(n + 1)
            });
        taken.ok()?;
        self.upgraded.store(true, Ordering::Relaxed);
        Some(UpgradeReservation {
            _reserved: Arc::new(Reserved {
                ticket: self.clone(),
                connections,
            }),
        })
    }

    pub(super) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    fn has_spoken(&self) -> bool {
        self.spoken.load(Ordering::Relaxed)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    /// How long it has been idle (with nothing under way), or busy (with a request under
    /// way), whichever it is now.
    pub(super) fn idle_for(&self) -> Duration {
        self.since().elapsed()
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request was read: the connection is busy until its response ends.
    pub(super) fn begin(&self) {
        let mut since = self.since();
        if self.busy.fetch_add(1, Ordering::Relaxed) == 0 {
            *since = Instant::now();
        }
    }

    /// A response ended (its last byte was handed to the connection, or it was dropped).
    pub(super) fn end(&self) {
        let mut since = self.since();
        if self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            *since = Instant::now();
        }
    }

    /// Where it stands when room is needed at `now`: an error while it may not be evicted
    /// (authenticated, upgraded: `None`; within its tenure or grace: when that ends).
    fn standing(
        &self,
        now: Instant,
        limits: &ConnectionLimits,
    ) -> Result<Standing, Option<Instant>> {
        if self.is_authenticated() || self.upgraded.load(Ordering::Relaxed) {
            return Err(None);
        }
        let spoken = self.has_spoken();
        let protected_until = self.accepted
            + if spoken {
                limits.tenure
            } else {
                limits.silent_grace
            };
        if now < protected_until {
            return Err(Some(protected_until));
        }
        if !spoken {
            return Ok(Standing::Silent);
        }
        Ok(if self.handshaking.load(Ordering::Relaxed) {
            Standing::Handshaking
        } else if self.is_idle() {
            Standing::Idle
        } else {
            Standing::InRequest
        })
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            connections.remove(self.id);
        }
    }
}

/// One of the places for upgraded connections, and the connection's place, held until
/// the last clone is dropped (see [`ConnectionTicket::reserve_upgrade`]). Clones share one
/// reservation (a request's extensions must be `Clone`).
#[derive(Debug, Clone)]
pub struct UpgradeReservation {
    _reserved: Arc<Reserved>,
}

#[derive(Debug)]
struct Reserved {
    ticket: Arc<ConnectionTicket>,
    connections: Arc<Connections>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.ticket.upgraded.store(false, Ordering::Relaxed);
        self.connections.upgraded.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a newcomer can be admitted now.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// Yes: a place is free, or this connection gives up its own.
    Yes(Option<u64>),
    /// Not before this time, when a young connection's tenure ends (or one closes).
    Wait(Instant),
    /// No: every place is held by a connection that may stay.
    No,
}

/// The open connections, oldest first (tickets are held weakly: a connection's place is
/// freed when its ticket is dropped).
#[derive(Debug)]
pub(super) struct Connections {
    limits: ConnectionLimits,
    open: Mutex<(u64, BTreeMap<u64, Weak<ConnectionTicket>>)>,
    /// Upgraded connections now.
    upgraded: AtomicUsize,
    /// Told when a connection closes.
    freed: Notify,
}

impl Connections {
    /// No connections yet, bounded by `limits`.
    pub(super) fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            open: Mutex::new((0, BTreeMap::new())),
            upgraded: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// A ticket for a new connection from `peer`, once there is room for it: a place is
    /// free, or an unauthenticated connection makes room (it is told to close). While young
    /// connections hold every place this waits, and since the accept loop waits with it,
    /// newcomers queue in the kernel's backlog, first come first served. `None` when no
    /// place can be made until a connection closes on its own (every one may stay): the
    /// newcomer is refused.
    pub(super) async fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Arc<ConnectionTicket>> {
        loop {
            let freed = self.freed.notified();
            match self.try_admit(peer) {
                Ok(ticket) => return Some(ticket),
                Err(None) => return None,
                Err(Some(until)) => {
                    tokio::select! {
                        () = freed => {}
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
            }
        }
    }

    /// [`Connections::admit`] now: the ticket, or when to try again (`None`: not before a
    /// connection closes on its own).
    pub(super) fn try_admit(
        self: &Arc<Self>,
        peer: IpAddr,
    ) -> Result<Arc<ConnectionTicket>, Option<Instant>> {
        let now = Instant::now();
        match self.room(now) {
            Room::Yes(Some(victim)) => {
                // Upgraded (and perhaps dropped, which removes it again) outside the lock.
                let evicted = self.lock().1.remove(&victim);
                if let Some(ticket) = evicted.and_then(|t| t.upgrade()) {
                    ticket.evict.notify_one();
                }
            }
            Room::Yes(None) => {}
            Room::Wait(until) => return Err(Some(until)),
            Room::No => return Err(None),
        }
        let mut open = self.lock();
        let (next_id, tickets) = &mut *open;
        *next_id += 1;
        let ticket = Arc::new(ConnectionTicket {
            id: *next_id,
            source: source_of(peer),
            accepted: now,
            authenticated: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            spoken: AtomicBool::new(false),
            handshaking: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            idle_since: Mutex::new(now),
            evict: Notify::new(),
            connections: Arc::downgrade(self),
        });
        tickets.insert(ticket.id, Arc::downgrade(&ticket));
        Ok(ticket)
    }

    /// Whether there is room at `now`, and whose place it is.
    fn room(&self, now: Instant) -> Room {
        // The tickets are upgraded under the lock and looked at (and dropped, which may
        // remove one) outside it.
        let live: Vec<Arc<ConnectionTicket>> = {
            let open = self.lock();
            if open.1.len() < self.limits.max_connections {
                return Room::Yes(None);
            }
            open.1.values().filter_map(Weak::upgrade).collect()
        };
        if live.len() < self.limits.max_connections {
            // Some are closing (their tickets are being dropped): room in a moment.
            return Room::Yes(None);
        }
        // Unauthenticated connections per source. Room is made from the source that holds
        // the most: its own connections go, and while they are all young the newcomer waits
        // rather than take the place of a lighter source's (a client on another address
        // than a flood's is never evicted to make room for the flood).
        let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
        for ticket in live.iter().filter(|t| !t.is_authenticated()) {
            *per_source.entry(ticket.source).or_default() += 1;
        }
        let heaviest = per_source.values().copied().max().unwrap_or(0);
        let mut victim: Option<((Standing, Instant), u64)> = None;
        let mut earliest_end: Option<Instant> = None;
        for ticket in &live {
            if per_source.get(&ticket.source) != Some(&heaviest) {
                continue;
            }
            match ticket.standing(now, &self.limits) {
                Ok(standing) => {
                    let key = (standing, ticket.accepted);
                    if victim.as_ref().is_none_or(|(best, _)| key < *best) {
                        victim = Some((key, ticket.id));
                    }
                }
                Err(Some(ends)) => {
                    earliest_end = Some(earliest_end.map_or(ends, |e| e.min(ends)));
                }
                Err(None) => {}
            }
        }
        if let Some((_, id)) = victim {
            return Room::Yes(Some(id));
        }
        if let Some(until) = earliest_end {
            return Room::Wait(until);
        }
        // Only connections that may stay: an authenticated one with nothing under way (an
        // idle keep-alive connection, the longest idle first) makes room; else none does.
        live.iter()
            .filter(|t| t.is_authenticated() && t.is_idle() && !t.upgraded.load(Ordering::Relaxed))
            .max_by_key(|t| t.idle_for())
            .map_or(Room::No, |t| Room::Yes(Some(t.id)))
    }

    fn remove(&self, id: u64) {
        self.lock().1.remove(&id);
        self.freed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Weak<ConnectionTicket>>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address a connection is counted against: an IPv4 address, or an IPv6 /64 (a host is
/// given a whole /64 and picks addresses in it at will).
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

/// Connection failures since the start, for the health panel (`GET /system/health`).
#[derive(Debug, Default)]
pub struct FailureCounts {
    /// TLS handshakes that failed or did not finish.
    pub tls_handshake: AtomicU64,
    /// Requests refused with 401 (no token, or a wrong or revoked one).
    pub unauthorized: AtomicU64,
    /// Pairing attempts refused (wrong, expired or used codes).
    pub pairing_refused: AtomicU64,
    /// Connections refused because every slot was busy or authenticated.
    pub refused_connections: AtomicU64,
    /// What is logged of the refusals: a few lines a second per kind, the rest counted.
    pub log: super::log_limit::LogLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn connections(max: usize) -> Arc<Connections> {
        Connections::new(ConnectionLimits {
            max_connections: max,
            max_upgraded: max / 2,
            unauthenticated_idle: Duration::from_secs(10),
            tenure: Duration::ZERO,
            silent_grace: Duration::ZERO,
        })
    }

    fn ids(connections: &Connections) -> Vec<u64> {
        connections.lock().1.keys().copied().collect()
    }

    fn spoken(ticket: &ConnectionTicket) {
        ticket.spoken.store(true, Ordering::Relaxed);
    }

    #[test]
    fn limits_leave_descriptors_in_reserve() {
        let at_256 = ConnectionLimits::for_open_file_limit(Some(256));
        assert_eq!(at_256.max_connections, 96);
        assert_eq!(at_256.max_upgraded, 48);
        assert_eq!(
            ConnectionLimits::for_open_file_limit(Some(70)).max_connections,
            MIN_CONNECTIONS
        );
        assert_eq!(
            ConnectionLimits::for_open_file_limit(Some(1 << 20)).max_connections,
            MAX_CONNECTIONS
        );
    }

    #[test]
    fn a_full_house_evicts_unauthenticated_connections_whatever_they_are_doing() {
        let connections = connections(3);
        let authenticated = connections.try_admit(LOCAL).unwrap();
        authenticated.authenticated();
        authenticated.begin();
        // A request in progress without a token (a head, and a body that never comes) is
        // no protection.
        let stalled = connections.try_admit(LOCAL).unwrap();
        spoken(&stalled);
        stalled.begin();
        let idle = connections.try_admit(LOCAL).unwrap();
        spoken(&idle);
        let newcomer = connections.try_admit(LOCAL).expect("room made");
        spoken(&newcomer);
        assert_eq!(
            ids(&connections),
            vec![authenticated.id, stalled.id, newcomer.id],
            "the idle one went before the one in a request"
        );
        {
            let told = idle.evict.notified();
            tokio::pin!(told);
            assert!(told.as_mut().enable(), "the evicted one is told to close");
        }

        let next = connections.try_admit(LOCAL).expect("room made");
        assert_eq!(
            ids(&connections),
            vec![authenticated.id, stalled.id, next.id],
            "then the oldest idle one, before the one in a request"
        );
        spoken(&next);
        next.begin();
        let last = connections.try_admit(LOCAL).expect("room made");
        assert_eq!(
            ids(&connections),
            vec![authenticated.id, next.id, last.id],
            "then the oldest request without a token"
        );
        drop((stalled, idle, newcomer));
    }

    #[test]
    fn a_silent_connection_goes_first_then_a_stuck_handshake_then_an_idle_one() {
        let connections = connections(3);
        let handshaking = connections.try_admit(LOCAL).unwrap();
        spoken(&handshaking);
        handshaking.handshaking.store(true, Ordering::Relaxed);
        let idle = connections.try_admit(LOCAL).unwrap();
        spoken(&idle);
        let silent = connections.try_admit(LOCAL).unwrap();
        let first = connections.try_admit(LOCAL).unwrap();
        spoken(&first);
        assert!(
            !ids(&connections).contains(&silent.id),
            "the silent one went first"
        );
        let second = connections.try_admit(LOCAL).unwrap();
        spoken(&second);
        assert!(
            !ids(&connections).contains(&handshaking.id),
            "then the stuck handshake"
        );
        let _third = connections.try_admit(LOCAL).unwrap();
        assert!(!ids(&connections).contains(&idle.id), "then the idle one");
        drop((first, second));
    }

    #[test]
    fn the_address_holding_the_most_makes_room_first() {
        let connections = connections(4);
        let flood: IpAddr = "192.0.2.66".parse().unwrap();
        let client = connections.try_admit(LOCAL).unwrap();
        spoken(&client);
        // The client's request is under way (the flood's are not): still the flood goes.
        client.begin();
        let floods: Vec<_> = (0..3)
            .map(|_| {
                let t = connections.try_admit(flood).unwrap();
                spoken(&t);
                t
            })
            .collect();
        for _ in 0..5 {
            let newcomer = connections.try_admit(flood).unwrap();
            spoken(&newcomer);
            assert!(ids(&connections).contains(&client.id));
        }
        drop(floods);
    }

    #[test]
    fn while_a_floods_connections_are_young_a_newcomer_waits_rather_than_evict_another_address() {
        let connections = Connections::new(ConnectionLimits {
            max_connections: 3,
            max_upgraded: 1,
            unauthenticated_idle: Duration::from_secs(10),
            tenure: Duration::from_secs(60),
            silent_grace: Duration::from_secs(60),
        });
        let flood: IpAddr = "192.0.2.66".parse().unwrap();
        let client = connections.try_admit(LOCAL).unwrap();
        spoken(&client);
        let floods: Vec<_> = (0..2)
            .map(|_| connections.try_admit(flood).unwrap())
            .collect();
        // The client is past its tenure an hour from now, and so are the flood's; until
        // then the newcomer waits, even though the client is the oldest.
        assert!(matches!(connections.room(Instant::now()), Room::Wait(_)));
        let later = Instant::now() + Duration::from_secs(3600);
        match connections.room(later) {
            Room::Yes(Some(id)) => assert!(floods.iter().any(|f| f.id == id)),
            other => panic!("the flood makes room, not {other:?}"),
        }
    }

    #[test]
    fn an_ipv6_host_is_one_source_for_its_whole_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_of(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn young_connections_that_have_spoken_keep_their_place_and_newcomers_wait() {
        let connections = Connections::new(ConnectionLimits {
            max_connections: 2,
            max_upgraded: 1,
            unauthenticated_idle: Duration::from_secs(10),
            tenure: Duration::from_secs(60),
            silent_grace: Duration::from_millis(50),
        });
        let a = connections.try_admit(LOCAL).unwrap();
        spoken(&a);
        let b = connections.try_admit(LOCAL).unwrap();
        spoken(&b);
        match connections.room(Instant::now()) {
            Room::Wait(until) => assert!(until > Instant::now() + Duration::from_secs(50)),
            other => panic!("expected to wait, got {other:?}"),
        }
        assert!(connections.try_admit(LOCAL).is_err());
        // A silent one only has a short grace: the moment its first bytes may take to
        // follow the handshake.
        drop(b);
        let silent = connections.try_admit(LOCAL).unwrap();
        assert!(matches!(connections.room(Instant::now()), Room::Wait(_)));
        assert_eq!(
            connections.room(Instant::now() + Duration::from_millis(60)),
            Room::Yes(Some(silent.id))
        );
        drop(a);
    }

    #[test]
    fn only_authenticated_idle_connections_make_room_when_nothing_else_can() {
        let connections = connections(2);
        let streaming = connections.try_admit(LOCAL).unwrap();
        streaming.authenticated();
        streaming.begin();
        let idle = connections.try_admit(LOCAL).unwrap();
        idle.authenticated();
        assert_eq!(connections.room(Instant::now()), Room::Yes(Some(idle.id)));
        idle.begin();
        assert_eq!(connections.room(Instant::now()), Room::No);
        drop(streaming);
    }

    #[test]
    fn upgraded_connections_keep_their_place_and_are_bounded() {
        let connections = connections(4);
        let first = connections.try_admit(LOCAL).unwrap();
        first.authenticated();
        let second = connections.try_admit(LOCAL).unwrap();
        second.authenticated();
        let third = connections.try_admit(LOCAL).unwrap();
        third.authenticated();
        let held = first.reserve_upgrade().expect("one of two");
        let _also = second.reserve_upgrade().expect("two of two");
        assert!(third.reserve_upgrade().is_none(), "the bound is two");
        // The connection task ends (hyper hands the socket over): the place stays taken.
        let id = first.id;
        drop(first);
        assert!(ids(&connections).contains(&id));
        drop(held);
        assert!(!ids(&connections).contains(&id), "freed with the upgrade");
        assert!(third.reserve_upgrade().is_some(), "and its upgrade place");
    }
}
