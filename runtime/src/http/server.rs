//! The accept loop and per-connection settings: HTTP/1.1 with upgrades, a bounded request
//! head, a time limit for reading it, and a bound on connections that a flood cannot use to
//! lock out the user ([`super::connections`] says why connections are bounded as they are).
//! Accept errors are logged at most once a second, with a count, so a flood does not also
//! fill the log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::api::{AppState, handle};
use super::connections::{ConnectionLimits, ConnectionTicket, Connections};
use super::response::ResponseBody;
use super::{HEAD_TIMEOUT, MAX_HEAD_BYTES};

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
    let connections = Connections::new(limits);
    // The counts of refusals left out of the log, told every few seconds.
    let flush = tokio::spawn(tell_untold_refusals(state.clone(), Duration::from_secs(5)));
    let _flush = AbortOnDrop(flush);
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
        // While every place is held by a connection that keeps it a moment longer, this
        // waits, and so newcomers wait in the kernel's backlog (see `super::connections`).
        let admitted = tokio::select! {
            admitted = connections.admit(peer.ip()) => admitted,
            _ = super::stopping(&mut shutdown) => return,
        };
        // A client whose request is already waiting is no flood's idle connection: it is not
        // evicted as a silent one while its task waits for its turn to read.
        let spoken = has_pending_data(&stream);
        let Some(ticket) = admitted else {
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
        // Every byte the client sends, TLS handshake included, tells its ticket it spoke.
        let stream = Watched {
            stream,
            ticket: ticket.clone(),
        };
        let state = state.clone();
        let tls = tls.clone();
        // The task holds the ticket: the connection keeps its place until the task ends (or,
        // for an upgraded connection, until the task that copies its bytes ends).
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, state, ticket, limits).await,
                Some(acceptor) => {
                    ticket.handshaking.store(true, Ordering::Relaxed);
                    let handshake = tokio::select! {
                        done = acceptor.accept(stream) => Some(done),
                        _ = ticket.evict.notified() => None,
                        _ = tokio::time::sleep(limits.unauthenticated_idle) => None,
                    };
                    ticket.handshaking.store(false, Ordering::Relaxed);
                    match handshake {
                        Some(Ok(stream)) => {
                            serve_connection(stream, peer, state, ticket, limits).await;
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
        });
        // Let the new connection read its request (and an evicted one close) before the next
        // accept: in a burst of accepts, a client's request would otherwise wait behind a
        // flood's connections until it had become the oldest idle one itself.
        tokio::task::yield_now().await;
    }
}

/// Logs the refusals left out of the log ([`super::log_limit`]) every `every`.
async fn tell_untold_refusals(state: Arc<AppState>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        for ((what, status), count) in state.failures.log.flush() {
            tracing::info!(
                status,
                count,
                "{what}: {count} more refused in the last {} s (at most {} a second are logged one by one)",
                every.as_secs(),
                super::log_limit::BURST
            );
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether bytes from the client are waiting on `stream` (a non-blocking peek).
fn has_pending_data(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0)
}

/// A response body that tells its connection's ticket when it has ended (sent whole, or
/// dropped with the connection): until then the connection is busy, so an event stream is
/// never taken for an idle connection.
struct Tracked {
    body: ResponseBody,
    ticket: Option<Arc<ConnectionTicket>>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = super::response::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Tracked {
    fn finish(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.end();
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
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
            Ok::<_, Infallible>(response.map(|body| {
                super::response::boxed(Tracked {
                    body,
                    ticket: Some(ticket),
                })
            }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    // Dropping the connection future closes the socket: that is how an evicted connection,
    // or an unauthenticated one that idles or takes too long over a request, ends.
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
                tracing::debug!(%peer, "closed a connection: unauthenticated when room was needed, or a revoked device's");
                return;
            }
            _ = tokio::time::sleep(check), if !ticket.is_authenticated() => {
                // Checked again: the connection may have authenticated while this slept.
                if ticket.is_authenticated() {
                    continue;
                }
                // Idle, or busy with one request: a peer without a token gets the idle time
                // for nothing, and the head time (a body has less: see `super::BODY_TIMEOUT`)
                // for a request.
                let (limit, what) = if ticket.is_idle() {
                    (limits.unauthenticated_idle, "idle")
                } else {
                    (HEAD_TIMEOUT, "over one request")
                };
                let spent = ticket.idle_for();
                if spent >= limit {
                    tracing::debug!(%peer, "closed an unauthenticated connection {what} for {} s", spent.as_secs());
                    return;
                }
                check = limit.saturating_sub(spent).max(Duration::from_millis(100));
            }
        }
    }
}
