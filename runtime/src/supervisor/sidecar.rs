//! One sidecar's life: spawn, wait for health, watch, restart or give up, stop.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use super::backoff::{Backoff, Decision};
use super::events::{EventBus, EventKind, unix_ms};
use super::health::probe;
use super::logs::{SidecarLog, Stream};
use super::{
    Command, LastExit, OPENCODE_USERNAME, OpencodeEndpoint, SidecarKind, SidecarState,
    SidecarStatus, Tuning,
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
    /// A stop was asked for; the process is gone.
    Stopped(Option<tokio::sync::oneshot::Sender<()>>),
}

/// What a wait inside a run saw first.
enum Wake {
    Exited(std::io::Result<ExitStatus>),
    Command(Option<Command>),
    Tick,
    EndpointChanged,
}

pub(super) struct SidecarTask {
    pub kind: SidecarKind,
    pub program: PathBuf,
    pub workspace: PathBuf,
    pub tuning: Tuning,
    pub status: Arc<Mutex<SidecarStatus>>,
    pub log: SidecarLog,
    pub events: Arc<EventBus>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub password: String,
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
        let mut last_port = None;
        loop {
            if self.kind == SidecarKind::Router
                && let Some(ack) = self.wait_for_opencode().await
            {
                return self.stopped(ack);
            }
            let outcome = self.run_once(&mut last_port).await;
            let (exit, healthy_for) = match outcome {
                Outcome::Stopped(ack) => return self.stopped(ack),
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
                    self.set_state(SidecarState::Backoff);
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

    async fn run_once(&mut self, last_port: &mut Option<u16>) -> Outcome {
        let port = choose_port(*last_port);
        *last_port = Some(port);
        let mut command = process::sidecar_command(&self.program);
        command
            .current_dir(&self.workspace)
            // The server's own tokens are not the sidecars' business.
            .env_remove(env_vars::OPENWORK_TOKEN)
            .env_remove(env_vars::OPENWORK_HOST_TOKEN)
            .env("OPENCODE_SERVER_USERNAME", OPENCODE_USERNAME)
            .env("OPENCODE_SERVER_PASSWORD", &self.password);
        let opencode_url = self
            .endpoint_rx
            .borrow()
            .as_ref()
            .map(|e| (e.addr, format!("http://{}", e.addr)));
        match self.kind {
            SidecarKind::Opencode => {
                command.args(["serve", "--hostname", "127.0.0.1", "--port"]);
                command.arg(port.to_string());
            }
            SidecarKind::Router => {
                let url = opencode_url.as_ref().map(|u| u.1.as_str()).unwrap_or("");
                command.arg("serve").arg(&self.workspace);
                command.args(["--opencode-url", url]);
                command.env("OPENCODE_ROUTER_HEALTH_PORT", port.to_string());
            }
        }
        let spawned_at = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Outcome::Failed {
                    exit: failure(format!("could not start {}: {e}", self.program.display())),
                    healthy_for: Duration::ZERO,
                };
            }
        };
        let pid = child.id().unwrap_or(0);
        self.guard.started(self.kind.name(), pid, &self.program);
        if let Some(stdout) = child.stdout.take() {
            self.log.attach(Stream::Stdout, stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            self.log.attach(Stream::Stderr, stderr);
        }
        self.log.note(&format!(
            "started pid {pid}, port {port}: {}",
            self.program.display()
        ));
        {
            let mut status = self.status();
            status.state = SidecarState::Starting;
            status.pid = Some(pid);
            status.port = Some(port);
            status.ready_at = None;
        }
        self.publish(EventKind::Starting { pid, port });

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let endpoint = OpencodeEndpoint {
            addr,
            password: self.password.clone(),
        };
        let authorization = endpoint.authorization();
        let health_path = match self.kind {
            SidecarKind::Opencode => "/global/health",
            SidecarKind::Router => "/health",
        };
        let check = |timeout: Duration| {
            let authorization = authorization.clone();
            let kind = self.kind;
            async move {
                let answer = probe(addr, health_path, Some(&authorization), timeout).await?;
                if !answer.status.is_success() {
                    return Err(format!("health check answered {}", answer.status));
                }
                if kind == SidecarKind::Opencode
                    && let Ok(body) = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    && body.get("healthy") == Some(&serde_json::Value::Bool(false))
                {
                    return Err("health check answered healthy: false".into());
                }
                Ok(())
            }
        };

        // Readiness: poll quickly until healthy, the process exits, or time runs out.
        let deadline = spawned_at + self.tuning.ready_timeout;
        loop {
            let wake = tokio::select! {
                status = child.wait() => Wake::Exited(status),
                command = self.commands.recv() => Wake::Command(command),
                _ = tokio::time::sleep(self.tuning.ready_poll) => Wake::Tick,
            };
            match wake {
                Wake::Exited(status) => {
                    return self.exited(pid, status, "before it became healthy", Duration::ZERO);
                }
                Wake::Command(command) => return self.obey(command, &mut child, pid).await,
                Wake::Tick | Wake::EndpointChanged => {
                    // (EndpointChanged is only watched for once the sidecar is running.)
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let limit = self
                        .tuning
                        .liveness_timeout
                        .min(remaining)
                        .max(Duration::from_millis(1));
                    if check(limit).await.is_ok() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        self.stop_child(&mut child, pid).await;
                        return Outcome::Failed {
                            exit: failure(format!(
                                "not healthy within {} s of starting (pid {pid})",
                                self.tuning.ready_timeout.as_secs_f64()
                            )),
                            healthy_for: Duration::ZERO,
                        };
                    }
                }
            }
        }

        let ready_at = Instant::now();
        let startup_ms = ready_at.duration_since(spawned_at).as_millis() as u64;
        {
            let mut status = self.status();
            status.state = SidecarState::Running;
            status.ready_at = Some(ready_at);
        }
        self.log.note(&format!("healthy after {startup_ms} ms"));
        self.publish(EventKind::Ready { pid, startup_ms });
        let started_with = opencode_url.map(|u| u.0);
        if self.kind == SidecarKind::Opencode {
            self.endpoint_tx.send_replace(Some(endpoint));
        }

        // Liveness: a few failed checks in a row mean it hangs: restart it.
        let mut failed_checks = 0u32;
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
                    // opencode came back on another port: the router must follow it.
                    let now = self.endpoint_rx.borrow().as_ref().map(|e| e.addr);
                    if now.is_some() && now != started_with {
                        self.log.note("opencode moved to another port: restarting");
                        self.stop_child(&mut child, pid).await;
                        return Outcome::Restart;
                    }
                }
                Wake::Tick => match check(self.tuning.liveness_timeout).await {
                    Ok(()) => failed_checks = 0,
                    Err(reason) => {
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

/// The previous port if it is still free (so clients and the router keep their URL),
/// else any free loopback port.
fn choose_port(previous: Option<u16>) -> u16 {
    if let Some(port) = previous
        && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    {
        return port;
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
