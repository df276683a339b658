//! `openwork-signer`: signs and inspects openwork-server-v2 artifacts.
//!
//! Exit codes are the table every openwork binary shares ([`openwork_payload::ExitCode`],
//! docs/RUNTIME.md): 1 signing failed, 2 usage, 4 a layout that would lose or hide data, or
//! a signature that does not match, 7 a file could not be read or written, 9 not a file
//! this command handles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use openwork_signer::Error;

#[derive(Parser)]
#[command(
    name = "openwork-signer",
    version,
    about = "Sign and inspect openwork-server-v2 artifacts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign a Mach-O executable (only ad-hoc signing so far).
    Sign {
        /// Ad-hoc signature: a code directory without a certificate.
        #[arg(long, required = true)]
        adhoc: bool,
        /// The file to sign.
        input: PathBuf,
        /// Where to write the signed file (may be the input).
        #[arg(long)]
        out: PathBuf,
        /// Code signing identifier; defaults to the input's file name.
        #[arg(long)]
        identifier: Option<String>,
    },
    /// Print an executable's format, architecture and whether it is signed.
    Identify {
        /// The executable.
        file: PathBuf,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Verify a signed Mach-O: layout, and every page digest (ad-hoc signatures pass).
    Verify {
        /// The Mach-O file.
        file: PathBuf,
    },
    /// Check that a Mach-O ends with __LINKEDIT and its signature, with nothing after.
    CheckLayout {
        /// The Mach-O file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openwork-signer: {e}");
            ExitCode::from(Error::exit_code(&e).code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Sign {
            adhoc,
            input,
            out,
            identifier,
        } => {
            debug_assert!(adhoc, "clap requires --adhoc");
            openwork_signer::sign_adhoc_file(&input, &out, identifier.as_deref())
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
        Command::Verify { file } => openwork_signer::verify(&fs_err::read(file)?),
        Command::CheckLayout { file } => openwork_signer::check_macho_layout(&fs_err::read(file)?),
    }
}
