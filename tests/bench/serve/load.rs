//! The load measurements: the packed server under the proxy load of overhead.rs, through
//! `/opencode/*` against its opencode directly, and with `--tls on` against without.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::contender::{
    Contender, Environment, OPENCODE_USER, basic_auth, environment_value, summarize,
};
use super::settings::Settings;
use crate::measure::Stats;
use crate::measure::progress;
use crate::overhead::{self, Side};
use crate::procs::{Running, mkdir};

/// A packed server started for a load measurement, and what the load needs of it.
pub(super) struct Loaded {
    pub(super) server: Running,
    pub(super) addr: SocketAddr,
    pub(super) bearer: String,
    pub(super) upstream_port: u16,
    pub(super) upstream_pid: u32,
    /// The certificate's SHA-256 when it speaks TLS.
    pub(super) fingerprint: Option<String>,
}

impl Loaded {
    /// Starts the packed server (`extra`: more serve flags) and reads its opencode's port and
    /// pid from `/system/runtime`.
    pub(super) fn start(
        ours: &Contender,
        env: &Environment,
        work: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Loaded> {
        let workspace = mkdir(&work.join("workspaces").join(name))?;
        let stderr = ours.logs.join(format!("{name}.stderr"));
        let mut cmd = ours.command(&workspace)?;
        cmd.stderr(
            std::fs::File::create(&stderr)
                .with_context(|| format!("create {}", stderr.display()))?,
        )
        .arg("serve")
        .args(["--port", "0"])
        .args(extra)
        .arg("--data-dir")
        .arg(&env.data_dir)
        .arg("--workspace")
        .arg(&workspace);
        let mut server = Running::spawn(&mut cmd, &stderr)?;
        let (_, ready) = server.wait_ready_line()?;
        let port = u16::try_from(ready["port"].as_u64().unwrap_or_default())?;
        let fingerprint = ready["tlsFingerprint"].as_str().map(str::to_string);
        let token_file = ready["tokenFile"]
            .as_str()
            .with_context(|| format!("no tokenFile in {ready}"))?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("read {token_file}"))?
            .trim()
            .to_string();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let bearer = format!("Bearer {token}");
        let runtime = match &fingerprint {
            Some(sha256) => {
                let request = format!(
                    "GET /system/runtime HTTP/1.1\r\nHost: localhost\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n"
                );
                let (_, headers, mut reader) =
                    openwork_tests::tls::open(port, sha256, &request, b"");
                openwork_tests::http::read_body(&mut reader, "GET", 200, &headers)
                    .context("GET /system/runtime over TLS")?
            }
            None => {
                openwork_tests::http::try_request(
                    &addr.to_string(),
                    "GET",
                    "/system/runtime",
                    &[("Authorization", bearer.as_str())],
                    b"",
                    Duration::from_secs(30),
                )
                .context("GET /system/runtime")?
                .body
            }
        };
        let runtime: Value =
            serde_json::from_slice(&runtime).context("/system/runtime is not JSON")?;
        let opencode = runtime["sidecars"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == "opencode"));
        let sidecar = |field: &str| {
            opencode
                .and_then(|s| s[field].as_u64())
                .and_then(|n| u32::try_from(n).ok())
                .with_context(|| format!("no {field} of opencode in /system/runtime: {runtime}"))
        };
        Ok(Loaded {
            addr,
            bearer,
            upstream_port: u16::try_from(sidecar("port")?)?,
            upstream_pid: sidecar("pid")?,
            fingerprint,
            server,
        })
    }

    /// The load side that asks this server's `/opencode/global/health`.
    pub(super) fn proxied_side(&self) -> Side {
        Side {
            addr: self.addr,
            path: "/opencode/global/health",
            authorization: self.bearer.clone(),
            processes: vec![
                ("server", self.server.pid()),
                ("opencode", self.upstream_pid),
            ],
            tls: self.fingerprint.clone(),
        }
    }

    /// Stops it; as after every round, its tree gets a grace before anything still running
    /// counts as left behind (and is killed when the `Running` is dropped).
    pub(super) fn stop(mut self, what: &str) -> anyhow::Result<()> {
        self.server.terminate()?;
        let left = self.server.left_behind();
        if !left.is_empty() {
            progress(format_args!(
                "{what}: left running after their parent exited (killed): {}",
                summarize(&left)
            ));
        }
        Ok(())
    }
}

/// The proxy figure: the packed server's opencode asked through `/opencode/*` and directly,
/// the same load both ways (see overhead.rs).
pub(super) fn proxy_overhead(
    ours: &Contender,
    env: &Environment,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<overhead::Figures> {
    let loaded = Loaded::start(ours, env, work, &format!("proxy-{}", ours.kind.name()), &[])?;
    // The baseline is the very opencode behind the proxy, asked directly (see overhead.rs),
    // with its password from its environment, which only its own user can read.
    let password = environment_value(loaded.upstream_pid, "OPENCODE_SERVER_PASSWORD")?;
    let basic = basic_auth(OPENCODE_USER, &password);
    let figures = overhead::measure(
        &Side {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, loaded.upstream_port)),
            path: "/global/health",
            authorization: basic,
            processes: vec![("opencode", loaded.upstream_pid)],
            tls: None,
        },
        &loaded.proxied_side(),
        loaded.upstream_port,
        settings.proxy_requests,
        // The proxy's pool closes idle connections after 4 s: they are counted too.
        Duration::from_secs(6),
    )?;
    loaded.stop("proxy overhead")?;
    Ok(figures)
}

/// Handshakes timed one after another for the TLS row.
pub(super) const TLS_HANDSHAKES: usize = 200;

/// The TLS figures: handshake time, and `/opencode/global/health` through a server with
/// `--tls on` against one without, side by side (each with its own opencode, loaded alike
/// in ABBA rounds, so neither opencode's history favours one side).
pub(super) fn tls_overhead(
    ours: &Contender,
    env: &Environment,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<(overhead::Figures, Stats)> {
    let plain = Loaded::start(ours, env, work, "tls-plain", &[])?;
    let tls = Loaded::start(ours, env, work, "tls-on", &["--tls", "on"])?;
    let sha256 = tls
        .fingerprint
        .clone()
        .context("the --tls on server's ready line has no tlsFingerprint")?;
    let handshake = overhead::handshakes(tls.addr.port(), &sha256, TLS_HANDSHAKES)?;
    let figures = overhead::measure(
        &plain.proxied_side(),
        &tls.proxied_side(),
        tls.upstream_port,
        settings.proxy_requests,
        Duration::from_secs(6),
    )?;
    plain.stop("TLS, plain server")?;
    tls.stop("TLS server")?;
    Ok((figures, handshake))
}
