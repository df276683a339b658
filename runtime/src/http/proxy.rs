//! Reverse proxy to opencode (being written).
