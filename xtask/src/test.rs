//! `cargo xtask test`: THE test command (README, .ci/run). Sets up what is missing, then
//! formatting, clippy, the unprivileged tests, and the `privileged_*` suites of the
//! tests crate as root. Output ends with cargo's own test summary lines.

use std::process::Command;

use anyhow::{Result, bail};

use crate::exec;
use crate::progress::{banner, elapsed, loud, step};
use crate::setup::{self, Profile};
use crate::workspace;

/// Test names (function or module path) that need root contain this; the unprivileged
/// run skips them and the privileged run selects exactly them.
pub const PRIVILEGED_FILTER: &str = "privileged_";
const TESTS_PACKAGE: &str = "integration-tests";

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
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

pub fn run(opts: Options) -> Result<()> {
    let started = std::time::Instant::now();
    let sudo_available = exec::probe(Command::new("sudo").arg("--version")).is_some();
    let plan = privileged_plan(exec::is_root(), sudo_available, in_ci());
    if plan == Privileged::Fail {
        bail!(
            "CI=true but not root and no sudo: the privileged_* suites (netns, XDP, \
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

    if plan == Privileged::Skip {
        loud(&[
            "SKIPPING the privileged_* suites (netns, XDP, sk_lookup, VIP):",
            "not root and no sudo. Run `cargo xtask test` as root to include them.",
        ]);
    }

    let unprivileged = step("cargo test --workspace (unprivileged)");
    exec::exec(workspace::cargo().args([
        "test",
        "--workspace",
        "--",
        "--skip",
        PRIVILEGED_FILTER,
    ]))?;
    unprivileged.done();

    if matches!(plan, Privileged::Direct | Privileged::Sudo) {
        // Announced before it starts, so that cargo's summary stays the last output.
        banner(&format!(
            "==> privileged suites ({TESTS_PACKAGE}, tests matching `{PRIVILEGED_FILTER}`), \
             as root; {} so far",
            elapsed(started.elapsed())
        ));
        exec::exec(&mut privileged_command(&plan)?)?;
    }
    Ok(())
}

fn privileged_command(plan: &Privileged) -> Result<Command> {
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
    cmd.args(["test", "--package", TESTS_PACKAGE, "--", PRIVILEGED_FILTER]);
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
        let cmd = privileged_command(&Privileged::Sudo).expect("rustc reports its host");
        let shown = exec::display(&cmd);
        assert!(shown.contains(".runner=[\"sudo\", \"-E\"]"), "{shown}");
        assert!(
            shown.ends_with("test --package integration-tests -- privileged_"),
            "{shown}"
        );
        let direct = exec::display(&privileged_command(&Privileged::Direct).expect("direct"));
        assert!(!direct.contains("sudo"), "{direct}");
    }
}
