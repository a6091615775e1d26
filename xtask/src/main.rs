//! Project automation: `cargo xtask setup|test|run|install|lab|soak|bench|fuzz` (see README.md).

mod bench;
mod bolt;
mod exec;
mod fuzz;
mod install;
mod interrupt;
mod lab;
mod netns;
mod progress;
mod run;
mod setup;
mod soak;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "scope-router project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install what building and testing needs (Debian packages, nightly + rust-src,
    /// bpf-linker, bpffs); every step skips when already satisfied.
    Setup {
        /// `build`: the toolchain and bpffs only (a node that runs the router: the
        /// Vagrantfile's provisioning); `full` adds the test and benchmark tools.
        #[arg(long, value_enum, default_value = "full")]
        profile: setup::Profile,
    },
    /// The full test run: setup, fmt, clippy, tests, and the privileged suites as root.
    Test(test::Options),
    /// Build scope-router (release) and run it as root: `cargo xtask run -- run --config F`.
    Run(run::Options),
    /// Build scope-router (release) and install it as a systemd service: binary, unit and
    /// one region's config (`--region RegionOne`); idempotent, keeps edited configs.
    Install(install::Options),
    /// A two-region lab in network namespaces: routers, echo backends, scoped requests.
    Lab(lab::Options),
    /// The lab with two routers per region under good and hostile traffic, backend faults,
    /// reloads, a zero-downtime restart and a VRRP failover at once: fails unless every
    /// good request succeeded or failed as allowed, memory and fds came back to baseline
    /// and no router crashed; writes target/soak/report.md.
    Soak(soak::Options),
    /// Benchmarks.
    Bench(bench::Options),
    /// The cargo-fuzz targets (fuzz/), one after the other, each bounded by time: prints
    /// executions and crashes per target, fails on a crash naming the input.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    let result = match cli.command {
        Cmd::Setup { profile } => setup::run(profile),
        Cmd::Test(opts) => test::run(opts),
        Cmd::Run(opts) => run::run(opts),
        Cmd::Install(opts) => install::run(opts),
        Cmd::Lab(opts) => lab::run(opts),
        Cmd::Soak(opts) => soak::run(opts),
        Cmd::Bench(opts) => bench::run(opts),
        Cmd::Fuzz(opts) => fuzz::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
