//! `openwork-signer`: signs, verifies and notarizes openwork-server-v2 artifacts.
//!
//! Exit codes are the table every openwork binary shares ([`openwork_payload::ExitCode`],
//! docs/RUNTIME.md): 1 signing failed, 2 usage, 4 a signature or layout that does not
//! verify, 7 a file could not be read or written, 9 not a file this command handles, 10 a
//! bad signing configuration, 11 a time-stamp authority or the notary service failed, 14
//! credentials (a missing secret, a wrong password, a key that is not the certificate's).
#![deny(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use openwork_signer::config::{NotarizerKind, SigningConfig};
use openwork_signer::entitlements::Role;
use openwork_signer::error::ConfigError;
use openwork_signer::notarize::{self, Notarizer, NotaryTool, Submission};
use openwork_signer::notary_api::{NotaryApi, ReqwestTransport};
use openwork_signer::secret_file;
use openwork_signer::sign::{Signers, notary_key, redactor};
use openwork_signer::verify::{VerifyPolicy, verify};
use openwork_signer::{Error, key};

#[derive(Parser)]
#[command(
    name = "openwork-signer",
    version,
    about = "Sign, verify and notarize openwork-server-v2 artifacts (docs/SIGNING.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign files in place as a signing configuration says (PE: Authenticode, Mach-O:
    /// codesign), or one Mach-O ad hoc with --adhoc
    Sign {
        /// The signing configuration (TOML; secrets by reference)
        #[arg(long, value_name = "CONFIG", required_unless_present = "adhoc")]
        config: Option<PathBuf>,
        /// What the files are: the server stub, or a Bun-compiled sidecar (which needs
        /// the JIT entitlements on macOS)
        #[arg(long, value_enum, default_value_t = RoleArg::Stub)]
        role: RoleArg,
        /// Ad-hoc Mach-O signature: a code directory without a certificate
        #[arg(long, conflicts_with = "config", requires = "out")]
        adhoc: bool,
        /// With --adhoc: where to write the signed file (may be the input)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// With --adhoc: the code signing identifier [default: the file name]
        #[arg(long)]
        identifier: Option<String>,
        /// The files
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Verify a file's signature (and the payload inside it, if any)
    Verify {
        /// The file
        file: PathBuf,
        /// Trusted code-signing root(s), PEM or DER; without: the chain the signature
        /// carries is checked for integrity only
        #[arg(long = "ca", value_name = "PEM")]
        roots: Vec<PathBuf>,
        /// Trusted time-stamping root(s), PEM or DER
        #[arg(long = "tsa-ca", value_name = "PEM")]
        tsa_roots: Vec<PathBuf>,
        /// Fail without an RFC 3161 / secure time stamp
        #[arg(long)]
        require_timestamp: bool,
        /// Fail for an unsigned or ad-hoc signed file
        #[arg(long)]
        require_signature: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Submit a signed Mach-O (zipped) or a .zip/.dmg/.pkg to Apple's notary service with
    /// the [notarize] key of a signing configuration, and wait for the verdict
    Notarize {
        /// The file
        file: PathBuf,
        /// The signing configuration
        #[arg(long, value_name = "CONFIG")]
        config: PathBuf,
        /// The client: `api` (Apple's Notary REST API, any OS) or `notarytool` (`xcrun
        /// notarytool`, macOS) [default: [notarize] notarizer, else notarytool on macOS and
        /// api elsewhere]
        #[arg(long, value_enum)]
        notarizer: Option<NotarizerArg>,
    },
    /// Print an executable's format, architecture and whether it is signed
    Identify {
        /// The executable
        file: PathBuf,
        /// Print JSON instead of a sentence
        #[arg(long)]
        json: bool,
    },
    /// Check that a Mach-O ends with __LINKEDIT and its signature, with nothing after
    CheckLayout {
        /// The Mach-O file
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NotarizerArg {
    Api,
    Notarytool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Stub,
    BunSidecar,
}

fn main() -> ExitCode {
    tracing_subscriber_init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openwork-signer: {e}");
            ExitCode::from(Error::exit_code(&e).code())
        }
    }
}

/// Warnings (a platform skipped for missing secrets) go to stderr as plain lines.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .with_target(false)
        .with_ansi(false)
        .without_time()
        .init();
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Sign {
            config,
            role,
            adhoc,
            out,
            identifier,
            files,
        } => {
            if adhoc {
                let [file] = files.as_slice() else {
                    return Err(ConfigError::AdhocOneFile.into());
                };
                let out = out.expect("clap requires --out with --adhoc");
                return openwork_signer::sign_adhoc_file(file, &out, identifier.as_deref());
            }
            let config = SigningConfig::load(&config.expect("clap requires --config"))?;
            let signers = Signers::load(&config)?;
            let role = match role {
                RoleArg::Stub => Role::Stub,
                RoleArg::BunSidecar => Role::BunSidecar,
            };
            for file in &files {
                let outcome = signers.sign_file(file, role)?;
                match (&outcome.signer, &outcome.note) {
                    (Some(signer), _) => {
                        println!("{}: {} by {signer}", file.display(), outcome.action)
                    }
                    (None, Some(note)) => {
                        println!("{}: {}: {note}", file.display(), outcome.action)
                    }
                    (None, None) => println!("{}: {}", file.display(), outcome.action),
                }
            }
            Ok(())
        }
        Command::Verify {
            file,
            roots,
            tsa_roots,
            require_timestamp,
            require_signature,
            json,
        } => {
            let policy = VerifyPolicy {
                roots: read_certificates(&roots)?,
                tsa_roots: read_certificates(&tsa_roots)?,
                require_timestamp,
                require_signature,
            };
            let verification = verify(&fs_err::read(&file)?, &policy)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&verification).expect("serialises")
                );
            } else {
                let what = match verification.signature {
                    "none" => "no signature (ELF: SHA256SUMS vouches for it)".to_string(),
                    kind => format!("{kind} signature verified"),
                };
                println!(
                    "{}: {what}{}{}{}{}",
                    file.display(),
                    verification
                        .signer
                        .as_ref()
                        .map(|s| format!(", signer {s}"))
                        .unwrap_or_default(),
                    verification
                        .timestamp
                        .as_ref()
                        .map(|t| format!(", time-stamped {t}"))
                        .unwrap_or_default(),
                    if verification.chain_checked || verification.signer.is_none() {
                        ""
                    } else {
                        " (chain not checked against a trusted root: give --ca)"
                    },
                    verification
                        .payload_files
                        .map(|n| format!("; payload verified ({n} files in its manifest)"))
                        .unwrap_or_default(),
                );
            }
            Ok(())
        }
        Command::Notarize {
            file,
            config,
            notarizer,
        } => {
            // A key file a killed run left behind goes first.
            let temp_dir = std::env::temp_dir();
            secret_file::sweep(&temp_dir);
            let config = SigningConfig::load(&config)?;
            let Some(credentials) = notary_key(&config)? else {
                println!(
                    "{}: not notarized: the [notarize] secrets are missing and \
                     on-missing-secret = \"skip\"",
                    file.display()
                );
                return Ok(());
            };
            notarize::preflight(&file)?;
            let work = tempfile::tempdir()?;
            let submission = Submission::from_file(&file, work.path())?;
            let kind = match notarizer {
                Some(NotarizerArg::Api) => NotarizerKind::Api,
                Some(NotarizerArg::Notarytool) => NotarizerKind::Notarytool,
                None => config
                    .notarize
                    .as_ref()
                    .and_then(|n| n.notarizer)
                    .unwrap_or_else(NotarizerKind::platform_default),
            };
            let redactor = redactor(&config)?;
            let outcome = match kind {
                NotarizerKind::Notarytool => {
                    // notarytool reads the key only from a file: written owner-only, removed
                    // on return and on SIGINT/SIGTERM (swept by the next run after SIGKILL).
                    let (_key_file, key) = credentials.write_key_file(&temp_dir)?;
                    NotaryTool::new(key)
                        .redacting(redactor)
                        .submit(&submission)?
                }
                // The key stays in memory.
                NotarizerKind::Api => NotaryApi::new(
                    credentials,
                    ReqwestTransport::new(std::time::Duration::from_secs(30 * 60))?,
                )
                .redacting(&redactor)
                .submit(&submission)?,
            };
            println!(
                "{}: notarized (submission {}){}",
                file.display(),
                outcome.id,
                if outcome.stapleable {
                    ""
                } else {
                    "; a bare executable cannot be stapled: Gatekeeper looks the ticket up online"
                }
            );
            Ok(())
        }
        Command::Identify { file, json } => {
            let identity = openwork_signer::identify(&fs_err::read(file)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&identity).expect("identity serialises")
                );
            } else {
                println!("{identity}");
            }
            Ok(())
        }
        Command::CheckLayout { file } => openwork_signer::check_macho_layout(&fs_err::read(file)?),
    }
}

fn read_certificates(
    paths: &[PathBuf],
) -> Result<Vec<x509_certificate::CapturedX509Certificate>, Error> {
    let mut all = Vec::new();
    for path in paths {
        let data = fs_err::read(path)?;
        all.extend(key::pem::parse_certificates(&data).map_err(|e| in_file(e, path))?);
    }
    Ok(all)
}

fn in_file(error: Error, path: &Path) -> Error {
    match error {
        Error::Credentials(source) => ConfigError::Certificates {
            whose: path.display().to_string(),
            source: Box::new(source),
        }
        .into(),
        other => other,
    }
}
