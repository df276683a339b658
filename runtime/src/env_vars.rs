//! Every environment variable the runtime reads, in one place. docs/RUNTIME.md lists them.
//! Only the command line (`src/cli/`) reads them: each is declared there on the flag it
//! stands in for, or is a secret the CLI reads itself (`cli::SECRET_ENV`); a test checks
//! this list, those declarations and the docs against each other.

/// Overrides the data directory (default: the platform's app-data dir + `openwork-server-v2`).
pub const OPENWORK_DATA_DIR: &str = "OPENWORK_DATA_DIR";
/// A bundle directory (`manifest.json` + files) to run instead of the embedded payload.
pub const OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR: &str = "OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR";
/// Seconds to wait for another process's extraction before giving up (default 120).
pub const OPENWORK_SERVER_V2_LOCK_TIMEOUT: &str = "OPENWORK_SERVER_V2_LOCK_TIMEOUT";
/// Log filter: `error`, `warn`, `info` (default), `debug`, `trace`.
pub const OPENWORK_LOG: &str = "OPENWORK_LOG";
/// The client token (instead of `--token-file`).
pub const OPENWORK_TOKEN: &str = "OPENWORK_TOKEN";
/// The host token, for privileged routes (shutdown, restarts).
pub const OPENWORK_HOST_TOKEN: &str = "OPENWORK_HOST_TOKEN";
/// Supervisor timings, `key=value,…` (see `Tuning::from_env_value`); for tests.
pub const OPENWORK_SERVER_V2_SUPERVISOR: &str = "OPENWORK_SERVER_V2_SUPERVISOR";
/// Origins allowed to call the server from a browser, comma separated (instead of
/// `--cors-origin`).
pub const OPENWORK_CORS_ORIGINS: &str = "OPENWORK_CORS_ORIGINS";
/// How long a pairing code stays valid, in milliseconds (default 300000: five minutes); for
/// tests, which cannot wait five minutes to see a code expire.
pub const OPENWORK_SERVER_V2_PAIRING_TTL_MS: &str = "OPENWORK_SERVER_V2_PAIRING_TTL_MS";

/// All of the above.
pub const ALL: &[&str] = &[
    OPENWORK_DATA_DIR,
    OPENWORK_SERVER_V2_RUNTIME_BUNDLE_DIR,
    OPENWORK_SERVER_V2_LOCK_TIMEOUT,
    OPENWORK_LOG,
    OPENWORK_TOKEN,
    OPENWORK_HOST_TOKEN,
    OPENWORK_SERVER_V2_SUPERVISOR,
    OPENWORK_CORS_ORIGINS,
    OPENWORK_SERVER_V2_PAIRING_TTL_MS,
];
