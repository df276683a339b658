//! Supervision of the sidecars (being written).

pub mod logs;
