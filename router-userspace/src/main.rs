//! The `scope-router` command line.
fn main() {}
