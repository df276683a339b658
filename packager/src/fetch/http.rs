//! Blocking HTTP for `fetch`: rustls with the operating system's trust store (intercepting
//! corporate proxies put their CA there, and `SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured),
//! `HTTPS_PROXY`/`NO_PROXY` from the environment, and retries with exponential backoff on
//! failures that retrying can fix (connect errors, timeouts, cut-off bodies, 408, 429, 5xx).
//!
//! Why reqwest 0.12 with `rustls-tls-native-roots` rather than 0.13 (whose default is
//! rustls-platform-verifier): 0.12 with rustls-native-certs and ring is already in the
//! lock file through apple-codesign, so the packager adds no TLS stack and no C/asm build
//! (0.13's default provider is aws-lc-rs); both trust what the OS store trusts, which is
//! what intercepting proxies and corporate users need. Moving to 0.13 is a feature switch
//! if the platform verifier's revocation and macOS keychain policy handling become wanted.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use openwork_payload::error::display_chain;
use openwork_retry::Backoff;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{StatusCode, Url};

use super::error::{FetchError, Result, io_err};
use super::registry::{Credential, is_loopback, redact_url};
use crate::progress::Progress;

/// How many times a request is tried before giving up.
pub(crate) const ATTEMPTS: u32 = 4;
/// Downloads and documents: [`ATTEMPTS`] tries, 0.5 s before the second, doubled for each
/// further one (0.5, 1, 2 s: a registry's or mirror's restart is usually over by then).
const RETRY: Backoff = Backoff::exponential(Duration::from_millis(500)).attempts(ATTEMPTS);
/// A connection or a read that makes no progress for this long fails (and is retried).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("openwork-packager/", env!("CARGO_PKG_VERSION"));

/// How much a response body may be. A download is written to disk before its integrity
/// can be checked, so an answer that does not end (no `Content-Length`, or a lying one)
/// must not fill the disk first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// The most bytes accepted.
    pub bytes: u64,
    /// Whether exactly `bytes` must arrive (a locked size).
    pub exact: bool,
    /// Where the limit comes from, for the error.
    pub reason: &'static str,
}

impl Limit {
    /// A download nothing announced the size of: the largest input (opencode's npm
    /// tarball) is about 60 MB, so 1 GiB is generous and still bounded.
    pub(crate) fn download() -> Limit {
        Limit {
            bytes: 1 << 30,
            exact: false,
            reason: "the packager's ceiling for a download of unknown size",
        }
    }

    /// A download whose size is known in advance.
    pub(crate) fn exactly(bytes: u64, reason: &'static str) -> Limit {
        Limit {
            bytes,
            exact: true,
            reason,
        }
    }

    /// A metadata document (an npm version document is a few KiB).
    fn document() -> Limit {
        Limit {
            bytes: 16 << 20,
            exact: false,
            reason: "the packager's ceiling for a metadata document",
        }
    }

    fn exceeded(&self, url: &str) -> FetchError {
        FetchError::TooLarge {
            url: url.to_owned(),
            limit: self.bytes,
            reason: self.reason.to_owned(),
        }
    }
}

/// Why one attempt failed: a description for a transient failure (another attempt may
/// fix it), the error for a permanent one.
pub(crate) type Failure = openwork_retry::Failure<String, FetchError>;

/// An HTTP client for one fetch.
pub(crate) struct Http<'a> {
    client: Client,
    progress: &'a Progress,
}

impl<'a> Http<'a> {
    /// A client for talking to `registry`. A registry on the loopback interface (a local
    /// mirror, a test server) is reached directly, never through a proxy.
    pub(crate) fn new(registry: &Url, progress: &'a Progress) -> Result<Self> {
        let mut builder = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            // For the blocking client this bounds each wait (headers, every body read), not the
            // whole transfer, so it is an idle timeout.
            .timeout(IDLE_TIMEOUT)
            .tls_built_in_native_certs(true);
        if is_loopback(registry) {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| FetchError::Http {
            url: redact_url(registry),
            attempts: 0,
            detail: format!("cannot set up the HTTP client: {}", display_chain(&e)),
        })?;
        Ok(Http { client, progress })
    }

    /// GETs `url`, retrying transient failures ([`RETRY`]); `on_success` consumes a 2xx
    /// response and may itself fail transiently (a body cut off) or fatally.
    pub(crate) fn get<T>(
        &self,
        url: &Url,
        credential: Option<&Credential>,
        accept: &str,
        mut on_success: impl FnMut(Response) -> Result<T, Failure>,
    ) -> Result<T> {
        let shown = redact_url(url);
        let authorization = credential
            .map(|credential| {
                let mut value =
                    HeaderValue::from_str(&credential.header_value()).map_err(|_| {
                        FetchError::Http {
                            url: shown.clone(),
                            attempts: 0,
                            detail:
                                "the configured registry credential is not a valid header value"
                                    .into(),
                        }
                    })?;
                value.set_sensitive(true);
                Ok::<_, FetchError>(value)
            })
            .transpose()?;
        RETRY
            .retry(
                || {
                    let mut request = self.client.get(url.clone()).header(ACCEPT, accept);
                    if let Some(value) = &authorization {
                        request = request.header(AUTHORIZATION, value.clone());
                    }
                    match request.send() {
                        Err(e) => Err(Failure::Transient(display_chain(&e.without_url()))),
                        Ok(response) if response.status().is_success() => on_success(response),
                        Ok(response) => Err(status_failure(&shown, response.status())),
                    }
                },
                |retrying| {
                    self.progress.line(format_args!(
                        "GET {shown} failed ({}); retrying in {:.1} s (attempt {} of {ATTEMPTS})",
                        retrying.failure,
                        retrying.delay.as_secs_f64(),
                        retrying.attempt + 1
                    ));
                },
            )
            .map_err(|gave_up| match gave_up.failure {
                Failure::Permanent(error) => error,
                Failure::Transient(detail) => FetchError::Http {
                    url: shown.clone(),
                    attempts: gave_up.attempts,
                    detail,
                },
            })
    }

    /// GETs a small document into memory.
    pub(crate) fn get_bytes(
        &self,
        url: &Url,
        credential: Option<&Credential>,
        accept: &str,
    ) -> Result<Vec<u8>> {
        let limit = Limit::document();
        let shown = redact_url(url);
        self.get(url, credential, accept, |response| {
            if response.content_length().is_some_and(|n| n > limit.bytes) {
                return Err(Failure::Permanent(limit.exceeded(&shown)));
            }
            let mut body = Vec::new();
            response
                .take(limit.bytes + 1)
                .read_to_end(&mut body)
                .map_err(|e| Failure::Transient(format!("reading the body: {e}")))?;
            if body.len() as u64 > limit.bytes {
                return Err(Failure::Permanent(limit.exceeded(&shown)));
            }
            Ok(body)
        })
    }

    /// Downloads `url` into `dest` (created or truncated on every attempt), feeding every
    /// byte to a fresh `sink` per attempt; returns the sink and the byte count.
    pub(crate) fn download<S: Write>(
        &self,
        url: &Url,
        credential: Option<&Credential>,
        dest: &Path,
        limit: Limit,
        mut new_sink: impl FnMut() -> S,
    ) -> Result<(S, u64)> {
        let shown = redact_url(url);
        self.get(
            url,
            credential,
            "application/octet-stream",
            |mut response| {
                let started = Instant::now();
                let total = response.content_length();
                match total {
                    Some(announced) if announced > limit.bytes => {
                        return Err(Failure::Permanent(limit.exceeded(&shown)));
                    }
                    Some(announced) if limit.exact && announced != limit.bytes => {
                        return Err(Failure::Permanent(FetchError::TooLarge {
                            url: shown.clone(),
                            limit: limit.bytes,
                            reason: format!(
                                "{}; the server announces {announced} bytes",
                                limit.reason
                            ),
                        }));
                    }
                    _ => {}
                }
                let mut file =
                    fs_err::File::create(dest).map_err(|e| Failure::Permanent(e.into()))?;
                let mut sink = new_sink();
                let mut buf = vec![0u8; 256 * 1024];
                let mut received = 0u64;
                self.progress.line(format_args!(
                    "downloading {shown} ({})",
                    total.map_or("size unknown".into(), megabytes)
                ));
                let mut meter = Meter::new(self.progress, total);
                loop {
                    let n = match response.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(Failure::Transient(format!(
                                "download cut off after {}: {e}",
                                megabytes(received)
                            )));
                        }
                    };
                    if received + n as u64 > limit.bytes {
                        return Err(Failure::Permanent(limit.exceeded(&shown)));
                    }
                    file.write_all(&buf[..n])
                        .map_err(|e| Failure::Permanent(e.into()))?;
                    sink.write_all(&buf[..n])
                        .map_err(|e| Failure::Permanent(io_err("hash", dest)(e)))?;
                    received += n as u64;
                    meter.advance(self.progress, received, total);
                }
                drop(meter);
                if let Some(total) = total.filter(|&t| t != received) {
                    return Err(Failure::Transient(format!(
                        "received {received} of {total} bytes"
                    )));
                }
                if limit.exact && received != limit.bytes {
                    return Err(Failure::Transient(format!(
                        "received {received} of the {} bytes expected ({})",
                        limit.bytes, limit.reason
                    )));
                }
                file.sync_all().map_err(|e| Failure::Permanent(e.into()))?;
                let secs = started.elapsed().as_secs_f64();
                self.progress.line(format_args!(
                    "downloaded {} in {secs:.1} s ({:.1} MB/s)",
                    megabytes(received),
                    received as f64 / 1e6 / secs.max(1e-3)
                ));
                Ok((sink, received))
            },
        )
    }
}

/// Set by CI systems, some of which give jobs a pseudo-terminal: a bar redrawn there
/// becomes thousands of log lines.
const CI: &str = "CI";

/// How a download shows its progress: a bar redrawn in place for a person at a terminal,
/// plain lines for logs and pipes (a bar there is noise), nothing when quiet.
enum Meter {
    Bar(ProgressBar),
    Lines(Reported),
    Silent,
}

impl Meter {
    fn new(progress: &Progress, total: Option<u64>) -> Meter {
        if progress.quiet() {
            return Meter::Silent;
        }
        if !std::io::stderr().is_terminal() || std::env::var_os(CI).is_some() {
            return Meter::Lines(Reported::default());
        }
        // Decimal units, as every size this tool prints.
        let (bar, template) = match total {
            Some(total) => (
                ProgressBar::new(total),
                "  {wide_bar} {decimal_bytes}/{decimal_total_bytes} \
                 {decimal_bytes_per_sec}, {eta} left",
            ),
            None => (
                ProgressBar::no_length(),
                "  {spinner} {decimal_bytes} {decimal_bytes_per_sec}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Meter::Bar(bar)
    }

    fn advance(&mut self, progress: &Progress, received: u64, total: Option<u64>) {
        match self {
            Meter::Bar(bar) => bar.set_position(received),
            Meter::Lines(reported) => {
                if let Some(line) = reported.next(received, total) {
                    progress.line(format_args!("  {line}"));
                }
            }
            Meter::Silent => {}
        }
    }
}

impl Drop for Meter {
    /// A failed attempt's retry line, and the final summary, must not land beside a
    /// half-drawn bar.
    fn drop(&mut self) {
        if let Meter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Progress lines every 10 % (or every 16 MB when the size is unknown).
#[derive(Default)]
struct Reported {
    last: u64,
}

impl Reported {
    fn next(&mut self, received: u64, total: Option<u64>) -> Option<String> {
        match total {
            Some(total) if total > 0 => {
                let tenth = received * 10 / total;
                (tenth > self.last && received < total).then(|| {
                    self.last = tenth;
                    format!(
                        "{} / {} ({}%)",
                        megabytes(received),
                        megabytes(total),
                        tenth * 10
                    )
                })
            }
            _ => {
                let step = received / (16 << 20);
                (step > self.last).then(|| {
                    self.last = step;
                    megabytes(received)
                })
            }
        }
    }
}

fn status_failure(url: &str, status: StatusCode) -> Failure {
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Failure::Transient(format!("HTTP {status}"));
    }
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            "; the registry wants credentials: add `//<registry host>/<path>/:_authToken=${NPM_TOKEN}` to .npmrc"
        }
        StatusCode::NOT_FOUND => "; not found on this registry",
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            "; the proxy wants credentials: put them in HTTPS_PROXY"
        }
        _ => "",
    };
    Failure::Permanent(FetchError::HttpStatus {
        url: url.to_owned(),
        status: status.as_u16(),
        hint,
    })
}

/// `46.1 MB`, `4.2 kB`, `129 bytes`.
pub(crate) fn megabytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_every_tenth() {
        let mut r = Reported::default();
        let lines: Vec<String> = (1..=100u64)
            .filter_map(|i| r.next(i * 1_000_000, Some(100_000_000)))
            .collect();
        assert_eq!(lines.len(), 9, "{lines:?}");
        assert_eq!(lines[0], "10.0 MB / 100.0 MB (10%)");
        let mut r = Reported::default();
        assert!(r.next(1 << 20, None).is_none());
        assert!(r.next(17 << 20, None).is_some());
        assert_eq!(
            [megabytes(129), megabytes(4_210), megabytes(46_100_000)],
            ["129 bytes", "4.2 kB", "46.1 MB"]
        );
    }

    #[test]
    fn quiet_downloads_show_nothing() {
        let quiet = Progress::new("fetch", true);
        assert!(matches!(Meter::new(&quiet, Some(1)), Meter::Silent));
    }

    #[test]
    fn status_classification() {
        assert!(matches!(
            status_failure("u", StatusCode::BAD_GATEWAY),
            Failure::Transient(_)
        ));
        assert!(matches!(
            status_failure("u", StatusCode::TOO_MANY_REQUESTS),
            Failure::Transient(_)
        ));
        let Failure::Permanent(e) = status_failure("u", StatusCode::FORBIDDEN) else {
            panic!("403 is fatal")
        };
        assert!(e.to_string().contains("_authToken"), "{e}");
        assert!(is_loopback(&Url::parse("http://127.0.0.1:1/").unwrap()));
        assert!(is_loopback(&Url::parse("http://localhost/").unwrap()));
        assert!(is_loopback(&Url::parse("http://[::1]:8/").unwrap()));
        assert!(!is_loopback(&Url::parse("http://192.0.2.1/").unwrap()));
    }
}
