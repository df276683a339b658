//! A minimal HTTP/1.1 client over `std::net` for the end-to-end tests: one request per
//! connection, `Content-Length` and chunked responses, and a streaming reader for SSE.
//! Deliberately not the server's own client code, so a bug there cannot hide here.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// A whole response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given, the way every
/// client of the server authenticates.
pub fn request_with_token(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, method, path, &headers, body)
}

/// Sends one request and reads the whole response (30 s read timeout); panics on any
/// I/O or protocol error.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_request(addr, method, path, headers, body, DEFAULT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// Sends one request and reads the whole response, with `timeout` for the connect and for
/// each read. Errors, for callers that count failures instead of failing (the soak):
/// `TimedOut`/`WouldBlock` when the server went quiet, `InvalidData` for a bad response.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let (status, headers, mut reader) = try_open(addr, method, path, headers, body, timeout)?;
    let body = read_body(&mut reader, method, status, &headers)?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends a request and reads the response head: status, headers and the reader positioned
/// at the body, for [`read_body`] or line by line. A caller that needs to know whether an
/// answer had begun when the connection failed reads the two parts apart.
pub fn try_open(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<OpenStream> {
    let mut reader = open(addr, method, path, headers, body, timeout)?;
    let (status, headers) = read_head(&mut reader)?;
    Ok((status, headers, reader))
}

/// Reads a whole body after [`try_open`]: by `Content-Length`, chunked, or to the end.
pub fn read_body(
    reader: &mut impl BufRead,
    method: &str,
    status: u16,
    headers: &[(String, String)],
) -> io::Result<Vec<u8>> {
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
    } else if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| invalid(format!("bad chunk size line: {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Sends a request and returns the status, headers and a reader positioned at the body:
/// for event streams, read it line by line (a read timeout of `timeout` applies). Panics
/// on any I/O or protocol error.
pub fn stream(addr: &str, path: &str, headers: &[(&str, &str)], timeout: Duration) -> OpenStream {
    try_stream(addr, path, headers, timeout).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// A response whose body is still to be read: status, headers (names lower-cased) and
/// the reader positioned at the body.
pub type OpenStream = (u16, Vec<(String, String)>, BufReader<TcpStream>);

/// [`stream`], returning errors instead of panicking.
pub fn try_stream(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<OpenStream> {
    try_open(addr, "GET", path, headers, b"", timeout)
}

/// The read timeout of the panicking calls.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn open(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<BufReader<TcpStream>> {
    let socket = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid(format!("{addr} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("connect {addr}: {e}")))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A caller's own Host replaces the default (one Host per request, as a client sends).
    let own_host = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !own_host {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    head.push_str("Connection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    Ok(BufReader::new(stream))
}

/// Reads a response head: the status and the headers (names lower-cased), leaving the
/// reader at the body (for a client that keeps its connection, as the benchmarks' does).
pub fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside the response head",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
