//! `openwork-server-v2 runtime info | verify | extract | gc | path`.

use std::io::Write;

use openwork_runtime::ExitCode;
use openwork_runtime::install::{self, PrepareOptions};
use openwork_runtime::layout::{DataLayout, LEASE_FILE};
use openwork_runtime::lock::Lease;
use openwork_runtime::source::{self, PayloadSource};
use openwork_runtime::stamp::Stamp;
use openwork_runtime::{Result, SERVER_VERSION, gc};
use serde_json::json;

use super::{RuntimeCommand, Settings};

pub fn run(command: RuntimeCommand, settings: &Settings) -> Result<ExitCode> {
    let layout = DataLayout::resolve(settings.data_dir.clone())?;
    // Only `extract` creates the data dir; every command refuses one that is not ours.
    let create = matches!(command, RuntimeCommand::Extract(_));
    openwork_runtime::trust::secure_data_dir(&layout, create)?;
    let source = load_source(settings)?;
    let key = DataLayout::runtime_key(SERVER_VERSION, &source.digest);
    let dir = layout.runtime_dir(&key);
    match command {
        RuntimeCommand::Path => {
            print_out(&format!("{}\n", dir.display()));
            Ok(ExitCode::Ok)
        }
        RuntimeCommand::Info(flag) => {
            let state = match Stamp::read(&dir) {
                None => "not extracted".to_string(),
                Some(stamp) => match stamp.check(&dir, &source.manifest, &source.digest) {
                    Ok(()) => "extracted".to_string(),
                    Err(reason) => format!("damaged: {reason}"),
                },
            };
            let info = describe(&source, &layout, &dir, &state);
            if flag.json {
                print_out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&info).unwrap()
                ));
            } else {
                print_out(&human_info(&source, &layout, &dir, &state));
            }
            Ok(ExitCode::Ok)
        }
        RuntimeCommand::Extract(flag) => {
            let prepared =
                install::prepare_and_collect(&source, &layout, &prepare_options(settings))?;
            if flag.json {
                let out = json!({
                    "runtimeDir": prepared.dir,
                    "key": prepared.key,
                    "extracted": prepared.extracted,
                    "digest": source.digest,
                });
                print_out(&format!("{out}\n"));
            } else {
                print_out(&format!("{}\n", prepared.dir.display()));
            }
            Ok(ExitCode::Ok)
        }
        RuntimeCommand::Verify(flag) => {
            let mut failures = Vec::new();
            let payload = if source.embedded.is_none() {
                "bundle (files are checked below)".to_string()
            } else {
                match source.verify_payload() {
                    Ok(()) => "ok".to_string(),
                    Err(e) => {
                        failures.push(e.to_string());
                        format!("FAILED: {e}")
                    }
                }
            };
            let runtime = match Lease::acquire(&dir.join(LEASE_FILE))? {
                None => "not extracted".to_string(),
                Some(_lease) => {
                    let stamp = Stamp::read(&dir)
                        .ok_or_else(|| "no completion stamp".to_string())
                        .and_then(|s| s.check(&dir, &source.manifest, &source.digest));
                    let hashes = install::verify_files(&source, &dir).map_err(|e| e.to_string());
                    match stamp.and(hashes) {
                        Ok(()) => "ok".to_string(),
                        Err(reason) => {
                            failures.push(format!("runtime directory {}: {reason}", dir.display()));
                            format!("FAILED: {reason}")
                        }
                    }
                }
            };
            if flag.json {
                let out = json!({
                    "verified": failures.is_empty(),
                    "payload": payload,
                    "runtimeDir": dir,
                    "runtime": runtime,
                    "failures": failures,
                });
                print_out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&out).unwrap()
                ));
            } else {
                print_out(&format!(
                    "payload:      {payload}\nruntime dir:  {}\nruntime:      {runtime}\n",
                    dir.display()
                ));
            }
            if failures.is_empty() {
                Ok(ExitCode::Ok)
            } else {
                for f in &failures {
                    eprintln!("openwork-server-v2: verification failed: {f}");
                }
                Ok(ExitCode::Integrity)
            }
        }
        RuntimeCommand::Gc(flag) => {
            let report = gc::collect(&layout, Some(&key))?;
            if flag.json {
                print_out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&report).unwrap()
                ));
            } else {
                let mut out = String::new();
                for d in &report.removed {
                    out += &format!("removed   {}\n", d.display());
                }
                for d in &report.in_use {
                    out += &format!("in use    {}\n", d.display());
                }
                for d in &report.kept {
                    out += &format!("kept      {}\n", d.display());
                }
                for d in &report.scratch_removed {
                    out += &format!("cleaned   {}\n", d.display());
                }
                print_out(&out);
            }
            Ok(ExitCode::Ok)
        }
    }
}

fn load_source(settings: &Settings) -> Result<PayloadSource> {
    source::resolve_for_this_executable(settings.bundle_dir.clone())
}

pub(super) fn prepare_options(settings: &Settings) -> PrepareOptions {
    PrepareOptions {
        verify: settings.verify,
        lock_timeout: settings.lock_timeout,
        server_version: SERVER_VERSION.to_string(),
    }
}

fn describe(
    source: &PayloadSource,
    layout: &DataLayout,
    dir: &std::path::Path,
    state: &str,
) -> serde_json::Value {
    let m = &source.manifest;
    json!({
        "source": source.kind,
        "sourcePath": source.path,
        "format": source.embedded.as_ref().map(|e| e.format.to_string()),
        "payload": source.embedded.as_ref().map(|e| json!({
            "offset": e.payload_offset,
            "length": e.trailer.payload_len,
            "sha256": hex::encode(e.trailer.payload_sha256),
            "uncompressedLength": e.trailer.uncompressed_len,
        })),
        "digest": source.digest,
        "manifest": m,
        "dataDir": layout.data_dir,
        "runtimeDir": dir,
        "runtime": state,
    })
}

fn human_info(
    source: &PayloadSource,
    layout: &DataLayout,
    dir: &std::path::Path,
    state: &str,
) -> String {
    let m = &source.manifest;
    let mut out = String::new();
    let kind = serde_json::to_value(source.kind).unwrap();
    out += &format!(
        "source:       {} ({})\n",
        kind.as_str().unwrap_or("?"),
        source.path.display()
    );
    if let Some(e) = &source.embedded {
        out += &format!(
            "payload:      {} at offset {}, {} bytes (sha256 {})\n",
            e.format,
            e.payload_offset,
            e.trailer.payload_len,
            hex::encode(e.trailer.payload_sha256)
        );
    }
    out += &format!("target:       {}\n", m.target);
    out += &format!("versions:     {}\n", m.versions());
    out += &format!("digest:       {}\n", source.digest);
    out += &format!("data dir:     {}\n", layout.data_dir.display());
    out += &format!("runtime dir:  {} ({state})\n", dir.display());
    out += "files:\n";
    for (name, e) in &m.files {
        out += &format!(
            "  {name:<16} {:<24} {:>12} bytes  {:o}  sha256 {}\n",
            e.path, e.size, e.mode, e.sha256
        );
    }
    out
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
pub(super) fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}
