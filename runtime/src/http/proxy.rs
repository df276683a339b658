//! Reverse proxy for `/opencode/*`: every request is forwarded to opencode on loopback, with
//! our credentials swapped for opencode's, and every body streamed in both directions.
//!
//! Why it looks the way it does:
//!
//! - **Keep-alive upstream connections, from hyper's own pooled client.** One connection per
//!   request left one socket in TIME-WAIT per request (about 14,000 per 40 s at 1,350
//!   requests/s). Linux reuses those on loopback; Windows (16k ephemeral ports, TIME-WAIT of
//!   2 to 4 minutes) and macOS do not, so a busy client could run the machine out of ports.
//!   Requests therefore go over hyper-util's pooled client, and everything that decides
//!   whether a connection may carry another request (message framing, a body cut short, an
//!   error, `Connection: close` from opencode) is hyper's, not ours: a request can never be
//!   read as the tail of another client's body.
//! - **One pool per opencode instance.** opencode gets another port and another password
//!   when it restarts, so [`Proxy`] keys its client on both: the first request for a new
//!   instance builds a new client, and the old one is dropped with its idle connections. No
//!   request after a restart goes out on a connection to the previous process. Idle
//!   connections are closed after [`ProxyOptions::pool_idle_timeout`], shorter than
//!   opencode's own idle timeout, so that it is us, not opencode, who closes an idle
//!   connection, and a request is never written onto one that opencode is closing.
//! - **An upgrade gets a connection of its own**, outside the pool: after the `101` it
//!   carries WebSocket bytes until one side closes it, and is never reused.
//! - **Nothing is buffered whole.** Prompts carry attachments and the event stream
//!   (`text/event-stream`) lives for hours, so both bodies are passed through frame by frame.
//!   The request body is bounded by [`ProxyOptions::max_request_body`] as it flows. A
//!   response body the client leaves unread closes its upstream connection (hyper never pools
//!   a connection with a body still on it).
//! - **No total timeout**, only one on connecting and one on the response head: an SSE stream
//!   or a WebSocket is healthy for as long as it stays open. A dead opencode still never
//!   leaves a client hanging: the kernel closes its sockets, and a body cut short ends the
//!   client's body with an error.
//! - **The client never learns opencode's password, and opencode never sees our token.**
//!   `Authorization` and `X-OpenWork-Token` are dropped, opencode's Basic credentials are set,
//!   and `WWW-Authenticate` is dropped from responses so a browser never prompts for them.
//! - **Forwarding headers are ours alone.** We are the first hop opencode can trust, so
//!   whatever the client claims about earlier hops (`Forwarded`, `X-Real-IP`, any
//!   `X-Forwarded-*`) is removed, and the ones we know are set from the connection itself.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::OPENCODE_PREFIX;
use super::connections::UpgradeReservation;
use super::response::{self, ApiError, BoxError, ResponseBody};

/// The header that carries our token in clients that cannot set `Authorization`. It is ours
/// alone, so it is never forwarded.
const OPENWORK_TOKEN: HeaderName = HeaderName::from_static(super::TOKEN_HEADER);
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where opencode listens now (its port and password change when it restarts).
#[derive(Clone)]
pub struct Upstream {
    /// opencode's listening address, on loopback.
    pub addr: SocketAddr,
    /// The whole `Authorization` value opencode expects (`Basic …`). Mark it sensitive
    /// ([`HeaderValue::set_sensitive`]) if you build it yourself; [`Upstream::basic`] does.
    pub authorization: HeaderValue,
}

impl Upstream {
    /// An upstream that takes HTTP Basic credentials.
    pub fn basic(addr: SocketAddr, username: &str, password: &str) -> Upstream {
        let encoded = BASE64.encode(format!("{username}:{password}"));
        let mut authorization = HeaderValue::try_from(format!("Basic {encoded}"))
            .expect("base64 output is always a valid header value");
        authorization.set_sensitive(true);
        Upstream {
            addr,
            authorization,
        }
    }

    /// Whether `other` is the same opencode instance (same address, same credentials).
    fn same_instance(&self, other: &Upstream) -> bool {
        self.addr == other.addr && self.authorization == other.authorization
    }
}

// Written by hand so the password can never be derived into a log line.
impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("authorization", &"<redacted>")
            .finish()
    }
}

/// Limits of one forwarded request, and of the pool of upstream connections.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The largest request body forwarded, in bytes (default 64 MiB).
    pub max_request_body: u64,
    /// How long connecting to opencode may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long opencode may take to send the response head (default 5 min). There is no
    /// timeout on the body: SSE streams and WebSockets live for hours.
    pub response_header_timeout: Duration,
    /// Idle keep-alive connections kept to opencode (default 32); connections beyond it
    /// are closed when their exchange ends.
    pub pool_max_idle: usize,
    /// How long an idle connection is kept (default 4 s: under the 10 s after which
    /// opencode's server, Bun's, closes an idle connection itself).
    pub pool_idle_timeout: Duration,
    /// Whether clients reach the front door over TLS: `X-Forwarded-Proto` and `Forwarded`
    /// then say `https` (default false).
    pub https: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            max_request_body: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(5 * 60),
            pool_max_idle: 32,
            pool_idle_timeout: Duration::from_secs(4),
            https: false,
        }
    }
}

/// The address of the client that sent a request. The front door inserts it into the
/// request's extensions (`req.extensions_mut().insert(ClientAddr(peer))`) so that
/// [`Proxy::forward`] can send `X-Forwarded-For`; without it, no client address is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Turns true when the credential of the request is revoked (a paired device's token). The
/// front door inserts it into the request's extensions; an upgraded connection (WebSocket)
/// made with it is closed then, since it no longer passes through any HTTP connection that
/// revocation could close.
#[derive(Clone, Debug)]
pub struct Revocation(pub tokio::sync::watch::Receiver<bool>);

/// The body of a request to opencode: the client's, bounded.
type UpstreamBody = UnsyncBoxBody<Bytes, RequestBodyError>;
type PooledClient = Client<HttpConnector, UpstreamBody>;

/// The proxy: its limits and the keep-alive connections to the current opencode instance.
/// One per server, shared by all requests.
pub struct Proxy {
    options: ProxyOptions,
    /// The instance the pool is for, and its client.
    pool: Mutex<Option<(Upstream, PooledClient)>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Proxy")
            .field("options", &self.options)
            .field("pooled_for", &pool.as_ref().map(|(upstream, _)| upstream))
            .finish()
    }
}

impl Proxy {
    /// A proxy with no connection yet.
    pub fn new(options: ProxyOptions) -> Proxy {
        Proxy {
            options,
            pool: Mutex::new(None),
        }
    }

    /// Its limits.
    pub fn options(&self) -> &ProxyOptions {
        &self.options
    }

    /// Drops the pool and closes its idle connections (opencode is gone; exchanges under way
    /// finish on their own connections).
    pub fn forget(&self) {
        let old = self.pool.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
    }

    /// The client for `upstream`'s instance: the pooled one if it is the same instance as
    /// before, else a new one (and the previous one is dropped).
    fn client_for(&self, upstream: &Upstream) -> PooledClient {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pooled_for, client)) = pool.as_ref()
            && pooled_for.same_instance(upstream)
        {
            return client.clone();
        }
        if pool.is_some() {
            tracing::debug!(addr = %upstream.addr, "new opencode instance: new connection pool");
        }
        let client = new_client(&self.options);
        *pool = Some((upstream.clone(), client.clone()));
        client
    }

    /// Forwards `req` to `upstream` with the path replaced by `path_and_query` (the caller
    /// strips [`OPENCODE_PREFIX`]), and returns opencode's response with its body still streaming.
    ///
    /// - The client's address comes from the [`ClientAddr`] request extension.
    /// - WebSocket (any `Connection: upgrade`) requests are passed through: on a `101` from
    ///   opencode the client gets the `101`, and the two upgraded connections are then
    ///   spliced on a task of their own. For that the front door must serve its connections
    ///   `.with_upgrades()`; without it the client's side never upgrades and the splice is
    ///   dropped.
    /// - Failures are JSON errors: `413` for a body over the limit, `503` when opencode is
    ///   not reachable or drops the connection before answering, `504` on a timeout, `502`
    ///   when opencode answers wrongly or rejects our credentials (`401`).
    ///
    /// Spawns tasks with [`tokio::spawn`], so it must run inside a tokio runtime.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        upstream: &Upstream,
        path_and_query: PathAndQuery,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = req.method().clone();
        // Only the path is logged: a query may carry a token (EventSource cannot set headers).
        let path = path_and_query.path().to_owned();
        let response = match self.exchange(req, upstream, path_and_query).await {
            Ok(response) => response,
            Err(failure) => {
                tracing::debug!(%method, %path, error = %failure, "opencode proxy failure");
                failure.into_response(&self.options)
            }
        };
        tracing::debug!(
            %method,
            %path,
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "proxied to opencode"
        );
        response
    }

    async fn exchange(
        &self,
        mut req: Request<Incoming>,
        upstream: &Upstream,
        path_and_query: PathAndQuery,
    ) -> Result<Response<ResponseBody>, Failure> {
        let options = &self.options;
        // Refused before connecting, and before hyper answers an `Expect: 100-continue`, so
        // the client is not invited to send a body that would be thrown away.
        if req.body().size_hint().lower() > options.max_request_body {
            return Err(Failure::TooLarge);
        }

        let upgrading = is_upgrade(req.headers());
        // Taken before the request is rebuilt: the extension is what resolves once the front
        // door has sent our 101.
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let client_addr = parts.extensions.get::<ClientAddr>().copied();
        let revocation = parts.extensions.remove::<Revocation>();
        // The upgraded connection's place, held until its splice ends.
        let reservation = parts.extensions.remove::<UpgradeReservation>();
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        });
        rewrite_request_headers(
            &mut parts.headers,
            upgrading,
            upstream,
            client_addr,
            original_host,
            options.https,
        );
        let body = Limited::new(body, usize_limit(options.max_request_body))
            .map_err(RequestBodyError)
            .boxed_unsync();
        let mut upstream_req = Request::new(body);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = parts.headers;

        match client_upgrade {
            Some(client_upgrade) => {
                *upstream_req.uri_mut() = path_and_query.into();
                let held = Held {
                    revocation,
                    _reservation: reservation,
                };
                exchange_upgrade(upstream_req, client_upgrade, upstream, options, held).await
            }
            None => {
                *upstream_req.uri_mut() = Uri::builder()
                    .scheme("http")
                    .authority(upstream.addr.to_string())
                    .path_and_query(path_and_query)
                    .build()
                    .map_err(|error| Failure::BadGateway(format!("upstream URI: {error}")))?;
                self.exchange_pooled(upstream_req, upstream).await
            }
        }
    }

    /// One request over a pooled keep-alive connection.
    async fn exchange_pooled(
        &self,
        upstream_req: Request<UpstreamBody>,
        upstream: &Upstream,
    ) -> Result<Response<ResponseBody>, Failure> {
        let client = self.client_for(upstream);
        // Dropping the request future on a timeout closes its connection: hyper never pools
        // a connection whose response was not read.
        let upstream_response = response_head(
            self.options.response_header_timeout,
            client.request(upstream_req),
            classify_client,
        )
        .await?;
        let status = upstream_response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Failure::BadGateway(
                "101 to a request that did not ask for it".into(),
            ));
        }
        let (mut parts, body) = upstream_response.into_parts();
        rewrite_response_headers(&mut parts.headers, false);
        Ok(Response::from_parts(parts, response::boxed(body)))
    }
}

/// The pooled client for one opencode instance.
fn new_client(options: &ProxyOptions) -> PooledClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(options.connect_timeout));
    // Small writes (an SSE event) must not wait for a delayed ACK.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.pool_max_idle)
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// An upgrade (WebSocket) request, on a connection of its own: once opencode answers `101`,
/// the connection is spliced to the client's and never carries HTTP again.
async fn exchange_upgrade(
    upstream_req: Request<UpstreamBody>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream: &Upstream,
    options: &ProxyOptions,
    held: Held,
) -> Result<Response<ResponseBody>, Failure> {
    let stream = match tokio::time::timeout(
        options.connect_timeout,
        TcpStream::connect(upstream.addr),
    )
    .await
    {
        Err(_) => return Err(Failure::Timeout("accepting the connection")),
        Ok(Err(error)) => return Err(Failure::Unavailable(format!("connect: {error}"))),
        Ok(Ok(stream)) => stream,
    };
    // Small writes (a WebSocket frame) must not wait for a delayed ACK.
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| Failure::BadGateway(format!("handshake: {error}")))?;
    // The task owns the socket; on a 101 it hands it over to `hyper::upgrade::on`.
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "opencode connection ended with an error");
        }
    });
    // Only the connection task may outlive a failed exchange, and it must not: it would keep
    // writing a request nobody waits for.
    let abort = AbortOnDrop(Some(connection));

    let mut upstream_response = response_head(
        options.response_header_timeout,
        sender.send_request(upstream_req),
        classify,
    )
    .await?;
    let status = upstream_response.status();

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
        let (mut parts, _) = upstream_response.into_parts();
        rewrite_response_headers(&mut parts.headers, true);
        // The connection task is what hands the socket over to `upstream_upgrade`.
        abort.disarm();
        tokio::spawn(splice(client_upgrade, upstream_upgrade, held));
        return Ok(Response::from_parts(parts, response::empty()));
    }

    // opencode declined the upgrade and answered plainly: the answer is passed on, and the
    // connection ends with it.
    abort.disarm();
    let (mut parts, body) = upstream_response.into_parts();
    rewrite_response_headers(&mut parts.headers, false);
    Ok(Response::from_parts(parts, response::boxed(body)))
}

/// Why a request got no response from opencode. Messages name no header values.
#[derive(Debug)]
enum Failure {
    TooLarge,
    ClientBody(String),
    Unavailable(String),
    Timeout(&'static str),
    BadGateway(String),
    Unauthorized,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TooLarge => f.write_str("request body over the limit"),
            Failure::ClientBody(error) => write!(f, "reading the request body: {error}"),
            Failure::Unavailable(why) => write!(f, "opencode unavailable: {why}"),
            Failure::Timeout(what) => write!(f, "timed out {what}"),
            Failure::BadGateway(why) => write!(f, "bad response from opencode: {why}"),
            Failure::Unauthorized => f.write_str("opencode answered 401"),
        }
    }
}

impl Failure {
    fn into_response(self, options: &ProxyOptions) -> Response<ResponseBody> {
        match self {
            Failure::TooLarge => response::error(
                ApiError::PayloadTooLarge,
                &format!(
                    "the request body exceeds {} bytes",
                    options.max_request_body
                ),
            ),
            Failure::ClientBody(_) => {
                response::error(ApiError::BadRequest, "the request body could not be read")
            }
            // opencode was running when the request began: it has just gone, and the
            // supervisor is about to notice and restart it.
            Failure::Unavailable(_) => response::with_retry_after(
                response::error(
                    ApiError::OpencodeUnavailable,
                    "opencode is not reachable (it may be restarting); retry after the seconds in Retry-After",
                ),
                crate::supervisor::RETRY_AFTER_STARTING,
            ),
            Failure::Timeout(what) => response::error(
                ApiError::OpencodeTimeout,
                &format!("opencode timed out {what}; retry shortly"),
            ),
            Failure::BadGateway(_) => {
                response::error(ApiError::BadGateway, "opencode sent an invalid response")
            }
            Failure::Unauthorized => response::error(
                ApiError::OpencodeUnauthorized,
                "opencode rejected the server's credentials",
            ),
        }
    }
}

/// The client's request body failed (over the limit, or the client went away). A type of its
/// own so that it can be told apart from opencode's failures in hyper's error chain.
#[derive(Debug)]
struct RequestBodyError(BoxError);

impl fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for RequestBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// What an upgraded connection's splice holds for as long as it runs: the device's
/// revocation to listen to, and the connection's place among the open ones.
struct Held {
    revocation: Option<Revocation>,
    _reservation: Option<UpgradeReservation>,
}

/// Copies bytes both ways between the client and opencode once both sides have upgraded.
/// With a [`Revocation`], stops (closing both) when it turns true.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    held: Held,
) {
    let Held {
        revocation,
        _reservation,
    } = held;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade to opencode not completed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let revoked = async {
        match revocation {
            Some(Revocation(mut revoked)) => {
                // A dropped sender (the server stopping) ends the splice too.
                let _ = revoked.wait_for(|revoked| *revoked).await;
            }
            None => std::future::pending().await,
        }
    };
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied,
        () = revoked => {
            tracing::info!("closed an upgraded connection: its device was revoked");
            return;
        }
    };
    match copied {
        Ok((to_upstream, to_client)) => {
            tracing::debug!(to_upstream, to_client, "upgraded connection closed");
        }
        Err(error) => tracing::debug!(%error, "upgraded connection ended with an error"),
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// An error of the pooled client: connecting, or the exchange itself.
/// opencode's response head to a request being `sent`, within `limit`: a failure as `classify`
/// names it, and a 401 (opencode refused our credentials) as [`Failure::Unauthorized`].
async fn response_head<E>(
    limit: Duration,
    sent: impl Future<Output = Result<Response<Incoming>, E>>,
    classify: impl FnOnce(&E) -> Failure,
) -> Result<Response<Incoming>, Failure> {
    let response = match tokio::time::timeout(limit, sent).await {
        Err(_) => return Err(Failure::Timeout("sending the response head")),
        Ok(Err(error)) => return Err(classify(&error)),
        Ok(Ok(response)) => response,
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        tracing::warn!("opencode rejected the server's credentials");
        return Err(Failure::Unauthorized);
    }
    Ok(response)
}

fn classify_client(error: &hyper_util::client::legacy::Error) -> Failure {
    if error.is_connect() {
        let timed_out = find_source::<std::io::Error>(error)
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        return if timed_out {
            Failure::Timeout("accepting the connection")
        } else {
            Failure::Unavailable(error_chain(error))
        };
    }
    match find_source::<hyper::Error>(error) {
        Some(error) => classify(error),
        None => Failure::BadGateway(error_chain(error)),
    }
}

fn classify(error: &hyper::Error) -> Failure {
    if let Some(body) = find_source::<RequestBodyError>(error) {
        if body.0.downcast_ref::<LengthLimitError>().is_some() {
            return Failure::TooLarge;
        }
        return Failure::ClientBody(error_chain(error));
    }
    if error.is_timeout() {
        return Failure::Timeout("sending the response head");
    }
    // All of these mean opencode went away before answering, which is what a restart or a
    // crash looks like from here.
    let gone = error.is_canceled()
        || error.is_closed()
        || error.is_incomplete_message()
        || find_source::<std::io::Error>(error).is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
            )
        });
    if gone {
        Failure::Unavailable(error_chain(error))
    } else {
        Failure::BadGateway(error_chain(error))
    }
}

/// An error and its sources, `: `-separated (the client's own messages say little alone).
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let more = source.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = source.source();
    }
    text
}

fn find_source<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

fn usize_limit(limit: u64) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// `Connection: upgrade` together with an `Upgrade` header (RFC 9110 §7.8).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// §7.6.1), keeping `Upgrade` when the upgrade is being passed through.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let nominated: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in nominated {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
    remove_prefixed(headers, "proxy-");
}

/// Removes every header whose (lowercase) name starts with `prefix`.
fn remove_prefixed(headers: &mut HeaderMap, prefix: &str) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

fn rewrite_request_headers(
    headers: &mut HeaderMap,
    upgrading: bool,
    upstream: &Upstream,
    client_addr: Option<ClientAddr>,
    original_host: Option<HeaderValue>,
    https: bool,
) {
    strip_hop_by_hop(headers, upgrading);
    // Without `Connection`, an HTTP/1.1 connection stays open: the pool's to reuse or close.
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // hyper's server side has answered any `Expect: 100-continue` already, when the body was
    // first read.
    headers.remove(header::EXPECT);

    headers.remove(header::AUTHORIZATION);
    headers.remove(OPENWORK_TOKEN);
    headers.insert(header::AUTHORIZATION, upstream.authorization.clone());
    headers.insert(
        header::HOST,
        HeaderValue::try_from(upstream.addr.to_string())
            .expect("a socket address is a valid header value"),
    );
    set_forwarding_headers(headers, client_addr, original_host, https);
}

/// We are the first hop opencode can trust, so whatever the client claims about earlier hops
/// is removed rather than appended to, and what we know is set: the client's address (from
/// the connection), the scheme, the `Host` it asked for and the prefix we strip.
fn set_forwarding_headers(
    headers: &mut HeaderMap,
    client_addr: Option<ClientAddr>,
    original_host: Option<HeaderValue>,
    https: bool,
) {
    headers.remove(header::FORWARDED);
    headers.remove(X_REAL_IP);
    remove_prefixed(headers, "x-forwarded-");

    let mut forwarded: Vec<Vec<u8>> = Vec::new();
    if let Some(ClientAddr(addr)) = client_addr {
        let ip = addr.ip().to_canonical();
        let value =
            HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value");
        headers.insert(X_FORWARDED_FOR, value.clone());
        headers.insert(X_REAL_IP, value);
        forwarded.push(
            match ip {
                std::net::IpAddr::V4(ip) => format!("for={ip}"),
                std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
            }
            .into_bytes(),
        );
    }
    if let Some(host) = original_host {
        let mut pair = b"host=".to_vec();
        pair.extend(quoted_string(host.as_bytes()));
        forwarded.push(pair);
        headers.insert(X_FORWARDED_HOST, host);
    }
    let proto = if https { "https" } else { "http" };
    forwarded.push(format!("proto={proto}").into_bytes());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(
        X_FORWARDED_PREFIX,
        HeaderValue::from_static(OPENCODE_PREFIX),
    );
    let forwarded = HeaderValue::from_bytes(&forwarded.join(&b';'))
        .expect("made of a header value, an IP address and tokens");
    headers.insert(header::FORWARDED, forwarded);
}

/// `value` as an RFC 9110 quoted-string (`"` and `\` escaped).
fn quoted_string(value: &[u8]) -> Vec<u8> {
    let mut quoted = Vec::with_capacity(value.len() + 2);
    quoted.push(b'"');
    for &byte in value {
        if byte == b'"' || byte == b'\\' {
            quoted.push(b'\\');
        }
        quoted.push(byte);
    }
    quoted.push(b'"');
    quoted
}

fn rewrite_response_headers(headers: &mut HeaderMap, upgraded: bool) {
    strip_hop_by_hop(headers, upgraded);
    if upgraded {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // A browser that saw opencode's challenge would prompt for opencode's password.
    headers.remove(header::WWW_AUTHENTICATE);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::client::conn::http1::SendRequest;
    use hyper::service::service_fn;
    use openwork_testkit::http::ChannelBody;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// Bounds every wait, so a proxy that stalls fails the test instead of hanging it.
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn within<F: Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(PATIENCE, future)
            .await
            .unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    /// A request body fed from a channel, so a test controls when each chunk is sent.
    fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, ResponseBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, response::boxed(ChannelBody(rx)))
    }

    /// An opencode stand-in: the tests' hyper server, handing every request to `handler`;
    /// never stopped, it lives as long as the test.
    async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        serve_upstream(listener, handler).serve_forever()
    }

    /// A running opencode stand-in that counts the connections it accepted, and whose
    /// `stop` closes its listener and every connection, as opencode's death does.
    type TestUpstream = openwork_testkit::http::HyperServer;

    fn serve_upstream<F, Fut>(listener: TcpListener, handler: F) -> TestUpstream
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        TestUpstream::spawn(listener, handler)
    }

    /// The front door as the server wires it: the client address as an extension, the
    /// prefix stripped, connections served with upgrades, one [`Proxy`] for all.
    async fn spawn_front(upstream: Upstream, options: ProxyOptions) -> SocketAddr {
        spawn_switchable_front(
            Arc::new(Mutex::new(upstream)),
            Arc::new(Proxy::new(options)),
        )
        .await
    }

    /// [`spawn_front`] with an upstream the test can switch, as a restart of opencode does.
    async fn spawn_switchable_front(
        upstream: Arc<Mutex<Upstream>>,
        proxy: Arc<Proxy>,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let upstream = upstream.clone();
                let proxy = proxy.clone();
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let upstream = upstream.lock().unwrap().clone();
                    let proxy = proxy.clone();
                    async move {
                        req.extensions_mut().insert(ClientAddr(peer));
                        let rest = req.uri().path().strip_prefix(OPENCODE_PREFIX).unwrap();
                        let rest = if rest.is_empty() { "/" } else { rest };
                        let target = match req.uri().query() {
                            Some(query) => format!("{rest}?{query}"),
                            None => rest.to_owned(),
                        };
                        let target = PathAndQuery::try_from(target).unwrap();
                        Ok::<_, Infallible>(proxy.forward(req, &upstream, target).await)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        addr
    }

    fn credentials(addr: SocketAddr) -> Upstream {
        Upstream::basic(addr, "opencode", "upstream-password")
    }

    async fn client(addr: SocketAddr) -> SendRequest<ResponseBody> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    fn get(front: SocketAddr, path: &str) -> Request<ResponseBody> {
        Request::get(path)
            .header(header::HOST, format!("localhost:{}", front.port()))
            .body(response::empty())
            .unwrap()
    }

    async fn send(front: SocketAddr, req: Request<ResponseBody>) -> Response<Incoming> {
        let mut sender = client(front).await;
        within("response head", sender.send_request(req))
            .await
            .unwrap()
    }

    async fn body_bytes(response: Response<Incoming>) -> Bytes {
        within("response body", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes()
    }

    async fn json_body(response: Response<Incoming>) -> serde_json::Value {
        serde_json::from_slice(&body_bytes(response).await).unwrap()
    }

    /// Echoes the request line and headers back as JSON.
    async fn describe(req: Request<Incoming>) -> Response<ResponseBody> {
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let mut response = response::json(
            StatusCode::OK,
            &serde_json::json!({ "uri": req.uri().to_string(), "headers": headers }),
        );
        // Both must be stripped on the way back.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"opencode\""),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    #[test]
    fn forward_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn check(req: Request<Incoming>, upstream: &Upstream, proxy: &Proxy) {
            assert_send(&proxy.forward(req, upstream, PathAndQuery::from_static("/")));
        }
        fn assert_shareable<T: Send + Sync>() {}
        assert_shareable::<Proxy>();
        let _ = check;
    }

    #[test]
    fn basic_credentials_are_sensitive_and_redacted() {
        let upstream = credentials("127.0.0.1:1".parse().unwrap());
        // base64("opencode:upstream-password")
        assert_eq!(
            upstream.authorization,
            "Basic b3BlbmNvZGU6dXBzdHJlYW0tcGFzc3dvcmQ="
        );
        assert!(upstream.authorization.is_sensitive());
        assert!(!format!("{upstream:?}").contains("b3Blbm"));
    }

    #[tokio::test]
    async fn path_and_query_are_forwarded_without_the_prefix() {
        let upstream = spawn_upstream(describe).await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;

        let response = send(front, get(front, "/opencode/session/abc?x=1&y=%20z")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let seen = json_body(response).await;
        assert_eq!(seen["uri"], "/session/abc?x=1&y=%20z");
    }

    #[tokio::test]
    async fn credentials_are_swapped_and_forwarding_headers_set() {
        let upstream = spawn_upstream(describe).await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;
        let mut sender = client(front).await;

        let host = format!("localhost:{}", front.port());
        let req = Request::get("/opencode/config")
            .header(header::HOST, &host)
            .header(header::AUTHORIZATION, "Bearer our-token")
            .header("x-openwork-token", "our-token")
            .header(header::CONNECTION, "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header(header::TE, "trailers")
            .header(header::PROXY_AUTHORIZATION, "Basic cHJveHk6cHJveHk=")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-custom", "kept")
            .body(response::empty())
            .unwrap();
        let response = within("response head", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(!response.headers().contains_key(header::CONNECTION));
        let seen = json_body(response).await;
        let headers = &seen["headers"];

        assert_eq!(
            headers["authorization"],
            "Basic b3BlbmNvZGU6dXBzdHJlYW0tcGFzc3dvcmQ="
        );
        assert_eq!(headers["host"], upstream.to_string());
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], host.as_str());
        assert_eq!(headers["x-forwarded-prefix"], "/opencode");
        assert_eq!(headers["x-custom"], "kept");
        for gone in [
            "x-openwork-token",
            "x-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} was forwarded");
        }

        // opencode's `Connection: close` stayed on the upstream hop: the client's connection
        // still serves a second request.
        within("second request ready", sender.ready())
            .await
            .unwrap();
        let response = within(
            "second response",
            sender.send_request(get(front, "/opencode/again")),
        )
        .await
        .unwrap();
        assert_eq!(json_body(response).await["uri"], "/again");
    }

    #[tokio::test]
    async fn a_large_body_is_streamed_both_ways() {
        const TOTAL: usize = 10 * 1024 * 1024;
        const FIRST: usize = 1024 * 1024;
        const CHUNK: usize = 64 * 1024;
        let upstream = spawn_upstream(|req: Request<Incoming>| async move {
            Response::new(response::boxed(req.into_body()))
        })
        .await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;

        let payload: Arc<Vec<u8>> = Arc::new((0..TOTAL).map(|i| (i % 251) as u8).collect());
        let (tx, body) = channel_body(4);
        let (go_on, echoed_first) = oneshot::channel::<()>();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                for chunk in payload[..FIRST].chunks(CHUNK) {
                    tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
                }
                // The rest is sent only once the first part has come back, which it cannot
                // if either direction is buffered whole.
                echoed_first.await.unwrap();
                for chunk in payload[FIRST..].chunks(CHUNK) {
                    tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
                }
            })
        };

        let req = Request::post("/opencode/echo")
            .header(header::HOST, "localhost")
            .body(body)
            .unwrap();
        let response = send(front, req).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::with_capacity(TOTAL);
        let mut go_on = Some(go_on);
        while let Some(frame) = within("echoed bytes", body.frame()).await {
            if let Ok(data) = frame.unwrap().into_data() {
                received.extend_from_slice(&data);
            }
            if received.len() >= FIRST
                && let Some(go_on) = go_on.take()
            {
                go_on.send(()).unwrap();
            }
        }
        within("writer", writer).await.unwrap();
        assert_eq!(received.len(), TOTAL);
        assert!(received == *payload, "the echoed body differs");
    }

    /// Reads a response head from a raw connection; returns it lowercased, and the bytes
    /// read past it.
    async fn read_head(io: &mut TcpStream) -> (String, Vec<u8>) {
        let mut received = Vec::new();
        loop {
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..at + 4]).to_ascii_lowercase();
                return (head, received[at + 4..].to_vec());
            }
            let mut buf = [0u8; 1024];
            let n = within("response head", io.read(&mut buf)).await.unwrap();
            assert_ne!(
                n,
                0,
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_body_announced_over_the_limit_is_refused_before_connecting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ProxyOptions {
            max_request_body: 1024,
            ..ProxyOptions::default()
        };
        let front = spawn_front(credentials(listener.local_addr().unwrap()), options).await;

        // With `Expect: 100-continue` and the body held back, a proxy that started reading
        // the body would answer `100 Continue` first.
        let mut io = TcpStream::connect(front).await.unwrap();
        io.write_all(
            b"POST /opencode/upload HTTP/1.1\r\nHost: localhost\r\n\
              Content-Length: 2048\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let (head, _) = read_head(&mut io).await;
        assert!(head.starts_with("http/1.1 413"), "{head}");
        let nothing = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(nothing.is_err(), "the proxy connected to opencode");
    }

    #[tokio::test]
    async fn a_body_at_the_limit_is_forwarded() {
        let upstream = spawn_upstream(|req: Request<Incoming>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            response::json(StatusCode::OK, &serde_json::json!({ "len": body.len() }))
        })
        .await;
        let options = ProxyOptions {
            max_request_body: 1024,
            ..ProxyOptions::default()
        };
        let front = spawn_front(credentials(upstream), options).await;

        let req = Request::post("/opencode/upload")
            .header(header::HOST, "localhost")
            .body(response::boxed(Full::new(Bytes::from(vec![7u8; 1024]))))
            .unwrap();
        let response = send(front, req).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_body(response).await["len"], 1024);
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_aborts_the_upstream_request() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Result<usize, String>>();
        let upstream = spawn_upstream(move |req: Request<Incoming>| {
            let seen_tx = seen_tx.clone();
            async move {
                let outcome = req.into_body().collect().await;
                let _ = seen_tx.send(
                    outcome
                        .map(|body| body.to_bytes().len())
                        .map_err(|e| e.to_string()),
                );
                Response::new(response::empty())
            }
        })
        .await;
        let options = ProxyOptions {
            max_request_body: 1024,
            ..ProxyOptions::default()
        };
        let front = spawn_front(credentials(upstream), options).await;

        // No Content-Length: the limit can only be found while streaming.
        let (tx, body) = channel_body(4);
        tx.send(Bytes::from(vec![1u8; 600])).await.unwrap();
        tx.send(Bytes::from(vec![2u8; 600])).await.unwrap();
        drop(tx);
        let req = Request::post("/opencode/upload")
            .header(header::HOST, "localhost")
            .body(body)
            .unwrap();
        let response = send(front, req).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json_body(response).await["error"], "payload_too_large");
        let upstream_saw = within("upstream body outcome", seen.recv()).await.unwrap();
        assert!(
            upstream_saw.is_err(),
            "opencode received a complete body: {upstream_saw:?}"
        );
    }

    #[tokio::test]
    async fn an_sse_event_arrives_before_the_stream_ends() {
        let (senders_tx, mut senders) = mpsc::unbounded_channel::<mpsc::Sender<Bytes>>();
        let upstream = spawn_upstream(move |_req: Request<Incoming>| {
            let senders_tx = senders_tx.clone();
            async move {
                let (tx, body) = channel_body(4);
                tx.send(Bytes::from_static(b"data: hello\n\n"))
                    .await
                    .unwrap();
                senders_tx.send(tx).unwrap();
                let mut response = Response::new(body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                response
            }
        })
        .await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;

        let response = send(front, get(front, "/opencode/event")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let events = within("upstream sender", senders.recv()).await.unwrap();
        let mut body = response.into_body();
        let mut received = Vec::new();
        while !received.ends_with(b"\n\n") {
            let frame = within("first event", body.frame()).await.unwrap().unwrap();
            received.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(received, b"data: hello\n\n");
        assert!(!body.is_end_stream());

        events
            .send(Bytes::from_static(b"data: bye\n\n"))
            .await
            .unwrap();
        drop(events);
        let rest = within("end of stream", body.collect()).await.unwrap();
        assert_eq!(rest.to_bytes(), "data: bye\n\n");
    }

    #[tokio::test]
    async fn an_upgrade_passes_bytes_both_ways() {
        let upstream = spawn_upstream(|mut req: Request<Incoming>| async move {
            let asked = req.headers().get(header::UPGRADE).cloned();
            let authorized = req.headers().get(header::AUTHORIZATION).cloned();
            if asked.as_ref().is_none_or(|v| v != "test-proto")
                || authorized.is_none_or(|v| !v.as_bytes().starts_with(b"Basic "))
            {
                return response::json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": "no_upgrade", "message": "no upgrade" }),
                );
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(on_upgrade.await.unwrap());
                io.write_all(b"hello from upstream").await.unwrap();
                let mut ping = [0u8; 4];
                io.read_exact(&mut ping).await.unwrap();
                io.write_all(b"echo:").await.unwrap();
                io.write_all(&ping).await.unwrap();
                io.shutdown().await.unwrap();
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "test-proto")
                .header("sec-test-accept", "yes")
                .body(response::empty())
                .unwrap()
        })
        .await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;

        let mut io = TcpStream::connect(front).await.unwrap();
        io.write_all(
            b"GET /opencode/pty HTTP/1.1\r\nHost: localhost\r\n\
              Connection: Upgrade\r\nUpgrade: test-proto\r\n\r\n",
        )
        .await
        .unwrap();
        let (head, mut upgraded) = read_head(&mut io).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: test-proto"), "{head}");
        assert!(head.contains("sec-test-accept: yes"), "{head}");
        while upgraded.len() < b"hello from upstream".len() {
            let mut buf = [0u8; 1024];
            let n = within("upstream greeting", io.read(&mut buf))
                .await
                .unwrap();
            assert_ne!(n, 0, "closed before the greeting");
            upgraded.extend_from_slice(&buf[..n]);
        }
        assert_eq!(upgraded, b"hello from upstream");

        io.write_all(b"ping").await.unwrap();
        let mut echo = Vec::new();
        within("echo", io.read_to_end(&mut echo)).await.unwrap();
        assert_eq!(echo, b"echo:ping");
    }

    #[tokio::test]
    async fn opencode_not_listening_is_503() {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let front = spawn_front(credentials(addr), ProxyOptions::default()).await;

        let response = send(front, get(front, "/opencode/session")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            json_body(response).await,
            serde_json::json!({
                "error": "opencode_unavailable",
                "message": "opencode is not reachable (it may be restarting); retry after the seconds in Retry-After",
            })
        );
    }

    /// A raw opencode stand-in that accepts one connection, reads the request head, and
    /// hands the socket to the test. Raw on purpose, not the test server: the tests close,
    /// reset or stall the socket, or write a response and die halfway, which no
    /// well-behaved server does.
    async fn spawn_raw_upstream() -> (SocketAddr, oneshot::Receiver<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = tx.send(stream);
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn opencode_closing_before_answering_is_503() {
        let (addr, socket) = spawn_raw_upstream().await;
        let front = spawn_front(credentials(addr), ProxyOptions::default()).await;

        let mut sender = client(front).await;
        let response = tokio::spawn(sender.send_request(get(front, "/opencode/session")));
        drop(within("request reaches opencode", socket).await.unwrap());
        let response = within("response", response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json_body(response).await["error"], "opencode_unavailable");
    }

    #[tokio::test]
    async fn opencode_resetting_before_answering_is_503() {
        let (addr, socket) = spawn_raw_upstream().await;
        let front = spawn_front(credentials(addr), ProxyOptions::default()).await;

        let mut sender = client(front).await;
        let response = tokio::spawn(sender.send_request(get(front, "/opencode/session")));
        let socket = within("request reaches opencode", socket).await.unwrap();
        socket.set_zero_linger().unwrap();
        drop(socket);
        let response = within("response", response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_slow_response_head_is_504_and_the_upstream_connection_closed() {
        let (addr, socket) = spawn_raw_upstream().await;
        let options = ProxyOptions {
            response_header_timeout: Duration::from_millis(200),
            ..ProxyOptions::default()
        };
        let front = spawn_front(credentials(addr), options).await;

        let mut sender = client(front).await;
        let response = tokio::spawn(sender.send_request(get(front, "/opencode/slow")));
        let mut socket = within("request reaches opencode", socket).await.unwrap();
        let response = within("response", response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json_body(response).await["error"], "opencode_timeout");
        let mut rest = Vec::new();
        within("proxy closes its side", socket.read_to_end(&mut rest))
            .await
            .unwrap();
    }

    const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                              transfer-encoding: chunked\r\n\r\n";
    const SSE_CHUNK: &[u8] = b"d\r\ndata: hello\n\n\r\n";

    #[tokio::test]
    async fn opencode_dying_mid_stream_ends_the_client_body() {
        let (addr, socket) = spawn_raw_upstream().await;
        let front = spawn_front(credentials(addr), ProxyOptions::default()).await;

        let mut sender = client(front).await;
        let response = tokio::spawn(sender.send_request(get(front, "/opencode/event")));
        let mut socket = within("request reaches opencode", socket).await.unwrap();
        socket.write_all(SSE_HEAD).await.unwrap();
        socket.write_all(SSE_CHUNK).await.unwrap();
        let response = within("response", response).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let first = within("first event", body.frame()).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: hello\n\n");

        drop(socket);
        match within("body ends after opencode died", body.frame()).await {
            None | Some(Err(_)) => {}
            Some(Ok(frame)) => panic!("a frame after opencode died: {frame:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_leaving_a_stream_closes_the_upstream_connection() {
        let (addr, socket) = spawn_raw_upstream().await;
        let front = spawn_front(credentials(addr), ProxyOptions::default()).await;

        let mut sender = client(front).await;
        let response = tokio::spawn(sender.send_request(get(front, "/opencode/event")));
        let mut socket = within("request reaches opencode", socket).await.unwrap();
        socket.write_all(SSE_HEAD).await.unwrap();
        socket.write_all(SSE_CHUNK).await.unwrap();
        let response = within("response", response).await.unwrap().unwrap();
        let mut body = response.into_body();
        within("first event", body.frame()).await.unwrap().unwrap();

        drop(body);
        drop(sender);
        let mut rest = Vec::new();
        within("proxy closes its side", socket.read_to_end(&mut rest))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_upstream_401_is_502_without_a_challenge() {
        let upstream = spawn_upstream(|_req: Request<Incoming>| async {
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"opencode\"")
                .body(response::boxed(Full::new(Bytes::from_static(
                    b"Unauthorized",
                ))))
                .unwrap()
        })
        .await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;

        let response = send(front, get(front, "/opencode/session")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(
            json_body(response).await,
            serde_json::json!({
                "error": "opencode_unauthorized",
                "message": "opencode rejected the server's credentials",
            })
        );
    }

    #[test]
    fn hop_by_hop_headers_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, X-A"));
        headers.append(header::CONNECTION, HeaderValue::from_static("x-b"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert("x-c", HeaderValue::from_static("1"));
        assert!(is_upgrade(&headers));

        let mut upgrading = headers.clone();
        strip_hop_by_hop(&mut upgrading, true);
        let mut names: Vec<_> = upgrading.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["upgrade", "x-c"]);

        strip_hop_by_hop(&mut headers, false);
        let names: Vec<_> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-c"]);
    }

    #[test]
    fn claims_about_earlier_hops_are_replaced() {
        let upstream = credentials("127.0.0.1:4096".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        headers.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9"),
        );
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));

        rewrite_request_headers(&mut headers, false, &upstream, None, None, false);
        for gone in ["x-forwarded-for", "x-forwarded-host", "expect"] {
            assert!(!headers.contains_key(gone), "{gone} was kept");
        }
        assert_eq!(headers[header::FORWARDED], "proto=http");
        assert_eq!(headers[header::HOST], "127.0.0.1:4096");
        // The connection is kept alive for the pool, which is HTTP/1.1's default.
        assert!(!headers.contains_key(header::CONNECTION));

        let mut upgrading = HeaderMap::new();
        upgrading.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        upgrading.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        rewrite_request_headers(&mut upgrading, true, &upstream, None, None, false);
        assert_eq!(upgrading[header::CONNECTION], "upgrade");
        assert_eq!(upgrading[header::UPGRADE], "websocket");
    }

    /// Answers with the `Authorization` it received and its own port.
    fn whoami(req: Request<Incoming>) -> impl Future<Output = Response<ResponseBody>> {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        async move {
            response::json(
                StatusCode::OK,
                &serde_json::json!({ "authorization": authorization }),
            )
        }
    }

    /// Sends `GET path` on `sender` and returns the status and JSON body.
    async fn get_json(
        sender: &mut SendRequest<ResponseBody>,
        front: SocketAddr,
        path: &str,
    ) -> (StatusCode, serde_json::Value) {
        within("ready for a request", sender.ready()).await.unwrap();
        let response = within("response head", sender.send_request(get(front, path)))
            .await
            .unwrap();
        (response.status(), json_body(response).await)
    }

    #[tokio::test]
    async fn requests_share_one_kept_alive_upstream_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = serve_upstream(listener, whoami);
        let front = spawn_front(credentials(upstream.address()), ProxyOptions::default()).await;

        let mut sender = client(front).await;
        for _ in 0..20 {
            let (status, _) = get_json(&mut sender, front, "/opencode/global/health").await;
            assert_eq!(status, StatusCode::OK);
        }
        // A second client connection to the front door shares the same pool.
        let mut other = client(front).await;
        let (status, _) = get_json(&mut other, front, "/opencode/global/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            upstream.accepted(),
            1,
            "a connection per request, not a pool"
        );
    }

    #[tokio::test]
    async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
        let (addr, socket) = spawn_raw_upstream().await;
        let options = ProxyOptions {
            pool_idle_timeout: Duration::from_millis(200),
            ..ProxyOptions::default()
        };
        let front = spawn_front(credentials(addr), options).await;

        let mut sender = client(front).await;
        let response = tokio::spawn(sender.send_request(get(front, "/opencode/global/health")));
        let mut socket = within("request reaches opencode", socket).await.unwrap();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let response = within("response", response).await.unwrap().unwrap();
        assert_eq!(body_bytes(response).await, "ok");
        // Kept for a while, then closed by us (so the TIME-WAIT is on our side, and opencode
        // never closes a connection we are about to use).
        let started = Instant::now();
        let mut rest = Vec::new();
        within(
            "proxy closes the idle connection",
            socket.read_to_end(&mut rest),
        )
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_new_opencode_instance_gets_a_new_pool() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = serve_upstream(listener, whoami);
        let first = credentials(upstream.address());
        let second = Upstream::basic(upstream.address(), "opencode", "second-password");
        let current = Arc::new(Mutex::new(first.clone()));
        let proxy = Arc::new(Proxy::new(ProxyOptions::default()));
        let front = spawn_switchable_front(current.clone(), proxy.clone()).await;

        let mut sender = client(front).await;
        for _ in 0..3 {
            let (_, seen) = get_json(&mut sender, front, "/opencode/x").await;
            assert_eq!(seen["authorization"], first.authorization.to_str().unwrap());
        }
        assert_eq!(upstream.accepted(), 1);

        // Same address, new password: another process as far as the pool is concerned.
        *current.lock().unwrap() = second.clone();
        let (_, seen) = get_json(&mut sender, front, "/opencode/x").await;
        assert_eq!(
            seen["authorization"],
            second.authorization.to_str().unwrap()
        );
        assert_eq!(
            upstream.accepted(),
            2,
            "a connection made for the old instance was reused"
        );

        // Forgetting the pool (opencode is gone) closes the idle connections too.
        proxy.forget();
        let (_, seen) = get_json(&mut sender, front, "/opencode/x").await;
        assert_eq!(
            seen["authorization"],
            second.authorization.to_str().unwrap()
        );
        assert_eq!(upstream.accepted(), 3);
    }

    #[tokio::test]
    async fn the_first_request_after_a_restart_succeeds() {
        for same_port in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let before = serve_upstream(listener, whoami);
            let current = Arc::new(Mutex::new(credentials(before.address())));
            let proxy = Arc::new(Proxy::new(ProxyOptions::default()));
            let front = spawn_switchable_front(current.clone(), proxy).await;
            let mut sender = client(front).await;
            let (status, _) = get_json(&mut sender, front, "/opencode/x").await;
            assert_eq!(status, StatusCode::OK);

            // opencode dies with an idle pooled connection to it, and comes back with a new
            // password, on the same port or another one; the very next request is answered.
            let old_addr = before.address();
            within("the stand-in stops", before.stop()).await;
            let listener = if same_port {
                TcpListener::bind(old_addr).await.unwrap()
            } else {
                TcpListener::bind("127.0.0.1:0").await.unwrap()
            };
            let after = serve_upstream(listener, whoami);
            let restarted = Upstream::basic(after.address(), "opencode", "after-restart");
            *current.lock().unwrap() = restarted.clone();
            let (status, seen) = get_json(&mut sender, front, "/opencode/x").await;
            assert_eq!(status, StatusCode::OK, "same port: {same_port}: {seen}");
            assert_eq!(
                seen["authorization"],
                restarted.authorization.to_str().unwrap()
            );
            assert_eq!(after.accepted(), 1);
        }
    }

    #[tokio::test]
    async fn a_response_the_client_did_not_finish_is_not_reused() {
        // opencode answers with a body that the client abandons half-way: the connection
        // still has bytes of that answer on it and must never carry the next request.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = serve_upstream(listener, |req: Request<Incoming>| async move {
            if req.uri().path() == "/big" {
                let (tx, body) = channel_body(1);
                tokio::spawn(async move {
                    for _ in 0..64 {
                        if tx.send(Bytes::from(vec![b'x'; 64 * 1024])).await.is_err() {
                            return;
                        }
                    }
                });
                Response::new(body)
            } else {
                response::json(StatusCode::OK, &serde_json::json!({ "small": true }))
            }
        });
        let front = spawn_front(credentials(upstream.address()), ProxyOptions::default()).await;

        let response = send(front, get(front, "/opencode/big")).await;
        let mut body = response.into_body();
        within("first chunk", body.frame()).await.unwrap().unwrap();
        drop(body);

        let mut sender = client(front).await;
        let (status, seen) = get_json(&mut sender, front, "/opencode/small").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen["small"], true);
        assert_eq!(upstream.accepted(), 2);
    }

    #[tokio::test]
    async fn spoofed_forwarding_headers_are_replaced_end_to_end() {
        let upstream = spawn_upstream(describe).await;
        let front = spawn_front(credentials(upstream), ProxyOptions::default()).await;

        let host = format!("localhost:{}", front.port());
        let req = Request::get("/opencode/x")
            .header(header::HOST, &host)
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-port", "443")
            .header("x-forwarded-prefix", "/elsewhere")
            .header("x-forwarded-ssl", "on")
            .header("x-real-ip", "203.0.113.9")
            .header(header::FORWARDED, "for=203.0.113.9;proto=https")
            .body(response::empty())
            .unwrap();
        let response = send(front, req).await;
        let seen = json_body(response).await;
        let headers = &seen["headers"];
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-real-ip"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], host.as_str());
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-prefix"], "/opencode");
        assert_eq!(
            headers["forwarded"],
            format!("for=127.0.0.1;host=\"{host}\";proto=http")
        );
        for gone in ["x-forwarded-port", "x-forwarded-ssl"] {
            assert!(headers.get(gone).is_none(), "{gone} was passed through");
        }
    }

    #[test]
    fn every_client_forwarding_claim_is_replaced() {
        let upstream = credentials("127.0.0.1:4096".parse().unwrap());
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/elsewhere"),
            ("x-forwarded-server", "evil"),
            ("x-forwarded-ssl", "on"),
            ("x-real-ip", "203.0.113.9"),
            ("x-real-ip", "198.51.100.1"),
            ("forwarded", "for=203.0.113.9;host=evil.example;proto=https"),
            ("forwarded", "for=198.51.100.1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let client = ClientAddr("127.0.0.1:5555".parse().unwrap());
        let host = HeaderValue::from_static("localhost:7777");
        rewrite_request_headers(
            &mut headers,
            false,
            &upstream,
            Some(client),
            Some(host),
            false,
        );

        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(all("x-real-ip"), ["127.0.0.1"]);
        assert_eq!(all("x-forwarded-host"), ["localhost:7777"]);
        assert_eq!(all("x-forwarded-proto"), ["http"]);
        assert_eq!(all("x-forwarded-prefix"), ["/opencode"]);
        assert_eq!(
            all("forwarded"),
            ["for=127.0.0.1;host=\"localhost:7777\";proto=http"]
        );
        for gone in ["x-forwarded-port", "x-forwarded-server", "x-forwarded-ssl"] {
            assert!(all(gone).is_empty(), "{gone} was passed through");
        }
    }

    #[test]
    fn without_a_client_address_or_host_none_is_claimed() {
        let upstream = credentials("127.0.0.1:4096".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-real-ip", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        rewrite_request_headers(&mut headers, false, &upstream, None, None, false);
        for gone in ["x-forwarded-for", "x-real-ip", "x-forwarded-host"] {
            assert!(!headers.contains_key(gone), "{gone} was passed through");
        }
        assert_eq!(headers[header::FORWARDED], "proto=http");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn ipv6_clients_and_odd_hosts_are_written_as_forwarded_expects() {
        let upstream = credentials("127.0.0.1:4096".parse().unwrap());
        for (peer, host, expect_for, expect_forwarded) in [
            (
                "[::1]:5555",
                "localhost",
                "::1",
                "for=\"[::1]\";host=\"localhost\";proto=http",
            ),
            (
                "[::ffff:127.0.0.1]:5555",
                "a\"b\\c",
                "127.0.0.1",
                "for=127.0.0.1;host=\"a\\\"b\\\\c\";proto=http",
            ),
        ] {
            let mut headers = HeaderMap::new();
            let client = ClientAddr(peer.parse().unwrap());
            let host = HeaderValue::from_str(host).unwrap();
            rewrite_request_headers(
                &mut headers,
                false,
                &upstream,
                Some(client),
                Some(host),
                false,
            );
            assert_eq!(headers["x-forwarded-for"], expect_for);
            assert_eq!(headers["x-real-ip"], expect_for);
            assert_eq!(headers[header::FORWARDED], expect_forwarded);
        }
    }
}
