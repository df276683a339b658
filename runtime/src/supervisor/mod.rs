//! Supervision of the sidecars: start, readiness, liveness, restart with backoff, the
//! crash-loop limit, graceful stop, and the state the HTTP API shows.
//!
//! Each sidecar is run by one task ([`sidecar`]) that owns its child process and obeys
//! commands (restart, stop) from the [`Supervisor`] handle. Everything runs on the
//! server's single runtime thread: that thread spawns every child, which is what Linux's
//! `PR_SET_PDEATHSIG` needs (it fires when the *spawning thread* exits).
//!
//! - [`backoff`]: the restart policy (pure).
//! - [`budget`]: how often a restart may be asked for over the API (pure).
//! - [`events`]: numbered events for `GET /system/events` and the log.
//! - [`health`]: HTTP health probes.
//! - [`logs`]: sidecar output to rotating files and an in-memory tail.

pub mod backoff;
pub mod budget;
pub mod contract;
pub mod events;
pub mod health;
pub mod logs;
mod sidecar;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::process::{Lifeline, RunRecord};
use backoff::RestartPolicy;
use budget::{RestartBudget, RestartBudgetPolicy};
use events::{EventBus, EventKind};
use logs::{LogLimits, SidecarLog};

/// The user name opencode's basic auth expects.
pub const OPENCODE_USERNAME: &str = "opencode";

/// The two sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SidecarKind {
    /// `opencode serve`.
    #[serde(rename = "opencode")]
    Opencode,
    /// `opencode-router serve`.
    #[serde(rename = "opencode-router")]
    Router,
}

impl SidecarKind {
    /// The name used in the manifest, the API and log file names.
    pub fn name(self) -> &'static str {
        match self {
            SidecarKind::Opencode => "opencode",
            SidecarKind::Router => "opencode-router",
        }
    }
}

/// A sidecar's state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum SidecarState {
    /// Not started yet (opencode-router waits for opencode).
    Pending,
    /// Spawned, waiting for the health check.
    Starting,
    /// Healthy.
    Running,
    /// Waiting before a restart.
    Backoff,
    /// Hit the crash-loop limit; restarted only over the API.
    Failed,
    /// Being stopped.
    Stopping,
    /// Stopped on purpose.
    Stopped,
}

/// How the last process ended.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct LastExit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if killed by one.
    pub signal: Option<i32>,
    /// Why, in words.
    pub reason: String,
    /// Unix ms.
    pub at_ms: u64,
}

/// A sidecar's status for the API.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct SidecarStatus {
    /// `opencode` or `opencode-router`.
    pub name: &'static str,
    /// Its state.
    pub state: SidecarState,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// The port it serves (opencode) or reports health on (router).
    pub port: Option<u16>,
    /// Restarts since the server started (automatic and asked for).
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<LastExit>,
    /// Milliseconds since it became healthy, while running.
    pub uptime_ms: Option<u64>,
    /// The executable.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub executable: PathBuf,
    /// The log file.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub log_file: PathBuf,
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    ready_at: Option<Instant>,
    /// When the scheduled restart is due, while in `backoff`.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    restart_due: Option<Instant>,
    /// A restart was asked for over the API and the sidecar has not been spawned again yet.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    restart_asked: bool,
}

impl SidecarStatus {
    fn snapshot(&self) -> SidecarStatus {
        let mut status = self.clone();
        status.uptime_ms = self
            .ready_at
            .filter(|_| self.state == SidecarState::Running)
            .map(|t| t.elapsed().as_millis() as u64);
        status
    }
}

/// Timings the supervisor uses; the defaults suit real use, tests shorten them through
/// `OPENWORK_SERVER_V2_SUPERVISOR` (see [`Tuning::from_env_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Restart policy.
    pub restart: RestartPolicy,
    /// How often to poll the health route while a sidecar starts.
    pub ready_poll: Duration,
    /// A sidecar not healthy this long after spawn is a failed start.
    pub ready_timeout: Duration,
    /// How often to check a running sidecar's health.
    pub liveness_interval: Duration,
    /// One liveness probe's time limit.
    pub liveness_timeout: Duration,
    /// Consecutive failed liveness probes that mean "restart it".
    pub liveness_failures: u32,
    /// How long a sidecar gets after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// How often a restart may be asked for over the API.
    pub restart_budget: RestartBudgetPolicy,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            restart: RestartPolicy::default(),
            ready_poll: Duration::from_millis(5),
            ready_timeout: Duration::from_secs(60),
            liveness_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(3),
            liveness_failures: 3,
            stop_grace: Duration::from_secs(5),
            restart_budget: RestartBudgetPolicy::default(),
        }
    }
}

impl Tuning {
    /// Parses `key=value` pairs separated by commas (values in ms unless said otherwise):
    /// `backoff_initial_ms`, `backoff_max_ms`, `delay_reset_ms`, `healthy_reset_ms`,
    /// `crash_window_ms`, `crash_limit` (count), `ready_poll_ms`, `ready_timeout_ms`,
    /// `liveness_interval_ms`, `liveness_timeout_ms`, `liveness_failures` (count),
    /// `stop_grace_ms`, `restart_burst` (count), `restart_refill_ms`.
    pub fn from_env_value(value: &str) -> Result<Tuning, String> {
        let mut tuning = Tuning::default();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, number) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let number: u64 = number
                .trim()
                .parse()
                .map_err(|_| format!("`{pair}`: the value is not a whole number"))?;
            let ms = Duration::from_millis(number);
            match key.trim() {
                "backoff_initial_ms" => tuning.restart.initial = ms,
                "backoff_max_ms" => tuning.restart.max = ms,
                "delay_reset_ms" => tuning.restart.delay_reset = ms,
                "healthy_reset_ms" => tuning.restart.healthy_reset = ms,
                "crash_window_ms" => tuning.restart.window = ms,
                "crash_limit" => tuning.restart.limit = number.max(1) as usize,
                "ready_poll_ms" => tuning.ready_poll = ms,
                "ready_timeout_ms" => tuning.ready_timeout = ms,
                "liveness_interval_ms" => tuning.liveness_interval = ms,
                "liveness_timeout_ms" => tuning.liveness_timeout = ms,
                "liveness_failures" => tuning.liveness_failures = number.max(1) as u32,
                "stop_grace_ms" => tuning.stop_grace = ms,
                "restart_burst" => tuning.restart_budget.burst = number.clamp(1, 1000) as u32,
                "restart_refill_ms" => tuning.restart_budget.refill = ms,
                other => return Err(format!("unknown setting `{other}`")),
            }
        }
        Ok(tuning)
    }
}

/// What the supervisor runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The active workspace, read at every spawn: opencode's working directory, the
    /// router's serve dir.
    pub workspace: watch::Receiver<crate::workspace::Workspace>,
    /// Where sidecar logs go.
    pub logs_dir: PathBuf,
    /// opencode's executable.
    pub opencode: PathBuf,
    /// opencode-router's executable, when the router is configured.
    pub router: Option<PathBuf>,
    /// Timings.
    pub tuning: Tuning,
    /// Secrets that must never reach a log file (the server's tokens).
    pub secrets: Vec<String>,
    /// Log file limits.
    pub log_limits: LogLimits,
}

/// Where opencode can be reached right now.
#[derive(Clone)]
pub struct OpencodeEndpoint {
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    /// Its password (fresh for every opencode process).
    pub password: String,
}

impl OpencodeEndpoint {
    /// The `Authorization` header value opencode accepts.
    pub fn authorization(&self) -> http::HeaderValue {
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{OPENCODE_USERNAME}:{}", self.password));
        let mut value = http::HeaderValue::from_str(&format!("Basic {credentials}"))
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Debug for OpencodeEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpencodeEndpoint")
            .field("addr", &self.addr)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// The answer to a restart asked for over the API ([`Supervisor::request_restart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartAnswer {
    /// The sidecar is being restarted.
    Restarting,
    /// A restart (asked for, or automatic) is already under way: nothing more was done, and
    /// nothing was counted against the budget.
    AlreadyUnderway,
    /// The budget is spent: the next restart may be asked for after this long.
    TooSoon {
        /// How long until one is allowed.
        retry_after: Duration,
        /// The budget, for the message.
        policy: RestartBudgetPolicy,
    },
    /// No such sidecar.
    Unknown,
}

/// `Retry-After` while opencode is down and no restart is scheduled (it is starting or
/// stopping, or has just died and the supervisor has yet to notice): a start of the real
/// opencode takes a second or two, so a client asks again about when it may be back.
pub const RETRY_AFTER_STARTING: Duration = Duration::from_secs(1);

/// `Retry-After` while opencode is `failed`: it comes back only when a restart is asked for,
/// so clients need not ask often.
pub const RETRY_AFTER_FAILED: Duration = Duration::from_secs(5);

enum Command {
    Restart,
    Stop(oneshot::Sender<()>),
}

struct SidecarHandle {
    kind: SidecarKind,
    status: Arc<Mutex<SidecarStatus>>,
    log: SidecarLog,
    commands: mpsc::UnboundedSender<Command>,
    /// Restarts asked for over the API.
    budget: Mutex<RestartBudget>,
}

/// The running supervisor: cheap to clone, used by the HTTP handlers.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    sidecars: Vec<SidecarHandle>,
    events: Arc<EventBus>,
    opencode: watch::Receiver<Option<OpencodeEndpoint>>,
}

impl Supervisor {
    /// Starts opencode (and the router, once opencode is up) in tasks on the current
    /// runtime. `lifeline` and `record` make sure no child outlives the server.
    pub fn start(
        config: SupervisorConfig,
        events: Arc<EventBus>,
        lifeline: Option<Lifeline>,
        record: Option<RunRecord>,
    ) -> crate::Result<Supervisor> {
        let (endpoint_tx, endpoint_rx) = watch::channel(None);
        let guard = Arc::new(sidecar::Guard::new(lifeline, record));
        let mut sidecars = Vec::new();
        let mut kinds = vec![(SidecarKind::Opencode, config.opencode.clone())];
        if let Some(router) = &config.router {
            kinds.push((SidecarKind::Router, router.clone()));
        }
        let endpoint_tx = Arc::new(endpoint_tx);
        for (kind, program) in kinds {
            let log = SidecarLog::open(&config.logs_dir, kind.name(), config.log_limits).map_err(
                |e| {
                    let what = format!(
                        "open the log of {} under {}",
                        kind.name(),
                        config.logs_dir.display()
                    );
                    crate::Error::io(what, e)
                },
            )?;
            let status = Arc::new(Mutex::new(SidecarStatus {
                name: kind.name(),
                state: SidecarState::Pending,
                pid: None,
                port: None,
                restarts: 0,
                last_exit: None,
                uptime_ms: None,
                executable: program.clone(),
                log_file: log.path().to_path_buf(),
                ready_at: None,
                restart_due: None,
                restart_asked: false,
            }));
            let (commands, receiver) = mpsc::unbounded_channel();
            let task = sidecar::SidecarTask {
                kind,
                program,
                workspace: config.workspace.clone(),
                tuning: config.tuning,
                status: status.clone(),
                log: log.clone(),
                events: events.clone(),
                commands: receiver,
                secrets: config.secrets.clone(),
                endpoint_tx: endpoint_tx.clone(),
                endpoint_rx: endpoint_rx.clone(),
                guard: guard.clone(),
            };
            tokio::spawn(task.run());
            sidecars.push(SidecarHandle {
                kind,
                status,
                log,
                commands,
                budget: Mutex::new(RestartBudget::new(
                    config.tuning.restart_budget,
                    Instant::now(),
                )),
            });
        }
        Ok(Supervisor {
            inner: Arc::new(Inner {
                sidecars,
                events,
                opencode: endpoint_rx,
            }),
        })
    }

    /// Every sidecar's status.
    pub fn statuses(&self) -> Vec<SidecarStatus> {
        self.inner
            .sidecars
            .iter()
            .map(|s| {
                s.status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .snapshot()
            })
            .collect()
    }

    /// The sidecar called `name`, if it is configured.
    fn handle(&self, name: &str) -> Option<&SidecarHandle> {
        self.inner.sidecars.iter().find(|s| s.kind.name() == name)
    }

    /// Whether `name` is a configured sidecar.
    pub fn has(&self, name: &str) -> bool {
        self.handle(name).is_some()
    }

    /// The log of `name`.
    pub fn log(&self, name: &str) -> Option<SidecarLog> {
        self.handle(name).map(|s| s.log.clone())
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.inner.events
    }

    /// opencode's endpoint while it is healthy.
    pub fn opencode(&self) -> Option<OpencodeEndpoint> {
        self.inner.opencode.borrow().clone()
    }

    /// Whether opencode is running and healthy.
    pub fn opencode_healthy(&self) -> bool {
        self.statuses()
            .iter()
            .any(|s| s.name == SidecarKind::Opencode.name() && s.state == SidecarState::Running)
    }

    /// `Retry-After` for a request that finds opencode down: while a restart is scheduled,
    /// the time until it plus [`RETRY_AFTER_STARTING`]; when `failed`,
    /// [`RETRY_AFTER_FAILED`]; otherwise [`RETRY_AFTER_STARTING`].
    pub fn opencode_retry_after(&self) -> Duration {
        let Some(opencode) = self.handle(SidecarKind::Opencode.name()) else {
            return RETRY_AFTER_STARTING;
        };
        let status = opencode.status.lock().unwrap_or_else(|e| e.into_inner());
        match (status.state, status.restart_due) {
            (SidecarState::Failed, _) => RETRY_AFTER_FAILED,
            (SidecarState::Backoff, Some(due)) => {
                due.saturating_duration_since(Instant::now()) + RETRY_AFTER_STARTING
            }
            _ => RETRY_AFTER_STARTING,
        }
    }

    /// A restart asked for over the API: done from any state (`failed` included) unless one
    /// is already under way (asked for and not yet spawned, or the sidecar is pending,
    /// starting or stopping), which is left alone, or the sidecar's budget is spent.
    pub fn request_restart(&self, name: &str) -> RestartAnswer {
        let Some(sidecar) = self.handle(name) else {
            return RestartAnswer::Unknown;
        };
        {
            let mut status = sidecar.status.lock().unwrap_or_else(|e| e.into_inner());
            let underway = status.restart_asked
                || matches!(
                    status.state,
                    SidecarState::Pending | SidecarState::Starting | SidecarState::Stopping
                );
            if underway {
                return RestartAnswer::AlreadyUnderway;
            }
            let mut budget = sidecar.budget.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(retry_after) = budget.take(Instant::now()) {
                return RestartAnswer::TooSoon {
                    retry_after,
                    policy: budget.policy(),
                };
            }
            // Until the sidecar task spawns again (and says `starting`), later asks are
            // this one.
            status.restart_asked = true;
        }
        self.restart(name);
        RestartAnswer::Restarting
    }

    /// Asks for a restart of `name` (from any state, `failed` included), without a budget:
    /// for the server's own needs (the router follows a workspace switch); false if there is
    /// no such sidecar.
    pub fn restart(&self, name: &str) -> bool {
        match self.handle(name) {
            Some(sidecar) => {
                self.inner
                    .events
                    .publish(sidecar.kind.name(), EventKind::RestartRequested);
                sidecar.commands.send(Command::Restart).is_ok()
            }
            None => false,
        }
    }

    /// Waits until opencode is healthy for the first time; an error if it reached the
    /// `failed` state first (the reason in words).
    pub async fn wait_opencode_ready(&self) -> Result<(), String> {
        let opencode = self
            .handle(SidecarKind::Opencode.name())
            .expect("opencode is always supervised");
        let mut events = self.inner.events.subscribe();
        loop {
            {
                let status = opencode.status.lock().unwrap_or_else(|e| e.into_inner());
                match status.state {
                    SidecarState::Running => return Ok(()),
                    SidecarState::Failed | SidecarState::Stopped => {
                        return Err(status
                            .last_exit
                            .as_ref()
                            .map(|e| e.reason.clone())
                            .unwrap_or_else(|| "stopped".into()));
                    }
                    _ => {}
                }
            }
            // Any event may be the state change; the status above is the truth.
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = events.recv().await {
                return Err("the supervisor stopped".into());
            }
        }
    }

    /// Stops the router, then opencode (SIGTERM, a bounded wait, SIGKILL), and waits.
    pub async fn shutdown(&self) {
        for sidecar in self.inner.sidecars.iter().rev() {
            let (done, wait) = oneshot::channel();
            if sidecar.commands.send(Command::Stop(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }
}

/// A fresh random secret: 32 bytes from the OS generator, as 64 hex digits.
pub fn random_secret() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator works");
    hex::encode(bytes)
}
