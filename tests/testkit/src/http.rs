//! The one HTTP/1.1 server of the test stand-ins: hyper 1.x on a current-thread tokio
//! runtime of its own thread, so that blocking tests can use it without an async runtime.
//!
//! A stand-in is a handler from [`Request`] (the head and the whole body) to [`Response`];
//! handlers run on tokio's blocking pool, one call per request, so a handler may sleep or
//! sign without holding up other connections. hyper does the protocol: keep-alive,
//! `Content-Length` and chunked bodies, `Expect: 100-continue`, `HEAD`.
//!
//! What the stand-ins need beyond a fixed answer:
//!
//! | need | how |
//! |---|---|
//! | a body that arrives bit by bit or never ends (event streams, endless downloads) | [`Response::stream`]: chunks from an iterator, pulled on a thread of their own until the client goes away |
//! | a protocol switch (WebSocket) | [`Response::upgrade`]: after the `101`, the connection's bytes as blocking [`Upgraded`] I/O |
//! | a server that accepts and never answers, as opencode 1.18 does just after it starts | [`Builder::unanswered_for`] |
//! | a fixed address (a sidecar told its port) | [`Builder::bind`] |
//! | a request body limit | [`Builder::max_body`]: larger bodies get `413` unread |
//!
//! Dropping the [`TestServer`] closes its listener (connections are refused from then on)
//! and its open connections.
//!
//! Async tests that need hyper's own types (a request body read as it streams in, a
//! response body fed chunk by chunk) use [`HyperServer`] on their own runtime; both run on
//! one accept loop.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

/// A request as a handler sees it: the head and the whole body.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path with the query (`/sign?api-version=…`).
    pub target: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (the first, when it is repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (comma-separated, case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// A query parameter's value (not percent-decoded).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Chunks of a streamed body.
pub type Chunks = Box<dyn Iterator<Item = Vec<u8>> + Send>;

/// What runs on the connection after a `101`.
pub type OnUpgrade = Box<dyn FnOnce(Upgraded) + Send>;

enum Body {
    Full(Vec<u8>),
    Stream(Chunks),
}

/// A response.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, besides `Content-Length` (hyper writes it, or chunks the body).
    pub headers: Vec<(String, String)>,
    body: Body,
    upgrade: Option<OnUpgrade>,
}

impl Response {
    /// A response with `status`, `content_type` and `body`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: Body::Full(body.into()),
            upgrade: None,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    /// A body of `chunks`, each sent as soon as the iterator yields it (chunked, no
    /// `Content-Length`). The iterator runs on a thread of its own and is dropped when the
    /// client goes away; one that never ends makes a body without end.
    pub fn stream(
        status: u16,
        content_type: &str,
        chunks: impl Iterator<Item = Vec<u8>> + Send + 'static,
    ) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: Body::Stream(Box::new(chunks)),
            upgrade: None,
        }
    }

    /// `101 Switching Protocols`, then `then` with the connection's bytes (those that came
    /// with the request included) on a thread of its own.
    pub fn upgrade(then: impl FnOnce(Upgraded) + Send + 'static) -> Self {
        Self {
            status: 101,
            headers: Vec::new(),
            body: Body::Full(Vec::new()),
            upgrade: Some(Box::new(then)),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// An upgraded connection as blocking I/O (for the thread [`Response::upgrade`] starts).
pub struct Upgraded {
    io: TokioIo<hyper::upgrade::Upgraded>,
    runtime: tokio::runtime::Handle,
}

impl Upgraded {
    /// Closes the sending half (the peer reads end of file).
    pub fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.runtime.block_on(self.io.shutdown())
    }
}

impl Read for Upgraded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.runtime.block_on(self.io.read(buf))
    }
}

impl Write for Upgraded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.runtime.block_on(self.io.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.runtime.block_on(self.io.flush())
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// How a [`TestServer`] listens.
#[derive(Debug)]
pub struct Builder {
    name: String,
    address: SocketAddr,
    unanswered_for: Option<Duration>,
    max_body: Option<usize>,
}

impl Builder {
    /// Listens on `address` instead of 127.0.0.1 with a free port.
    pub fn bind(mut self, address: SocketAddr) -> Self {
        self.address = address;
        self
    }

    /// Connections accepted within `duration` of listening are held open and never read or
    /// answered (until the server stops), as opencode 1.18 does for about 0.4 s after it
    /// announces its address.
    pub fn unanswered_for(mut self, duration: Duration) -> Self {
        self.unanswered_for = Some(duration);
        self
    }

    /// Bodies announced larger than `bytes` are answered `413` without being read.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Listens and serves `handler`.
    pub fn start(
        self,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> std::io::Result<TestServer> {
        let listener = std::net::TcpListener::bind(self.address)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let deaf_until = self.unanswered_for.map(|d| Instant::now() + d);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let options = Arc::new(Options {
            handler: Arc::new(handler),
            deaf_until,
            max_body: self.max_body,
        });
        let thread = std::thread::Builder::new().name(self.name).spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let deaf_until = options.deaf_until;
                let handler = move |request| {
                    let options = Arc::clone(&options);
                    async move { answer(request, &options).await }
                };
                let accepted = Arc::new(AtomicUsize::new(0));
                accept_loop(listener, deaf_until, accepted, stopped, handler).await;
                Ok(())
            });
            // Handlers still running are dropped, not awaited: a stream that never ends
            // must not keep the server from stopping.
            runtime.shutdown_background();
            served
        })?;
        Ok(TestServer {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

struct Options {
    handler: Arc<Handler>,
    deaf_until: Option<Instant>,
    max_body: Option<usize>,
}

/// A running server; stops when dropped.
pub struct TestServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// How to listen when 127.0.0.1 with a free port will not do; `name` names the thread.
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            unanswered_for: None,
            max_body: None,
        }
    }

    /// Serves `handler` on 127.0.0.1 with a free port; `name` names its thread.
    pub fn start(
        name: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Self {
        Self::builder(name)
            .start(handler)
            .expect("start a test server")
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://<address>`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Serves until the accept loop fails (for a process that is only this server).
    pub fn wait(mut self) -> std::io::Result<()> {
        let thread = self.thread.take().expect("a running server");
        // Kept: dropping the sender would stop the server.
        let _stop = self.stop.take();
        thread.join().expect("the test server thread")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A hyper server of async handlers on the caller's tokio runtime, for tests that are
/// async themselves and need hyper's own types: a request body read as it arrives, a
/// response body the test feeds chunk by chunk. It counts the connections it accepted, and
/// [`HyperServer::stop`] closes its listener and every connection at once, as a process's
/// death does. [`TestServer`] runs on the same accept loop.
pub struct HyperServer {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HyperServer {
    /// Serves `handler` on `listener` (HTTP/1.1, upgrades allowed) from a task of the
    /// current tokio runtime.
    pub fn spawn<F, Fut, B>(listener: tokio::net::TcpListener, handler: F) -> Self
    where
        F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = hyper::Response<B>> + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let address = listener.local_addr().expect("the listener's address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            None,
            Arc::clone(&accepted),
            stopped,
            handler,
        ));
        Self {
            address,
            accepted,
            stop,
            task,
        }
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection, and returns once its port refuses
    /// connections.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        while tokio::net::TcpStream::connect(self.address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Leaves it serving for as long as the runtime runs; returns its address.
    pub fn serve_forever(self) -> SocketAddr {
        // The sender lives on without an owner: the stop signal never comes.
        std::mem::forget(self.stop);
        self.address
    }
}

impl std::fmt::Debug for HyperServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperServer")
            .field("address", &self.address)
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

/// The accept loop of both servers: every connection served by hyper with `handler` until
/// `stopped`, then the listener and every connection closed. Connections accepted before
/// `deaf_until` are held open, never read or answered.
async fn accept_loop<F, Fut, B>(
    listener: tokio::net::TcpListener,
    deaf_until: Option<Instant>,
    accepted: Arc<AtomicUsize>,
    mut stopped: oneshot::Receiver<()>,
    handler: F,
) where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut unanswered = Vec::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            // Only a stop sent stops it; a sender dropped unsent (`serve_forever`) does not.
            Ok(()) = &mut stopped => break,
            result = listener.accept() => match result {
                Ok((stream, _)) => stream,
                // A connection reset before it was accepted, or out of descriptors for a
                // moment: the next accept may well succeed.
                Err(_) => continue,
            },
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        if deaf_until.is_some_and(|until| Instant::now() < until) {
            unanswered.push(stream);
            continue;
        }
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(request).await) }
        });
        connections.spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades(),
        );
        // Finished connections are reaped as new ones come, so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    // Dropping the set aborts every connection task, which closes its socket.
    drop(connections);
}

type ResponseBody = BoxBody<Bytes, Infallible>;

async fn answer(
    mut request: hyper::Request<Incoming>,
    options: &Options,
) -> hyper::Response<ResponseBody> {
    let announced = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let (Some(max), Some(length)) = (options.max_body, announced)
        && length > max
    {
        return into_hyper(Response::new(413, "text/plain", "too large\n"), None);
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (head, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => return into_hyper(Response::new(400, "text/plain", format!("{e}\n")), None),
    };
    let request = Request {
        method: head.method.as_str().to_owned(),
        target: head
            .uri
            .path_and_query()
            .map_or_else(|| head.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: head
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let handler = Arc::clone(&options.handler);
    let response = match tokio::task::spawn_blocking(move || handler(&request)).await {
        Ok(response) => response,
        Err(e) => Response::new(500, "text/plain", format!("the handler panicked: {e}\n")),
    };
    into_hyper(response, Some(on_upgrade))
}

fn into_hyper(
    response: Response,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> hyper::Response<ResponseBody> {
    let body = match response.body {
        Body::Full(bytes) => Full::new(Bytes::from(bytes)).boxed(),
        Body::Stream(chunks) => {
            let (sender, receiver) = mpsc::channel(1);
            std::thread::spawn(move || {
                for chunk in chunks {
                    if sender.blocking_send(Bytes::from(chunk)).is_err() {
                        // The client went away.
                        return;
                    }
                }
            });
            ChannelBody(receiver).boxed()
        }
    };
    if let (Some(then), Some(on_upgrade)) = (response.upgrade, on_upgrade) {
        let runtime = tokio::runtime::Handle::current();
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let io = TokioIo::new(upgraded);
                std::thread::spawn(move || then(Upgraded { io, runtime }));
            }
        });
    }
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name, value);
    }
    builder.body(body).expect("a valid test response")
}

/// A body fed from a channel: each chunk is sent as it arrives, the body ends with the
/// sender. For a request or response body a test controls chunk by chunk.
#[derive(Debug)]
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead as _;
    use std::net::TcpStream;

    fn exchange(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn answers_with_the_handlers_response_and_refuses_connections_once_dropped() {
        let server = TestServer::start("test", |r| {
            Response::new(
                200,
                "text/plain",
                format!("{} {} {}", r.method, r.target, r.body.len()),
            )
            .with_header("x-seen", r.header("x-test").unwrap_or("-"))
        });
        let answer = exchange(
            server.address(),
            "POST /a?b=c HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("x-seen: yes\r\n"), "{answer}");
        assert!(answer.ends_with("POST /a?b=c 3"), "{answer}");
        let address = server.address();
        drop(server);
        assert!(TcpStream::connect(address).is_err());
    }

    #[test]
    fn streams_chunks_as_they_come_and_stops_when_the_client_goes() {
        let (sent, count) = std::sync::mpsc::channel();
        let server = TestServer::start("test", move |_| {
            let sent = sent.clone();
            Response::stream(
                200,
                "text/event-stream",
                (0u32..).map(move |n| {
                    let _ = sent.send(n);
                    std::thread::sleep(Duration::from_millis(10));
                    format!("data: {n}\n\n").into_bytes()
                }),
            )
        });
        let mut stream = TcpStream::connect(server.address()).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        while !line.starts_with("data: 2") {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        drop(reader);
        // The producer notices within a few chunks that nobody reads.
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.recv_timeout(Duration::from_millis(500)).is_ok() {
            assert!(Instant::now() < deadline, "the stream outlived its client");
        }
    }

    #[test]
    fn an_upgrade_hands_over_the_bytes() {
        let server = TestServer::start("test", |_| {
            Response::upgrade(|mut io| {
                let mut buf = [0; 5];
                io.read_exact(&mut buf).unwrap();
                io.write_all(&buf).unwrap();
                io.shutdown_write().unwrap();
            })
            .with_header("upgrade", "test")
            .with_header("connection", "upgrade")
        });
        let answer = exchange(
            server.address(),
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\nhello",
        );
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
    }

    #[test]
    fn early_connections_are_held_unanswered_and_big_bodies_refused() {
        let server = TestServer::builder("test")
            .unanswered_for(Duration::from_millis(300))
            .max_body(4)
            .start(|_| Response::new(200, "text/plain", "ok"))
            .unwrap();
        let mut early = TcpStream::connect(server.address()).unwrap();
        early
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        early
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0; 1];
        let error = early.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{error}"
        );
        let answer = exchange(
            server.address(),
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        );
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    }
}
