//! One sidecar's life: spawn, wait for health, watch, restart or give up, stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::backoff::{Backoff, Decision};
use super::contract::{Arg, EnvValue};
use super::events::{EventBus, EventKind, unix_ms};
use super::health::{ProbeError, is_resource_shortage, probe};
use super::logs::{LineWatch, SidecarLog, Stream};
use super::{
    Command, LastExit, OPENCODE_USERNAME, OpencodeEndpoint, SidecarKind, SidecarState,
    SidecarStatus, Tuning, random_secret,
};
use crate::env_vars;
use crate::process::{self, Lifeline, RunRecord};

/// The no-orphan bookkeeping shared by both sidecars: the lifeline watches every
/// process group we start, and the run record lists them for the next start's sweep.
pub(super) struct Guard {
    lifeline: Option<Lifeline>,
    record: Mutex<Option<RunRecord>>,
}

impl Guard {
    pub(super) fn new(lifeline: Option<Lifeline>, record: Option<RunRecord>) -> Guard {
        Guard {
            lifeline,
            record: Mutex::new(record),
        }
    }

    fn started(&self, name: &str, pid: u32, exe: &Path) {
        if let Some(lifeline) = &self.lifeline {
            lifeline.watch(pid);
        }
        if let Some(record) = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            && let Err(e) = record.add(name, pid, exe)
        {
            tracing::warn!(error = %e, "could not record sidecar {name} (pid {pid}) for cleanup");
        }
    }

    fn ended(&self, pid: u32) {
        if let Some(lifeline) = &self.lifeline {
            lifeline.unwatch(pid);
        }
        if let Some(record) = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            && let Err(e) = record.remove(pid)
        {
            tracing::warn!(error = %e, "could not update the sidecar record");
        }
    }
}

/// How one run of the process ended.
enum Outcome {
    /// It failed (exited, never became healthy, or stopped answering).
    Failed {
        exit: LastExit,
        healthy_for: Duration,
    },
    /// A restart was asked for; the process is gone.
    Restart,
    /// It could not be started for lack of descriptors, processes or memory on our side:
    /// retried after a pause, and not counted as a crash of the sidecar.
    Starved(String),
    /// A stop was asked for; the process is gone.
    Stopped(Option<tokio::sync::oneshot::Sender<()>>),
}

/// What a wait inside a run saw first.
enum Wake {
    Exited(std::io::Result<ExitStatus>),
    Command(Option<Command>),
    Tick,
    EndpointChanged,
    /// The address the sidecar announced on stdout (`None`: stdout closed first).
    Announced(Option<SocketAddr>),
    /// A readiness probe ended: healthy or not.
    Probed(bool),
    Deadline,
}

/// A readiness probe unanswered this long gets a second one beside it. opencode 1.18
/// accepts connections about 0.4 s before it serves them and never answers a request that
/// arrived in that window, so waiting out a probe's whole limit (the 3 s liveness limit)
/// made its warm start twice a bare start; a short limit would instead fail a sidecar that
/// is merely slow under load. Hedging keeps both: the hung probe keeps its limit, and the
/// delay it costs is at most this.
const HEDGE_AFTER: Duration = Duration::from_millis(50);

/// At most this many readiness probes at once (16 × `HEDGE_AFTER` = 0.8 s of unanswered
/// probes before the next waits for the oldest to give up).
const MAX_STARTUP_PROBES: usize = 16;

pub(super) struct SidecarTask {
    pub kind: SidecarKind,
    pub program: PathBuf,
    pub workspace: tokio::sync::watch::Receiver<crate::workspace::Workspace>,
    pub tuning: Tuning,
    pub status: Arc<Mutex<SidecarStatus>>,
    pub log: SidecarLog,
    pub events: Arc<EventBus>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    /// The server's tokens: never in a sidecar's log.
    pub secrets: Vec<String>,
    pub endpoint_tx: Arc<watch::Sender<Option<OpencodeEndpoint>>>,
    pub endpoint_rx: watch::Receiver<Option<OpencodeEndpoint>>,
    pub guard: Arc<Guard>,
}

impl SidecarTask {
    fn status(&self) -> MutexGuard<'_, SidecarStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, kind: EventKind) {
        self.events.publish(self.kind.name(), kind);
    }

    fn set_state(&self, state: SidecarState) {
        self.status().state = state;
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(self.tuning.restart);
        let mut starved_since: Option<Instant> = None;
        loop {
            if self.kind == SidecarKind::Router
                && let Some(ack) = self.wait_for_opencode().await
            {
                return self.stopped(ack);
            }
            let outcome = self.run_once().await;
            if !matches!(outcome, Outcome::Starved(_)) {
                starved_since = None;
            }
            let (exit, healthy_for) = match outcome {
                Outcome::Stopped(ack) => return self.stopped(ack),
                Outcome::Starved(reason) => {
                    // Logged once per shortage, not once per retry: a flood must not also
                    // flood the log.
                    if starved_since.is_none() {
                        starved_since = Some(Instant::now());
                        self.log
                            .note(&format!("{reason}: retrying every second until it works"));
                        tracing::warn!(sidecar = self.kind.name(), "{reason}");
                    }
                    {
                        let mut status = self.status();
                        status.state = SidecarState::Backoff;
                        status.restart_due = Some(Instant::now() + STARVED_RETRY);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(STARVED_RETRY) => {}
                        command = self.commands.recv() => match command {
                            Some(Command::Restart) => backoff.reset(),
                            Some(Command::Stop(ack)) => return self.stopped(Some(ack)),
                            None => return self.stopped(None),
                        },
                    }
                    continue;
                }
                Outcome::Restart => {
                    backoff.reset();
                    self.status().restarts += 1;
                    continue;
                }
                Outcome::Failed { exit, healthy_for } => (exit, healthy_for),
            };
            let reason = exit.reason.clone();
            self.log.note(&reason);
            self.publish(EventKind::Exited {
                pid: self.status().pid,
                code: exit.code,
                signal: exit.signal,
                reason: reason.clone(),
            });
            {
                let mut status = self.status();
                status.pid = None;
                status.last_exit = Some(exit);
            }
            let decision = backoff.on_failure(Instant::now(), healthy_for, rand::random());
            let wake = match decision {
                Decision::RestartAfter { delay, attempt } => {
                    {
                        let mut status = self.status();
                        status.state = SidecarState::Backoff;
                        status.restart_due = Some(Instant::now() + delay);
                    }
                    self.publish(EventKind::Restarting {
                        delay_ms: delay.as_millis() as u64,
                        attempt,
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => None,
                        command = self.commands.recv() => Some(command),
                    }
                }
                Decision::GiveUp { failures } => {
                    self.set_state(SidecarState::Failed);
                    self.log.note(&format!(
                        "{failures} failures within {} s: not restarting until asked (POST /system/sidecars/{}/restart)",
                        self.tuning.restart.window.as_secs(),
                        self.kind.name()
                    ));
                    self.publish(EventKind::Failed { failures, reason });
                    Some(self.commands.recv().await)
                }
            };
            match wake {
                None => {}
                Some(Some(Command::Restart)) => backoff.reset(),
                Some(Some(Command::Stop(ack))) => return self.stopped(Some(ack)),
                Some(None) => return self.stopped(None),
            }
            self.status().restarts += 1;
        }
    }

    fn stopped(&self, ack: Option<tokio::sync::oneshot::Sender<()>>) {
        {
            let mut status = self.status();
            status.state = SidecarState::Stopped;
            status.pid = None;
        }
        self.publish(EventKind::Stopped);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// The router needs opencode's URL: wait until opencode is up. `Some` if a stop came.
    async fn wait_for_opencode(&mut self) -> Option<Option<tokio::sync::oneshot::Sender<()>>> {
        while self.endpoint_rx.borrow_and_update().is_none() {
            tokio::select! {
                changed = self.endpoint_rx.changed() => {
                    if changed.is_err() {
                        return Some(None);
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Restart) => {}
                    Some(Command::Stop(ack)) => return Some(Some(ack)),
                    None => return Some(None),
                },
            }
        }
        None
    }

    async fn run_once(&mut self) -> Outcome {
        {
            // This run is the restart that was asked for or scheduled: a later ask is a new one.
            let mut status = self.status();
            status.restart_asked = false;
            status.restart_due = None;
        }
        // Fresh credentials for every process: one that another user somehow learned (a core
        // dump, a leaked log line) dies with the process it was made for.
        let opencode_now = self.endpoint_rx.borrow().clone();
        let password = match self.kind {
            SidecarKind::Opencode => random_secret(),
            SidecarKind::Router => opencode_now
                .as_ref()
                .map(|e| e.password.clone())
                .unwrap_or_default(),
        };
        // The server's tokens are re-added so they stay the newest secrets however many
        // passwords come and go; the password before anything can print it.
        for secret in &self.secrets {
            self.log.add_secret(secret);
        }
        self.log.add_secret(&password);

        let contract = self.kind.contract();
        // Read at each spawn: a switched workspace holds for every later process.
        let workspace = self.workspace.borrow().directory.clone();
        let mut command = process::sidecar_command(&self.program);
        command
            .current_dir(&workspace)
            // The server's own tokens are not the sidecars' business.
            .env_remove(env_vars::OPENWORK_TOKEN)
            .env_remove(env_vars::OPENWORK_HOST_TOKEN);
        for (name, value) in contract.env {
            match value {
                EnvValue::Text(text) => command.env(name, text),
                EnvValue::Username => command.env(name, OPENCODE_USERNAME),
                EnvValue::Password => command.env(name, &password),
            };
        }
        for arg in contract.args {
            match arg {
                Arg::Text(text) => command.arg(text),
                Arg::Workspace => command.arg(&workspace),
                Arg::OpencodeUrl => command.arg(
                    opencode_now
                        .as_ref()
                        .map(|e| format!("http://{}", e.addr))
                        .unwrap_or_default(),
                ),
            };
        }
        let spawned_at = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) if is_resource_shortage(&e) => {
                return Outcome::Starved(format!(
                    "could not start {}: {e}",
                    self.program.display()
                ));
            }
            Err(e) => {
                return Outcome::Failed {
                    exit: failure(format!("could not start {}: {e}", self.program.display())),
                    healthy_for: Duration::ZERO,
                };
            }
        };
        let pid = child.id().unwrap_or(0);
        self.guard.started(self.kind.name(), pid, &self.program);
        let (announced_tx, mut announced) = oneshot::channel();
        if let Some(stdout) = child.stdout.take() {
            let kind = self.kind;
            let mut announced_tx = Some(announced_tx);
            let watch: LineWatch = Box::new(move |line| {
                let Some(addr) = announced_address(kind, &String::from_utf8_lossy(line)) else {
                    return false;
                };
                if let Some(tx) = announced_tx.take() {
                    let _ = tx.send(addr);
                }
                true
            });
            self.log.attach_watching(Stream::Stdout, stdout, watch);
        }
        if let Some(stderr) = child.stderr.take() {
            self.log.attach(Stream::Stderr, stderr);
        }
        self.log
            .note(&format!("started pid {pid}: {}", self.program.display()));
        {
            let mut status = self.status();
            status.state = SidecarState::Starting;
            status.pid = Some(pid);
            status.port = None;
            status.ready_at = None;
        }
        self.publish(EventKind::Starting { pid });

        let health_path = contract.health_path;
        let flag_in_body = contract.health_body_has_flag;
        // opencode's password goes to opencode's announced port only; the router's health
        // server never gets it.
        let authorization = contract.health_with_credentials.then(|| {
            OpencodeEndpoint {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                password: password.clone(),
            }
            .authorization()
        });
        let check = |addr: SocketAddr, timeout: Duration| {
            let authorization = authorization.clone();
            async move {
                let answer = probe(addr, health_path, authorization.as_ref(), timeout).await?;
                if !answer.status.is_success() {
                    return Err(ProbeError::answer(format!(
                        "health check answered {}",
                        answer.status
                    )));
                }
                if flag_in_body
                    && let Ok(body) = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    && body.get("healthy") == Some(&serde_json::Value::Bool(false))
                {
                    return Err(ProbeError::answer("health check answered healthy: false"));
                }
                Ok(())
            }
        };

        // Readiness: wait for the announced address, then probe quickly until healthy, the
        // process exits, or time runs out. Probes are hedged (see `HEDGE_AFTER`): one that
        // the sidecar accepted but will never answer does not hold up the next.
        let deadline = spawned_at + self.tuning.ready_timeout;
        let mut addr: Option<SocketAddr> = None;
        let mut announcing = true;
        let mut probes: JoinSet<Result<(), ProbeError>> = JoinSet::new();
        let mut newest_probe: Option<Instant> = None;
        loop {
            let wake = tokio::select! {
                status = child.wait() => Wake::Exited(status),
                command = self.commands.recv() => Wake::Command(command),
                announced = &mut announced, if announcing => Wake::Announced(announced.ok()),
                Some(probed) = probes.join_next(), if !probes.is_empty() => {
                    Wake::Probed(matches!(probed, Ok(Ok(()))))
                }
                _ = tokio::time::sleep(self.tuning.ready_poll), if addr.is_some() => Wake::Tick,
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Deadline,
            };
            // A probe may go out on the announcement (no poll interval lost between the
            // sidecar saying it listens and the first question) and on each tick; never
            // straight after a failed one, which would spin on a sidecar that fails fast.
            let may_probe = matches!(wake, Wake::Announced(_) | Wake::Tick);
            match wake {
                Wake::Exited(status) => {
                    return self.exited(pid, status, "before it became healthy", Duration::ZERO);
                }
                Wake::Command(command) => return self.obey(command, &mut child, pid).await,
                Wake::Announced(found) => {
                    announcing = false;
                    // None: stdout closed without an announcement; the exit or the deadline
                    // comes next.
                    if let Some(found) = found {
                        addr = Some(found);
                        self.status().port = Some(found.port());
                        self.log.note(&format!("listening on {found}"));
                        self.publish(EventKind::Listening {
                            pid,
                            port: found.port(),
                        });
                    }
                }
                Wake::EndpointChanged => {}
                Wake::Probed(healthy) => {
                    if healthy {
                        break;
                    }
                }
                Wake::Deadline => {
                    self.stop_child(&mut child, pid).await;
                    let what = if addr.is_some() {
                        "not healthy"
                    } else {
                        "did not announce a loopback address on stdout"
                    };
                    return Outcome::Failed {
                        exit: failure(format!(
                            "{what} within {} s of starting (pid {pid})",
                            self.tuning.ready_timeout.as_secs_f64()
                        )),
                        healthy_for: Duration::ZERO,
                    };
                }
                Wake::Tick => {}
            }
            if let Some(addr) = addr.filter(|_| may_probe) {
                let due = match newest_probe {
                    None => true,
                    Some(_) if probes.is_empty() => true,
                    Some(at) => at.elapsed() >= HEDGE_AFTER,
                };
                if due && probes.len() < MAX_STARTUP_PROBES {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let limit = self
                        .tuning
                        .liveness_timeout
                        .min(remaining)
                        .max(Duration::from_millis(1));
                    probes.spawn(check(addr, limit));
                    newest_probe = Some(Instant::now());
                }
            }
        }
        let addr = addr.expect("healthy only after an announcement");
        // The hedged probes still waiting are answered by nobody; their sockets go now.
        drop(probes);
        let endpoint = OpencodeEndpoint { addr, password };

        let ready_at = Instant::now();
        let startup_ms = ready_at.duration_since(spawned_at).as_millis() as u64;
        {
            let mut status = self.status();
            status.state = SidecarState::Running;
            status.ready_at = Some(ready_at);
        }
        self.log.note(&format!("healthy after {startup_ms} ms"));
        self.publish(EventKind::Ready { pid, startup_ms });
        let started_with = opencode_now.map(|e| (e.addr, e.password));
        if self.kind == SidecarKind::Opencode {
            self.endpoint_tx.send_replace(Some(endpoint));
        }

        // Liveness: a few failed checks in a row mean it hangs: restart it.
        let mut failed_checks = 0u32;
        let mut starved_checks = 0u32;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.tuning.liveness_interval,
            self.tuning.liveness_interval,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                status = child.wait() => Wake::Exited(status),
                command = self.commands.recv() => Wake::Command(command),
                _ = ticker.tick() => Wake::Tick,
                changed = self.endpoint_rx.changed(), if self.kind == SidecarKind::Router => {
                    match changed {
                        Ok(()) => Wake::EndpointChanged,
                        Err(_) => Wake::Command(None),
                    }
                }
            };
            match wake {
                Wake::Exited(status) => {
                    self.lost_opencode();
                    return self.exited(pid, status, "while running", ready_at.elapsed());
                }
                Wake::Command(command) => {
                    self.lost_opencode();
                    return self.obey(command, &mut child, pid).await;
                }
                Wake::EndpointChanged => {
                    // A new opencode (another port, another password): the router must follow.
                    let now = self
                        .endpoint_rx
                        .borrow()
                        .as_ref()
                        .map(|e| (e.addr, e.password.clone()));
                    if now.is_some() && now != started_with {
                        self.log
                            .note("opencode was restarted: restarting to follow it");
                        self.stop_child(&mut child, pid).await;
                        return Outcome::Restart;
                    }
                }
                // (Only waited for before readiness.)
                Wake::Announced(_) | Wake::Probed(_) | Wake::Deadline => {}
                Wake::Tick => match check(addr, self.tuning.liveness_timeout).await {
                    Ok(()) => {
                        failed_checks = 0;
                        starved_checks = 0;
                    }
                    Err(error) if error.local_shortage => {
                        // Our side is out of descriptors (a connection flood, say): that says
                        // nothing about the sidecar, so it is not held against it.
                        starved_checks += 1;
                        if starved_checks == 1 {
                            self.log.note(&format!(
                                "liveness check skipped: {}; not counted against the sidecar",
                                error.reason
                            ));
                        }
                    }
                    Err(ProbeError { reason, .. }) => {
                        failed_checks += 1;
                        self.log.note(&format!(
                            "liveness check {failed_checks}/{} failed: {reason}",
                            self.tuning.liveness_failures
                        ));
                        if failed_checks >= self.tuning.liveness_failures {
                            self.lost_opencode();
                            let healthy_for = ready_at.elapsed();
                            self.stop_child(&mut child, pid).await;
                            return Outcome::Failed {
                                exit: failure(format!(
                                    "unhealthy: {failed_checks} liveness checks in a row failed ({reason}); stopped pid {pid}"
                                )),
                                healthy_for,
                            };
                        }
                    }
                },
            }
        }
    }

    /// opencode is no longer reachable where the endpoint says: the proxy answers 503
    /// until it is back.
    fn lost_opencode(&self) {
        if self.kind == SidecarKind::Opencode {
            self.endpoint_tx.send_replace(None);
        }
    }

    async fn obey(&mut self, command: Option<Command>, child: &mut Child, pid: u32) -> Outcome {
        self.set_state(SidecarState::Stopping);
        self.stop_child(child, pid).await;
        match command {
            Some(Command::Restart) => Outcome::Restart,
            Some(Command::Stop(ack)) => Outcome::Stopped(Some(ack)),
            None => Outcome::Stopped(None),
        }
    }

    fn exited(
        &self,
        pid: u32,
        status: std::io::Result<ExitStatus>,
        when: &str,
        healthy_for: Duration,
    ) -> Outcome {
        // Whatever it left behind in its process group goes with it.
        let _ = process::force_kill(pid);
        self.guard.ended(pid);
        let exit = match status {
            Ok(status) => {
                let mut exit = describe_exit(status);
                exit.reason = format!("pid {pid} {} {when}", exit.reason);
                exit
            }
            Err(e) => failure(format!("lost track of pid {pid} {when}: {e}")),
        };
        Outcome::Failed { exit, healthy_for }
    }

    /// SIGTERM to the process group, a bounded wait, then SIGKILL.
    async fn stop_child(&self, child: &mut Child, pid: u32) {
        if let Err(e) = process::request_stop(pid) {
            tracing::debug!(error = %e, pid, "request_stop");
        }
        let status = match tokio::time::timeout(self.tuning.stop_grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.log.note(&format!(
                    "pid {pid} still running {} ms after SIGTERM: killing it",
                    self.tuning.stop_grace.as_millis()
                ));
                let _ = process::force_kill(pid);
                child.wait().await.ok()
            }
        };
        let _ = process::force_kill(pid);
        self.guard.ended(pid);
        if let Some(status) = status {
            let exit = describe_exit(status);
            self.log
                .note(&format!("pid {pid} stopped: {}", exit.reason));
            self.status().last_exit = Some(exit);
        }
    }
}

/// A failure that is not a process exit (no code, no signal).
fn failure(reason: String) -> LastExit {
    LastExit {
        code: None,
        signal: None,
        reason,
        at_ms: unix_ms(),
    }
}

fn describe_exit(status: ExitStatus) -> LastExit {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    let reason = match (status.code(), signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    };
    LastExit {
        code: status.code(),
        signal,
        reason,
        at_ms: unix_ms(),
    }
}

/// How long to wait before trying again to start a sidecar that could not be started for
/// lack of resources on our side.
const STARVED_RETRY: Duration = Duration::from_secs(1);

/// The loopback address a sidecar announces on its stdout once it listens: opencode prints
/// `opencode server listening on http://127.0.0.1:4096`, opencode-router
/// `opencode-router 0.1.0: health on http://127.0.0.1:41234/health, …`. Anything else (no
/// such line, a non-loopback address, port 0) is not an announcement.
pub(super) fn announced_address(kind: SidecarKind, line: &str) -> Option<SocketAddr> {
    let marker = kind.contract().announcement;
    let rest = &line[line.find(marker)? + marker.len()..];
    let authority = rest
        .split(|c: char| c == '/' || c == ',' || c.is_whitespace())
        .next()?;
    let addr: SocketAddr = authority.parse().ok()?;
    (addr.ip().is_loopback() && addr.port() != 0).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_announcement_with_a_port_counts() {
        let opencode = SidecarKind::Opencode;
        assert_eq!(
            announced_address(
                opencode,
                "opencode server listening on http://127.0.0.1:4096"
            ),
            Some("127.0.0.1:4096".parse().unwrap())
        );
        assert_eq!(
            announced_address(opencode, "opencode server listening on http://[::1]:5000/"),
            Some("[::1]:5000".parse().unwrap())
        );
        for line in [
            "opencode server listening on http://0.0.0.0:4096",
            "opencode server listening on http://192.0.2.7:4096",
            "opencode server listening on http://127.0.0.1:0",
            "opencode server listening on http://localhost:4096",
            "opencode server listening on http://127.0.0.1:99999",
            "see http://127.0.0.1:4096 for details",
            "",
        ] {
            assert_eq!(announced_address(opencode, line), None, "{line}");
        }
        let router = SidecarKind::Router;
        assert_eq!(
            announced_address(
                router,
                "opencode-router 0.1.0: health on http://127.0.0.1:41234/health, opencode http://127.0.0.1:4096, workspace /w"
            ),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(
            announced_address(router, "opencode server listening on http://127.0.0.1:4096"),
            None,
            "the router's announcement is its health server"
        );
    }
}
