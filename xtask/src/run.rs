//! `cargo xtask run -- <scope-router args>`: the operator's flow on the VM. Sets up what
//! is missing, builds scope-router in release mode and runs it as root (through `sudo`
//! for exactly that command when not root).

use std::ffi::OsString;

use anyhow::Result;

use crate::exec::{self, as_root};
use crate::progress::step;
use crate::setup::{self, Profile};
use crate::workspace;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Build without optimisations (faster to build, slower to run).
    #[arg(long)]
    pub debug: bool,
    /// Arguments for scope-router, e.g. `run --config config/RegionOne.toml`.
    #[arg(last = true, required = true)]
    pub args: Vec<OsString>,
}

pub fn run(opts: Options) -> Result<()> {
    setup::ensure(Profile::Build)?;
    let build = step(if opts.debug {
        "build scope-router (debug)"
    } else {
        "build scope-router (release)"
    });
    let bins = workspace::build_bins(!opts.debug, &[("router-userspace", "scope-router")])?;
    build.done();

    let router = bins
        .get("scope-router")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !exec::is_root() {
        eprintln!("note: scope-router manages the VIP and loads eBPF: running it with sudo");
    }
    let mut cmd = as_root(&router);
    // Relative config paths in the arguments are relative to where the operator stands.
    cmd.args(&opts.args);
    // Ctrl-C reaches the router too (same process group); xtask only waits for it to
    // finish its graceful shutdown.
    exec::exec(&mut cmd)
}
