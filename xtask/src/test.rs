//! `cargo xtask test`: THE test command (README, .ci/run). Sets up what is missing, then
//! formatting, clippy, a short fuzz smoke (every fuzz target, bounded), the unprivileged
//! tests, the privileged suites (test files `privileged_*.rs` of the tests crate and of
//! router-userspace) as root, and last a short soak (`cargo xtask soak` for
//! `soak::CI_DURATION`) as root. Output ends with the soak's summary and verdict.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::fuzz;
use crate::progress::{banner, elapsed, loud, step};
use crate::setup::{self, Profile};
use crate::soak;
use crate::workspace;

/// Test targets whose name starts with this need root (netns, veth, XDP, sk_lookup,
/// VIP). They are selected by target, not by test-function name, so every test in such
/// a file runs as root and none of them runs unprivileged.
pub const PRIVILEGED_PREFIX: &str = "privileged_";

/// A package whose integration-test files are split into privileged and unprivileged.
#[derive(Debug, Clone, Copy)]
struct Split {
    name: &'static str,
    /// Run its doctests in the unprivileged pass (cargo cannot mix `--doc` with
    /// `--test`, so they get their own invocation).
    doc: bool,
}

/// Every package that may hold `tests/privileged_*.rs`: the tests crate (library-level
/// suites) and router-userspace, whose end-to-end suite needs `CARGO_BIN_EXE_scope-router`
/// and so must live beside the binary. router-userspace's doctests run here; the tests
/// crate has none (the netns guard's `no_run` sketch is test-support's, compiled with the
/// rest of the workspace).
const SPLIT: &[Split] = &[
    Split {
        name: "router-userspace",
        doc: true,
    },
    Split {
        name: "integration-tests",
        doc: false,
    },
];

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop; CI never skips).
    #[arg(long)]
    pub no_lint: bool,
}

/// How the privileged suites will run on this machine.
#[derive(Debug, PartialEq, Eq)]
enum Privileged {
    /// Already root: a plain cargo invocation.
    Direct,
    /// Not root: cargo builds as the user and runs the test binaries via `sudo -E`.
    Sudo,
    /// Not root and no sudo, outside CI: skipped loudly.
    Skip,
    /// Not root and no sudo, in CI: an error, CI must not silently skip.
    Fail,
}

fn privileged_plan(root: bool, sudo: bool, ci: bool) -> Privileged {
    match (root, sudo, ci) {
        (true, _, _) => Privileged::Direct,
        (false, true, _) => Privileged::Sudo,
        (false, false, false) => Privileged::Skip,
        (false, false, true) => Privileged::Fail,
    }
}

fn in_ci() -> bool {
    test_support::ci::enabled()
}

pub fn run(opts: Options) -> Result<()> {
    let started = std::time::Instant::now();
    let sudo_available = exec::probe(Command::new("sudo").arg("--version")).is_some();
    let plan = privileged_plan(exec::is_root(), sudo_available, in_ci());
    if plan == Privileged::Fail {
        bail!(
            "CI=true but not root and no sudo: the privileged suites (netns, XDP, \
             sk_lookup, VIP) cannot run; run `cargo xtask test` as root"
        );
    }

    setup::run(Profile::Full)?;

    if opts.no_lint {
        if in_ci() {
            bail!("--no-lint is for local loops; CI runs every check");
        }
    } else {
        let fmt = step("cargo fmt --check");
        exec::exec(workspace::cargo().args(["fmt", "--all", "--", "--check"]))?;
        fmt.done();

        let clippy = step("cargo clippy (warnings are errors)");
        exec::exec(workspace::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        clippy.done();
    }

    // Before the test runs, so that cargo's summary stays the last output. Bounded: every
    // target for fuzz::SMOKE_SECONDS, failing on a crash with the input that caused it.
    banner(&format!(
        "==> fuzz smoke: each target for {}s ({} so far)",
        fuzz::SMOKE_SECONDS,
        elapsed(started.elapsed())
    ));
    fuzz::smoke()?;

    let mut privileged: Vec<(&str, String)> = Vec::new();
    let mut unprivileged: Vec<(Split, Vec<String>)> = Vec::new();
    for split in SPLIT {
        let (root, user) = split_targets(workspace::test_targets(split.name)?);
        privileged.extend(root.into_iter().map(|t| (split.name, t)));
        unprivileged.push((*split, user));
    }
    // Warnings come before the test runs, so that they do not scroll by unseen.
    if plan == Privileged::Skip {
        loud(&[
            "SKIPPING the privileged suites (netns, XDP, sk_lookup, VIP) and the soak:",
            "not root and no sudo. Run `cargo xtask test` as root to include them.",
        ]);
    } else if privileged.is_empty() {
        loud(&[&format!(
            "no privileged suites found (tests/{PRIVILEGED_PREFIX}*.rs in {})",
            SPLIT.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        )]);
    }

    // Test runs get a banner with the time so far but no trailer: cargo's own summary
    // lines stay the last of each run.
    let so_far = || elapsed(started.elapsed());
    banner(&format!(
        "==> cargo test: every package but {} ({} so far)",
        SPLIT.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        so_far()
    ));
    exec::exec(&mut rest_command())?;

    for (split, targets) in &unprivileged {
        banner(&format!(
            "==> cargo test: {}, unprivileged suites ({} so far)",
            split.name,
            so_far()
        ));
        exec::exec(&mut unprivileged_command(split.name, targets))?;
        if split.doc {
            exec::exec(workspace::cargo().args(["test", "--package", split.name, "--doc"]))?;
        }
    }

    if matches!(plan, Privileged::Direct | Privileged::Sudo) && !privileged.is_empty() {
        banner(&format!(
            "==> cargo test: privileged suites as root: {} ({} so far)",
            privileged
                .iter()
                .map(|(p, t)| format!("{p}/{t}"))
                .collect::<Vec<_>>()
                .join(" "),
            so_far()
        ));
        exec::exec(&mut privileged_command(&plan, &privileged)?)?;
    }

    // Last: it needs the routers and backends the suites above test, and it is the
    // longest step that can fail for the router's sake. Bounded by its duration.
    match plan {
        Privileged::Direct => {
            banner(&format!(
                "==> soak: {} of faults and hostile clients in the lab ({} so far)",
                elapsed(soak::CI_DURATION),
                so_far()
            ));
            soak::ci()?;
        }
        Privileged::Sudo => {
            banner(&format!(
                "==> soak as root: {} of faults and hostile clients in the lab ({} so far)",
                elapsed(soak::CI_DURATION),
                so_far()
            ));
            // Built as the user, run as root: cargo never writes root-owned files.
            let mut built = workspace::build_bins(false, &[("integration-tests", "echo-backend")])?;
            built.insert("scope-router".into(), crate::bolt::release_router(true)?);
            exec::exec(&mut soak_command(&built)?)?;
        }
        Privileged::Skip | Privileged::Fail => {}
    }
    Ok(())
}

/// `sudo -E <this xtask> soak` for the CI duration, with the binaries built as the user.
fn soak_command(built: &std::collections::BTreeMap<String, std::path::PathBuf>) -> Result<Command> {
    let bin = |name: &str| {
        built
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("cargo did not build {name}"))
    };
    let mut cmd = Command::new("sudo");
    cmd.arg("-E")
        .arg(std::env::current_exe().context("locating the running xtask")?)
        .arg("soak")
        .arg("--bolt")
        .arg("--duration")
        .arg(format!("{}s", soak::CI_DURATION.as_secs()))
        .arg("--router-bin")
        .arg(bin("scope-router")?)
        .arg("--echo-bin")
        .arg(bin("echo-backend")?);
    Ok(cmd)
}

/// Every package whose tests are not split, in one invocation.
fn rest_command() -> Command {
    let mut cmd = workspace::cargo();
    cmd.args(["test", "--workspace"]);
    for split in SPLIT {
        cmd.args(["--exclude", split.name]);
    }
    cmd
}

/// (privileged, unprivileged) test targets.
fn split_targets(targets: Vec<String>) -> (Vec<String>, Vec<String>) {
    targets
        .into_iter()
        .partition(|t| t.starts_with(PRIVILEGED_PREFIX))
}

fn unprivileged_command(package: &str, targets: &[String]) -> Command {
    let mut cmd = workspace::cargo();
    cmd.args(["test", "--package", package, "--lib", "--bins"]);
    for target in targets {
        cmd.args(["--test", target]);
    }
    cmd
}

/// One cargo invocation for every privileged target: cargo applies each `--test` to
/// whichever selected package has it.
fn privileged_command(plan: &Privileged, targets: &[(&str, String)]) -> Result<Command> {
    let mut cmd = workspace::cargo();
    if *plan == Privileged::Sudo {
        // Only the test binaries run as root: cargo builds as the user, so target/ never
        // fills with root-owned files.
        let triple = workspace::host_triple()?;
        cmd.args([
            "--config",
            &format!("target.{triple}.runner=[\"sudo\", \"-E\"]"),
        ]);
    }
    cmd.arg("test");
    let mut packages: Vec<&str> = Vec::new();
    for (package, _) in targets {
        if !packages.contains(package) {
            packages.push(package);
            cmd.args(["--package", package]);
        }
    }
    for (_, target) in targets {
        cmd.args(["--test", target]);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_never_silently_skips_root_suites() {
        assert_eq!(privileged_plan(true, false, true), Privileged::Direct);
        assert_eq!(privileged_plan(false, true, true), Privileged::Sudo);
        assert_eq!(privileged_plan(false, false, true), Privileged::Fail);
        assert_eq!(privileged_plan(false, false, false), Privileged::Skip);
    }

    #[test]
    fn sudo_runs_only_the_test_binaries() {
        let targets = [("integration-tests", "privileged_vip".to_owned())];
        let cmd = privileged_command(&Privileged::Sudo, &targets).expect("rustc reports its host");
        let shown = exec::display(&cmd);
        assert!(shown.contains(".runner=[\"sudo\", \"-E\"]"), "{shown}");
        assert!(
            shown.ends_with("test --package integration-tests --test privileged_vip"),
            "{shown}"
        );
        let direct = privileged_command(&Privileged::Direct, &targets).expect("direct");
        assert!(!exec::display(&direct).contains("sudo"));
    }

    #[test]
    fn privileged_targets_of_both_packages_run_in_one_invocation() {
        let targets = [
            ("router-userspace", "privileged_cli".to_owned()),
            ("integration-tests", "privileged_ebpf".to_owned()),
            ("integration-tests", "privileged_vip".to_owned()),
        ];
        let shown = exec::display(&privileged_command(&Privileged::Direct, &targets).unwrap());
        assert!(
            shown.ends_with(
                "test --package router-userspace --package integration-tests \
                 --test privileged_cli --test privileged_ebpf --test privileged_vip"
            ),
            "{shown}"
        );
    }

    #[test]
    fn split_packages_are_left_out_of_the_workspace_run() {
        let shown = exec::display(&rest_command());
        for split in SPLIT {
            assert!(
                shown.contains(&format!("--exclude {}", split.name)),
                "{shown}"
            );
        }
        assert!(SPLIT.iter().any(|s| s.name == "router-userspace"));
    }

    #[test]
    fn the_soak_runs_as_root_on_binaries_built_as_the_user() {
        let built = [
            (
                "scope-router".to_owned(),
                std::path::PathBuf::from("/t/scope-router"),
            ),
            (
                "echo-backend".to_owned(),
                std::path::PathBuf::from("/t/echo-backend"),
            ),
        ]
        .into_iter()
        .collect();
        let shown = exec::display(&soak_command(&built).expect("command"));
        assert!(shown.starts_with("sudo -E /"), "{shown}");
        assert!(
            shown.ends_with(&format!(
                " soak --bolt --duration {}s --router-bin /t/scope-router --echo-bin /t/echo-backend",
                soak::CI_DURATION.as_secs()
            )),
            "{shown}"
        );
        assert!(soak_command(&Default::default()).is_err());
    }

    #[test]
    fn privileged_files_never_run_unprivileged() {
        let (root, user) = split_targets(vec![
            "routing".into(),
            "privileged_vip".into(),
            "errors".into(),
            "privileged_ebpf".into(),
        ]);
        assert_eq!(root, ["privileged_vip", "privileged_ebpf"]);
        assert_eq!(user, ["routing", "errors"]);
        let shown = exec::display(&unprivileged_command("integration-tests", &user));
        assert!(
            shown.ends_with(
                "test --package integration-tests --lib --bins --test routing --test errors"
            ),
            "{shown}"
        );
        let (root, user) = split_targets(vec!["cli".into(), "privileged_cli".into()]);
        assert_eq!(root, ["privileged_cli"]);
        let shown = exec::display(&unprivileged_command("router-userspace", &user));
        assert!(
            shown.ends_with("test --package router-userspace --lib --bins --test cli"),
            "{shown}"
        );
    }
}
