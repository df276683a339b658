//! `openwork-server-v2`: parse the command line, run, map errors to documented exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(code) => ExitCode::from(code.code()),
        Err(err) => {
            eprintln!("openwork-server-v2: error: {err}");
            ExitCode::from(err.exit_code().code())
        }
    }
}
