//! Running the Windows build under Wine, so that the `windows-x64` stub is executed and not
//! only parsed: one Wine prefix shared by every test, the stand-in `bcryptprimitives.dll`
//! that makes Rust programs start under Debian's wine 8, a Windows build of the fixture
//! sidecar, and a started `serve` with its ready line.
//!
//! Why a cached prefix: `wineboot` of a fresh prefix takes 6-15 s and writes ~700 MB (wine 8
//! copies its DLLs into it), once per test process; a prefix kept in the target directory,
//! keyed by the wine version and the DLL's source, costs that once per machine. Many Wine
//! processes may share a prefix (they all talk to one wineserver); only its creation is
//! serialised, by a file lock.
//!
//! Why the DLL goes into the prefix's `system32` and not beside each executable: the
//! sidecars run from runtime directories that the server creates, and an extra file there
//! would be damage to `runtime verify`. Windows looks in `system32` for every process, as it
//! does for the real DLL.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::http::{self, HttpResponse};
use crate::server::process_alive;

/// The Rust triple of the Windows builds run here.
pub const WINDOWS_TRIPLE: &str = "x86_64-pc-windows-gnu";

/// The mingw C compiler that builds the stand-in DLL.
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// Source of the stand-in `bcryptprimitives.dll` (see the file for why it exists).
const BCRYPTPRIMITIVES_C: &str = "tests/wine/bcryptprimitives.c";

/// Written into a prefix once it is complete; a prefix without it is rebuilt.
const READY_MARKER: &str = ".openwork-prefix-ready";

/// A Wine prefix that runs this workspace's Windows executables.
#[derive(Debug)]
pub struct Wine {
    prefix: PathBuf,
}

impl Wine {
    /// The shared prefix, made on first use. `None`, after saying why on stderr, where the
    /// Windows build cannot run: not Linux x86_64, or (outside CI) no `wine` or mingw.
    /// With `CI` set a missing tool is a failure, so that CI never passes by skipping.
    pub fn get() -> Option<&'static Wine> {
        static WINE: OnceLock<Option<Wine>> = OnceLock::new();
        WINE.get_or_init(|| {
            if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
                skip("Wine runs the x86_64 Windows build only on Linux x86_64");
                return None;
            }
            for (tool, hint) in [
                ("wine", "apt-get install wine wine64"),
                (MINGW_GCC, "apt-get install mingw-w64"),
            ] {
                if !runs(Command::new(tool).arg("--version")) {
                    let why = format!("`{tool}` cannot be run ({hint})");
                    assert!(std::env::var_os("CI").is_none(), "{why}; CI must run these");
                    skip(&why);
                    return None;
                }
            }
            Some(Wine {
                prefix: prepare_prefix(),
            })
        })
        .as_ref()
    }

    /// `wine <exe>` in the shared prefix, quiet and headless.
    pub fn command(&self, exe: impl Into<OsString>) -> Command {
        let mut command = Command::new("wine");
        command
            .arg(exe.into())
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // Disabling winemenubuilder here too would cost ~1 s a start: wine then
            // restarts its wineserver and services for every program (wine 8).
            .env_remove("WINEDLLOVERRIDES")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        command
    }
}

/// Runs a Wine command to completion, with its output collected in files, not pipes. The
/// first Windows program in a prefix starts wine's own services, which inherit its standard
/// handles and outlive it: reading pipes to their end would wait for those services to
/// exit (1-2.5 s), and the next command would then have to start them all again.
pub fn output(command: &mut Command) -> Output {
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    let status = command
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .status()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    let read = |file: &mut File| {
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

/// Says why a test does not run.
fn skip(why: &str) {
    tell(&format!("skipped: {why}"));
}

/// A line on stderr past the test harness's capture of `eprintln!`, so that it shows in
/// every test log, passing tests included.
fn tell(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn runs(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The path a Windows program under Wine uses for `path` (absolute): drive `Z:` is `/`.
pub fn windows_path(path: &Path) -> String {
    assert!(path.is_absolute(), "{} is not absolute", path.display());
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// The Linux path of a Windows path on drive `Z:` (also in `\\?\` form); `None` for other
/// drives.
pub fn unix_path(windows: &str) -> Option<PathBuf> {
    let path = windows.strip_prefix(r"\\?\").unwrap_or(windows);
    let rest = path
        .strip_prefix("Z:")
        .or_else(|| path.strip_prefix("z:"))?;
    Some(PathBuf::from(rest.replace('\\', "/")))
}

/// Makes the shared prefix if it is not there yet; returns its path.
fn prepare_prefix() -> PathBuf {
    let source = crate::workspace_root().join(BCRYPTPRIMITIVES_C);
    let dll_source = std::fs::read(&source).expect("read the stand-in DLL's source");
    let version = Command::new("wine")
        .arg("--version")
        .env("WINEDEBUG", "-all")
        .output()
        .expect("run wine --version")
        .stdout;
    let mut hasher = Sha256::new();
    hasher.update(&version);
    hasher.update(&dll_source);
    let key = &hex::encode(hasher.finalize())[..16];

    let root = crate::target_dir().join("wine");
    std::fs::create_dir_all(&root).unwrap();
    let prefix = root.join(format!("prefix-{key}"));
    // Other test processes (another cargo run on this target dir) may be making it now.
    let lock = File::create(root.join(format!("prefix-{key}.lock"))).unwrap();
    lock.lock().expect("lock the Wine prefix");
    if !prefix.join(READY_MARKER).exists() {
        let started = Instant::now();
        if prefix.exists() {
            // Left half-made by a killed run.
            std::fs::remove_dir_all(&prefix).unwrap();
        }
        let wine = Wine {
            prefix: prefix.clone(),
        };
        let output = output(
            wine.command("wineboot")
                .arg("-i")
                // No Mono or Gecko installers, and no menu entries written into $HOME.
                .env("WINEDLLOVERRIDES", "mscoree,mshtml=;winemenubuilder.exe="),
        );
        assert!(
            output.status.success(),
            "wineboot -i failed: {}",
            crate::fixtures::describe(&output)
        );
        let dll = prefix.join("drive_c/windows/system32/bcryptprimitives.dll");
        let output = Command::new(MINGW_GCC)
            .args(["-shared", "-O2", "-s", "-o"])
            .arg(&dll)
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .expect("run the mingw compiler");
        assert!(
            output.status.success(),
            "building the stand-in bcryptprimitives.dll failed: {}",
            crate::fixtures::describe(&output)
        );
        std::fs::write(prefix.join(READY_MARKER), b"").unwrap();
        tell(&format!(
            "note: made the Wine prefix {} in {:.1} s",
            prefix.display(),
            started.elapsed().as_secs_f64()
        ));
    }
    prefix
}

/// `openwork-fixture-sidecar` built for Windows, once per test process.
///
/// Built as a package of its own (generated in the target directory, with the workspace's
/// lock file for the same dependency versions) from the same `main.rs`: cross-building the
/// tests crate's binary would cross-build everything the tests crate depends on too, the
/// signer and the packager included (minutes, for a few small dependencies and the test
/// HTTP server).
pub fn fixture_sidecar() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let workspace = crate::workspace_root();
        let root = crate::target_dir().join("wine");
        let package = root.join("fixture-sidecar");
        std::fs::create_dir_all(&package).unwrap();
        let manifest = format!(
            r#"# Generated by tests/support/wine.rs: the fixture sidecar alone, for Windows.
[package]
name = "openwork-fixture-sidecar"
version = "0.0.0"
edition = "2024"
publish = false

[[bin]]
name = "openwork-fixture-sidecar"
path = {main:?}

[dependencies]
anyhow = "1"
base64 = "0.22"
serde_json = "1"
libc = "0.2"
sha2 = "0.10"
hex = "0.4"
openwork-testkit = {{ path = {testkit:?} }}

[workspace]
"#,
            main = workspace.join("tests/fixture-sidecar/main.rs"),
            testkit = workspace.join("tests/testkit"),
        );
        write_if_changed(&package.join("Cargo.toml"), manifest.as_bytes());
        let lock = std::fs::read(workspace.join("Cargo.lock")).unwrap();
        write_if_changed(&package.join("Cargo.lock"), &lock);

        let target = root.join("fixture-target");
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--quiet", "--target", WINDOWS_TRIPLE])
            .arg("--manifest-path")
            .arg(package.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "building the fixture sidecar for Windows failed; it needs `rustup target add \
             {WINDOWS_TRIPLE}` and mingw-w64 (apt) as its linker"
        );
        target
            .join(WINDOWS_TRIPLE)
            .join("debug")
            .join("openwork-fixture-sidecar.exe")
    })
}

/// Cargo rebuilds on a changed manifest; rewriting the same bytes must not look like one.
fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).unwrap();
    }
}

/// Linux pids and Windows command lines of the live Wine processes whose executable lies
/// below `dir`. Wine puts a process's Windows image path into its argv[0].
pub fn processes_below(dir: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let below = args
            .first()
            .and_then(|exe| unix_path(exe))
            .is_some_and(|exe| exe.starts_with(dir));
        if below && process_alive(pid) {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// `openwork-server-v2 serve` under Wine, with data and workspace below `dir`.
pub struct WineServer {
    child: Option<Child>,
    /// The parsed ready line.
    pub ready: Value,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The client token.
    pub token: String,
    /// The host token.
    pub host_token: String,
    /// The data dir (Linux path).
    pub data_dir: PathBuf,
    stderr: PathBuf,
}

impl WineServer {
    /// Starts `exe serve` with `args` and `env` added, and waits for its ready line;
    /// panics with its stderr if none comes.
    pub fn start(
        wine: &Wine,
        exe: &Path,
        dir: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> WineServer {
        let data_dir = dir.join("data");
        let workspace = dir.join("workspace");
        std::fs::create_dir_all(&workspace).unwrap();
        // Numbered, so that a restart in the same directory keeps the first one's log.
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let stderr = dir.join(format!(
            "server-{}.stderr",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut command = wine.command(windows_path(exe));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(windows_path(&data_dir))
            .arg("--workspace")
            .arg(windows_path(&workspace))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("OPENWORK_LOG", "debug")
            .env_remove("OPENWORK_TOKEN")
            .env_remove("OPENWORK_HOST_TOKEN")
            .env_remove("OPENWORK_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap());
        let mut child = command.spawn().expect("run wine");
        let (ready, _) = crate::server::await_ready_line(&mut child, &stderr);
        let read_token = |key: &str| crate::server::read_token_file(&ready, key, unix_path);
        WineServer {
            addr: ready["url"]
                .as_str()
                .unwrap()
                .trim_start_matches("http://")
                .to_string(),
            token: read_token("tokenFile"),
            host_token: read_token("hostTokenFile"),
            ready,
            child: Some(child),
            data_dir,
            stderr,
        }
    }

    /// The Linux pid of the server (Wine runs each Windows process as one Linux process).
    pub fn linux_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
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

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the server to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let stderr = self.stderr.clone();
        let status = crate::server::wait_for_exit(self.child.as_mut().unwrap(), timeout, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        });
        self.child = None;
        status
    }
}

impl Drop for WineServer {
    fn drop(&mut self) {
        // SIGKILL of the Linux process ends the Windows process; its Job Object then ends
        // the sidecars.
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
