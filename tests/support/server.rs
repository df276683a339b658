//! Running `openwork-server-v2 serve` for a test: start it (with the fixture sidecar or a
//! packed artifact), wait for its ready line, talk HTTP to it, signal it, and read what its
//! sidecars recorded. A server still running when its handle drops is SIGKILLed (its
//! lifeline then stops the sidecars).

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{self, HttpResponse};

/// How long a test waits for a ready line before it gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A server about to be started.
pub struct ServerBuilder {
    /// A program that runs the server (`ip netns exec <ns>`): program and its arguments.
    wrapper: Option<(PathBuf, Vec<OsString>)>,
    exe: PathBuf,
    dir: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    open_files: Option<u64>,
}

/// A started server.
pub struct ServerProcess {
    child: Option<Child>,
    /// The parsed ready line.
    pub ready: Value,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The client token.
    pub token: String,
    /// The host token.
    pub host_token: String,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Where the fixture sidecar records its starts.
    pub state_dir: PathBuf,
    stderr: PathBuf,
    stdout_lines: mpsc::Receiver<String>,
}

impl ServerBuilder {
    /// `openwork-server-v2` from this build, running the fixture sidecar as opencode, with
    /// data, workspace and fixture state under `dir`.
    pub fn fixture(dir: &Path) -> ServerBuilder {
        let fixture = crate::host_bin("openwork-fixture-sidecar");
        let mut builder = ServerBuilder::executable(&crate::host_bin("openwork-server-v2"), dir);
        builder = builder
            .arg("--sidecar")
            .arg(format!("opencode={}", fixture.display()));
        builder
    }

    /// Any `openwork-server-v2` executable (a packed artifact, say), with data, workspace
    /// and fixture state under `dir`.
    pub fn executable(exe: &Path, dir: &Path) -> ServerBuilder {
        for sub in ["data", "workspace", "state"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // The server refuses a data dir others can write, whatever the umask made it.
        #[cfg(unix)]
        std::fs::set_permissions(
            dir.join("data"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        ServerBuilder {
            wrapper: None,
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            args: vec![
                "serve".into(),
                "--data-dir".into(),
                dir.join("data").into(),
                "--workspace".into(),
                dir.join("workspace").into(),
            ],
            env: vec![
                ("FIXTURE_STATE_DIR".into(), dir.join("state").into()),
                ("OPENWORK_LOG".into(), "debug".into()),
            ],
            open_files: None,
        }
    }

    /// The fixture sidecar as opencode-router too (and `--router`).
    pub fn with_router(self) -> ServerBuilder {
        let fixture = crate::host_bin("openwork-fixture-sidecar");
        self.arg("--router")
            .arg("--sidecar")
            .arg(format!("opencode-router={}", fixture.display()))
    }

    /// Without `--workspace`: the server takes the remembered workspace, else its current
    /// directory.
    pub fn without_workspace(mut self) -> ServerBuilder {
        if let Some(at) = self.args.iter().position(|a| a == "--workspace") {
            self.args.drain(at..at + 2);
        }
        self
    }

    /// `--workspace dir` instead of `<dir>/workspace`.
    pub fn workspace(self, dir: &Path) -> ServerBuilder {
        self.without_workspace().arg("--workspace").arg(dir)
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> ServerBuilder {
        self.args.push(arg.into());
        self
    }

    /// One more environment variable (for the server and, inherited, its sidecars).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ServerBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// HOME and the XDG dirs under `<dir>/home`: real opencode keeps its state there, and
    /// a test's must stay away from the user's.
    pub fn isolated_home(mut self) -> ServerBuilder {
        for (key, dir) in crate::isolated_home_env(&self.dir.join("home")) {
            self = self.env(key, dir);
        }
        self
    }

    /// Starts the server with this soft and hard limit on open files (`ulimit -n`), as
    /// a macOS GUI app gets 256.
    pub fn open_file_limit(mut self, limit: u64) -> ServerBuilder {
        self.open_files = Some(limit);
        self
    }

    /// Runs the server through `program args… <server> <its args>` (a program that execs
    /// it, such as `ip netns exec NS`, so the pid is still the server's).
    pub fn wrapped(mut self, program: &Path, args: &[&str]) -> ServerBuilder {
        self.wrapper = Some((
            program.to_path_buf(),
            args.iter().map(OsString::from).collect(),
        ));
        self
    }

    /// Supervisor timings (`OPENWORK_SERVER_V2_SUPERVISOR`).
    pub fn tuning(self, value: &str) -> ServerBuilder {
        self.env("OPENWORK_SERVER_V2_SUPERVISOR", value)
    }

    /// Starts the server without waiting for anything.
    pub fn spawn(self) -> (Child, PathBuf) {
        let stderr = self.dir.join("server.stderr");
        let mut command = match &self.wrapper {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.exe);
                command
            }
            None => Command::new(&self.exe),
        };
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("OPENWORK_TOKEN")
            .env_remove("OPENWORK_HOST_TOKEN")
            .env_remove("OPENWORK_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap());
        #[cfg(unix)]
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `limit`.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = crate::fixtures::spawn_retrying(&mut command);
        (child, stderr)
    }

    /// Starts the server and waits for its ready line; panics with its stderr if none comes.
    pub fn start(self) -> ServerProcess {
        let dir = self.dir.clone();
        let (mut child, stderr) = self.spawn();
        let (ready, rx) = await_ready_line(&mut child, &stderr);
        let read_token = |key: &str| read_token_file(&ready, key, |p| Some(PathBuf::from(p)));
        let url = ready["url"].as_str().unwrap().to_string();
        ServerProcess {
            addr: url.trim_start_matches("http://").to_string(),
            token: read_token("tokenFile"),
            host_token: read_token("hostTokenFile"),
            url,
            ready,
            child: Some(child),
            data_dir: dir.join("data"),
            state_dir: dir.join("state"),
            stderr,
            stdout_lines: rx,
        }
    }
}

impl ServerProcess {
    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `GET path` with the client token.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, Some(&self.token), b"")
    }

    /// `GET path` with the client token, as JSON, asserting 200.
    pub fn get_json(&self, path: &str) -> Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        response.json()
    }

    /// Any request; `token` None sends none.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> HttpResponse {
        http::request_with_token(&self.addr, method, path, token, body)
    }

    /// A sidecar's entry in `GET /system/runtime`.
    pub fn sidecar(&self, name: &str) -> Value {
        let runtime = self.get_json("/system/runtime");
        runtime["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no sidecar {name} in {runtime}"))
    }

    /// Waits until `name` is in `state`, returning its status; panics after `timeout`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let found = wait_until(timeout, || {
            last = self.sidecar(name);
            last["state"] == state
        });
        assert!(
            found,
            "{name} not {state} within {timeout:?}; last: {last}\nstderr:\n{}",
            self.stderr()
        );
        last
    }

    /// Every start the fixture sidecar recorded, in order.
    pub fn starts(&self) -> Vec<Value> {
        fixture_starts(&self.state_dir)
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Lines on stdout after the ready line (there should be none).
    pub fn more_stdout(&self) -> Vec<String> {
        self.stdout_lines.try_iter().collect()
    }

    /// Sends `signal` to the server.
    #[cfg(unix)]
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits for the server to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let stderr = self.stderr.clone();
        let status = wait_for_exit(self.child.as_mut().unwrap(), timeout, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        });
        self.child = None;
        status
    }
}

/// Waits for `child` to exit; after `timeout`, panics with what `stderr` returns.
pub fn wait_for_exit(
    child: &mut Child,
    timeout: Duration,
    stderr: impl Fn() -> String,
) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {timeout:?}; stderr:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child`'s ready line on stdout and checks it is one; panics with the
/// server's stderr (from the file `stderr`) if none comes within [`READY_TIMEOUT`]. Returns
/// the parsed line and a receiver of any later stdout lines.
pub fn await_ready_line(child: &mut Child, stderr: &Path) -> (Value, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let Ok(line) = rx.recv_timeout(READY_TIMEOUT) else {
        let _ = child.kill();
        let status = child.wait().unwrap();
        panic!(
            "no ready line within {READY_TIMEOUT:?} ({status}); stderr:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
    };
    let ready: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the ready line is not JSON ({e}): {line}"));
    assert_eq!(ready["event"], "ready", "{line}");
    (ready, rx)
}

/// The token in the file the ready line names under `key`; `to_path` turns the line's
/// path into one this test can open (under Wine, a `Z:\` path).
pub fn read_token_file(
    ready: &Value,
    key: &str,
    to_path: impl Fn(&str) -> Option<PathBuf>,
) -> String {
    let file = ready[key]
        .as_str()
        .and_then(to_path)
        .unwrap_or_else(|| panic!("{key} is missing or not a path here: {ready}"));
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// The fixture's start records under `state_dir`.
pub fn fixture_starts(state_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(state_dir.join("starts.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `check` every 10 ms until it is true (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists and is not a zombie (Linux: /proc; elsewhere kill(pid, 0)).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                !matches!(state, Some("Z") | Some("X"))
            }
            Err(_) => false,
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        unsafe { libc::kill(pid as i32, 0) == 0 }
    }
    #[cfg(windows)]
    {
        let output = Command::new("tasklist")
            .args(["/FI", &format!("PID eq {pid}"), "/NH", "/FO", "CSV"])
            .output()
            .expect("tasklist");
        String::from_utf8_lossy(&output.stdout).contains(&format!("\"{pid}\""))
    }
}
