//! openwork-packager as a library: the release steps the `openwork-packager` CLI glues
//! together, callable from tests and benchmarks without a process.
#![deny(clippy::disallowed_methods)]

pub mod bun;
pub mod constants;
pub mod error;
pub mod fetch;
pub mod input_file;
pub mod inspect;
pub mod lock;
pub mod matrix;
pub mod pack;
pub mod paths;
mod progress;
pub mod release;
pub mod relock;
pub mod router;
pub mod stage;
pub mod stub;
pub mod update;
pub mod version;

pub use error::{Error, ExitCode, Result};
