//! The accept loop and per-connection settings: HTTP/1.1 with upgrades, a bounded request
//! head, a time limit for reading it, and a bound on connections that a flood cannot use to
//! lock out the user.
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
//! - **Accept errors are logged at most once a second**, with a count, so a flood does not
//!   also fill the log.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use super::api::{AppState, handle};

/// The largest request head (request line + headers) accepted; a bigger one is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its request head within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Descriptors kept free for what the server itself needs while connections come and go:
/// health probes, sidecar spawns (three pipes each), log files, the run record and leases.
const RESERVED_DESCRIPTORS: u64 = 64;
/// More connections than this are never needed by a desktop server's clients.
const MAX_CONNECTIONS: usize = 4096;
/// Fewer than this would leave too little for a real client's parallel requests.
const MIN_CONNECTIONS: usize = 16;

/// Connections the kernel may hold for us before we accept them. std's 128 fills up under a
/// flood, and a client whose handshake is then dropped waits a whole second to retry: with
/// room for every connection a flood can hold, it waits only for its turn to be accepted.
const LISTEN_BACKLOG: i32 = 1024;

/// A non-blocking listening socket on `addr`, with address reuse as std sets it on unix (a
/// restarted server can bind its port while old connections linger in TIME-WAIT) and a
/// backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

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
    id: u64,
    authenticated: AtomicBool,
    /// Requests being handled (response head not yet returned).
    busy: AtomicUsize,
    /// Whether the client has sent a byte yet.
    spoken: AtomicBool,
    /// When the last request finished (or the connection was accepted).
    idle_since: Mutex<Instant>,
    evict: Notify,
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

    fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    fn has_spoken(&self) -> bool {
        self.spoken.load(Ordering::Relaxed)
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    fn idle_for(&self) -> Duration {
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream (TCP, or TLS over it), telling its ticket when the client first
/// sends something.
struct Watched<S> {
    stream: S,
    ticket: Arc<ConnectionTicket>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.ticket.spoken.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The open connections, oldest first.
struct Connections {
    limits: ConnectionLimits,
    open: Mutex<(u64, BTreeMap<u64, Arc<ConnectionTicket>>)>,
}

impl Connections {
    /// A ticket for a new connection, making room by evicting the oldest idle
    /// unauthenticated connection if the bound is reached; `None` if there is no room.
    fn admit(&self) -> Option<Arc<ConnectionTicket>> {
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

    fn close(&self, ticket: &ConnectionTicket) {
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

/// Counts a recurring problem and logs it at most once a second.
struct Throttled {
    what: &'static str,
    count: u64,
    last_log: Option<Instant>,
}

impl Throttled {
    fn new(what: &'static str) -> Throttled {
        Throttled {
            what,
            count: 0,
            last_log: None,
        }
    }

    fn hit(&mut self, detail: &dyn std::fmt::Display) {
        self.count += 1;
        if self
            .last_log
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(count = self.count, "{} ({detail})", self.what);
            self.count = 0;
            self.last_log = Some(Instant::now());
        }
    }
}

/// Accepts connections until `shutdown` turns true; with `tls`, each one must complete a
/// TLS handshake first (within the time an unauthenticated connection may idle: a
/// half-finished handshake holds a connection like a silent client does).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Connections {
        limits,
        open: Mutex::new((0, BTreeMap::new())),
    });
    let mut accept_failed = Throttled::new("accept failed");
    let mut refused =
        Throttled::new("connection refused: every connection is busy or authenticated");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    accept_failed.hit(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = super::stopping(&mut shutdown) => return,
        };
        // A client whose request is already waiting is no flood's idle connection: it is not
        // evicted as a silent one while its task waits for its turn to read.
        let spoken = has_pending_data(&stream);
        let Some(ticket) = connections.admit() else {
            state
                .failures
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            refused.hit(&peer);
            drop(stream);
            continue;
        };
        if spoken {
            ticket.spoken.store(true, Ordering::Relaxed);
        }
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let connections = connections.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, state, ticket.clone(), limits).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        done = acceptor.accept(stream) => Some(done),
                        _ = ticket.evict.notified() => None,
                        _ = tokio::time::sleep(limits.unauthenticated_idle) => None,
                    };
                    match handshake {
                        Some(Ok(stream)) => {
                            serve_connection(stream, peer, state, ticket.clone(), limits).await;
                        }
                        Some(Err(e)) => {
                            // Never a secret here: rustls names the alert or the protocol error.
                            state.failures.tls_handshake.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        None => {
                            state.failures.tls_handshake.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake not completed in time, or evicted");
                        }
                    }
                }
            }
            connections.close(&ticket);
        });
        // Let the new connection read its request (and an evicted one close) before the next
        // accept: in a burst of accepts, a client's request would otherwise wait behind a
        // flood's connections until it had become the oldest idle one itself.
        tokio::task::yield_now().await;
    }
}

/// Whether bytes from the client are waiting on `stream` (a non-blocking peek).
fn has_pending_data(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0)
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<AppState>,
    ticket: Arc<ConnectionTicket>,
    limits: ConnectionLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_requests = ticket.clone();
    let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        let state = state.clone();
        let ticket = for_requests.clone();
        async move {
            ticket.begin();
            request.extensions_mut().insert(ticket.clone());
            let response = handle(request, state, peer).await;
            ticket.end();
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(
            TokioIo::new(Watched {
                stream,
                ticket: ticket.clone(),
            }),
            service,
        )
        .with_upgrades();
    tokio::pin!(connection);
    // Dropping the connection future closes the socket: that is how an evicted or idle
    // unauthenticated connection ends.
    let mut check = limits.unauthenticated_idle;
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = ticket.evict.notified() => {
                tracing::debug!(%peer, "closed a connection: idle and unauthenticated when room was needed, or a revoked device's");
                return;
            }
            _ = tokio::time::sleep(check), if !ticket.is_authenticated() => {
                // Checked again: the connection may have authenticated while this slept.
                if ticket.is_authenticated() {
                    continue;
                }
                let idle = ticket.idle_for();
                if ticket.is_idle() && idle >= limits.unauthenticated_idle {
                    tracing::debug!(%peer, "closed an unauthenticated connection idle for {} s", idle.as_secs());
                    return;
                }
                check = limits.unauthenticated_idle.saturating_sub(idle).max(Duration::from_millis(100));
            }
        }
    }
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
