//! Connection standing and limits: how many connections are served at once, which one
//! makes room for a newcomer, and the failure counts the health panel shows. The accept
//! loop that applies them is [`super::server`]; the API marks a connection authenticated
//! through its [`ConnectionTicket`].
//!
//! Why connections are bounded this way:
//!
//! - **Every connection costs a descriptor** (two while proxied), and a server that runs out
//!   cannot connect to opencode for its health checks or start it again. The bound
//!   ([`ConnectionLimits::for_open_file_limit`]) leaves descriptors in reserve for those.
//! - **Anyone on the machine can connect; only token holders should be able to stay.** A
//!   connection counts as *unauthenticated* until one of its requests carries a valid token.
//!   When the bound is reached, a new connection takes the place of the oldest idle
//!   unauthenticated one, so idle connections from another user never keep the user's
//!   client out, and an unauthenticated connection that sends nothing (or sends its head a
//!   byte at a time) is closed after [`ConnectionLimits::unauthenticated_idle`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Descriptors kept free for what the server itself needs while connections come and go:
/// health probes, sidecar spawns (three pipes each), log files, the run record and leases.
const RESERVED_DESCRIPTORS: u64 = 64;
/// More connections than this are never needed by a desktop server's clients.
const MAX_CONNECTIONS: usize = 4096;
/// Fewer than this would leave too little for a real client's parallel requests.
const MIN_CONNECTIONS: usize = 16;

/// How many connections are served at once, and how long unauthenticated ones may idle.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// An unauthenticated connection with no request in progress is closed after this long.
    pub unauthenticated_idle: Duration,
}

impl ConnectionLimits {
    /// Limits for a process that may have `open_files` descriptors (`None`: no such limit
    /// is known, as on Windows): each connection may need two (client and upstream), and
    /// [`RESERVED_DESCRIPTORS`] stay free.
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
            unauthenticated_idle: Duration::from_secs(10),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::for_open_file_limit(None)
    }
}

/// One connection's standing, shared between the accept loop and its requests (a request
/// finds it in its extensions). The API marks it authenticated when a request's token is
/// valid.
#[derive(Debug)]
pub struct ConnectionTicket {
    pub(super) id: u64,
    authenticated: AtomicBool,
    /// Requests being handled (response head not yet returned).
    busy: AtomicUsize,
    /// Whether the client has sent a byte yet.
    pub(super) spoken: AtomicBool,
    /// When the last request finished (or the connection was accepted).
    idle_since: Mutex<Instant>,
    pub(super) evict: Notify,
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

    pub(super) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    fn has_spoken(&self) -> bool {
        self.spoken.load(Ordering::Relaxed)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    pub(super) fn idle_for(&self) -> Duration {
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    pub(super) fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn end(&self) {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections, oldest first.
pub(super) struct Connections {
    limits: ConnectionLimits,
    open: Mutex<(u64, BTreeMap<u64, Arc<ConnectionTicket>>)>,
}

impl Connections {
    /// No connections yet, bounded by `limits`.
    pub(super) fn new(limits: ConnectionLimits) -> Connections {
        Connections {
            limits,
            open: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// A ticket for a new connection, making room by evicting the oldest idle
    /// unauthenticated connection if the bound is reached; `None` if there is no room.
    pub(super) fn admit(&self) -> Option<Arc<ConnectionTicket>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (next_id, tickets) = &mut *open;
        if tickets.len() >= self.limits.max_connections {
            // A connection that has never sent a byte goes first: a real client sends its
            // request as soon as it connects; a flood holds connections open and silent.
            let evictable = |t: &&Arc<ConnectionTicket>| !t.is_authenticated() && t.is_idle();
            let victim = tickets
                .values()
                .filter(evictable)
                .find(|t| !t.has_spoken())
                .or_else(|| tickets.values().find(evictable))
                .map(|t| t.id)?;
            if let Some(ticket) = tickets.remove(&victim) {
                ticket.evict.notify_one();
            }
        }
        *next_id += 1;
        let ticket = Arc::new(ConnectionTicket {
            id: *next_id,
            authenticated: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            spoken: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            evict: Notify::new(),
        });
        tickets.insert(ticket.id, ticket.clone());
        Some(ticket)
    }

    pub(super) fn close(&self, ticket: &ConnectionTicket) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .remove(&ticket.id);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max: usize) -> Connections {
        Connections {
            limits: ConnectionLimits {
                max_connections: max,
                unauthenticated_idle: Duration::from_secs(10),
            },
            open: Mutex::new((0, BTreeMap::new())),
        }
    }

    #[test]
    fn limits_leave_descriptors_in_reserve() {
        let at_256 = ConnectionLimits::for_open_file_limit(Some(256));
        assert_eq!(at_256.max_connections, 96);
        assert_eq!(
            ConnectionLimits::for_open_file_limit(Some(70)).max_connections,
            MIN_CONNECTIONS
        );
        assert_eq!(
            ConnectionLimits::for_open_file_limit(Some(1 << 20)).max_connections,
            MAX_CONNECTIONS
        );
    }

    fn ids(connections: &Connections) -> Vec<u64> {
        connections.open.lock().unwrap().1.keys().copied().collect()
    }

    #[test]
    fn a_full_house_evicts_the_oldest_idle_unauthenticated_connection_only() {
        let connections = connections(3);
        let authenticated = connections.admit().unwrap();
        authenticated.authenticated();
        let busy = connections.admit().unwrap();
        busy.begin();
        let idle = connections.admit().unwrap();
        let newcomer = connections.admit().expect("room made");
        assert_eq!(
            ids(&connections),
            vec![authenticated.id, busy.id, newcomer.id]
        );
        // The evicted one was told to go (a permit is stored for its next wait).
        let told = idle.evict.notified();
        tokio::pin!(told);
        assert!(
            told.as_mut().enable(),
            "the idle connection is told to close"
        );

        // Now nothing is evictable but the newcomer, which is idle and unauthenticated.
        newcomer.authenticated();
        assert!(connections.admit().is_none(), "no room: refused");
        busy.end();
        assert!(
            connections.admit().is_some(),
            "the finished request made room"
        );
    }

    #[test]
    fn a_silent_connection_goes_before_one_that_has_spoken_whatever_their_age() {
        let connections = connections(3);
        let authenticated = connections.admit().unwrap();
        authenticated.authenticated();
        let talker = connections.admit().unwrap();
        talker.spoken.store(true, Ordering::Relaxed);
        let silent = connections.admit().unwrap();
        let newcomer = connections.admit().expect("room made");
        assert_eq!(
            ids(&connections),
            vec![authenticated.id, talker.id, newcomer.id]
        );
        let _ = silent;
        // With no silent one left but the newcomer, the newcomer goes before the talker.
        let next = connections.admit().expect("room made");
        assert_eq!(
            ids(&connections),
            vec![authenticated.id, talker.id, next.id]
        );
        next.spoken.store(true, Ordering::Relaxed);
        // All have spoken: the oldest idle one goes.
        let last = connections.admit().expect("room made");
        assert_eq!(ids(&connections), vec![authenticated.id, next.id, last.id]);
    }
}
