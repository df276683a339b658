//! `openwork-server-v2 serve`: resolve sidecars and tokens, bind the front door, start the
//! supervisor, print the ready line, and stop everything cleanly on a signal or
//! `POST /system/shutdown`.

pub mod token;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;

use crate::env_vars;
use crate::error::{Error, Result};
use crate::http::api::{AppState, HostCheck};
use crate::http::auth::Tokens;
use crate::http::connections::ConnectionLimits;
use crate::http::model::{PayloadInfo, RuntimeInfo};
use crate::http::proxy::{Proxy, ProxyOptions};
use crate::install::{self, PrepareOptions, PreparedRuntime};
use crate::layout::{self, DataLayout};
use crate::remote::devices::Devices;
use crate::remote::pairing::Pairing;
use crate::remote::tls::{self, CertSource};
use crate::remote::{RemoteState, ServerFile, TlsMode};
use crate::source::{self, SourceKind};
use crate::supervisor::events::{EventBus, EventKind, SERVER};
use crate::supervisor::logs::LogLimits;
use crate::supervisor::{SidecarKind, Supervisor, SupervisorConfig, Tuning};
use crate::workspace::{ActiveWorkspace, Workspace};
use crate::{ExitCode, SERVER_VERSION, process};

/// Everything `serve` needs, resolved from flags and the environment by the CLI.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1` by default).
    pub host: String,
    /// Port (0 = any free port).
    pub port: u16,
    /// Allow a non-loopback `host`.
    pub remote_access: bool,
    /// `--workspace` (without it: the remembered workspace, else the current directory).
    pub workspace: Option<PathBuf>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--sidecar name=path` overrides (dev mode).
    pub sidecars: Vec<(String, PathBuf)>,
    /// `--router`: run opencode-router even without its config file.
    pub router: bool,
    /// Browser origins allowed (CORS).
    pub cors_origins: Vec<String>,
    /// `--allow-host`: names requests may carry in `Host` besides the loopback ones.
    pub allowed_hosts: Vec<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--bundle-dir` / env, with how it was given.
    pub bundle_dir: Option<(PathBuf, SourceKind)>,
    /// How the runtime directory is prepared.
    pub prepare: PrepareOptions,
    /// `--tls`: TLS on non-loopback binds (auto), always, or never (refused off loopback).
    pub tls: TlsMode,
    /// `--tls-cert` and `--tls-key`; else the data dir's generated certificate.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Advertise over mDNS when the bind is not loopback (`--no-mdns` turns it off).
    pub mdns: bool,
    /// When the generated certificate is renewed, and how often that is checked (the
    /// defaults unless a test shortens them).
    pub tls_timings: tls::Timings,
    /// The tokens given in the environment.
    pub tokens: token::GivenTokens,
    /// How long a pairing code stays valid ([`CODE_TTL`](crate::remote::pairing::CODE_TTL) unless a test shortens it).
    pub pairing_ttl: std::time::Duration,
    /// Supervisor timings (the defaults unless a test shortens them).
    pub tuning: Tuning,
}

/// How long a stop waits for the event streams to hand their last event to their
/// connections. A client that reads is done in milliseconds; one that does not read must not
/// hold the stop up for long.
const STREAM_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the server until it is told to stop; `Ok(ExitCode::Ok)` after a clean stop.
pub fn run(options: ServeOptions) -> Result<ExitCode> {
    let addr = listen_address(&options.host, options.port, options.remote_access)?;
    // Plain HTTP off loopback is refused before anything else happens (exit 16).
    let use_tls = options.tls.resolve(addr.ip())?;
    if !use_tls && options.tls_files.is_some() {
        return Err(Error::Usage(
            "--tls-cert/--tls-key are for a TLS server: drop --tls off, or drop them".into(),
        ));
    }
    // Before anything is opened: a connection flood must not leave the server without
    // descriptors for its own work (macOS starts GUI apps with a soft limit of 256).
    let open_files = process::raise_open_file_limit();
    let connection_limits = ConnectionLimits::for_open_file_limit(open_files);
    tracing::debug!(
        ?open_files,
        max_connections = connection_limits.max_connections,
        "connection limits"
    );
    let host_check = HostCheck::for_bind(addr.ip(), &options.allowed_hosts);
    let layout = DataLayout::resolve(options.data_dir.clone())?;
    // Nothing in the data dir is used before it is known to be ours (exit 15 otherwise).
    crate::trust::secure_data_dir(&layout, true)?;
    let workspace_file = layout.data_dir.join(layout::WORKSPACE_FILE);
    let (workspace, origin) =
        crate::workspace::resolve_at_start(options.workspace.as_deref(), &workspace_file)?;
    tracing::debug!(workspace = %workspace.display(), ?origin, "workspace");
    // A killed server's record names a port anyone may bind now: gone before anything
    // reads it (local commands also check, see remote::identity).
    ServerFile::remove_if_stale(&layout.data_dir)?;
    // No orphans: stop what a previous, killed server left running, before anything below
    // (preparing the runtime collects garbage) can remove the runtime it runs from.
    crate::gc::stop_leftovers(&layout);

    let client = token::resolve(
        options.token_file.as_deref(),
        env_vars::OPENWORK_TOKEN,
        options.tokens.client.clone(),
        &layout.data_dir.join(layout::TOKEN_FILE),
    )?;
    let host = token::resolve(
        None,
        env_vars::OPENWORK_HOST_TOKEN,
        options.tokens.host.clone(),
        &layout.data_dir.join(layout::HOST_TOKEN_FILE),
    )?;

    let cert_source = match &options.tls_files {
        Some((cert, key)) => CertSource::User {
            cert: cert.clone(),
            key: key.clone(),
        },
        None => CertSource::DataDir,
    };
    let cert_names = tls::certificate_names(addr.ip());
    let server_tls = if use_tls {
        Some(tls::load(
            &layout.data_dir,
            &cert_source,
            &cert_names,
            &options.tls_timings,
        )?)
    } else {
        None
    };
    let fingerprint = server_tls.as_ref().map(|t| t.fingerprint());
    let certificate = server_tls.as_ref().map(|t| t.certificate.clone());
    let devices = Arc::new(Devices::load(&layout.data_dir.join(layout::DEVICES_FILE))?);
    let pairing_ttl = options.pairing_ttl;

    let router_config = layout.data_dir.join(layout::ROUTER_CONFIG_FILE);
    let want_router = options.router || router_config.is_file();
    let sidecars = resolve_sidecars(&options, &layout, want_router)?;
    let tuning = options.tuning;

    let listener = crate::http::server::bind(addr).map_err(|source| Error::AddressUnavailable {
        addr: addr.to_string(),
        source,
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("read the listening address", e))?;
    let scheme = if use_tls { "https" } else { "http" };
    let base_url = format!("{scheme}://{local}");

    // Leftovers were swept above; make sure this server leaves nothing either.
    let run_dir = layout.run_dir();
    let record = match process::RunRecord::create(&run_dir) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(error = %e, "could not record sidecars for cleanup after a crash");
            None
        }
    };
    process::contain_children().map_err(|e| Error::io("contain child processes", e))?;
    let lifeline = start_lifeline();

    let workspace = Workspace::new(workspace);
    let path_text = |p: &Path| p.to_string_lossy().into_owned();
    let runtime_info = RuntimeInfo {
        version: SERVER_VERSION.to_string(),
        pid: std::process::id(),
        manifest: sidecars.manifest.clone(),
        payload: sidecars.payload.clone(),
        runtime_dir: sidecars.runtime_dir().map(path_text),
        data_dir: path_text(&layout.data_dir),
        workspace: path_text(&workspace.directory),
        overrides: sidecars
            .overrides
            .iter()
            .map(|(name, path)| (name.clone(), path_text(path)))
            .collect(),
        router_config: router_config.is_file().then(|| path_text(&router_config)),
        sidecars: Vec::new(),
        tls: server_tls.as_ref().map(|t| crate::http::model::TlsInfo {
            fingerprint: t.fingerprint(),
            certificate: path_text(&t.cert_file),
        }),
    };

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))?;
    let ready_line = json!({
        "event": "ready",
        "url": base_url,
        "port": local.port(),
        "version": SERVER_VERSION,
        "runtimeDir": sidecars.runtime_dir(),
        "tokenFile": client.file,
        "hostTokenFile": host.file,
        "workspace": workspace.directory,
        "pid": std::process::id(),
        "tlsFingerprint": fingerprint,
    });
    let identity = crate::remote::identity::IdentityKey::generate();
    let server_file = ServerFile {
        pid: std::process::id(),
        url: base_url.clone(),
        fingerprint: fingerprint.clone(),
        identity_key: Some(identity.to_hex()),
    };
    let advertise = options.mdns && !local.ip().is_loopback();
    let workspace = Arc::new(ActiveWorkspace::new(workspace, workspace_file));
    let data_dir = layout.data_dir.clone();
    let config = SupervisorConfig {
        workspace: workspace.subscribe(),
        logs_dir: layout.logs_dir(),
        opencode: sidecars.opencode.clone(),
        router: sidecars.router.clone(),
        tuning,
        secrets: vec![client.value.clone(), host.value.clone()],
        log_limits: LogLimits::default(),
    };
    let tokens = Tokens::new(&client.value, &host.value).with_devices(devices.clone());
    drop((client.value, host.value));

    let outcome = tokio.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("register the listening socket", e))?;
        let events = Arc::new(EventBus::default());
        let supervisor = Supervisor::start(config, events.clone(), lifeline, record)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = Arc::new(AppState {
            supervisor: supervisor.clone(),
            tokens,
            version: SERVER_VERSION,
            runtime: runtime_info,
            workspace,
            base_url: base_url.clone(),
            cors_origins: options.cors_origins.clone(),
            host_check,
            shutdown: shutdown.clone(),
            proxy: Proxy::new(ProxyOptions {
                https: use_tls,
                ..ProxyOptions::default()
            }),
            remote: RemoteState {
                identity,
                pairing: Pairing::new(pairing_ttl),
                devices: devices.clone(),
                local,
                certificate: certificate.clone(),
            },
            failures: Default::default(),
            started: std::time::Instant::now(),
        });
        tokio::spawn(crate::http::server::serve(
            listener,
            state,
            connection_limits,
            server_tls.map(|t| t.acceptor),
            shutdown_rx.clone(),
        ));
        tokio::spawn(save_last_seen(devices.clone()));
        if let Some(certificate) = &certificate {
            // A server runs for months: its generated certificate is renewed while it runs.
            tokio::spawn(tls::keep_current(
                certificate.clone(),
                data_dir.clone(),
                cert_source,
                cert_names,
                options.tls_timings,
            ));
        }
        tokio::spawn(forward_signals(shutdown.clone()));

        let mut stop = shutdown_rx.clone();
        let result = tokio::select! {
            ready = supervisor.wait_opencode_ready() => match ready {
                Ok(()) => {
                    events.publish(SERVER, EventKind::ServerReady { url: base_url.clone() });
                    // For `pair`: how local commands reach this server.
                    if let Err(e) = server_file.write(&data_dir) {
                        tracing::warn!(error = %e, "could not write server.json: `openwork-server-v2 pair` will not find this server");
                    }
                    let watch = || certificate.as_ref().map(tls::LiveCertificate::watch);
                    let following = watch().map(|watch| {
                        tokio::spawn(follow_in_server_file(watch, server_file, data_dir.clone()))
                    });
                    // Withdrawn (a goodbye is sent) when the task is aborted, below.
                    let advertising = advertise.then(|| tokio::spawn(advertise_following(local, watch())));
                    print_ready_line(&ready_line);
                    crate::http::stopping(&mut stop).await;
                    for task in following.into_iter().chain(advertising) {
                        task.abort();
                    }
                    ServerFile::remove_if_ours(&data_dir);
                    Ok(ExitCode::Ok)
                }
                Err(reason) => Err(Error::SidecarFailed(reason)),
            },
            _ = crate::http::stopping(&mut stop) => Ok(ExitCode::Ok),
        };
        // The stop, in the order subscribers hear it: `shuttingDown`, the sidecars' own
        // events as they stop, then the last event, after which every stream ends. New
        // connections are refused from here on (the accept loop watches `shutdown`); open
        // ones, and their streams, are not cut.
        shutdown.send_replace(true);
        events.publish(SERVER, EventKind::ShuttingDown);
        supervisor.shutdown().await;
        devices.persist_if_changed();
        events.close();
        if tokio::time::timeout(STREAM_FLUSH, events.streams_closed())
            .await
            .is_err()
        {
            tracing::debug!("an event stream did not take its last event in time (a client not reading)");
        }
        tracing::info!("stopped");
        result
    });
    // The runtime directory stays leased until here.
    drop(sidecars);
    outcome
}

/// Rewrites `server.json` whenever the certificate is replaced: local commands pin the
/// certificate it names.
async fn follow_in_server_file(
    mut fingerprint: watch::Receiver<String>,
    mut file: ServerFile,
    data_dir: PathBuf,
) {
    while fingerprint.changed().await.is_ok() {
        file.fingerprint = Some(fingerprint.borrow_and_update().clone());
        if let Err(e) = file.write(&data_dir) {
            tracing::warn!(error = %e, "could not write server.json with the renewed certificate: `openwork-server-v2 pair` will refuse this server until it restarts");
        }
    }
}

/// Advertises the server over mDNS until the task is aborted, and again with the new
/// fingerprint's prefix in TXT `fp` whenever the certificate is replaced.
async fn advertise_following(local: SocketAddr, mut fingerprint: Option<watch::Receiver<String>>) {
    loop {
        let current = fingerprint.as_mut().map(|f| f.borrow_and_update().clone());
        let advertisement = match crate::remote::mdns::Advertisement::start(
            local,
            SERVER_VERSION,
            current.as_deref(),
        ) {
            Ok(advertisement) => Some(advertisement),
            Err(e) => {
                tracing::warn!(error = %e, "cannot advertise over mDNS; clients must be given the address");
                None
            }
        };
        let changed = match fingerprint.as_mut() {
            Some(fingerprint) => fingerprint.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
        // The old advertisement says goodbye first; its drop waits for the daemon, which
        // must not hold up the one thread that serves requests.
        let _ = tokio::task::spawn_blocking(move || drop(advertisement)).await;
    }
}

/// Writes the paired devices' last-seen times once a minute when they changed (and at
/// stop, see `run`): a request must not wait for a file write.
async fn save_last_seen(devices: Arc<Devices>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.tick().await;
    loop {
        every.tick().await;
        devices.persist_if_changed();
    }
}

/// The resolved sidecar executables, and the runtime directory they live in (leased for
/// as long as this value lives, so garbage collection never removes it under us).
struct Sidecars {
    opencode: PathBuf,
    router: Option<PathBuf>,
    prepared: Option<PreparedRuntime>,
    /// `--sidecar` overrides.
    overrides: std::collections::BTreeMap<String, PathBuf>,
    /// The payload's manifest, when one was read.
    manifest: Option<serde_json::Value>,
    /// Where the payload came from, when one was read.
    payload: Option<PayloadInfo>,
}

impl Sidecars {
    fn runtime_dir(&self) -> Option<&Path> {
        self.prepared.as_ref().map(|p| p.dir.as_path())
    }
}

fn resolve_sidecars(
    options: &ServeOptions,
    layout: &DataLayout,
    want_router: bool,
) -> Result<Sidecars> {
    let mut overrides = std::collections::BTreeMap::new();
    for (name, path) in &options.sidecars {
        if ![SidecarKind::Opencode.name(), SidecarKind::Router.name()].contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "--sidecar {name}=…: unknown sidecar; use opencode=<path> or opencode-router=<path>"
            )));
        }
        // Dev mode runs exactly the file named: never a PATH lookup.
        if !path.is_absolute() {
            return Err(Error::BadInput(format!(
                "--sidecar {name}={}: give an absolute path",
                path.display()
            )));
        }
        if !path.is_file() {
            return Err(Error::BadInput(format!(
                "--sidecar {name}={}: no such file",
                path.display()
            )));
        }
        overrides.insert(name.clone(), path.clone());
    }
    let need_payload = !overrides.contains_key(SidecarKind::Opencode.name())
        || (want_router && !overrides.contains_key(SidecarKind::Router.name()));

    let mut manifest = None;
    let mut payload = None;
    let mut prepared = None;
    let mut from_payload = std::collections::BTreeMap::new();
    if need_payload {
        let source = source::resolve_for_this_executable(options.bundle_dir.clone())?;
        let runtime = install::prepare_and_collect(&source, layout, &options.prepare)?;
        for (name, file) in &source.manifest.files {
            from_payload.insert(name.clone(), runtime.dir.join(&file.path));
        }
        manifest = serde_json::to_value(&source.manifest).ok();
        payload = Some(PayloadInfo {
            source: source.kind,
            path: source.path.to_string_lossy().into_owned(),
            digest: source.digest.clone(),
        });
        prepared = Some(runtime);
        // `source` (and its mapping of the executable) is dropped here: the pages it
        // touched would otherwise count against the server's memory for its whole life.
    }
    let pick = |kind: SidecarKind| {
        overrides
            .get(kind.name())
            .or_else(|| from_payload.get(kind.name()))
            .cloned()
    };
    let opencode = pick(SidecarKind::Opencode).ok_or_else(|| {
        Error::BadInput(
            "the payload has no opencode; repack it, or pass --sidecar opencode=<path>".into(),
        )
    })?;
    let router = if want_router {
        Some(pick(SidecarKind::Router).ok_or_else(|| {
            Error::BadInput(
                "opencode-router is configured (--router or opencode-router.json in the data dir) but the payload has no opencode-router; pass --sidecar opencode-router=<path> or repack with the router".into(),
            )
        })?)
    } else {
        None
    };
    Ok(Sidecars {
        opencode,
        router,
        prepared,
        overrides,
        manifest,
        payload,
    })
}

fn listen_address(host: &str, port: u16, remote_access: bool) -> Result<SocketAddr> {
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            Error::Usage(format!(
                "--host {host}: not an IP address; use 127.0.0.1 (default), ::1, or with --remote-access an address of this machine"
            ))
        })?
    };
    if !ip.is_loopback() && !remote_access {
        return Err(Error::Usage(format!(
            "--host {ip} would accept connections from other machines; add --remote-access if that is what you want"
        )));
    }
    Ok(SocketAddr::new(ip, port))
}

/// The one machine-readable line on stdout; everything else goes to stderr.
fn print_ready_line(line: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[cfg(unix)]
fn start_lifeline() -> Option<process::Lifeline> {
    // spawn_self re-executes this very file (/proc/self/exe on Linux), even after an
    // update replaced or removed it on disk.
    match process::Lifeline::spawn_self() {
        Ok(lifeline) => Some(lifeline),
        Err(e) => {
            tracing::warn!(error = %e, "no lifeline process: sidecars may outlive a killed server until the next start");
            None
        }
    }
}

#[cfg(not(unix))]
fn start_lifeline() -> Option<process::Lifeline> {
    // Windows: the Job Object from contain_children() does this job.
    None
}

/// SIGTERM, SIGINT and SIGHUP (Ctrl-C/Ctrl-Break on Windows) mean a clean stop.
async fn forward_signals(shutdown: watch::Sender<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::warn!("cannot listen for signals");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        tracing::info!("{name}: shutting down");
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        tracing::info!("Ctrl-C: shutting down");
    }
    shutdown.send_replace(true);
}
