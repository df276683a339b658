//! A sidecar whose behaviour tests set (being written).
fn main() {}
