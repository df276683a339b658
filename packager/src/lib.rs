//! openwork-packager as a library: the release steps the `openwork-packager` CLI glues
//! together, callable from tests and benchmarks without a process.

pub mod fetch;
pub mod constants;
pub mod error;
pub mod inspect;
pub mod pack;

pub use error::{Error, ExitCode, Result};
