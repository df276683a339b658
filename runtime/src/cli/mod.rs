//! The command line: clap types, converted into library calls. Nothing below `cli` is
//! part of the library.

mod remote_cmd;
mod runtime_cmd;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use openwork_runtime::ExitCode;
use openwork_runtime::Result;
use openwork_runtime::env_vars;
use openwork_runtime::install::VerifyMode;
use openwork_runtime::remote::TlsMode;

/// The OpenWork server: one executable that carries and supervises opencode.
#[derive(Debug, Parser)]
#[command(name = "openwork-server-v2", version, about)]
pub struct Cli {
    /// Data directory (runtimes, logs, tokens) [env: OPENWORK_DATA_DIR; default: the
    /// platform's app-data directory]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run the sidecars of this bundle directory (manifest.json + files) instead of the
    /// embedded payload [env: OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// How much to check an existing runtime directory before using it
    #[arg(long, global = true, value_enum, default_value_t = VerifyArg::Fast)]
    pub verify: VerifyArg,
    /// Seconds to wait for another process extracting the same runtime
    /// [env: OPENWORK_SERVER_V2_LOCK_TIMEOUT; default: 120]
    #[arg(long, global = true, value_name = "SECS")]
    pub lock_timeout: Option<u64>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// A browser origin allowed to call this server (repeatable; "*" for any)
    /// [env: OPENWORK_CORS_ORIGINS, comma separated]
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
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
        let bare = Cli::try_parse_from(["openwork-server-v2"]).map(|cli| cli.serve);
        bare.is_ok_and(|defaults| *self == defaults)
    }
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
}

/// `tls …` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a new self-signed certificate and key in the data dir (used from the next
    /// start; paired devices must be given the new fingerprint)
    Rotate(JsonFlag),
    /// Print the data dir certificate's fingerprint (SHA-256)
    Show(JsonFlag),
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

/// Settings every command shares, resolved from flags and environment.
pub struct Settings {
    pub data_dir: Option<PathBuf>,
    pub bundle_dir: Option<(PathBuf, openwork_runtime::source::SourceKind)>,
    pub verify: VerifyMode,
    pub lock_timeout: Duration,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Settings {
        use openwork_runtime::source::SourceKind;
        let Cli {
            data_dir,
            bundle_dir,
            verify,
            lock_timeout,
            log_format: _,
            serve: _,
            command: _,
        } = cli;
        let env_bundle = std::env::var_os(env_vars::OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR)
            .filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), SourceKind::BundleEnv));
        let lock_timeout = lock_timeout
            .or_else(|| {
                std::env::var(env_vars::OPENWORK_SERVER_V2_LOCK_TIMEOUT)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(120);
        Settings {
            data_dir: data_dir.clone(),
            bundle_dir: bundle_dir
                .clone()
                .map(|d| (d, SourceKind::BundleFlag))
                .or(env_bundle),
            verify: match verify {
                VerifyArg::Fast => VerifyMode::Fast,
                VerifyArg::Full => VerifyMode::Full,
            },
            lock_timeout: Duration::from_secs(lock_timeout),
        }
    }
}

/// Sets up logging to stderr.
pub fn init_logging(cli: &Cli) {
    let level = std::env::var(env_vars::OPENWORK_LOG)
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
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
        Some(Command::Serve(args)) => serve(args, settings),
        None => serve(cli.serve, settings),
    }
}

fn serve(args: ServeArgs, settings: Settings) -> Result<ExitCode> {
    let mut cors_origins = args.cors_origins;
    if cors_origins.is_empty()
        && let Ok(list) = std::env::var(env_vars::OPENWORK_CORS_ORIGINS)
    {
        cors_origins = list
            .split(',')
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
    }
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
        cors_origins: _,
        allowed_hosts,
        tls,
        tls_cert,
        tls_key,
        no_mdns,
    } = args;
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
    })
}
