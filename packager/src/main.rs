//! `openwork-packager`: parse, run, map errors to documented exit codes.
#![deny(clippy::disallowed_methods)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("openwork-packager: error: {err}");
            ExitCode::from(err.exit_code().code())
        }
    }
}
