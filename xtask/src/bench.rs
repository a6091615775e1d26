//! `cargo xtask bench`: benchmark scenarios, each a named step: `micro` (criterion
//! micro-benchmarks of router-userspace), `e2e` (scope-router against HAProxy+Lua,
//! HAProxy json_query and the bare backend in network namespaces, and on loopback; see
//! bench/e2e.rs) and
//! `heads` (memory held by clients stalled inside a request head; see bench/heads.rs).

use std::ffi::OsString;

use anyhow::{Result, bail};

mod cpus;
pub(crate) mod e2e;
mod heads;
mod netlab;
mod report;

use crate::exec;
use crate::progress::{banner, step};
use crate::setup::{self, Profile};
use crate::workspace;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Run only these scenarios (repeatable); default: all.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Extra arguments passed to each scenario (criterion filters/options for `micro`).
    #[arg(last = true)]
    pub args: Vec<OsString>,
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    run: fn(&[OsString]) -> Result<()>,
    /// What it needs installed.
    profile: Profile,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "micro",
        about: "criterion benchmarks of router-userspace (`cargo bench -p router-userspace`)",
        run: micro,
        profile: Profile::Build,
    },
    Scenario {
        name: "e2e",
        about: "scope-router vs HAProxy+Lua vs HAProxy json_query vs direct, in network namespaces (root) and on loopback",
        run: end_to_end,
        profile: Profile::Full,
    },
    Scenario {
        name: "heads",
        about: "memory held by clients stalled inside a request line, and kept after they close (loopback)",
        run: stalled_heads,
        profile: Profile::Build,
    },
];

pub fn run(opts: Options) -> Result<()> {
    if opts.list {
        for s in SCENARIOS {
            println!("{:<10} {}", s.name, s.about);
        }
        return Ok(());
    }
    let selected = select(&opts.scenarios)?;
    let profile = selected
        .iter()
        .map(|s| s.profile)
        .max()
        .unwrap_or(Profile::Build);
    setup::ensure(profile)?;
    for scenario in selected {
        let step = step(format!("bench {}: {}", scenario.name, scenario.about));
        (scenario.run)(&opts.args)?;
        step.done();
    }
    banner(
        "criterion keeps its reports under target/criterion/ (HTML in target/criterion/report/)",
    );
    Ok(())
}

fn select(names: &[String]) -> Result<Vec<&'static Scenario>> {
    if names.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|name| match SCENARIOS.iter().find(|s| s.name == name) {
            Some(s) => Ok(s),
            None => {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                bail!("no bench scenario `{name}`; known: {}", known.join(", "))
            }
        })
        .collect()
}

fn micro(args: &[OsString]) -> Result<()> {
    let mut cmd = workspace::cargo();
    cmd.args(["bench", "--package", "router-userspace"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    exec::exec(&mut cmd)
}

/// Arguments after `--` are the e2e options, e.g. `-- --only a,d --rounds 1`
/// (`cargo xtask bench --scenario e2e -- --help` lists them).
fn end_to_end(args: &[OsString]) -> Result<()> {
    #[derive(clap::Parser)]
    #[command(name = "cargo xtask bench --scenario e2e --")]
    struct Cli {
        #[command(flatten)]
        opts: e2e::Options,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once(OsString::from("e2e")).chain(args.iter().cloned()),
    )?;
    cli.opts.validate()?;
    let bin = crate::bolt::release_router(!cli.opts.no_bolt)?;
    e2e::run(&bin, &workspace::root().join("target/bench"), &cli.opts)
}

/// Arguments after `--` are the scenario's options, e.g. `-- --connections 1000`
/// (`cargo xtask bench --scenario heads -- --help` lists them).
fn stalled_heads(args: &[OsString]) -> Result<()> {
    #[derive(clap::Parser)]
    #[command(name = "cargo xtask bench --scenario heads --")]
    struct Cli {
        #[command(flatten)]
        opts: heads::Options,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once(OsString::from("heads")).chain(args.iter().cloned()),
    )?;
    let bin = match &cli.opts.router {
        Some(path) => path.clone(),
        None => {
            let bins = workspace::build_bins(true, &[("router-userspace", "scope-router")])?;
            let Some(bin) = bins.get("scope-router") else {
                bail!("cargo built no scope-router binary");
            };
            bin.clone()
        }
    };
    heads::run(&bin, &heads::out_dir(&workspace::root()), &cli.opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scenario_lists_known_ones() {
        let err = select(&["nope".to_owned()])
            .err()
            .expect("unknown name must fail");
        assert!(err.to_string().contains("known: micro"), "{err}");
    }

    #[test]
    fn default_is_every_scenario() {
        assert_eq!(
            select(&[]).expect("empty selects all").len(),
            SCENARIOS.len()
        );
    }
}
