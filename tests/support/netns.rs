//! A LAN on one machine: two network namespaces joined by a veth pair, for tests of what
//! crosses a network (mDNS discovery, attacks from a peer on the LAN). The server runs in
//! one namespace (`ip netns exec`, through [`crate::server::ServerBuilder::wrapped`]), the
//! peer's programs in the other. Needs root and iproute2's `ip`; CI has both, so there a
//! missing one is a failure, elsewhere a loud skip.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::fixtures::{describe, output_of};

/// The server's address on the LAN.
pub const SERVER_IP: &str = "10.77.0.1";
/// The peer's address on the LAN.
pub const PEER_IP: &str = "10.77.0.2";

/// Two namespaces and the veth pair between them; removed (with everything in them) when
/// dropped.
pub struct Lan {
    /// The server's namespace.
    pub server_ns: String,
    /// The peer's namespace.
    pub peer_ns: String,
    ip: PathBuf,
}

/// Runs `script` with `sh -c`; its output.
fn sh(script: &str) -> Output {
    output_of(Command::new("sh").arg("-c").arg(script))
}

impl Lan {
    /// A new LAN, or `None` (said on stderr) where this machine cannot make one; under
    /// `CI=true` on Linux that panics instead: CI must run these tests.
    pub fn create() -> Option<Lan> {
        #[cfg(unix)]
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        #[cfg(not(unix))]
        let root = false;
        let which = sh("command -v ip");
        let have_ip = which.status.success();
        let must = std::env::var_os("CI").is_some() && cfg!(target_os = "linux");
        if !root || !have_ip {
            assert!(
                !must,
                "CI runs as root with iproute2: the network namespace tests must run there"
            );
            eprintln!(
                "SKIPPED (loudly): network namespace tests need root and iproute2's `ip` (root: {root}, ip: {have_ip})"
            );
            return None;
        }
        // Names unique to this process and call, so parallel tests and runs do not clash.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lan = Lan {
            server_ns: format!("owsrv{tag}"),
            peer_ns: format!("owpeer{tag}"),
            ip: PathBuf::from(String::from_utf8_lossy(&which.stdout).trim()),
        };
        let (veth_a, veth_b) = (format!("owa{tag}"), format!("owb{tag}"));
        let (server_ns, peer_ns) = (&lan.server_ns, &lan.peer_ns);
        let setup = sh(&format!(
            "set -e
             ip netns add {server_ns}
             ip netns add {peer_ns}
             ip link add {veth_a} type veth peer name {veth_b}
             ip link set {veth_a} netns {server_ns}
             ip link set {veth_b} netns {peer_ns}
             ip -n {server_ns} addr add {SERVER_IP}/24 dev {veth_a}
             ip -n {peer_ns} addr add {PEER_IP}/24 dev {veth_b}
             ip -n {server_ns} link set lo up
             ip -n {peer_ns} link set lo up
             ip -n {server_ns} link set {veth_a} up multicast on
             ip -n {peer_ns} link set {veth_b} up multicast on"
        ));
        if !setup.status.success() {
            let why = describe(&setup);
            assert!(!must, "CI must be able to make network namespaces: {why}");
            eprintln!("SKIPPED (loudly): cannot make network namespaces here: {why}");
            return None;
        }
        Some(lan)
    }

    /// `ip`, for [`crate::server::ServerBuilder::wrapped`] with [`Lan::server_wrapper`].
    pub fn ip_program(&self) -> &std::path::Path {
        &self.ip
    }

    /// The arguments that make `ip` run a program in the server's namespace.
    pub fn server_wrapper(&self) -> [&str; 3] {
        ["netns", "exec", &self.server_ns]
    }

    /// `program` in the peer's namespace (as root, the peer's own machine).
    pub fn on_peer(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(&self.ip);
        command.args(["netns", "exec", &self.peer_ns]).arg(program);
        command
    }

    /// `program` in the server's namespace.
    pub fn on_server(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(&self.ip);
        command
            .args(["netns", "exec", &self.server_ns])
            .arg(program);
        command
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and with it the other end.
        for ns in [&self.server_ns, &self.peer_ns] {
            let _ = sh(&format!("ip netns del {ns}"));
        }
    }
}
