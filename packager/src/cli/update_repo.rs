//! `update-repo`: the update channel's repository (docs/UPDATES.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use openwork_packager::update::keys::KeysConfig;
use openwork_packager::update::publish::{self, PublishRequest};
use openwork_packager::update::repo::Repository;
use openwork_packager::{Error, Result};
use time::OffsetDateTime;

use super::print_out;

/// `update-repo` arguments.
#[derive(Debug, Args)]
pub struct UpdateRepoArgs {
    #[command(subcommand)]
    pub command: UpdateRepoCommand,
}

/// What to do to the repository.
#[derive(Debug, Subcommand)]
pub enum UpdateRepoCommand {
    /// Create a repository: 1.root.json signed by the root keys, empty targets, snapshot
    /// and timestamp
    Init(RepoKeys),
    /// Add a release: its artifacts, stubs and sidecars (compressed, and as deltas from the
    /// last N releases), then targets, snapshot and timestamp (last, atomically)
    Publish(PublishArgs),
    /// Re-sign the timestamp with a fresh expiry (a scheduled job; only the timestamp key)
    Timestamp(RepoKeys),
    /// Write root N+1 naming the keys of --new-keys, signed by the current and the new root
    /// keys, and re-sign targets, snapshot and timestamp with the new keys
    RotateRoot(RotateArgs),
    /// Read the repository as a client does (every check, expiry included, every file's
    /// hash) from a trusted root, and list its releases
    Verify(VerifyArgs),
}

/// The repository and its keys.
#[derive(Debug, Args)]
pub struct RepoKeys {
    /// The repository directory
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// The update keys configuration (TOML; docs/UPDATES.md)
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
}

/// `update-repo publish` arguments.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub repo: RepoKeys,
    /// A release artifact (one per platform)
    #[arg(long = "artifact", value_name = "FILE", required = true)]
    pub artifacts: Vec<PathBuf>,
    /// The stub of a platform whose artifact is not ELF, as PLATFORM=FILE (the signed stub)
    #[arg(long = "stub", value_name = "PLATFORM=FILE", value_parser = super::parse_sidecar)]
    pub stubs: Vec<(String, PathBuf)>,
    /// Deltas from the sidecars of this many previous releases
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub deltas: usize,
    /// zstd level of deltas
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22), default_value_t = openwork_update_format::delta::LEVEL)]
    pub level: i32,
    /// zstd level of the whole compressed stub and sidecars (the fallback) [default: --level]
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub full_level: Option<i32>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `update-repo rotate-root` arguments.
#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub repo: RepoKeys,
    /// The keys configuration after the rotation (its root keys sign too)
    #[arg(long, value_name = "FILE")]
    pub new_keys: PathBuf,
}

/// `update-repo verify` arguments.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The repository directory
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// The root the client trusts (what the stub compiles in)
    #[arg(long, value_name = "FILE")]
    pub root: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `update-repo`.
pub fn run(args: UpdateRepoArgs) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    match args.command {
        UpdateRepoCommand::Init(RepoKeys { repo, keys }) => {
            let keys = KeysConfig::load(&keys)?;
            publish::init(&Repository::new(&repo), &keys, now)?;
            print_out(&format!("{}: created (root version 1)\n", repo.display()));
        }
        UpdateRepoCommand::Publish(PublishArgs {
            repo: RepoKeys { repo, keys },
            artifacts,
            stubs,
            deltas,
            level,
            full_level,
            json,
        }) => {
            let keys = KeysConfig::load(&keys)?;
            let stubs: BTreeMap<String, PathBuf> = stubs.into_iter().collect();
            let request = PublishRequest {
                artifacts,
                stubs,
                deltas,
                level,
                full_level: full_level.unwrap_or(level),
            };
            let report = publish::publish(&Repository::new(&repo), &keys, &request, now)?;
            if json {
                print_out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&report).expect("serialises")
                ));
            } else {
                let mut text = match &report.release {
                    Some(r) => format!(
                        "{}: release {} (server {}, opencode {}), targets version {}\n",
                        repo.display(),
                        r.sequence,
                        r.server,
                        r.opencode,
                        report.targets_version
                    ),
                    None => format!("{}: nothing new (already published)\n", repo.display()),
                };
                for file in &report.files {
                    text.push_str(&format!("  {} {} bytes\n", file.name, file.size));
                }
                text.push_str(&format!(
                    "  encoded in {:.1} s; repository {} bytes\n",
                    report.encode_seconds, report.repository_bytes
                ));
                print_out(&text);
            }
        }
        UpdateRepoCommand::Timestamp(RepoKeys { repo, keys }) => {
            let keys = KeysConfig::load(&keys)?;
            let version = publish::refresh_timestamp(&Repository::new(&repo), &keys, now)?;
            print_out(&format!(
                "{}: timestamp version {version}\n",
                repo.display()
            ));
        }
        UpdateRepoCommand::RotateRoot(RotateArgs {
            repo: RepoKeys { repo, keys },
            new_keys,
        }) => {
            let old = KeysConfig::load(&keys)?;
            let new = KeysConfig::load(&new_keys)?;
            let version = publish::rotate_root(&Repository::new(&repo), &old, &new, now)?;
            print_out(&format!("{}: root version {version}\n", repo.display()));
        }
        UpdateRepoCommand::Verify(VerifyArgs { repo, root, json }) => {
            let anchor = fs_err::read(&root).map_err(Error::Io)?;
            let releases = publish::verify(&Repository::new(&repo), &anchor, now)?;
            if json {
                print_out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&releases).expect("serialises")
                ));
            } else {
                let mut text = format!("{}: verified\n", repo.display());
                for r in &releases {
                    let files: Vec<String> = r
                        .files
                        .iter()
                        .map(|(kind, (count, bytes))| format!("{count} {kind} ({bytes} bytes)"))
                        .collect();
                    text.push_str(&format!(
                        "  release {} {} (server {}, opencode {}): {}\n",
                        r.release.sequence,
                        r.platform,
                        r.release.server,
                        r.release.opencode,
                        files.join(", ")
                    ));
                }
                print_out(&text);
            }
        }
    }
    Ok(())
}
