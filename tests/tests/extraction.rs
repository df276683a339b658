//! Self-extraction of a packed ELF server, with real faults: racing processes, SIGKILL
//! mid-extraction, flipped bytes, truncation, a full disk, a held lock, tampering, GC.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openwork_tests::fixtures::{
    describe, output_of, packed_host_artifact, run_packed, runtime_dirs, runtime_entries,
    tree_hashes,
};
use serde_json::Value;

fn json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(output)))
}

fn has_litter(data_dir: &Path) -> bool {
    runtime_entries(data_dir)
        .iter()
        .any(|n| n.starts_with(".tmp~") || n.starts_with(".trash~"))
}

#[test]
fn elf_round_trip_extracts_exactly_the_sidecars() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 2 << 20, 1);
    let data = work.path().join("data");
    let out = run_packed(&artifact, &data, &["runtime", "extract", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let first = json(&out);
    assert_eq!(first["extracted"], true);
    let dir = Path::new(first["runtimeDir"].as_str().unwrap()).to_path_buf();
    let files = tree_hashes(&dir);
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            ".lease",
            "bin/opencode",
            "bin/opencode-router",
            "manifest.json"
        ]
    );
    let original = std::fs::read(work.path().join("opencode-1")).unwrap();
    assert_eq!(std::fs::read(dir.join("bin/opencode")).unwrap(), original);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("bin/opencode"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    // The extracted sidecar really runs (it is /bin/true with data after it).
    assert!(
        Command::new(dir.join("bin/opencode"))
            .status()
            .unwrap()
            .success()
    );

    let again = json(&run_packed(
        &artifact,
        &data,
        &["runtime", "extract", "--json"],
    ));
    assert_eq!(
        again["extracted"], false,
        "a warm start must not extract again"
    );
    assert_eq!(again["runtimeDir"], first["runtimeDir"]);
    let verify = run_packed(&artifact, &data, &["runtime", "verify"]);
    assert!(verify.status.success(), "{}", describe(&verify));
    let path = run_packed(&artifact, &data, &["runtime", "path"]);
    assert_eq!(
        String::from_utf8_lossy(&path.stdout).trim(),
        dir.to_str().unwrap()
    );
}

#[test]
fn sixteen_racing_processes_extract_once_and_agree() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 24 << 20, 2);
    let data = work.path().join("data");
    let children: Vec<_> = (0..16)
        .map(|_| {
            Command::new(&artifact)
                .arg("--data-dir")
                .arg(&data)
                .args(["runtime", "extract", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut extracted = 0;
    let mut dirs = std::collections::BTreeSet::new();
    for out in &outputs {
        assert!(out.status.success(), "{}", describe(out));
        let v = json(out);
        extracted += usize::from(v["extracted"] == true);
        dirs.insert(v["runtimeDir"].as_str().unwrap().to_string());
    }
    assert_eq!(extracted, 1, "exactly one process extracts");
    assert_eq!(dirs.len(), 1, "all agree on one directory");
    assert_eq!(runtime_dirs(&data).len(), 1);
    assert!(!has_litter(&data));
    let dir = Path::new(dirs.iter().next().unwrap());
    let hashes = tree_hashes(dir);
    assert_eq!(hashes.len(), 4);
    let original = hex_sha(&std::fs::read(work.path().join("opencode-2")).unwrap());
    assert!(hashes.contains(&("bin/opencode".to_string(), original)));
}

fn hex_sha(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// A small, seeded generator: reproducible "random" kill points.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn sigkill_at_random_points_never_leaves_a_usable_partial_runtime() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 96 << 20, 3);
    // How long one extraction takes here, to spread the kills over it.
    let probe = work.path().join("probe");
    let started = Instant::now();
    let out = run_packed(&artifact, &probe, &["runtime", "extract"]);
    assert!(out.status.success(), "{}", describe(&out));
    let span = started.elapsed().as_millis() as u64 * 12 / 10;

    let mut seed = 0x5eed;
    let mut killed_mid_extraction = 0;
    for trial in 0..20 {
        let data = work.path().join(format!("trial-{trial}"));
        let delay = lcg(&mut seed) % span.max(1);
        let mut child = Command::new(&artifact)
            .arg("--data-dir")
            .arg(&data)
            .args(["runtime", "extract"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        if has_litter(&data) {
            killed_mid_extraction += 1;
        }
        // Whatever is left must be either absent or complete and intact.
        for dir in runtime_dirs(&data) {
            assert!(
                dir.join(".stamp.json").exists(),
                "trial {trial}: {} has no stamp",
                dir.display()
            );
            let verify = run_packed(&artifact, &data, &["runtime", "verify"]);
            assert!(
                verify.status.success(),
                "trial {trial} (kill at {delay} ms): {}",
                describe(&verify)
            );
        }
        // The next start always succeeds with an intact runtime…
        let next = run_packed(&artifact, &data, &["runtime", "extract"]);
        assert!(next.status.success(), "trial {trial}: {}", describe(&next));
        let verify = run_packed(&artifact, &data, &["runtime", "verify"]);
        assert!(
            verify.status.success(),
            "trial {trial}: {}",
            describe(&verify)
        );
        // …and the litter is collected.
        let gc = run_packed(&artifact, &data, &["runtime", "gc"]);
        assert!(gc.status.success(), "{}", describe(&gc));
        assert!(
            !has_litter(&data),
            "trial {trial}: {:?}",
            runtime_entries(&data)
        );
        assert_eq!(runtime_dirs(&data).len(), 1);
    }
    assert!(
        killed_mid_extraction >= 5,
        "only {killed_mid_extraction} of 20 kills hit an extraction; the test did not exercise the fault"
    );
}

#[test]
fn flipped_bytes_are_rejected_before_anything_is_extracted() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 1 << 20, 4);
    let bytes = std::fs::read(&artifact).unwrap();
    let info = openwork_payload::container::locate(&bytes).unwrap().1;
    let payload = info.payload_offset as usize..info.payload_offset as usize + info.payload.len();
    let manifest =
        info.manifest_offset as usize..info.manifest_offset as usize + info.manifest_bytes.len();
    let trailer = info.trailer_offset as usize..bytes.len();
    let mut seed = 42;
    let mut samples: Vec<usize> = Vec::new();
    for _ in 0..12 {
        samples.push(payload.start + (lcg(&mut seed) as usize % payload.len()));
    }
    for _ in 0..8 {
        samples.push(manifest.start + (lcg(&mut seed) as usize % manifest.len()));
    }
    // Every field of the trailer: offsets, hashes, check, length, version, magic.
    for at in [
        0, 8, 16, 24, 32, 40, 71, 72, 103, 104, 108, 112, 116, 118, 120, 127,
    ] {
        samples.push(trailer.start + at);
    }
    for at in samples {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x40;
        let path = work.path().join("flipped");
        std::fs::write(&path, &flipped).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let data = work.path().join(format!("data-{at}"));
        let out = run_packed(&path, &data, &["runtime", "extract"]);
        let code = out.status.code().unwrap();
        let in_trailer = at >= trailer.start;
        let expected: &[i32] = match at.checked_sub(trailer.start) {
            Some(120..=127) => &[3],    // magic gone: no payload
            Some(116..=117) => &[4, 5], // major version: newer, or invalid
            _ => &[4],                  // integrity
        };
        assert!(
            expected.contains(&code),
            "flip at {at} (trailer: {in_trailer}): {}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error:") && stderr.len() > 60,
            "unclear message: {stderr}"
        );
        assert!(
            runtime_dirs(&data).is_empty(),
            "flip at {at}: a runtime directory appeared"
        );
        assert!(!has_litter(&data), "flip at {at}: temp litter left");
    }
}

#[test]
fn newer_format_and_truncation_are_named() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 1 << 20, 5);
    let bytes = std::fs::read(&artifact).unwrap();
    let trailer = bytes.len() - openwork_payload::trailer::TRAILER_LEN;

    let mut newer = bytes.clone();
    newer[trailer + 116..trailer + 118].copy_from_slice(&2u16.to_le_bytes());
    let path = work.path().join("newer");
    std::fs::write(&path, &newer).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run_packed(&path, &work.path().join("d1"), &["runtime", "extract"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("newer"),
        "{}",
        describe(&out)
    );

    for cut in [1, 64, 200, 100_000] {
        let path = work.path().join(format!("truncated-{cut}"));
        std::fs::write(&path, &bytes[..bytes.len() - cut]).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let data = work.path().join(format!("d-{cut}"));
        let out = run_packed(&path, &data, &["runtime", "extract"]);
        assert_eq!(out.status.code(), Some(3), "cut {cut}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("truncated"),
            "{}",
            describe(&out)
        );
        assert!(runtime_dirs(&data).is_empty());
    }
}

#[test]
fn tampered_file_is_caught_by_full_verification_and_replaced() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 1 << 20, 6);
    let data = work.path().join("data");
    assert!(
        run_packed(&artifact, &data, &["runtime", "extract"])
            .status
            .success()
    );
    let dir = runtime_dirs(&data).pop().unwrap();
    let target = dir.join("bin/opencode");
    // Flip one byte in place, keeping size and mtime: only a rehash can notice.
    let mtime = std::fs::metadata(&target).unwrap().modified().unwrap();
    let mut content = std::fs::read(&target).unwrap();
    let at = content.len() / 2;
    content[at] ^= 1;
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        file.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
        file.write_all(&content[at..at + 1]).unwrap();
        file.set_modified(mtime).unwrap();
    }
    let verify = run_packed(&artifact, &data, &["runtime", "verify"]);
    assert_eq!(verify.status.code(), Some(4), "{}", describe(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("FAILED"));

    let full = run_packed(
        &artifact,
        &data,
        &["--verify", "full", "runtime", "extract", "--json"],
    );
    assert!(full.status.success(), "{}", describe(&full));
    assert_eq!(
        json(&full)["extracted"],
        true,
        "the damaged runtime is replaced"
    );
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("damaged"),
        "{}",
        describe(&full)
    );
    let verify = run_packed(&artifact, &data, &["runtime", "verify"]);
    assert!(verify.status.success(), "{}", describe(&verify));

    // A replaced file (new inode, new mtime) is caught by the fast stamp check alone.
    std::fs::remove_file(dir.join("bin/opencode-router")).unwrap();
    std::fs::write(dir.join("bin/opencode-router"), b"evil").unwrap();
    let fast = run_packed(&artifact, &data, &["runtime", "extract", "--json"]);
    assert!(fast.status.success(), "{}", describe(&fast));
    assert_eq!(json(&fast)["extracted"], true);
    assert!(
        run_packed(&artifact, &data, &["runtime", "verify"])
            .status
            .success()
    );
}

#[test]
fn disk_full_gives_a_clear_error_and_no_partial_runtime() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 8 << 20, 7);
    let data = work.path().join("data");
    let out = unsafe {
        Command::new(&artifact)
            .arg("--data-dir")
            .arg(&data)
            .args(["runtime", "extract"])
            .pre_exec(|| {
                // Writes past 1 MiB fail with EFBIG instead of killing the process.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 1 << 20,
                    rlim_max: 1 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no space left"),
        "{}",
        describe(&out)
    );
    assert!(runtime_dirs(&data).is_empty());
    assert!(!has_litter(&data), "{:?}", runtime_entries(&data));
    // With room again, the same start succeeds.
    assert!(
        run_packed(&artifact, &data, &["runtime", "extract"])
            .status
            .success()
    );
}

#[test]
fn a_waiting_process_says_so_and_times_out_clearly() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 1 << 20, 8);
    let data = work.path().join("data");
    let path = run_packed(&artifact, &data, &["runtime", "path"]);
    let dir = String::from_utf8(path.stdout).unwrap();
    let key = Path::new(dir.trim())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let locks = data.join("runtime/.locks");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = File::create(locks.join(format!("{key}.lock"))).unwrap();
    lock.lock().unwrap();
    let started = Instant::now();
    let out = run_packed(
        &artifact,
        &data,
        &["--lock-timeout", "1", "runtime", "extract"],
    );
    assert_eq!(out.status.code(), Some(8), "{}", describe(&out));
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting for another openwork-server-v2"),
        "{stderr}"
    );
    assert!(stderr.contains("timed out"), "{stderr}");
    drop(lock);
    assert!(
        run_packed(&artifact, &data, &["runtime", "extract"])
            .status
            .success()
    );
}

#[test]
fn gc_keeps_the_newest_two_and_leased_runtimes_and_collects_litter() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let artifacts: Vec<_> = (10..14)
        .map(|seed| packed_host_artifact(work.path(), 64 << 10, seed))
        .collect();
    let mut dirs = Vec::new();
    let mut lease = None;
    for (i, artifact) in artifacts.iter().enumerate() {
        let out = run_packed(artifact, &data, &["runtime", "extract", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        let dir = std::path::PathBuf::from(json(&out)["runtimeDir"].as_str().unwrap());
        if i == 0 {
            // A process "running" the oldest runtime.
            let file = File::open(dir.join(".lease")).unwrap();
            file.lock_shared().unwrap();
            lease = Some(file);
        }
        dirs.push(dir);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Extraction collects on its own: the leased oldest, and the newest two, remain.
    assert!(dirs[0].exists(), "leased runtime removed");
    assert!(!dirs[1].exists(), "unused old runtime kept");
    assert!(dirs[2].exists() && dirs[3].exists());

    // Litter: an abandoned temp dir is removed, one whose extraction lock is held is not.
    let root = data.join("runtime");
    std::fs::create_dir_all(root.join(".tmp~0.0.1-dead~1-0")).unwrap();
    std::fs::create_dir_all(root.join(".trash~0.0.1-dead~1-0/bin")).unwrap();
    std::fs::create_dir_all(root.join(".tmp~0.0.2-busy~1-0")).unwrap();
    let busy = File::create(root.join(".locks/0.0.2-busy.lock")).unwrap();
    busy.lock().unwrap();

    drop(lease);
    let out = run_packed(&artifacts[3], &data, &["runtime", "gc", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!dirs[0].exists(), "no longer leased: collected");
    assert!(dirs[2].exists() && dirs[3].exists());
    let left = runtime_entries(&data);
    assert!(
        left.contains(&".tmp~0.0.2-busy~1-0".to_string()),
        "{left:?}"
    );
    assert!(!left.iter().any(|n| n.contains("dead")), "{left:?}");
}

#[test]
fn bundle_directories_take_precedence_in_the_documented_order() {
    let work = tempfile::tempdir().unwrap();
    let artifact = packed_host_artifact(work.path(), 256 << 10, 20);
    let data = work.path().join("data");
    let extracted = json(&run_packed(
        &artifact,
        &data,
        &["runtime", "extract", "--json"],
    ));
    let runtime = Path::new(extracted["runtimeDir"].as_str().unwrap()).to_path_buf();
    // A bundle: manifest.json + files, as the multi-file distribution ships them.
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(bundle.join("bin")).unwrap();
    for f in ["manifest.json", "bin/opencode", "bin/opencode-router"] {
        std::fs::copy(runtime.join(f), bundle.join(f)).unwrap();
    }
    let source_of = |cmd: &mut Command| -> String {
        let out = output_of(cmd);
        assert!(out.status.success(), "{}", describe(&out));
        json(&out)["source"].as_str().unwrap().to_string()
    };
    let info = |exe: &Path| {
        let mut c = Command::new(exe);
        c.arg("--data-dir")
            .arg(&data)
            .args(["runtime", "info", "--json"]);
        c.env_remove("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR");
        c
    };
    assert_eq!(source_of(&mut info(&artifact)), "embedded");
    assert_eq!(
        source_of(info(&artifact).env("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR", &bundle)),
        "bundle-env"
    );
    assert_eq!(
        source_of(
            info(&artifact)
                .arg("--bundle-dir")
                .arg(&bundle)
                .env("OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR", "/nonexistent")
        ),
        "bundle-flag"
    );
    // Beside a manifest, a packed server still runs what it carries; a stub without a
    // payload (the multi-file distribution) runs the bundle.
    let beside = bundle.join("openwork-server-v2");
    std::fs::copy(&artifact, &beside).unwrap();
    assert_eq!(source_of(&mut info(&beside)), "embedded");
    std::fs::copy(openwork_tests::host_bin("openwork-server-v2"), &beside).unwrap();
    assert_eq!(source_of(&mut info(&beside)), "bundle-beside-executable");

    // Same content → the same runtime directory, whatever the source.
    let out = run_packed(
        &artifact,
        &data,
        &[
            "--bundle-dir",
            bundle.to_str().unwrap(),
            "runtime",
            "extract",
            "--json",
        ],
    );
    assert_eq!(json(&out)["runtimeDir"], extracted["runtimeDir"]);

    // A bundle whose file does not match its manifest is refused, and nothing is installed.
    std::fs::write(bundle.join("bin/opencode-router"), b"not the router").unwrap();
    let other = work.path().join("other-data");
    let out = run_packed(
        &artifact,
        &other,
        &[
            "--bundle-dir",
            bundle.to_str().unwrap(),
            "runtime",
            "extract",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(runtime_dirs(&other).is_empty());
    assert!(!has_litter(&other));
}
