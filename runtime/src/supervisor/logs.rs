//! Sidecar output capture (being written).
