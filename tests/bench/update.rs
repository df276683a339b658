//! The update benchmark: what a client downloads to go from one release to the next
//! through the update channel, for each step of a chain of real opencode releases
//! (linux-x64 1.18.29 → … → 1.18.34 → 1.19.5 by default), beside the full artifact and the
//! physical floor (`zstd --patch-from -19 --long=28` of the raw opencode executables, run
//! with the zstd CLI); and what publishing costs (encode time, repository size).
//!
//! Every release is a real artifact: the release stub built from this tree and the real
//! opencode, packed as `release` packs (zstd level 18, long window); each is published with
//! `openwork-packager update-repo publish`'s library into one repository, signed with keys
//! made for the run. The client's bytes are read from the signed targets metadata: the
//! cheapest path its custom data offers (a sidecar delta from the installed opencode, else
//! the compressed opencode, else the artifact) plus the payload manifest and the three
//! metadata files a refresh downloads. "With a new server" adds the stub: a delta from the
//! previous stub when one is published (`--previous-stub`), else the compressed stub, an
//! upper bound.
//!
//! The step where Bun itself changes (its version is read from each executable) is
//! reported on its own, with the parts-aware experiment: the ELF section `.bun` (opencode's
//! JavaScript) as a delta from the old `.bun`, the rest (Bun's runtime) from the old rest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use openwork_packager::pack::{self, Compression, PackRequest, Versions};
use openwork_packager::update::keys::KeysConfig;
use openwork_packager::update::publish::{self, PublishRequest};
use openwork_packager::update::repo::Repository;
use openwork_payload::targets;
use openwork_update_format::custom::{Kind, UpdateTarget};
use openwork_update_format::delta;
use serde_json::json;

use crate::measure::{self, progress};
use crate::report::{Quantity, Report, Row, Target as Goal};

/// What the benchmark does, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// opencode versions, oldest first.
    pub versions: Vec<String>,
    /// Deltas from how many previous releases the publisher writes.
    pub deltas: usize,
    /// zstd level of the publisher's deltas.
    pub level: i32,
    /// zstd level of the publisher's whole compressed contents.
    pub full_level: i32,
    /// Where artifacts, the repository and the floor's files are made (and kept between
    /// runs, so that a second run re-packs nothing).
    pub work_dir: PathBuf,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// A stub of an earlier server build, to measure the stub delta with.
    pub previous_stub: Option<PathBuf>,
    /// The release stub to use instead of building one.
    pub stub: Option<PathBuf>,
}

/// The targets docs/BENCHMARKS.md records.
mod goals {
    /// An opencode-only update, median over the steps, in percent of the full artifact.
    pub const DOWNLOAD_PERCENT: f64 = 2.0;
}

/// One step of the chain, measured.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    from: String,
    to: String,
    bun: (String, String),
    full_artifact: u64,
    opencode_only: u64,
    opencode_path: String,
    with_server: u64,
    stub_path: String,
    floor: u64,
    floor_seconds: f64,
}

/// Runs the benchmark, prints progress on stderr, writes the JSON and returns the report.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    if settings.versions.len() < 2 {
        bail!("the chain needs at least two versions");
    }
    if std::process::Command::new("zstd")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("the floor is measured with the zstd CLI: apt-get install zstd");
    }
    let target = targets::by_name("linux-x64").context("the linux-x64 target")?;
    std::fs::create_dir_all(&settings.work_dir)?;
    let work = measure::absolute(&settings.work_dir)?;
    let stub = match &settings.stub {
        Some(stub) => measure::absolute(stub)?,
        None => measure::release_stub(target)?,
    };
    let stub_content = delta::content_of(&std::fs::read(&stub)?);

    let mut binaries = Vec::new();
    for version in &settings.versions {
        progress(format_args!("opencode {version} (registry or cache)"));
        binaries.push(openwork_packager::fetch::ensure_registry_opencode(
            "linux-x64",
            version,
        )?);
    }

    // The artifacts, packed as `release` packs; kept by version and stub between runs.
    let mut artifacts = Vec::new();
    for (version, binary) in settings.versions.iter().zip(&binaries) {
        let out = work.join(format!("artifact-{version}-{}", &stub_content.sha256[..12]));
        if !out.exists() {
            progress(format_args!(
                "packing opencode {version} at the release level"
            ));
            pack::pack(&PackRequest {
                stub: stub.clone(),
                sidecars: vec![("opencode".into(), binary.clone())],
                out: out.clone(),
                target,
                versions: Versions {
                    opencode: version.clone(),
                    router: None,
                },
                compression: Compression::release(),
                mtime: 0,
            })?;
        }
        artifacts.push(out);
    }

    // The floor, with the zstd CLI, on the other core while the publisher works.
    let floors = {
        let work = work.clone();
        let binaries = binaries.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<(u64, f64)>> {
            binaries
                .windows(2)
                .map(|pair| floor(&work, &pair[0], &pair[1]))
                .collect()
        })
    };

    // The repository, published release by release.
    let repo_dir = work.join(format!(
        "repository-{}-{}-{}",
        settings.deltas, settings.level, settings.full_level
    ));
    if repo_dir.exists() {
        std::fs::remove_dir_all(&repo_dir)?;
    }
    let keys = keys(&work)?;
    let repo = Repository::new(&repo_dir);
    publish::init(&repo, &keys, time::OffsetDateTime::now_utc())?;
    let mut publishes = Vec::new();
    let mut stubs = std::collections::BTreeMap::new();
    for (i, (version, artifact)) in settings.versions.iter().zip(&artifacts).enumerate() {
        // The first release carries the earlier server build, when one is given, so that
        // the second publishes a stub delta from it.
        if i == 0
            && let Some(previous) = &settings.previous_stub
        {
            stubs.insert("linux-x64".to_owned(), previous.clone());
        } else {
            stubs.clear();
        }
        progress(format_args!(
            "publishing opencode {version} (level {}, deltas from the last {})",
            settings.level, settings.deltas
        ));
        let started = Instant::now();
        let report = publish::publish(
            &repo,
            &keys,
            &PublishRequest {
                artifacts: vec![artifact.clone()],
                stubs: stubs.clone(),
                deltas: settings.deltas,
                level: settings.level,
                full_level: settings.full_level,
            },
            time::OffsetDateTime::now_utc(),
        )?;
        publishes.push(json!({
            "version": version,
            "wallSeconds": started.elapsed().as_secs_f64(),
            "encodeSeconds": report.encode_seconds,
            "repositoryBytes": report.repository_bytes,
            "files": report.files,
        }));
    }
    let current = repo.current()?;
    let ours: Vec<(String, u64, UpdateTarget)> = current
        .targets
        .targets
        .iter()
        .filter_map(|(n, t)| Some((n.clone(), t.length, UpdateTarget::of(t).ok()??)))
        .collect();
    let metadata_bytes = ["timestamp.json"]
        .iter()
        .map(|n| repo_dir.join("metadata").join(n))
        .chain([
            repo_dir
                .join("metadata")
                .join(format!("{}.snapshot.json", current.snapshot.version)),
            repo_dir
                .join("metadata")
                .join(format!("{}.targets.json", current.targets.version)),
        ])
        .map(|p| measure::file_size(&p))
        .sum::<anyhow::Result<u64>>()?;

    let floors = floors
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))??;
    let mut steps = Vec::new();
    for i in 1..settings.versions.len() {
        let sequence = i as u64 + 1;
        let old = std::fs::read(&binaries[i - 1])?;
        let new = std::fs::read(&binaries[i])?;
        let installed = delta::content_of(&old);
        let of = |kind: Kind| {
            ours.iter()
                .filter(move |(_, _, c)| c.release.sequence == sequence && c.kind == kind)
        };
        let full = measure::file_size(&artifacts[i])?;
        let manifest = of(Kind::Manifest).map(|(_, l, _)| *l).sum::<u64>();
        let (opencode_path, opencode_bytes) = of(Kind::SidecarDelta)
            .filter(|(_, _, c)| c.from.as_ref() == Some(&installed))
            .map(|(n, l, _)| (n.clone(), *l))
            .chain(of(Kind::Sidecar).map(|(n, l, _)| (n.clone(), *l)))
            .min_by_key(|(_, l)| *l)
            .context("the release has no opencode target")?;
        let opencode_only = (opencode_bytes + manifest + metadata_bytes).min(full);
        let (stub_path, stub_bytes) = of(Kind::StubDelta)
            .map(|(n, l, _)| (n.clone(), *l))
            .chain(of(Kind::Stub).map(|(n, l, _)| (n.clone(), *l)))
            .min_by_key(|(_, l)| *l)
            .context("the release has no stub target")?;
        let with_server = (opencode_only + stub_bytes).min(full);
        let (floor, floor_seconds) = floors[i - 1];
        steps.push(Step {
            from: settings.versions[i - 1].clone(),
            to: settings.versions[i].clone(),
            bun: (bun_version(&old), bun_version(&new)),
            full_artifact: full,
            opencode_only,
            opencode_path,
            with_server,
            stub_path,
            floor,
            floor_seconds,
        });
        let _ = new;
    }

    // The parts-aware experiment, on every step where Bun changed.
    let mut parts = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if step.bun.0 == step.bun.1 {
            continue;
        }
        progress(format_args!(
            "parts-aware deltas for {} -> {} (Bun {} -> {})",
            step.from, step.to, step.bun.0, step.bun.1
        ));
        let old = std::fs::read(&binaries[i])?;
        let new = std::fs::read(&binaries[i + 1])?;
        let started = Instant::now();
        let (old_js, old_rest) = split_bun(&old)?;
        let (new_js, new_rest) = split_bun(&new)?;
        let js = delta::diff(&old_js, &new_js, settings.level)?.len() as u64;
        let rest = delta::diff(&old_rest, &new_rest, settings.level)?.len() as u64;
        let rest_alone = delta::compress(&new_rest, settings.level)?.len() as u64;
        parts.push(json!({
            "from": step.from, "to": step.to,
            "bunSectionBytes": [old_js.len(), new_js.len()],
            "restBytes": [old_rest.len(), new_rest.len()],
            "bunSectionDelta": js, "restDelta": rest, "restCompressed": rest_alone,
            "total": js + rest.min(rest_alone),
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }

    let mut rows = Vec::new();
    for step in &steps {
        let full = Quantity::bytes(step.full_artifact);
        let bun = if step.bun.0 == step.bun.1 {
            String::new()
        } else {
            format!(" (Bun {} -> {})", step.bun.0, step.bun.1)
        };
        rows.push(
            Row::info(format!("{} -> {}{bun}: opencode only", step.from, step.to), Quantity::bytes(step.opencode_only))
                .against(full)
                .note(format!(
                    "{} -> {}: via {}; floor (zstd CLI --patch-from -19 --long=28) {} = {:.2} % of the full artifact; with a new server {} ({:.2} %) via {}",
                    step.from,
                    step.to,
                    step.opencode_path,
                    Quantity::bytes(step.floor),
                    100.0 * step.floor as f64 / step.full_artifact as f64,
                    Quantity::bytes(step.with_server),
                    100.0 * step.with_server as f64 / step.full_artifact as f64,
                    step.stub_path,
                )),
        );
    }
    let percent = |f: fn(&Step) -> u64| -> Vec<f64> {
        steps
            .iter()
            .map(|s| 100.0 * f(s) as f64 / s.full_artifact as f64)
            .collect()
    };
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    };
    rows.push(
        Row::info(
            "median download, opencode-only update (% of the full artifact)",
            Quantity::percent(median(percent(|s| s.opencode_only))),
        )
        .target(Goal::Value {
            max: Quantity::percent(goals::DOWNLOAD_PERCENT),
        }),
    );
    rows.push(Row::info(
        "median download, update with a new server stub (% of the full artifact)",
        Quantity::percent(median(percent(|s| s.with_server))),
    ).note(if settings.previous_stub.is_some() {
        "the stub as a delta from the --previous-stub build where smaller"
    } else {
        "the stub counted whole (compressed): no earlier server build was given (--previous-stub), an upper bound"
    }));
    rows.push(Row::info(
        "median floor (% of the full artifact)",
        Quantity::percent(median(percent(|s| s.floor))),
    ));
    for p in &parts {
        rows.push(
            Row::info(
                format!("parts-aware delta {} -> {} (.bun from .bun, the rest from the rest)", p["from"].as_str().unwrap_or(""), p["to"].as_str().unwrap_or("")),
                Quantity::bytes(p["total"].as_u64().unwrap_or(0)),
            )
            .note(format!(
                "parts-aware {} -> {}: .bun section delta {}, Bun runtime delta {} (compressed alone {}); {:.0} s",
                p["from"].as_str().unwrap_or(""),
                p["to"].as_str().unwrap_or(""),
                Quantity::bytes(p["bunSectionDelta"].as_u64().unwrap_or(0)),
                Quantity::bytes(p["restDelta"].as_u64().unwrap_or(0)),
                Quantity::bytes(p["restCompressed"].as_u64().unwrap_or(0)),
                p["seconds"].as_f64().unwrap_or(0.0),
            )),
        );
    }
    let encode: Vec<f64> = publishes
        .iter()
        .map(|p| p["encodeSeconds"].as_f64().unwrap_or(0.0))
        .collect();
    rows.push(
        Row::info(
            "publisher: encode time per release (median)",
            Quantity::seconds(median(encode.clone())),
        )
        .note(format!(
            "publisher: deltas at zstd level {}, whole contents at level {}, deltas from the last {} releases; per release {}",
            settings.level,
            settings.full_level,
            settings.deltas,
            encode
                .iter()
                .map(|s| format!("{s:.0} s"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    );
    rows.push(Row::info(
        format!(
            "publisher: repository size after {} releases",
            settings.versions.len()
        ),
        Quantity::bytes(repo.size()?),
    ));
    rows.push(Row::skipped(
        "apply time vs download-and-first-start of the full artifact (target <= 0.5x)",
        "not yet measured (server side not built)",
    ));
    rows.push(Row::skipped(
        "start after an update vs a warm start (target <= 1.05x)",
        "not yet measured (server side not built)",
    ));

    let report = Report {
        benchmark: "update".into(),
        context: format!(
            "opencode linux-x64 {} with the release stub, published with deltas at zstd level {} (whole contents at {}) from the last {} releases",
            settings.versions.join(" -> "),
            settings.level,
            settings.full_level,
            settings.deltas
        ),
        rows,
        details: json!({
            "steps": steps,
            "partsAware": parts,
            "publishes": publishes,
            "metadataBytes": metadata_bytes,
            "loadAverage": measure::load_average(),
        }),
    };
    report.write_json(&settings.json)?;
    Ok(report)
}

/// Keys made for the run: four P-256 keys in DER files, and a configuration naming them.
fn keys(work: &Path) -> anyhow::Result<KeysConfig> {
    let dir = work.join("keys");
    std::fs::create_dir_all(&dir)?;
    let mut text = String::new();
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let file = dir.join(format!("{role}.der"));
        if !file.exists() {
            std::fs::write(
                &file,
                openwork_update_format::key::InMemoryKey::generate_pkcs8(),
            )?;
        }
        text.push_str(&format!(
            "[{role}]\nkeys = [{{ key = \"file:{role}.der\" }}]\n\n"
        ));
    }
    let path = dir.join("update-keys.toml");
    std::fs::write(&path, text)?;
    Ok(KeysConfig::load(&path)?)
}

/// `zstd --patch-from=OLD -19 --long=28 NEW` with the CLI: its size and wall time, kept in
/// the work directory by the two contents' hashes.
fn floor(work: &Path, old: &Path, new: &Path) -> anyhow::Result<(u64, f64)> {
    let key = |p: &Path| -> anyhow::Result<String> {
        Ok(delta::content_of(&std::fs::read(p)?).sha256[..16].to_owned())
    };
    let record = work.join(format!("floor-{}-{}.json", key(old)?, key(new)?));
    if let Ok(text) = std::fs::read_to_string(&record) {
        let value: serde_json::Value = serde_json::from_str(&text)?;
        if let (Some(bytes), Some(seconds)) = (value["bytes"].as_u64(), value["seconds"].as_f64()) {
            return Ok((bytes, seconds));
        }
    }
    progress(format_args!(
        "floor: zstd --patch-from {} -19 --long=28 {}",
        old.display(),
        new.display()
    ));
    let out = work.join(format!("floor-{}.zst", key(new)?));
    let started = Instant::now();
    let status = std::process::Command::new("zstd")
        .args(["-q", "-f", "-19", "--long=28"])
        .arg(format!("--patch-from={}", old.display()))
        .arg(new)
        .arg("-o")
        .arg(&out)
        .status()
        .context("run zstd")?;
    if !status.success() {
        bail!("zstd --patch-from failed: {status}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes = measure::file_size(&out)?;
    std::fs::remove_file(&out)?;
    std::fs::write(
        &record,
        json!({"bytes": bytes, "seconds": seconds}).to_string(),
    )?;
    Ok((bytes, seconds))
}

/// The Bun version a Bun-compiled executable names (`Bun v1.3.14`), or `?`.
fn bun_version(bytes: &[u8]) -> String {
    const NEEDLE: &[u8] = b"Bun v1.";
    bytes
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
        .map(|at| {
            let start = at + 5;
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b'.'))
                .map_or(bytes.len(), |n| start + n);
            String::from_utf8_lossy(&bytes[start..end])
                .trim_end_matches('.')
                .to_owned()
        })
        .unwrap_or_else(|| "?".into())
}

/// An executable's ELF section `.bun` (opencode's JavaScript) and everything else.
fn split_bun(bytes: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let elf = goblin::elf::Elf::parse(bytes).context("parse the ELF")?;
    let section = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".bun"))
        .context("no .bun section")?;
    let start = section.sh_offset as usize;
    let end = start + section.sh_size as usize;
    let js = bytes
        .get(start..end)
        .context(".bun is outside the file")?
        .to_vec();
    let mut rest = bytes[..start].to_vec();
    rest.extend_from_slice(&bytes[end..]);
    Ok((js, rest))
}
