//! `openwork-server-v2`: parse the command line, run, map errors to documented exit codes.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The watchdog the server starts for itself (see `process::Lifeline`): it must not
    // parse flags, log or touch the payload.
    #[cfg(unix)]
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            openwork_runtime::process::LIFELINE_ARG,
        ))
    {
        return openwork_runtime::process::lifeline_main();
    }
    let args = cli::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(code) => ExitCode::from(code.code()),
        Err(err) => {
            eprintln!("openwork-server-v2: error: {err}");
            ExitCode::from(err.exit_code().code())
        }
    }
}
