//! The server under soak and its sampler: the process started from the packed artifact,
//! and its memory, descriptors, threads and process tree read from /proc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use openwork_tests::http;
use serde::Serialize;
use serde_json::Value;

use crate::procs::{self, Running, isolated_command, mkdir, read_stat};

use super::load::HANG;

/// How often the server's memory, descriptors and tree are read.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The running server and how to reach it.
pub(super) struct Server {
    pub(super) running: Running,
    pub(super) addr: String,
    pub(super) token: String,
    pub(super) runtime_dir: PathBuf,
    pub(super) artifact: PathBuf,
}

impl Server {
    pub(super) fn start(artifact: &Path, work: &Path) -> anyhow::Result<Server> {
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

    pub(super) fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// opencode's pid while the supervisor says it is running.
    pub(super) fn running_opencode(&self) -> Option<u32> {
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
    pub(super) fn sample(&self, since: Instant) -> anyhow::Result<Sample> {
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
pub(super) struct Sample {
    /// Seconds since the soak's start (after the warm-up).
    pub(super) at_s: f64,
    pub(super) rss: u64,
    pub(super) fds: usize,
    pub(super) threads: u64,
    /// The names of the processes below it; a zombie is marked.
    pub(super) tree: Vec<String>,
}

impl Sample {
    pub(super) fn zombies(&self) -> usize {
        self.tree.iter().filter(|n| n.ends_with("(zombie)")).count()
    }

    pub(super) fn tree_summary(&self) -> String {
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
