//! Test inputs made at test time: sidecar executables of a chosen size, packed artifacts,
//! and running the packed server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::host_bin;

/// A real executable of the host's format (a copy of `/bin/true`) followed by `extra` bytes
/// of seeded pseudo-random, partly compressible data, so the packager's format check
/// accepts it and the payload has a realistic size.
pub fn host_sidecar(dir: &Path, name: &str, extra: usize, seed: u64) -> PathBuf {
    let mut bytes = std::fs::read("/bin/true").expect("read /bin/true");
    bytes.extend(pseudo_random(extra, seed));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `len` bytes that compress about 2:1: random runs interleaved with repeated ones.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = (state >> 33).to_le_bytes();
        if state & 0x100 == 0 {
            out.extend_from_slice(&word[..4]);
        } else {
            out.extend_from_slice(&[word[0]; 4]);
        }
    }
    out.truncate(len);
    out
}

/// Packs `sidecars` into the host's debug `openwork-server-v2` with the packager binary.
pub fn pack_host(stub: &Path, sidecars: &[(&str, &Path)], out: &Path) -> PathBuf {
    let mut cmd = Command::new(host_bin("openwork-packager"));
    cmd.arg("pack")
        .arg("--stub")
        .arg(stub)
        .arg("--out")
        .arg(out)
        .arg("--fast");
    for (name, path) in sidecars {
        cmd.arg("--sidecar")
            .arg(format!("{name}={}", path.display()));
        if *name == "opencode-router" {
            cmd.args(["--router-version", "0.1.0"]);
        }
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out.to_path_buf()
}

/// The host's debug `openwork-server-v2` packed (fast) with the real pinned opencode for
/// linux-x64 (from the npm registry, or the warm cache), as `dir/openwork-server-v2`.
pub fn pack_host_with_pinned_opencode(dir: &Path) -> PathBuf {
    let opencode = openwork_packager::fetch::ensure_pinned_opencode("linux-x64")
        .expect("the pinned opencode (npm registry, or the warm cache)");
    pack_host(
        &host_bin("openwork-server-v2"),
        &[("opencode", &opencode)],
        &dir.join("openwork-server-v2"),
    )
}

/// A packed host artifact with an opencode of `extra` bytes and a small router.
pub fn packed_host_artifact(dir: &Path, extra: usize, seed: u64) -> PathBuf {
    let opencode = host_sidecar(dir, &format!("opencode-{seed}"), extra, seed);
    let router = host_sidecar(dir, &format!("router-{seed}"), 4096, seed + 1);
    pack_host(
        &host_bin("openwork-server-v2"),
        &[("opencode", &opencode), ("opencode-router", &router)],
        &dir.join(format!("packed-{seed}")),
    )
}

/// Runs a packed server with `args` and a data directory.
pub fn run_packed(artifact: &Path, data_dir: &Path, args: &[&str]) -> Output {
    output_of(
        Command::new(artifact)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR")
            .env_remove("OPENWORK_DATA_DIR"),
    )
}

/// Runs `command` to completion. Tests write executables (flipped, truncated, copied) while
/// other test threads fork children; a child can inherit the write descriptor for the
/// moment before it execs, and exec of the new file then fails with ETXTBSY. That is a
/// property of fork/exec in a threaded test process, not of the server, so the spawn is
/// retried briefly.
pub fn output_of(command: &mut Command) -> Output {
    let mut attempts = 0;
    loop {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// `command.spawn()`, retried on ETXTBSY like [`output_of`].
pub fn spawn_retrying(command: &mut Command) -> std::process::Child {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// Names in `<data dir>/runtime`, sorted.
pub fn runtime_entries(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(data_dir.join("runtime")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Runtime directories (not dot-names) under a data directory.
pub fn runtime_dirs(data_dir: &Path) -> Vec<PathBuf> {
    runtime_entries(data_dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .map(|n| data_dir.join("runtime").join(n))
        .collect()
}

/// Hex SHA-256 of every regular file below `dir`, by relative path.
pub fn tree_hashes(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                // The stamp records inode numbers and times, not content.
                if rel == ".stamp.json" {
                    continue;
                }
                out.push((
                    rel,
                    hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// stdout and stderr of a process, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A payload region carrying `sidecars` (name, bytes) for `target`, built the way the
/// packager builds one (manifest with hashes, deterministic tar, zstd, region) but without
/// its executable checks, so any bytes can stand in for a sidecar. Sources are written
/// into `dir`.
pub fn region_from_sidecars(target: &str, sidecars: &[(String, Vec<u8>)], dir: &Path) -> Vec<u8> {
    use openwork_payload::archive::{self, ArchiveInput};
    use openwork_payload::manifest::{FileEntry, MANIFEST_VERSION, Manifest};

    let spec = openwork_payload::targets::by_name(target).expect("known target");
    let mut files = std::collections::BTreeMap::new();
    let mut inputs = Vec::new();
    for (name, bytes) in sidecars {
        let source = dir.join(format!("{name}.in"));
        std::fs::write(&source, bytes).expect("write sidecar");
        let entry = FileEntry {
            path: spec.sidecar_path(name),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            mode: 0o755,
        };
        files.insert(name.clone(), entry.clone());
        inputs.push(ArchiveInput { entry, source });
    }
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        server_version: openwork_payload::SERVER_VERSION.into(),
        opencode_version: "1.18.32".into(),
        router_version: Some("0.1.0".into()),
        target: target.into(),
        files,
    };
    let mut tar = Vec::new();
    let tar_len = archive::write_tar(&mut tar, &inputs, 0).expect("tar");
    let mut zstd = Vec::new();
    archive::compress(&tar[..], &mut zstd, archive::ZSTD_FAST_LEVEL, 0).expect("zstd");
    openwork_payload::region::build_region(&zstd, &manifest.to_json(), tar_len)
}
