//! Spawning sidecars so that none outlives the server (being written).
