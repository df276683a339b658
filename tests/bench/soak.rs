//! The soak: the packed single-file server with the real opencode, under steady load
//! through its `/opencode/*` proxy from this process on loopback, while a fault injector
//! SIGKILLs opencode at random moments. What it checks, and reports as rows with targets:
//!
//! - no request is lost outside a restart window (a kill until the supervisor's `ready`
//!   event for the new opencode, plus a short grace); inside one, a request fails only with
//!   a clear 502/503/504 JSON error, and nothing ever hangs (no answer within 30 s);
//! - opencode's event stream, followed through the proxy, ends promptly when its opencode
//!   dies instead of hanging open;
//! - every kill shows in `/system/events` (one connection for the whole soak) as an `exited`
//!   with the killed pid and signal 9, then a `ready` of the new process;
//! - the server process's memory stays flat, and its file descriptors and the processes in
//!   its tree are the same at the end as after the warm-up (both counted at a quiet moment:
//!   load paused, nothing in flight); after SIGTERM it exits 0 and nothing is left running.
//!
//! The load is bounded: `rate` requests a second in all, paced (a late worker does not
//! burst to catch up), over a fixed time. Kills are at least `kill_gap.0` apart, so that
//! the supervisor's crash-loop limit (5 failures within 60 s) is never reached by design
//! with the default 16 s. The random choices come from one seed, printed and kept in the
//! JSON, so a run can be repeated.
//!
//! Linux only: the server's memory, descriptors and tree are read from /proc.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openwork_packager::constants::Constants;
use openwork_packager::fetch;
use openwork_packager::pack::Compression;
use openwork_payload::targets;
use openwork_tests::http;
use openwork_tests::server::wait_until;
use openwork_tests::sse::SseReader;
use serde::Serialize;
use serde_json::{Value, json};

use crate::measure::{self, byte_stats, load_average, progress};
use crate::procs::{
    self, Running, check_nothing_left, describe_exit, isolated_command, mkdir, read_stat,
};
use crate::report::{Quantity, Report, Row, Target as Goal};

/// What the soak does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long opencode is killed under load.
    pub duration: Duration,
    /// Load without kills before the baseline is taken.
    pub warm_up: Duration,
    /// Threads sending requests.
    pub workers: usize,
    /// Requests a second, all workers together.
    pub rate: f64,
    /// The shortest and longest gap between two kills.
    pub kill_gap: (Duration, Duration),
    /// Seed of every random choice.
    pub seed: u64,
    /// Where the temporary directory goes.
    pub work_dir: PathBuf,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// A packed artifact (for the host) to soak instead of packing one.
    pub artifact: Option<PathBuf>,
}

/// The hardening issue's targets.
mod goals {
    use std::time::Duration;

    /// "Memory of the server process flat within a few MB": the median RSS of the last
    /// quarter of the soak over that of the first quarter.
    pub const RSS_GROWTH: u64 = 3_000_000;
    /// How soon a stream through the proxy must end after its opencode was killed.
    pub const STREAM_END: Duration = Duration::from_secs(5);
}

/// A request without an answer for this long has hung.
const HANG: Duration = Duration::from_secs(30);
/// How long after the `ready` event a request may still have been refused: the event is
/// read here a moment after the supervisor marks opencode running.
const WINDOW_GRACE: Duration = Duration::from_millis(250);
/// How often the server's memory, descriptors and tree are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// A silent `/system/events` stream for this long is dead (it sends a keep-alive every 15 s).
const EVENTS_SILENCE: Duration = Duration::from_secs(40);
/// A silent opencode event stream for this long has hung (opencode sends a heartbeat every
/// 10 s).
const FOLLOW_SILENCE: Duration = Duration::from_secs(30);

/// Runs the soak, prints progress on stderr, writes the JSON and returns the report.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    if !cfg!(target_os = "linux") {
        bail!("the soak reads the server's memory, descriptors and tree from /proc: Linux only");
    }
    if settings.kill_gap.0 > settings.kill_gap.1 {
        bail!("the shortest kill gap is longer than the longest");
    }
    let target = targets::host().context("this host is not one of the targets in targets/")?;
    let pins = Constants::built_in();
    progress(format_args!(
        "fetching opencode {} for {}",
        pins.opencode_version(),
        target.name
    ));
    let opencode = fetch::ensure_pinned_opencode(&target.name)?;
    let work = measure::work_tempdir(&settings.work_dir, "openwork-soak-")?;
    let artifact = match &settings.artifact {
        Some(given) => measure::absolute(given)?,
        // What is soaked is the server, not the compression: the fast level packs in seconds.
        None => {
            crate::serve::pack_artifact(target, &pins, &opencode, work.path(), Compression::fast())?
        }
    };

    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let server = Server::start(&artifact, work.path())?;
    progress(format_args!(
        "server ready on {}; soaking for {} s after {} s of warm-up (seed {})",
        server.addr,
        settings.duration.as_secs(),
        settings.warm_up.as_secs(),
        settings.seed
    ));
    let soak = Soak::new(settings, server);
    let observed = soak.run(&mut rng)?;
    let report = observed.report(settings, &artifact, pins.opencode_version());
    report.write_json(&settings.json)?;
    Ok(report)
}

/// The running server and how to reach it.
struct Server {
    running: Running,
    addr: String,
    token: String,
    runtime_dir: PathBuf,
    artifact: PathBuf,
}

impl Server {
    fn start(artifact: &Path, work: &Path) -> anyhow::Result<Server> {
        let workspace = mkdir(&work.join("workspace"))?;
        let stderr = work.join("server.stderr");
        // Not from the soak's seed, which is printed: a token must not be guessable.
        let mut random = fastrand::Rng::new();
        let token: String = (0..32).map(|_| random.alphanumeric()).collect();
        let host_token: String = (0..32).map(|_| random.alphanumeric()).collect();
        let mut cmd = isolated_command(artifact, &work.join("home"), &workspace)?;
        cmd.arg("serve")
            .args(["--port", "0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(work.join("data"))
            .arg("--workspace")
            .arg(&workspace)
            .env("OPENWORK_TOKEN", &token)
            .env("OPENWORK_HOST_TOKEN", &host_token)
            .stderr(
                std::fs::File::create(&stderr)
                    .with_context(|| format!("create {}", stderr.display()))?,
            );
        let mut running = Running::spawn(&mut cmd, &stderr)?;
        let (_, ready) = running.wait_ready_line()?;
        let port = &ready["port"];
        let runtime_dir = ready["runtimeDir"]
            .as_str()
            .with_context(|| format!("no runtimeDir in {ready}"))?;
        Ok(Server {
            running,
            addr: format!("127.0.0.1:{port}"),
            token,
            runtime_dir: PathBuf::from(runtime_dir),
            artifact: artifact.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// opencode's pid while the supervisor says it is running.
    fn running_opencode(&self) -> Option<u32> {
        // With the token: token-less callers are not told pids.
        let authorization = format!("Bearer {}", self.token);
        let health = http::try_request(
            &self.addr,
            "GET",
            "/system/health",
            &[("Authorization", authorization.as_str())],
            b"",
            HANG,
        )
        .ok()?;
        let opencode = &serde_json::from_slice::<Value>(&health.body).ok()?["sidecars"]["opencode"];
        if opencode["state"] != "running" {
            return None;
        }
        let pid = opencode["pid"].as_u64()? as u32;
        // Only ever a process of this server's that runs the extracted opencode.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let ours = procs::descendants(self.pid()).iter().any(|p| p.pid == pid);
        (ours && exe.starts_with(&self.runtime_dir)).then_some(pid)
    }

    /// The server process's memory, descriptors, threads and tree, now.
    fn sample(&self, since: Instant) -> anyhow::Result<Sample> {
        let pid = self.pid();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("list the descriptors of {pid}"))?
            .count();
        let status = procs::status(pid)?;
        let tree = procs::descendants(pid)
            .iter()
            .filter_map(|p| {
                let stat = read_stat(p.pid)?;
                // The lifeline is the server's own executable re-run: name it by its role.
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
                let name = if cmdline.split(|b| *b == 0).any(|arg| arg == b"__lifeline") {
                    "lifeline".to_string()
                } else {
                    procs::proc_name(p.pid)?
                };
                Some(if matches!(stat.state, 'Z' | 'X') {
                    format!("{name} (zombie)")
                } else {
                    name
                })
            })
            .collect();
        Ok(Sample {
            at_s: since.elapsed().as_secs_f64(),
            rss: status.rss,
            fds,
            threads: status.threads,
            tree,
        })
    }
}

/// The server process at one moment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Sample {
    /// Seconds since the soak's start (after the warm-up).
    at_s: f64,
    rss: u64,
    fds: usize,
    threads: u64,
    /// The names of the processes below it; a zombie is marked.
    tree: Vec<String>,
}

impl Sample {
    fn zombies(&self) -> usize {
        self.tree.iter().filter(|n| n.ends_with("(zombie)")).count()
    }

    fn tree_summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for name in &self.tree {
            *counts.entry(name).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(n, c)| format!("{n} x{c}")).collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What the threads share.
struct Shared {
    addr: String,
    authorization: String,
    /// Ends the load.
    stop_load: AtomicBool,
    /// Ends the watchers (after the server is stopped).
    stop_watching: AtomicBool,
    /// Holds the load back for a quiet moment.
    paused: AtomicBool,
    in_flight: AtomicUsize,
    /// The opencode event stream is open (through the proxy).
    following: AtomicBool,
    events: Mutex<Vec<SeenEvent>>,
    events_reconnects: AtomicUsize,
}

impl Shared {
    fn bearer(&self) -> [(&str, &str); 1] {
        [("Authorization", self.authorization.as_str())]
    }
}

/// One `/system/events` event, when it was read.
#[derive(Debug, Clone)]
struct SeenEvent {
    at: Instant,
    name: String,
    data: Value,
}

/// The soak in progress.
struct Soak<'a> {
    settings: &'a Settings,
    server: Server,
    shared: Arc<Shared>,
}

/// Everything the soak saw, for the report.
struct Observed {
    requests: Vec<Request>,
    kills: Vec<Kill>,
    events: Vec<SeenEvent>,
    events_reconnects: usize,
    streams: Vec<StreamRun>,
    samples: Vec<Sample>,
    after_warm_up: Sample,
    at_end: Sample,
    exit: String,
    left_after_stop: Vec<String>,
    started: Instant,
    load_average: (Option<f64>, Option<f64>),
}

/// One request through the proxy and its answer.
#[derive(Debug, Clone)]
struct Request {
    what: &'static str,
    start: Instant,
    end: Instant,
    answer: Answer,
}

#[derive(Debug, Clone)]
enum Answer {
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
    fn ok(&self) -> bool {
        matches!(self, Answer::Status(200..=299, _))
    }

    /// The clear failure the proxy owes a client when opencode is gone.
    fn refused(&self) -> bool {
        matches!(self, Answer::Status(502..=504, Some(_)))
    }

    /// An answer begun and then ended early, which is how a response already under way
    /// fails when its opencode dies.
    fn cut(&self) -> bool {
        matches!(self, Answer::Cut(..))
    }

    fn describe(&self) -> String {
        match self {
            Answer::Status(code, Some(error)) => format!("{code} {error}"),
            Answer::Status(code, None) => code.to_string(),
            Answer::Cut(code, why) => format!("{code}, then cut short: {why}"),
            Answer::Broken(why) => format!("broken: {why}"),
            Answer::Hung => format!("no answer within {} s", HANG.as_secs()),
        }
    }
}

/// One SIGKILL of opencode.
#[derive(Debug, Clone)]
struct Kill {
    at: Instant,
    pid: u32,
}

/// One connection to opencode's event stream through the proxy.
#[derive(Debug, Clone)]
struct StreamRun {
    opened: Instant,
    /// The status it was answered with, or why it could not be opened.
    answer: Answer,
    ended: Instant,
    /// How it ended: `eof`, an error, or `silent` (hung).
    end: String,
    data_lines: u64,
}

impl<'a> Soak<'a> {
    fn new(settings: &'a Settings, server: Server) -> Soak<'a> {
        let shared = Arc::new(Shared {
            addr: server.addr.clone(),
            authorization: format!("Bearer {}", server.token),
            stop_load: AtomicBool::new(false),
            stop_watching: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            following: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            events_reconnects: AtomicUsize::new(0),
        });
        Soak {
            settings,
            server,
            shared,
        }
    }

    fn run(mut self, rng: &mut fastrand::Rng) -> anyhow::Result<Observed> {
        let load_before = load_average();
        let events = {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || watch_events(&shared))
        };
        let follower = {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || follow_opencode_events(&shared))
        };
        let per_worker = self.settings.rate / self.settings.workers as f64;
        let workers: Vec<_> = (0..self.settings.workers)
            .map(|i| {
                let shared = Arc::clone(&self.shared);
                let seed = rng.u64(..);
                std::thread::spawn(move || load(&shared, per_worker, seed, i))
            })
            .collect();

        std::thread::sleep(self.settings.warm_up);
        let after_warm_up = self.quiet_sample(Instant::now())?;
        let started = Instant::now();
        progress(format_args!(
            "after the warm-up: RSS {:.2} MB, {} descriptors, tree: {}",
            after_warm_up.rss as f64 / 1e6,
            after_warm_up.fds,
            after_warm_up.tree_summary()
        ));

        let (kills, samples) = self.inject_faults(rng, started)?;

        // The last kill's restart finishes before the end is counted.
        let settled = wait_until(Duration::from_secs(90), || {
            self.server.running_opencode().is_some()
        });
        if !settled {
            progress(format_args!(
                "opencode did not come back after the last kill"
            ));
        }
        self.shared.stop_load.store(true, Ordering::SeqCst);
        let mut requests = Vec::new();
        for worker in workers {
            requests.extend(worker.join().expect("a load worker panicked"));
        }
        let at_end = self.quiet_sample(started)?;
        let load_after = load_average();

        self.shared.stop_watching.store(true, Ordering::SeqCst);
        let (_, status) = self.server.running.terminate()?;
        let mut left_after_stop = self.server.running.left_behind();
        let opencode_exe = self.server.runtime_dir.join("opencode");
        left_after_stop.extend(check_nothing_left(&[
            self.server.artifact.as_path(),
            opencode_exe.as_path(),
        ]));
        let streams = follower.join().expect("the stream follower panicked");
        events.join().expect("the events watcher panicked");
        let events = std::mem::take(&mut *self.shared.events.lock().expect("events"));
        Ok(Observed {
            requests,
            kills,
            events,
            events_reconnects: self.shared.events_reconnects.load(Ordering::SeqCst),
            streams,
            samples,
            after_warm_up,
            at_end,
            exit: describe_exit(status),
            left_after_stop,
            started,
            load_average: (load_before, load_after),
        })
    }

    /// Kills opencode at random moments until the soak's time is up, sampling the server
    /// every [`SAMPLE_EVERY`].
    fn inject_faults(
        &mut self,
        rng: &mut fastrand::Rng,
        started: Instant,
    ) -> anyhow::Result<(Vec<Kill>, Vec<Sample>)> {
        let deadline = started + self.settings.duration;
        let (shortest, longest) = self.settings.kill_gap;
        let gap = |rng: &mut fastrand::Rng| shortest + (longest - shortest).mul_f64(rng.f64());
        let mut next_kill = started + gap(rng);
        let mut next_sample = started;
        let mut kills = Vec::new();
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            let now = Instant::now();
            if now >= next_sample {
                samples.push(self.server.sample(started)?);
                self.server.running.observe();
                next_sample += SAMPLE_EVERY;
            }
            if now >= next_kill {
                // Only a running opencode is killed (a kill while it restarts would be a
                // second failure in one window); otherwise try again shortly.
                match self.server.running_opencode() {
                    Some(pid) => {
                        // SAFETY: kill(2) on the server's opencode, checked just before.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                        let at = Instant::now();
                        kills.push(Kill { at, pid });
                        progress(format_args!(
                            "{:>6.1} s: killed opencode {pid} (kill {})",
                            at.duration_since(started).as_secs_f64(),
                            kills.len()
                        ));
                        next_kill = at + gap(rng);
                    }
                    None => next_kill = now + Duration::from_millis(200),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((kills, samples))
    }

    /// The server's sample at a quiet moment: load paused, nothing in flight, the opencode
    /// event stream open (it holds two descriptors in the server).
    fn quiet_sample(&mut self, since: Instant) -> anyhow::Result<Sample> {
        self.shared.paused.store(true, Ordering::SeqCst);
        let quiet = wait_until(HANG + Duration::from_secs(5), || {
            self.shared.in_flight.load(Ordering::SeqCst) == 0
        });
        let following = wait_until(Duration::from_secs(15), || {
            self.shared.following.load(Ordering::SeqCst)
        });
        // The server closes a finished connection a moment after the client has read it.
        std::thread::sleep(Duration::from_millis(500));
        let sample = self.server.sample(since);
        self.server.running.observe();
        self.shared.paused.store(false, Ordering::SeqCst);
        if !quiet || !following {
            bail!(
                "no quiet moment to count at (requests in flight: {}, event stream open: \
                 {following})",
                self.shared.in_flight.load(Ordering::SeqCst)
            );
        }
        sample
    }
}

impl Drop for Soak<'_> {
    /// However the soak ends, its threads stop: the load at once, the watchers when their
    /// connections end (the server is killed when `server` drops, right after this).
    fn drop(&mut self) {
        self.shared.stop_load.store(true, Ordering::SeqCst);
        self.shared.stop_watching.store(true, Ordering::SeqCst);
    }
}

/// The request mix: cheap and heavier reads, and a session created and deleted (a write
/// with a request body, then a DELETE) so that opencode's database is used and stays small.
const MIX: &[(&str, u32)] = &[
    ("GET /global/health", 35),
    ("GET /session", 20),
    ("GET /path", 15),
    ("GET /config", 15),
    ("POST+DELETE /session", 15),
];

/// One load worker: paced requests until told to stop.
fn load(shared: &Shared, rate: f64, seed: u64, worker: usize) -> Vec<Request> {
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
fn send(
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
fn watch_events(shared: &Shared) {
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
fn follow_opencode_events(shared: &Shared) -> Vec<StreamRun> {
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

/// A kill and what `/system/events` said of it.
struct Restart {
    kill: Kill,
    /// The `exited` event of the killed pid, with signal 9.
    exited: bool,
    /// When the next `ready` of opencode was read.
    ready: Option<Instant>,
}

impl Observed {
    fn opencode_events(&self, name: &str) -> impl Iterator<Item = &SeenEvent> {
        self.events
            .iter()
            .filter(move |e| e.name == name && e.data["sidecar"] == "opencode")
    }

    fn restarts(&self) -> Vec<Restart> {
        self.kills
            .iter()
            .map(|kill| Restart {
                kill: kill.clone(),
                exited: self.opencode_events("exited").any(|e| {
                    e.data["pid"] == kill.pid
                        && e.data["signal"] == libc::SIGKILL
                        && e.at >= kill.at
                }),
                ready: self
                    .opencode_events("ready")
                    .find(|e| e.at > kill.at && e.data["pid"] != kill.pid)
                    .map(|e| e.at),
            })
            .collect()
    }

    /// Restart windows: from each kill until its `ready` was read, plus the grace (until
    /// the end of the soak if opencode never came back); and likewise from each exit of
    /// opencode that no kill caused (a failed liveness check under load, a crash) until
    /// the next `ready`: a restart the supervisor made on its own is a restart window too.
    fn windows(&self, restarts: &[Restart]) -> Vec<(Instant, Instant)> {
        let end = self
            .requests
            .iter()
            .map(|r| r.end)
            .max()
            .unwrap_or(self.started);
        let until_ready = |ready: Option<Instant>| ready.map_or(end, |at| at + WINDOW_GRACE);
        let by_kills = restarts.iter().map(|r| (r.kill.at, until_ready(r.ready)));
        let by_other_exits = self
            .opencode_events("exited")
            .filter(|e| !self.kills.iter().any(|k| e.data["pid"] == k.pid))
            .map(|e| {
                let ready = self.opencode_events("ready").find(|r| r.at > e.at);
                (e.at, until_ready(ready.map(|r| r.at)))
            });
        by_kills.chain(by_other_exits).collect()
    }

    fn report(&self, settings: &Settings, artifact: &Path, opencode_version: &str) -> Report {
        let restarts = self.restarts();
        let windows = self.windows(&restarts);
        let in_window = |r: &Request| windows.iter().any(|(s, e)| r.start <= *e && r.end >= *s);
        let (inside, outside): (Vec<&Request>, Vec<&Request>) =
            self.requests.iter().partition(|r| in_window(r));
        let lost_outside: Vec<&Request> =
            outside.iter().copied().filter(|r| !r.answer.ok()).collect();
        let unclear_inside: Vec<&Request> = inside
            .iter()
            .copied()
            .filter(|r| !r.answer.ok() && !r.answer.refused() && !r.answer.cut())
            .collect();
        let cut_inside = inside.iter().filter(|r| r.answer.cut()).count();
        let refused_inside = inside.iter().filter(|r| r.answer.refused()).count();
        let mut at_kills: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.requests {
            if self.kills.iter().any(|k| r.start < k.at && r.end > k.at) {
                *at_kills.entry(r.answer.describe()).or_default() += 1;
            }
        }
        let hung = self
            .requests
            .iter()
            .filter(|r| matches!(r.answer, Answer::Hung))
            .count();
        let unseen = restarts
            .iter()
            .filter(|r| !r.exited || r.ready.is_none())
            .count();
        let window_ms: Vec<Duration> = restarts
            .iter()
            .filter_map(|r| Some(r.ready?.duration_since(r.kill.at)))
            .collect();
        let streams = self.streams_after_kills();
        let slow_streams = streams
            .iter()
            .filter(|d| d.is_none_or(|d| d > goals::STREAM_END))
            .count();
        let other_exits = self
            .opencode_events("exited")
            .filter(|e| !self.kills.iter().any(|k| e.data["pid"] == k.pid))
            .count();
        let failed_events = self.opencode_events("failed").count();

        let rss = |part: &[Sample]| byte_stats(part.iter().map(|s| s.rss));
        let quarter = (self.samples.len() / 4).max(1);
        let (first, last) = (
            rss(&self.samples[..quarter.min(self.samples.len())]).median,
            rss(&self.samples[self.samples.len().saturating_sub(quarter)..]).median,
        );
        let all = rss(&self.samples);
        let (rss_min, rss_max) = (all.min, all.max);
        let fds_max = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let (a, b) = (&self.after_warm_up, &self.at_end);

        let count = |n: usize| Quantity::count(n as u64);
        let none = Goal::Value {
            max: Quantity::count(0),
        };
        let first_of = |list: &[&Request]| {
            list.iter()
                .take(3)
                .map(|r| {
                    format!(
                        "{} at {:.1} s: {}",
                        r.what,
                        r.start
                            .saturating_duration_since(self.started)
                            .as_secs_f64(),
                        r.answer.describe()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let seconds = self
            .requests
            .iter()
            .map(|r| r.end)
            .max()
            .map_or(0.0, |end| {
                end.saturating_duration_since(self.started).as_secs_f64()
            });
        let mut rows = vec![
            Row::info("requests through /opencode/*", count(self.requests.len())).note(format!(
                "{} workers at {} requests/s in all, one connection each; mix: {}",
                settings.workers,
                settings.rate,
                MIX.iter()
                    .map(|(what, w)| format!("{what} {w}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Row::info("opencode SIGKILLed", count(self.kills.len())).note(format!(
                "at random moments {}-{} s apart (seed {})",
                settings.kill_gap.0.as_secs(),
                settings.kill_gap.1.as_secs(),
                settings.seed
            )),
            Row::info(
                "requests lost outside restart windows",
                count(lost_outside.len()),
            )
            .target(none)
            .note(if lost_outside.is_empty() {
                format!(
                    "{} requests outside the windows (a kill until the new opencode's \
                         `ready` event, +{} ms), all 2xx",
                    outside.len(),
                    WINDOW_GRACE.as_millis()
                )
            } else {
                first_of(&lost_outside)
            }),
            Row::info(
                "requests in restart windows answered 502/503/504 JSON",
                count(refused_inside),
            )
            .note(format!(
                "of {} requests overlapping a window; {cut_inside} had their answer cut short \
                 (opencode died mid-answer); the rest were answered 2xx",
                inside.len()
            )),
            Row::info(
                "requests in restart windows failing otherwise",
                count(unclear_inside.len()),
            )
            .target(none)
            .note(if unclear_inside.is_empty() {
                "no broken connection, no other status".to_string()
            } else {
                first_of(&unclear_inside)
            }),
            Row::info(
                "requests in flight at a kill",
                count(at_kills.values().sum()),
            )
            .note(if at_kills.is_empty() {
                "none this run (opencode answers in milliseconds); the event stream below was"
                    .to_string()
            } else {
                at_kills
                    .iter()
                    .map(|(answer, n)| format!("{answer} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            Row::info("requests that hung", count(hung))
                .target(none)
                .note(format!("no answer within {} s", HANG.as_secs())),
            Row::info("kills not seen in /system/events", count(unseen))
                .target(none)
                .note(format!(
                    "each kill needs an `exited` of the killed pid with signal 9 and a `ready` \
                     of the new one; one connection for the whole soak ({} reconnects)",
                    self.events_reconnects
                )),
            Row::info("/system/events reconnects", count(self.events_reconnects)).target(none),
            Row::info("opencode exits not caused by a kill", count(other_exits)).note(format!(
                "liveness failures or crashes under load; `failed` events: {failed_events}"
            )),
        ];
        if !window_ms.is_empty() {
            let stats = crate::measure::Stats::of(&window_ms);
            rows.push(
                Row::info(
                    "restart window, kill to ready, median",
                    Quantity::ms(stats.median_ms),
                )
                .note(format!(
                    "max {:.0} ms; the supervisor's restart delay (250 ms, doubling only after \
                         runs healthy for less than 10 s) plus opencode's start-up",
                    stats.max_ms
                )),
            );
        }
        let slowest = streams.iter().flatten().max().copied().unwrap_or_default();
        rows.push(
            Row::info(
                "event streams still open 5 s after their opencode died",
                count(slow_streams),
            )
            .target(none)
            .note(format!(
                "opencode's /event followed through the proxy; {} were open at a kill, the \
                     slowest ended {:.0} ms after it",
                streams.len(),
                slowest.as_secs_f64() * 1e3
            )),
        );
        rows.push(
            Row::info(
                "server RSS growth, last quarter over first (medians)",
                Quantity::bytes(last.saturating_sub(first)),
            )
            .target(Goal::Value {
                max: Quantity::bytes(goals::RSS_GROWTH),
            })
            .note(format!(
                "VmRSS every {} s: first quarter {:.2} MB, last {:.2} MB, min {:.2} MB, max \
                 {:.2} MB; {:.2} MB after the warm-up",
                SAMPLE_EVERY.as_secs(),
                first as f64 / 1e6,
                last as f64 / 1e6,
                rss_min as f64 / 1e6,
                rss_max as f64 / 1e6,
                a.rss as f64 / 1e6
            )),
        );
        rows.push(
            Row::info(
                "server file descriptors gained",
                count(b.fds.saturating_sub(a.fds)),
            )
            .target(none)
            .note(format!(
                "at quiet moments (load paused, event stream open): {} after the warm-up, {} at \
                 the end; up to {} under load",
                a.fds, b.fds, fds_max
            )),
        );
        rows.push(
            Row::info(
                "processes gained in the server's tree",
                count(b.tree.len().saturating_sub(a.tree.len()) + b.zombies()),
            )
            .target(none)
            .note(format!(
                "after the warm-up: {}; at the end: {} (zombies count too)",
                a.tree_summary(),
                b.tree_summary()
            )),
        );
        rows.push(
            Row::info(
                "processes left after SIGTERM",
                count(self.left_after_stop.len()),
            )
            .target(none)
            .note(format!(
                "the server ended with {}{}",
                self.exit,
                if self.left_after_stop.is_empty() {
                    String::new()
                } else {
                    format!("; left: {}", self.left_after_stop.join(", "))
                }
            )),
        );
        if self.exit != "exit 0" {
            rows.push(
                Row::info("server exit after SIGTERM", count(1))
                    .target(none)
                    .note(format!("{} instead of exit 0", self.exit)),
            );
        }

        let mut by_what: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.requests {
            let class = match &r.answer {
                Answer::Status(code, _) => code.to_string(),
                Answer::Cut(code, _) => format!("{code} cut"),
                Answer::Broken(_) => "broken".into(),
                Answer::Hung => "hung".into(),
            };
            *by_what.entry(r.what).or_default().entry(class).or_default() += 1;
        }
        let ms_since = |at: Instant| at.saturating_duration_since(self.started).as_secs_f64() * 1e3;
        Report {
            benchmark: "soak".into(),
            context: format!(
                "{:.0} s of load through /opencode/* of the packed server ({}) with opencode {}, \
                 opencode SIGKILLed at random moments; load average {} before, {} after",
                seconds,
                artifact
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into()),
                opencode_version,
                self.load_average
                    .0
                    .map_or("?".into(), |l| format!("{l:.2}")),
                self.load_average
                    .1
                    .map_or("?".into(), |l| format!("{l:.2}")),
            ),
            rows,
            details: json!({
                "seed": settings.seed,
                "durationS": settings.duration.as_secs_f64(),
                "warmUpS": settings.warm_up.as_secs_f64(),
                "workers": settings.workers,
                "rate": settings.rate,
                "killGapS": [settings.kill_gap.0.as_secs_f64(), settings.kill_gap.1.as_secs_f64()],
                "requests": by_what,
                "kills": restarts.iter().map(|r| json!({
                    "atMs": ms_since(r.kill.at),
                    "pid": r.kill.pid,
                    "exitedSeen": r.exited,
                    "readyAfterMs": r.ready.map(|at| at.duration_since(r.kill.at).as_secs_f64() * 1e3),
                })).collect::<Vec<_>>(),
                "lostOutsideWindows": lost_outside.iter().map(|r| json!({
                    "what": r.what, "atMs": ms_since(r.start), "answer": r.answer.describe(),
                })).collect::<Vec<_>>(),
                "failedInWindows": unclear_inside.iter().map(|r| json!({
                    "what": r.what, "atMs": ms_since(r.start), "answer": r.answer.describe(),
                })).collect::<Vec<_>>(),
                "streams": self.streams.iter().map(|s| json!({
                    "openedMs": ms_since(s.opened),
                    "endedMs": ms_since(s.ended),
                    "answer": s.answer.describe(),
                    "end": s.end,
                    "dataLines": s.data_lines,
                })).collect::<Vec<_>>(),
                "events": self.events.iter().map(|e| json!({
                    "atMs": ms_since(e.at), "event": e.name, "data": e.data,
                })).collect::<Vec<_>>(),
                "afterWarmUp": self.after_warm_up,
                "atEnd": self.at_end,
                "samples": self.samples,
                "exit": self.exit,
                "leftAfterStop": self.left_after_stop,
            }),
        }
    }

    /// For each kill that found the opencode event stream open: how long after the kill
    /// that stream ended (`None`: it did not end, or ended `silent`, hung).
    fn streams_after_kills(&self) -> Vec<Option<Duration>> {
        self.kills
            .iter()
            .filter_map(|kill| {
                let run = self.streams.iter().find(|s| {
                    matches!(s.answer, Answer::Status(200, _))
                        && s.opened <= kill.at
                        && s.ended >= kill.at
                })?;
                Some((run.end != "silent").then(|| run.ended.duration_since(kill.at)))
            })
            .collect()
    }
}
