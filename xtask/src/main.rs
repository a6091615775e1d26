//! Project automation: `cargo xtask setup|run|lab|test|bench`.
fn main() {}
