//! The load: paced requests through the proxy from worker threads, and the two event
//! streams followed for the whole soak (`/system/events` and opencode's own).

use std::io::ErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openwork_tests::http;
use openwork_tests::sse::SseReader;
use serde_json::Value;

/// A request without an answer for this long has hung.
pub(super) const HANG: Duration = Duration::from_secs(30);

/// A silent `/system/events` stream for this long is dead (it sends a keep-alive every 15 s).
pub(super) const EVENTS_SILENCE: Duration = Duration::from_secs(40);
/// A silent opencode event stream for this long has hung (opencode sends a heartbeat every
/// 10 s).
pub(super) const FOLLOW_SILENCE: Duration = Duration::from_secs(30);

/// What the threads share.
pub(super) struct Shared {
    pub(super) addr: String,
    pub(super) authorization: String,
    /// Ends the load.
    pub(super) stop_load: AtomicBool,
    /// Ends the watchers (after the server is stopped).
    pub(super) stop_watching: AtomicBool,
    /// Holds the load back for a quiet moment.
    pub(super) paused: AtomicBool,
    pub(super) in_flight: AtomicUsize,
    /// The opencode event stream is open (through the proxy).
    pub(super) following: AtomicBool,
    pub(super) events: Mutex<Vec<SeenEvent>>,
    pub(super) events_reconnects: AtomicUsize,
}

impl Shared {
    pub(super) fn bearer(&self) -> [(&str, &str); 1] {
        [("Authorization", self.authorization.as_str())]
    }
}

/// One `/system/events` event, when it was read.
#[derive(Debug, Clone)]
pub(super) struct SeenEvent {
    pub(super) at: Instant,
    pub(super) name: String,
    pub(super) data: Value,
}

/// One request through the proxy and its answer.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) what: &'static str,
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) answer: Answer,
}

#[derive(Debug, Clone)]
pub(super) enum Answer {
    /// The status, and the `error` code of a JSON error body.
    Status(u16, Option<String>),
    /// The head (with this status) arrived, then the connection ended before the body did:
    /// opencode died mid-answer, and the proxy ended the stream.
    Cut(u16, String),
    /// The connection failed before an answer began.
    Broken(String),
    /// No answer within [`HANG`].
    Hung,
}

impl Answer {
    pub(super) fn ok(&self) -> bool {
        matches!(self, Answer::Status(200..=299, _))
    }

    /// The clear failure the proxy owes a client when opencode is gone.
    pub(super) fn refused(&self) -> bool {
        matches!(self, Answer::Status(502..=504, Some(_)))
    }

    /// An answer begun and then ended early, which is how a response already under way
    /// fails when its opencode dies.
    pub(super) fn cut(&self) -> bool {
        matches!(self, Answer::Cut(..))
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Answer::Status(code, Some(error)) => format!("{code} {error}"),
            Answer::Status(code, None) => code.to_string(),
            Answer::Cut(code, why) => format!("{code}, then cut short: {why}"),
            Answer::Broken(why) => format!("broken: {why}"),
            Answer::Hung => format!("no answer within {} s", HANG.as_secs()),
        }
    }
}

/// One connection to opencode's event stream through the proxy.
#[derive(Debug, Clone)]
pub(super) struct StreamRun {
    pub(super) opened: Instant,
    /// The status it was answered with, or why it could not be opened.
    pub(super) answer: Answer,
    pub(super) ended: Instant,
    /// How it ended: `eof`, an error, or `silent` (hung).
    pub(super) end: String,
    pub(super) data_lines: u64,
}

/// The request mix: cheap and heavier reads, and a session created and deleted (a write
/// with a request body, then a DELETE) so that opencode's database is used and stays small.
pub(super) const MIX: &[(&str, u32)] = &[
    ("GET /global/health", 35),
    ("GET /session", 20),
    ("GET /path", 15),
    ("GET /config", 15),
    ("POST+DELETE /session", 15),
];

/// One load worker: paced requests until told to stop.
pub(super) fn load(shared: &Shared, rate: f64, seed: u64, worker: usize) -> Vec<Request> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    // Workers start spread over one interval, so their requests interleave.
    let mut next = Instant::now() + interval.mul_f64(worker as f64 / 8.0 % 1.0);
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut done = Vec::new();
    while !shared.stop_load.load(Ordering::SeqCst) {
        if shared.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            next = Instant::now();
            continue;
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // Paced, not catching up: a worker held up by a slow answer does not burst after.
        next = (next + interval).max(Instant::now());
        let mut pick = rng.u32(..total);
        let what = MIX
            .iter()
            .find(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map_or(MIX[0].0, |(what, _)| what);
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        match what {
            "POST+DELETE /session" => {
                let body = format!("{{\"title\":\"soak {worker}-{}\"}}", done.len());
                let (created, answer) = send(
                    shared,
                    "POST /session",
                    "POST",
                    "/opencode/session",
                    body.as_bytes(),
                );
                let id = answer
                    .filter(|_| created.answer.ok())
                    .and_then(|v| v["id"].as_str().map(String::from));
                done.push(created);
                if let Some(id) = id {
                    let path = format!("/opencode/session/{id}");
                    done.push(send(shared, "DELETE /session", "DELETE", &path, b"").0);
                }
            }
            get => {
                let path = format!("/opencode{}", get.trim_start_matches("GET "));
                done.push(send(shared, get, "GET", &path, b"").0);
            }
        }
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    done
}

/// Sends one request through the proxy; returns it with its answer, and the body as JSON
/// when it is JSON. The head and the body are read apart, to tell an answer cut short
/// (its head had arrived) from a connection that failed.
pub(super) fn send(
    shared: &Shared,
    what: &'static str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (Request, Option<Value>) {
    let start = Instant::now();
    let [bearer] = shared.bearer();
    let headers = [bearer, ("Content-Type", "application/json")];
    let hung = |e: &std::io::Error| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock);
    let (answer, json) = match http::try_open(&shared.addr, method, path, &headers, body, HANG) {
        Err(e) if hung(&e) => (Answer::Hung, None),
        Err(e) => (Answer::Broken(e.to_string()), None),
        Ok((status, headers, mut reader)) => {
            match http::read_body(&mut reader, method, status, &headers) {
                Err(e) if hung(&e) => (Answer::Hung, None),
                Err(e) => (Answer::Cut(status, e.to_string()), None),
                Ok(body) => {
                    let json = serde_json::from_slice::<Value>(&body).ok();
                    let error = json
                        .as_ref()
                        .and_then(|v| v["error"].as_str().map(String::from));
                    (Answer::Status(status, error), json)
                }
            }
        }
    };
    let request = Request {
        what,
        start,
        end: Instant::now(),
        answer,
    };
    (request, json)
}

/// Reads `/system/events` for the whole soak, reconnecting with `Last-Event-ID` (and
/// counting it) if the stream ends before the server is stopped.
pub(super) fn watch_events(shared: &Shared) {
    let mut last_id: Option<String> = None;
    while !shared.stop_watching.load(Ordering::SeqCst) {
        let [bearer] = shared.bearer();
        let mut headers = vec![bearer];
        let last = last_id.clone().unwrap_or_default();
        if last_id.is_some() {
            headers.push(("Last-Event-ID", &last));
        }
        let opened = http::try_stream(&shared.addr, "/system/events", &headers, EVENTS_SILENCE);
        if let Ok((200, _, reader)) = opened {
            let mut events = SseReader::new(reader);
            while let Ok(Some(frame)) = events.next_event() {
                if !frame.name.is_empty() {
                    let event = SeenEvent {
                        at: Instant::now(),
                        data: frame.json(),
                        name: frame.name,
                    };
                    shared.events.lock().expect("events").push(event);
                }
                if let Some(id) = events.last_event_id() {
                    last_id = Some(id.to_owned());
                }
            }
        }
        if shared.stop_watching.load(Ordering::SeqCst) {
            break;
        }
        shared.events_reconnects.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Follows opencode's own event stream through the proxy, reopening it whenever it ends,
/// and notes how each connection went.
pub(super) fn follow_opencode_events(shared: &Shared) -> Vec<StreamRun> {
    let mut runs = Vec::new();
    while !shared.stop_watching.load(Ordering::SeqCst) {
        let opened = Instant::now();
        let [bearer] = shared.bearer();
        match http::try_stream(&shared.addr, "/opencode/event", &[bearer], FOLLOW_SILENCE) {
            Ok((200, _, reader)) => {
                shared.following.store(true, Ordering::SeqCst);
                let mut events = SseReader::new(reader);
                let end = loop {
                    match events.next_event() {
                        Ok(None) => break "eof".to_string(),
                        Ok(Some(_)) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
                        {
                            break "silent".to_string();
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                let data_lines = events.data_lines();
                shared.following.store(false, Ordering::SeqCst);
                runs.push(StreamRun {
                    opened,
                    answer: Answer::Status(200, None),
                    ended: Instant::now(),
                    end,
                    data_lines,
                });
            }
            other => {
                let answer = match other {
                    Ok((status, _, _)) => Answer::Status(status, None),
                    Err(e) => Answer::Broken(e.to_string()),
                };
                runs.push(StreamRun {
                    opened,
                    answer,
                    ended: Instant::now(),
                    end: "refused".into(),
                    data_lines: 0,
                });
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    runs
}
