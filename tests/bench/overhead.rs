//! The proxy figure of the serve benchmark: what `/opencode/*` of the packed server adds to
//! a request over asking opencode directly.
//!
//! One opencode answers both sides: the one the packed server supervises, asked through
//! `/opencode/*` and directly on its own port (with its password, read from its environment).
//! A second opencode would be a baseline with another history, and opencode 1.2.27 slows down
//! with every request it serves (5,300 → 1,500 requests/s within 150,000 requests here). Both
//! sides are sent `GET /global/health` over [`CONNECTIONS`] keep-alive connections, each
//! connection one request at a time, in rounds ordered ABBA (direct, proxied, proxied,
//! direct, …) so that neither a busy moment of the machine nor opencode's slowing lands on
//! one side only.
//!
//! - **Added latency**: a percentile of the proxied requests' latencies minus the same
//!   percentile of the direct ones (each request timed from writing it to its body's end).
//! - **Throughput ratio**: requests per second through the proxy over those direct, each
//!   the requests of all its rounds over the rounds' summed wall time.
//! - **At one connection**: the same, one request at a time on one connection per side:
//!   what the proxy adds to a request when nothing queues (with 32 connections on a small
//!   machine, every process waits for a core and the added latency is mostly queueing).
//! - **CPU per request**: user and system time of the server process (and of each opencode)
//!   over its side's timed rounds, per request: on a machine whose cores are all busy, the
//!   proxied side's throughput is bounded by the CPU the two processes need together.
//! - **TIME-WAIT**: sockets in TIME-WAIT (`/proc/net/tcp` and `tcp6`, state `06`) on
//!   opencode's port that were not there before a last, proxied-only round, counted once the
//!   pool's idle connections have been closed, per 10,000 requests of that round: what the
//!   proxy's own upstream connections leave (the direct rounds' connections end on the same
//!   port, so they are kept out of that window).
//!
//! The client is a plain blocking one over `std::net`, not the server's code.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::measure::Stats;
use crate::report::{Quantity, Row, Target as Goal};

/// Concurrent keep-alive connections of each side.
pub const CONNECTIONS: usize = 32;
/// Alternating rounds (each side once per round) the requests are split into.
pub const ROUNDS: usize = 4;
/// Untimed requests on each side first (connections, caches, the pool).
const WARM_UP: usize = 2_000;
/// Requests each side sends one at a time on one connection, in two alternating rounds.
const SINGLE: usize = 2_000;
/// A request not answered within this long fails the round.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The targets.
mod goals {
    /// Median added latency, in ms.
    pub const ADDED_P50_MS: f64 = 0.5;
    /// Proxied over direct throughput, at least.
    pub const THROUGHPUT_RATIO: f64 = 0.9;
    /// Sockets left in TIME-WAIT per 10,000 proxied requests, at most.
    pub const TIME_WAIT_PER_10K: f64 = 100.0;
}

/// One side: where to send and what to send with it.
pub struct Side {
    pub addr: SocketAddr,
    pub path: &'static str,
    pub authorization: String,
    /// Processes whose CPU time is counted over this side's rounds, with a name.
    pub processes: Vec<(&'static str, u32)>,
    /// TLS, pinning the certificate with this SHA-256; `None` for plain HTTP.
    pub tls: Option<String>,
}

/// A connection of the load client: TCP, or TLS over it.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// What one side measured, over all its timed rounds.
#[derive(Default)]
struct Measured {
    latencies: Vec<Duration>,
    wall: Duration,
    reconnects: usize,
    /// CPU time of each of the side's processes over its rounds.
    cpu: Vec<Duration>,
}

impl Measured {
    fn add(&mut self, round: Measured) {
        self.latencies.extend(round.latencies);
        self.wall += round.wall;
        self.reconnects += round.reconnects;
        if self.cpu.len() < round.cpu.len() {
            self.cpu.resize(round.cpu.len(), Duration::ZERO);
        }
        for (total, cpu) in self.cpu.iter_mut().zip(round.cpu) {
            *total += cpu;
        }
    }

    /// CPU time per request of each process, named as in `side`.
    fn cpu_per_request(&self, side: &Side) -> Vec<(&'static str, Duration)> {
        let n = self.latencies.len().max(1) as u32;
        side.processes
            .iter()
            .zip(&self.cpu)
            .map(|((name, _), cpu)| (*name, *cpu / n))
            .collect()
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// The figures, ready for rows and the JSON.
pub struct Figures {
    requests_per_side: usize,
    /// Every request sent through the proxy while TIME-WAIT was being counted.
    proxied_total: usize,
    direct: Stats,
    proxied: Stats,
    direct_rps: f64,
    proxied_rps: f64,
    direct_reconnects: usize,
    proxied_reconnects: usize,
    direct_cpu: Vec<(&'static str, Duration)>,
    proxied_cpu: Vec<(&'static str, Duration)>,
    single_direct: Stats,
    single_proxied: Stats,
    time_wait_upstream: usize,
}

/// Runs the rounds: `requests` on each side in all (at least one per connection and round).
/// `upstream_port` is the port of the opencode behind the proxy, whose TIME-WAIT sockets
/// are counted over a last, proxied-only round; `settle` is how long to wait after it before
/// counting them (the pool's idle timeout and a margin).
pub fn measure(
    direct: &Side,
    proxied: &Side,
    upstream_port: u16,
    requests: usize,
    settle: Duration,
) -> anyhow::Result<Figures> {
    let per_round = (requests / ROUNDS).max(CONNECTIONS);
    run_round(direct, WARM_UP, CONNECTIONS).context("warm-up, direct")?;
    run_round(proxied, WARM_UP, CONNECTIONS).context("warm-up, through the proxy")?;
    let (mut d, mut p) = (Measured::default(), Measured::default());
    for round in 0..ROUNDS {
        // ABBA: which side goes first alternates, so a trend cancels out.
        let order: [(&Side, &mut Measured, &str); 2] = if round % 2 == 0 {
            [(direct, &mut d, "direct"), (proxied, &mut p, "proxied")]
        } else {
            [(proxied, &mut p, "proxied"), (direct, &mut d, "direct")]
        };
        for (side, into, name) in order {
            let measured = run_round(side, per_round, CONNECTIONS)
                .with_context(|| format!("round {round}, {name}"))?;
            into.add(measured);
        }
    }
    let (mut single_direct, mut single_proxied) = (Measured::default(), Measured::default());
    for round in 0..2 {
        let order: [(&Side, &mut Measured, &str); 2] = if round % 2 == 0 {
            [
                (direct, &mut single_direct, "direct"),
                (proxied, &mut single_proxied, "proxied"),
            ]
        } else {
            [
                (proxied, &mut single_proxied, "proxied"),
                (direct, &mut single_direct, "direct"),
            ]
        };
        for (side, into, name) in order {
            let measured = run_round(side, SINGLE / 2, 1)
                .with_context(|| format!("one connection, round {round}, {name}"))?;
            into.add(measured);
        }
    }
    // TIME-WAIT in a window of proxied requests only.
    let before = time_wait(upstream_port)?;
    // As many requests as a side's timed rounds: the pool's own last connections (closed
    // after its idle timeout) are spread over a realistic count.
    let window =
        run_round(proxied, requests.max(CONNECTIONS), CONNECTIONS).context("TIME-WAIT window")?;
    std::thread::sleep(settle);
    let time_wait_upstream = time_wait(upstream_port)?.difference(&before).count();
    Ok(Figures {
        requests_per_side: p.latencies.len(),
        proxied_total: window.latencies.len(),
        direct: Stats::of(&d.latencies),
        proxied: Stats::of(&p.latencies),
        direct_rps: d.throughput(),
        proxied_rps: p.throughput(),
        direct_reconnects: d.reconnects,
        proxied_reconnects: p.reconnects,
        direct_cpu: d.cpu_per_request(direct),
        proxied_cpu: p.cpu_per_request(proxied),
        single_direct: Stats::of(&single_direct.latencies),
        single_proxied: Stats::of(&single_proxied.latencies),
        time_wait_upstream,
    })
}

impl Figures {
    pub fn rows(&self) -> Vec<Row> {
        let ms = Quantity::ms;
        let added_p50 = self.proxied.median_ms - self.direct.median_ms;
        let added_p99 = self.proxied.p99_ms - self.direct.p99_ms;
        let per_10k = self.time_wait_upstream as f64 * 10_000.0 / self.proxied_total as f64;
        let n = self.requests_per_side;
        vec![
            Row::info(
                format!("proxy: added latency, p50 of {n} requests"),
                ms(added_p50),
            )
            .target(Goal::Value {
                max: ms(goals::ADDED_P50_MS),
            })
            .note(format!(
                "GET /global/health through /opencode/* of the packed server minus the same \
                 to the same opencode directly, {CONNECTIONS} keep-alive connections each, \
                 {ROUNDS} rounds ordered ABBA; \
                 p50 {:.3} ms proxied vs {:.3} ms direct, p99 {:.3} ms vs {:.3} ms",
                self.proxied.median_ms,
                self.direct.median_ms,
                self.proxied.p99_ms,
                self.direct.p99_ms
            )),
            Row::info("proxy: added latency, p99", ms(added_p99)),
            Row::info(
                "proxy: added latency at 1 connection, p50",
                ms(self.single_proxied.median_ms - self.single_direct.median_ms),
            )
            .note(format!(
                "{SINGLE} requests each way, one at a time on one connection (nothing queues): \
                 p50 {:.3} ms proxied vs {:.3} ms direct, p99 {:.3} ms vs {:.3} ms",
                self.single_proxied.median_ms,
                self.single_direct.median_ms,
                self.single_proxied.p99_ms,
                self.single_direct.p99_ms
            )),
            Row::info(
                "proxy: throughput through the proxy, requests/s",
                Quantity::count(self.proxied_rps.round() as u64),
            )
            .against(Quantity::count(self.direct_rps.round() as u64))
            .target(Goal::RatioAtLeast {
                min: goals::THROUGHPUT_RATIO,
            })
            .note(
                "baseline: the same requests to the same opencode directly; all rounds' \
                 requests over their summed wall time",
            ),
            Row::info(
                "proxy: the server's CPU time per proxied request",
                ms(cpu_ms(&self.proxied_cpu, "server")),
            )
            .note(format!(
                "user + system time over the timed rounds at {CONNECTIONS} connections, per \
                 request: opencode {:.3} ms through the server, {:.3} ms direct; the \
                 benchmark's own client runs on the same cores",
                cpu_ms(&self.proxied_cpu, "opencode"),
                cpu_ms(&self.direct_cpu, "opencode"),
            )),
            Row::info(
                "proxy: sockets left in TIME-WAIT per 10,000 requests",
                Quantity::count(per_10k.round() as u64),
            )
            .target(Goal::Value {
                max: Quantity::count(goals::TIME_WAIT_PER_10K as u64),
            })
            .note(format!(
                "state 06 in /proc/net/tcp and tcp6 on opencode's port, new after a \
                 proxied-only round and the pool's idle timeout: {} for {} requests (the \
                 supervisor's health probes included); reconnects of the benchmark's client: \
                 {} proxied, {} direct",
                self.time_wait_upstream,
                self.proxied_total,
                self.proxied_reconnects,
                self.direct_reconnects
            )),
        ]
    }

    pub fn details(&self) -> Value {
        let side = |s: &Stats, rps: f64, reconnects: usize| {
            json!({
                "requests": s.n,
                "p50Ms": s.median_ms,
                "p99Ms": s.p99_ms,
                "minMs": s.min_ms,
                "maxMs": s.max_ms,
                "requestsPerSecond": rps,
                "reconnects": reconnects,
            })
        };
        json!({
            "connections": CONNECTIONS,
            "rounds": ROUNDS,
            "warmUpRequests": WARM_UP,
            "direct": side(&self.direct, self.direct_rps, self.direct_reconnects),
            "proxied": side(&self.proxied, self.proxied_rps, self.proxied_reconnects),
            "cpuPerRequestMs": {
                "direct": cpu_json(&self.direct_cpu),
                "proxied": cpu_json(&self.proxied_cpu),
            },
            "oneConnection": {
                "requests": self.single_direct.n,
                "direct": { "p50Ms": self.single_direct.median_ms, "p99Ms": self.single_direct.p99_ms },
                "proxied": { "p50Ms": self.single_proxied.median_ms, "p99Ms": self.single_proxied.p99_ms },
            },
            "timeWait": {
                "upstream": self.time_wait_upstream,
                "windowRequests": self.proxied_total,
            },
        })
    }
}

/// The CPU time per request, in ms, of the process called `name` (NaN if not measured).
fn cpu_ms(cpu: &[(&'static str, Duration)], name: &str) -> f64 {
    cpu.iter()
        .find(|(n, _)| *n == name)
        .map_or(f64::NAN, |(_, d)| d.as_secs_f64() * 1e3)
}

fn cpu_json(cpu: &[(&'static str, Duration)]) -> Value {
    cpu.iter()
        .map(|(name, d)| ((*name).to_string(), json!(d.as_secs_f64() * 1e3)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// CPU time used so far by each of `side`'s processes.
fn cpu_times(side: &Side) -> anyhow::Result<Vec<Duration>> {
    side.processes
        .iter()
        .map(|(name, pid)| {
            crate::procs::cpu_time(*pid)
                .with_context(|| format!("read the CPU time of {name} ({pid}): it exited?"))
        })
        .collect()
}

/// `requests` over `connections` connections (the remainder spread over the first ones),
/// all starting together.
fn run_round(side: &Side, requests: usize, connections: usize) -> anyhow::Result<Measured> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
        side.path, side.addr, side.authorization
    );
    let request = Arc::new(request.into_bytes());
    let start = Arc::new(Barrier::new(connections + 1));
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let share = requests / connections + usize::from(i < requests % connections);
            let (request, start, addr) = (request.clone(), start.clone(), side.addr);
            let tls = side.tls.clone();
            std::thread::spawn(move || connection(addr, tls.as_deref(), &request, share, &start))
        })
        .collect();
    let cpu_before = cpu_times(side)?;
    start.wait();
    let began = Instant::now();
    let mut measured = Measured::default();
    let mut first_error = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok((latencies, reconnects))) => {
                measured.latencies.extend(latencies);
                measured.reconnects += reconnects;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => bail!("a load thread panicked"),
        }
    }
    measured.wall = began.elapsed();
    measured.cpu = cpu_times(side)?
        .into_iter()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before))
        .collect();
    match first_error {
        Some(e) => Err(e),
        None => Ok(measured),
    }
}

/// One connection's requests, one at a time; its latencies and how often the server closed
/// it (it is then opened again).
fn connection(
    addr: SocketAddr,
    tls: Option<&str>,
    request: &[u8],
    requests: usize,
    start: &Barrier,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut stream = Some(open(addr, tls)?);
    start.wait();
    let mut latencies = Vec::with_capacity(requests);
    let mut reconnects = 0;
    for _ in 0..requests {
        let reader = match &mut stream {
            Some(reader) => reader,
            None => {
                reconnects += 1;
                stream.insert(open(addr, tls)?)
            }
        };
        let sent = Instant::now();
        reader
            .get_mut()
            .write_all(request)
            .context("send a request")?;
        let (status, headers) =
            openwork_tests::http::read_head(reader).context("read a response head")?;
        let body = openwork_tests::http::read_body(reader, "GET", status, &headers)
            .context("read a response body")?;
        latencies.push(sent.elapsed());
        if status != 200 {
            bail!(
                "{addr} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let closing = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        let framed = headers
            .iter()
            .any(|(k, _)| k == "content-length" || k == "transfer-encoding");
        if closing || !framed {
            stream = None;
        }
    }
    Ok((latencies, reconnects))
}

fn open(addr: SocketAddr, tls: Option<&str>) -> anyhow::Result<BufReader<Box<dyn Conn>>> {
    if let Some(sha256) = tls {
        let stream = openwork_tests::tls::connect(addr.port(), sha256)
            .with_context(|| format!("TLS to {addr}"))?;
        return Ok(BufReader::new(Box::new(stream)));
    }
    let stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok(BufReader::new(Box::new(stream)))
}

/// How long `count` TLS connections to `port` take to connect and finish the handshake,
/// one after another.
pub fn handshakes(port: u16, sha256: &str, count: usize) -> anyhow::Result<Stats> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let began = Instant::now();
        let stream = openwork_tests::tls::connect(port, sha256).context("TLS handshake")?;
        times.push(began.elapsed());
        drop(stream);
    }
    Ok(Stats::of(&times))
}

/// The TLS rows: handshake time, and a TLS front door against a plain one (`Figures` of
/// [`measure`] with the plain server as the direct side and the TLS server as the proxied
/// one, both through `/opencode/*`).
pub fn tls_rows(figures: &Figures, handshake: &Stats) -> Vec<Row> {
    let ms = Quantity::ms;
    vec![
        Row::info(
            format!("TLS: handshake, p50 of {}", handshake.n),
            ms(handshake.median_ms),
        )
        .note(format!(
            "TCP connect + TLS 1.3 handshake (ECDSA P-256, pinned), one after another on \
             loopback; p99 {:.3} ms",
            handshake.p99_ms
        )),
        Row::info(
            format!(
                "TLS: added latency, p50 of {} proxied requests",
                figures.requests_per_side
            ),
            ms(figures.proxied.median_ms - figures.direct.median_ms),
        )
        .note(format!(
            "GET /opencode/global/health over TLS minus the same over plain HTTP, two servers \
             side by side, {CONNECTIONS} keep-alive connections each, {ROUNDS} rounds ordered \
             ABBA; p50 {:.3} ms vs {:.3} ms, p99 {:.3} ms vs {:.3} ms",
            figures.proxied.median_ms,
            figures.direct.median_ms,
            figures.proxied.p99_ms,
            figures.direct.p99_ms
        )),
        Row::info(
            "TLS: throughput over TLS, requests/s",
            Quantity::count(figures.proxied_rps.round() as u64),
        )
        .against(Quantity::count(figures.direct_rps.round() as u64))
        .note("baseline: the same requests to a plain-HTTP server at the same time"),
    ]
}

/// Sockets in TIME-WAIT whose local or remote port is `port`, IPv4 and IPv6.
pub fn time_wait(port: u16) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut sockets = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let file = match std::fs::File::open(table) {
            Ok(file) => file,
            // No IPv6 on this machine.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("open {table}")),
        };
        for line in BufReader::new(file).lines().skip(1) {
            let line = line.with_context(|| format!("read {table}"))?;
            if time_wait_on(&line, port) {
                // Local and remote address: the socket's identity while it waits.
                let fields: Vec<&str> = line.split_whitespace().collect();
                sockets.insert(format!("{} {}", fields[1], fields[2]));
            }
        }
    }
    Ok(sockets)
}

/// Whether one line of `/proc/net/tcp{,6}` is a socket in TIME-WAIT on `port`.
fn time_wait_on(line: &str, port: u16) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, local, remote, state, ..] = fields.as_slice() else {
        return false;
    };
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
    };
    *state == "06" && (port_of(local) == Some(port) || port_of(remote) == Some(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_wait_lines() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert!(!time_wait_on(header, 4096));
        let v4 = "   7: 0100007F:1000 0100007F:9C40 06 00000000:00000000 03:00000D2F 00000000     0        0 0 3 0000000000000000";
        assert!(time_wait_on(v4, 4096));
        assert!(time_wait_on(v4, 40000));
        assert!(!time_wait_on(v4, 4097));
        let established = v4.replace(" 06 ", " 01 ");
        assert!(!time_wait_on(&established, 4096));
        let v6 = "   0: 00000000000000000000000001000000:1000 00000000000000000000000001000000:C350 06 00000000:00000000 03:000010B5 00000000     0        0 0 3 0000000000000000";
        assert!(time_wait_on(v6, 4096));
        assert!(time_wait_on(v6, 50000));
    }
}
