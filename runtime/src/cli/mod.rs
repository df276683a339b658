//! The command line: clap types, converted into library calls. Nothing below `cli` is
//! part of the library.
//!
//! The environment is read here and nowhere else in the server. Every variable is declared
//! on the flag it stands in for (`env = …`), so clap parses it as strictly as the flag: a bad
//! value is a usage error (exit 2) that names the variable ([`parse`]). The exceptions are the
//! tokens ([`SECRET_ENV`]), which have no flag because a secret on a command line is visible
//! to every user in `ps`; and, outside the CLI, variables that are a contract between the
//! server and the processes it starts (the lifeline's and the test roles' role variable),
//! never settings.

mod remote_cmd;
mod runtime_cmd;

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use openwork_runtime::ExitCode;
use openwork_runtime::Result;
use openwork_runtime::env_vars;
use openwork_runtime::install::VerifyMode;
use openwork_runtime::remote::TlsMode;
use openwork_runtime::serve::token::GivenTokens;
use openwork_runtime::supervisor::Tuning;

/// The OpenWork server: one executable that carries and supervises opencode.
#[derive(Debug, Parser)]
#[command(name = "openwork-server-v2", version, about)]
pub struct Cli {
    /// Data directory (runtimes, logs, tokens) [default: the platform's app-data
    /// directory]
    #[arg(long, global = true, value_name = "DIR", env = env_vars::OPENWORK_DATA_DIR)]
    pub data_dir: Option<PathBuf>,
    /// Run the sidecars of this bundle directory (manifest.json + files) instead of the
    /// embedded payload
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = env_vars::OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR
    )]
    pub bundle_dir: Option<PathBuf>,
    /// Whether `bundle_dir` came from the environment (set by [`parse`]).
    #[arg(skip)]
    pub bundle_dir_from_env: bool,
    /// How much to check an existing runtime directory before using it
    #[arg(long, global = true, value_enum, default_value_t = VerifyArg::Fast)]
    pub verify: VerifyArg,
    /// Seconds to wait for another process extracting the same runtime
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value = "120",
        value_parser = parse_seconds,
        env = env_vars::OPENWORK_SERVER_V2_LOCK_TIMEOUT
    )]
    pub lock_timeout: Duration,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level on stderr
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "LEVEL",
        ignore_case = true,
        default_value_t = LogLevel::Info,
        env = env_vars::OPENWORK_LOG
    )]
    pub log_level: LogLevel,
    /// Serving flags, for running without the `serve` word.
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `serve` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --remote-access
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: String,
    /// Port to listen on (0 = any free port; the ready line tells which)
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub port: u16,
    /// Allow --host to be an address other machines can reach
    #[arg(long)]
    pub remote_access: bool,
    /// The workspace opencode works in; remembered, and it replaces a workspace switched
    /// over the API [default: the remembered workspace, else the current directory]
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// File holding the client token [default: OPENWORK_TOKEN, else a generated token
    /// kept in <data dir>/token]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Run this executable for a sidecar instead of the payload's (dev mode); NAME is
    /// opencode or opencode-router, PATH absolute
    #[arg(long = "sidecar", value_name = "NAME=PATH", value_parser = parse_sidecar)]
    pub sidecars: Vec<(String, PathBuf)>,
    /// Run opencode-router too (also on when <data dir>/opencode-router.json exists)
    #[arg(long)]
    pub router: bool,
    /// A browser origin allowed to call this server (repeatable, or comma separated; "*"
    /// for any)
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        value_delimiter = ',',
        env = env_vars::OPENWORK_CORS_ORIGINS
    )]
    pub cors_origins: Vec<String>,
    /// A host name requests may address besides localhost and loopback addresses, e.g. the
    /// name of a reverse proxy in front (repeatable); other names get 421
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// TLS: on every non-loopback bind (auto), also on loopback (on), or never (off: refused
    /// off loopback, exit 16)
    #[arg(long, value_enum, default_value_t = TlsArg::Auto)]
    pub tls: TlsArg,
    /// A PEM certificate (chain) to serve instead of the generated one; needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Do not advertise this server on the LAN over mDNS (it is, with --remote-access)
    #[arg(long)]
    pub no_mdns: bool,
    /// How long a pairing code stays valid, in milliseconds (for tests, which cannot wait
    /// five minutes to see a code expire)
    #[arg(
        long,
        hide = true,
        value_name = "MS",
        value_parser = parse_millis,
        env = env_vars::OPENWORK_SERVER_V2_PAIRING_TTL_MS
    )]
    pub pairing_ttl_ms: Option<Duration>,
    /// Certificate timings, `lifetime_ms=…,renew_before_ms=…,check_ms=…` (see
    /// `tls::Timings`; for tests, which cannot wait a year for a renewal)
    #[arg(long, hide = true, value_name = "KEY=MS,…", value_parser = parse_tls_timings)]
    pub tls_timings: Option<openwork_runtime::remote::tls::Timings>,
    /// Supervisor timings, `key=value,…` (see `Tuning::from_env_value`; for tests)
    #[arg(
        long,
        hide = true,
        value_name = "KEY=MS,…",
        value_parser = parse_tuning,
        env = env_vars::OPENWORK_SERVER_V2_SUPERVISOR
    )]
    pub supervisor_tuning: Option<Tuning>,
}

/// `--tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsArg {
    /// TLS on every non-loopback bind, plain HTTP on loopback
    Auto,
    /// TLS on loopback too
    On,
    /// Plain HTTP: refused on an address other machines can reach
    Off,
}

impl ServeArgs {
    /// Whether no serving flag was given (clap's `args_conflicts_with_subcommands` would
    /// also refuse the global flags before a subcommand, so the check is ours): equal to
    /// what clap makes of a bare command line, so the defaults live in the attributes only.
    fn is_default(&self) -> bool {
        let bare = command()
            .try_get_matches_from(["openwork-server-v2"])
            .and_then(|matches| Cli::from_arg_matches(&matches))
            .map(|cli| cli.serve);
        bare.is_ok_and(|defaults| *self == defaults)
    }
}

/// `--lock-timeout`: whole seconds.
fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse()
        .map(Duration::from_secs)
        .map_err(|_| "expected a whole number of seconds, e.g. 120".to_string())
}

/// `--pairing-ttl-ms`: whole milliseconds.
fn parse_millis(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| "expected a whole number of milliseconds, e.g. 300000".to_string())
}

/// `--tls-timings`.
fn parse_tls_timings(value: &str) -> Result<openwork_runtime::remote::tls::Timings, String> {
    openwork_runtime::remote::tls::Timings::from_flag_value(value).map_err(|e| {
        format!("{e} (expected key=milliseconds pairs separated by commas, e.g. lifetime_ms=30000,renew_before_ms=20000,check_ms=100)")
    })
}

/// `--supervisor-tuning`.
fn parse_tuning(value: &str) -> Result<Tuning, String> {
    Tuning::from_env_value(value).map_err(|e| {
        format!("{e} (expected key=milliseconds pairs separated by commas, e.g. backoff_initial_ms=50,crash_limit=3)")
    })
}

fn parse_sidecar(value: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not NAME=PATH (e.g. opencode=/abs/path/opencode)"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// How much to check before use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// Compare size, mtime and file identity with the completion stamp
    Fast,
    /// Also rehash every file
    Full,
}

/// Log levels (`OPENWORK_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only
    Error,
    /// Also warnings
    Warn,
    /// Also what the server does (the default)
    Info,
    /// Also details for debugging
    Debug,
    /// Everything
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> tracing::Level {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}

/// Subcommands.
// Parsed once per process: the size of the serve flags (larger with Windows paths) does
// not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given)
    Serve(ServeArgs),
    /// Inspect and manage the extracted runtime
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// The TLS certificate of remote access
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Ask the running server (of this data dir) for a pairing code; print it, the
    /// connection URL and a QR code of it
    Pair(JsonFlag),
    /// List openwork servers advertised on the LAN (mDNS)
    Discover(DiscoverArgs),
    /// Pair this computer with a server as a device, with the code its host shows; print
    /// this device's token and the server's proven certificate fingerprint
    Join(JoinArgs),
}

/// `join` flags.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The server: the URL `pair` prints on the host (openwork://…/pair?code=…), or
    /// host:port
    #[arg(value_name = "URL|HOST:PORT")]
    pub target: String,
    /// The pairing code [default: the URL's, else read from standard input]. On a command
    /// line other users of this computer can read it until it is used
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// What the host's device list will call this computer
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Pin this certificate fingerprint (64 hex digits of SHA-256) [default: the URL's,
    /// else the one the server shows, which the code then proves]
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `tls …` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a new self-signed certificate and key in the data dir (a running server
    /// presents it within a minute); the old key signs a statement that paired devices
    /// follow to the new certificate
    Rotate(RotateArgs),
    /// Print the data dir certificate's fingerprint (SHA-256)
    Show(JsonFlag),
}

/// `tls rotate` flags.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Write no statement and drop the kept ones: for a key that may have been stolen;
    /// every paired device must pair again
    #[arg(long)]
    pub forget: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `discover` flags.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// How long to listen for answers, in seconds
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub timeout: u64,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `runtime …` subcommands.
#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Show the payload source, manifest and runtime directory
    Info(JsonFlag),
    /// Rehash the payload and the extracted runtime; exit 4 if anything differs
    Verify(JsonFlag),
    /// Extract the runtime now (or check the existing one) and print its directory
    Extract(JsonFlag),
    /// Remove unused runtimes beyond the newest two, and abandoned temp directories
    Gc(JsonFlag),
    /// Print the runtime directory's path (without extracting)
    Path,
}

/// `--json`.
#[derive(Debug, clap::Args)]
pub struct JsonFlag {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Environment variables the CLI reads itself, without a flag: secrets, which must not be
/// given on a command line (every user sees it in `ps`). docs/RUNTIME.md lists them with
/// the variables the flags declare.
pub const SECRET_ENV: &[&str] = &[env_vars::OPENWORK_TOKEN, env_vars::OPENWORK_HOST_TOKEN];

/// The command line as clap sees it, with environment variables that are set but empty
/// (or blank) treated as unset, as they always were: `OPENWORK_DATA_DIR=` means "the
/// default", not "an empty path".
pub fn command() -> clap::Command {
    fn ignore_empty_env(mut command: clap::Command) -> clap::Command {
        let empty: Vec<clap::Id> = command
            .get_arguments()
            .filter(|arg| {
                arg.get_env()
                    .and_then(std::env::var_os)
                    .is_some_and(|value| value.to_string_lossy().trim().is_empty())
            })
            .map(|arg| arg.get_id().clone())
            .collect();
        for id in empty {
            command = command.mut_arg(id, |arg| arg.env(None::<&'static str>));
        }
        let names: Vec<String> = command
            .get_subcommands()
            .map(|sub| sub.get_name().to_string())
            .collect();
        for name in names {
            command = command.mut_subcommand(name, ignore_empty_env);
        }
        command
    }
    ignore_empty_env(Cli::command())
}

/// Parses the command line and the environment, or exits with clap's message and the usage
/// exit code (2). A bad value that came from an environment variable is said to have come
/// from there.
pub fn parse() -> Cli {
    let mut command = command();
    let matches = command
        .try_get_matches_from_mut(std::env::args_os())
        .unwrap_or_else(|e| name_env_source(e, &command).exit());
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    cli.bundle_dir_from_env = matches.value_source("bundle_dir") == Some(ValueSource::EnvVariable);
    cli
}

/// Adds a tip naming the environment variable to a bad-value error whose value came from it
/// (clap names only the flag).
fn name_env_source(mut error: clap::Error, command: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return error;
    }
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return error;
    };
    let mut commands = vec![command];
    let mut found = None;
    while let Some(command) = commands.pop() {
        commands.extend(command.get_subcommands());
        found = found.or_else(|| {
            command
                .get_arguments()
                .find(|arg| arg.to_string() == *flag)
                .and_then(|arg| Some((arg.get_long()?, arg.get_env()?)))
        });
    }
    let Some((long, name)) = found else {
        return error;
    };
    let on_command_line = std::env::args_os().any(|arg| {
        let arg = arg.to_string_lossy();
        arg.strip_prefix("--")
            .is_some_and(|rest| rest == long || rest.starts_with(&format!("{long}=")))
    });
    let from_env = std::env::var_os(name)
        .is_some_and(|v| v.to_string_lossy().split(',').any(|piece| piece == value));
    if from_env && !on_command_line {
        let tip = format!(
            "the value comes from the environment variable {}",
            name.to_string_lossy()
        );
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    error
}

/// Settings every command shares, resolved from flags and environment.
pub struct Settings {
    pub data_dir: Option<PathBuf>,
    pub bundle_dir: Option<(PathBuf, openwork_runtime::source::SourceKind)>,
    pub verify: VerifyMode,
    pub lock_timeout: Duration,
    /// `OPENWORK_TOKEN` and `OPENWORK_HOST_TOKEN` (see [`SECRET_ENV`]).
    pub tokens: GivenTokens,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Settings {
        use openwork_runtime::source::SourceKind;
        let Cli {
            data_dir,
            bundle_dir,
            bundle_dir_from_env,
            verify,
            lock_timeout,
            log_format: _,
            log_level: _,
            serve: _,
            command: _,
        } = cli;
        let bundle_kind = if *bundle_dir_from_env {
            SourceKind::BundleEnv
        } else {
            SourceKind::BundleFlag
        };
        Settings {
            data_dir: data_dir.clone(),
            bundle_dir: bundle_dir.clone().map(|d| (d, bundle_kind)),
            verify: match verify {
                VerifyArg::Fast => VerifyMode::Fast,
                VerifyArg::Full => VerifyMode::Full,
            },
            lock_timeout: *lock_timeout,
            tokens: GivenTokens {
                client: secret_env(env_vars::OPENWORK_TOKEN),
                host: secret_env(env_vars::OPENWORK_HOST_TOKEN),
            },
        }
    }
}

/// A secret from the environment ([`SECRET_ENV`]); unset, empty or blank is none.
fn secret_env(name: &str) -> Option<String> {
    debug_assert!(SECRET_ENV.contains(&name));
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Sets up logging to stderr.
pub fn init_logging(cli: &Cli) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::from(cli.log_level))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let settings = Settings::from_cli(&cli);
    if cli.command.is_some() && !cli.serve.is_default() {
        return Err(openwork_runtime::Error::Usage(
            "serving flags (--host, --port, --workspace, …) go after `serve`, or without a subcommand".into(),
        ));
    }
    match cli.command {
        Some(Command::Runtime(command)) => runtime_cmd::run(command, &settings),
        Some(Command::Tls(command)) => remote_cmd::tls(command, &settings),
        Some(Command::Pair(flags)) => remote_cmd::pair(flags.json, &settings),
        Some(Command::Discover(args)) => remote_cmd::discover(args.timeout, args.json),
        Some(Command::Join(args)) => remote_cmd::join(args),
        Some(Command::Serve(args)) => serve(args, settings),
        None => serve(cli.serve, settings),
    }
}

fn serve(args: ServeArgs, settings: Settings) -> Result<ExitCode> {
    let prepare = runtime_cmd::prepare_options(&settings);
    // Destructured whole: a new flag nobody handles does not compile.
    let ServeArgs {
        host,
        port,
        remote_access,
        workspace,
        token_file,
        sidecars,
        router,
        cors_origins,
        allowed_hosts,
        tls,
        tls_cert,
        tls_key,
        no_mdns,
        pairing_ttl_ms,
        tls_timings,
        supervisor_tuning,
    } = args;
    // Comma separated in OPENWORK_CORS_ORIGINS, which may have spaces and empty pieces.
    let cors_origins = cors_origins
        .iter()
        .map(|origin| origin.trim().to_string())
        .filter(|origin| !origin.is_empty())
        .collect();
    openwork_runtime::serve::run(openwork_runtime::serve::ServeOptions {
        host,
        port,
        remote_access,
        workspace,
        token_file,
        sidecars,
        router,
        cors_origins,
        allowed_hosts,
        data_dir: settings.data_dir,
        bundle_dir: settings.bundle_dir,
        prepare,
        tls: match tls {
            TlsArg::Auto => TlsMode::Auto,
            TlsArg::On => TlsMode::On,
            TlsArg::Off => TlsMode::Off,
        },
        tls_files: tls_cert.zip(tls_key),
        mdns: !no_mdns,
        tls_timings: tls_timings.unwrap_or_default(),
        tokens: settings.tokens,
        pairing_ttl: pairing_ttl_ms.unwrap_or(openwork_runtime::remote::pairing::CODE_TTL),
        tuning: supervisor_tuning.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every environment variable a flag of `command` (or of its subcommands) stands in for.
    fn declared_env(command: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env() {
                into.insert(name.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            declared_env(sub, into);
        }
    }

    /// docs/RUNTIME.md's environment table, `env_vars::ALL`, and what the CLI reads (the
    /// flags' `env = …` and `SECRET_ENV`) are the same list.
    #[test]
    fn the_environment_table_is_what_the_cli_reads() {
        let mut read = BTreeSet::new();
        declared_env(&Cli::command(), &mut read);
        let secrets: BTreeSet<String> = SECRET_ENV.iter().map(|s| s.to_string()).collect();
        assert!(
            read.is_disjoint(&secrets),
            "a secret has a flag: {read:?} {secrets:?}"
        );
        read.extend(secrets);

        let listed: BTreeSet<String> = env_vars::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            listed.len(),
            env_vars::ALL.len(),
            "env_vars::ALL repeats a name"
        );
        assert_eq!(
            read, listed,
            "read by the CLI (left) and env_vars::ALL (right) differ"
        );

        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/RUNTIME.md"),
        )
        .unwrap();
        let section = docs
            .split("\n## Environment\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/RUNTIME.md has an Environment section");
        let documented: BTreeSet<String> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(
            documented, read,
            "docs/RUNTIME.md's environment table (left) and what the CLI reads (right) differ"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
