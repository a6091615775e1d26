//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (README "Fuzz it") one
//! after the other, each bounded by time (or a number of executions), and reports each
//! target's executions and crashes. A crash fails the run, naming the input that crashed
//! and the command that replays it; the other targets still run first, so one run shows
//! every crash. `cargo xtask test` runs [`smoke`], a short bounded pass, in CI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::progress::{banner, elapsed, step};
use crate::workspace;

/// Every fuzz target (`fuzz/fuzz_targets/NAME.rs`), in the order they run.
pub const TARGETS: &[&str] = &["scope", "catalog", "config", "framing", "upstream_response"];

/// Seconds per target when neither `--time` nor `--runs` is given.
const DEFAULT_SECONDS: u64 = 60;

/// Seconds per target in `cargo xtask test`: five targets stay under a minute of fuzzing.
pub const SMOKE_SECONDS: u64 = 10;

/// The sanitizer and assertion flags of every build and run. No sanitizer: the code under
/// fuzz is safe Rust (its one `MaybeUninit` use is httparse's documented API), so
/// AddressSanitizer would find nothing a panic does not, at half the executions per
/// second. Debug assertions stay on: they turn integer overflow into a crash.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seconds per target (default 60 unless --runs is given).
    #[arg(long, value_name = "S")]
    pub time: Option<u64>,
    /// Executions per target (with --time, whichever ends first).
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// Fuzz only this target (repeatable); all of them by default.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
}

/// How long each target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound {
    seconds: Option<u64>,
    runs: Option<u64>,
}

impl Bound {
    fn of(opts: &Options) -> Bound {
        Bound {
            seconds: match (opts.time, opts.runs) {
                (None, None) => Some(DEFAULT_SECONDS),
                (time, _) => time,
            },
            runs: opts.runs,
        }
    }

    /// libFuzzer's flags for this bound.
    fn flags(self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(s) = self.seconds {
            flags.push(format!("-max_total_time={s}"));
        }
        if let Some(n) = self.runs {
            flags.push(format!("-runs={n}"));
        }
        flags
    }
}

/// What one target's run came to, read from libFuzzer's output.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    executions: Option<u64>,
    /// The input libFuzzer saved when the target crashed (or timed out, or ran out of memory).
    artifact: Option<String>,
    /// The panic message, when the target panicked.
    panic: Option<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let targets = selected(&opts.targets)?;
    fuzz(&targets, Bound::of(&opts))
}

/// CI's pass: every target for [`SMOKE_SECONDS`].
pub fn smoke() -> Result<()> {
    fuzz(
        TARGETS,
        Bound {
            seconds: Some(SMOKE_SECONDS),
            runs: None,
        },
    )
}

fn selected(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            TARGETS.iter().copied().find(|t| t == n).with_context(|| {
                format!(
                    "no fuzz target `{n}`; the targets are {}",
                    TARGETS.join(", ")
                )
            })
        })
        .collect()
}

fn fuzz(targets: &[&str], bound: Bound) -> Result<()> {
    let root = workspace::root();
    if exec::probe(workspace::cargo().args(["fuzz", "--version"])).is_none() {
        bail!("cargo-fuzz is not installed: run `cargo xtask setup` (it installs it)");
    }
    let build = step("cargo +nightly fuzz build (every target)");
    exec::exec(&mut cargo_fuzz(&root, "build", &[]))?;
    build.done();

    let logs = root.join("target").join("fuzz");
    let mut crashes = Vec::new();
    let mut summary = Vec::new();
    for target in targets {
        let started = Instant::now();
        let found = logs.join("corpus").join(target);
        fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let log = logs.join(format!("{target}.log"));
        let seeds = root.join("fuzz").join("corpus").join(target);
        // New inputs go to the first corpus directory, under target/: the committed seeds
        // (the second) stay as they are, and a later run starts from both.
        let mut cmd = cargo_fuzz(&root, "run", &[target]);
        cmd.arg(&found).arg(&seeds).arg("--");
        cmd.args(bound.flags());
        cmd.arg("-print_final_stats=1");
        banner(&format!(
            "==> fuzz {target} (libFuzzer output: {})",
            log.display()
        ));
        exec::announce(&cmd);
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(
                file.try_clone()
                    .context("duplicating the log file handle")?,
            )
            .stderr(file)
            .status()
            .with_context(|| format!("could not start `{}`", exec::display(&cmd)))?;
        let text =
            fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        let outcome = parse_output(&text);
        let took = started.elapsed();
        let executions = outcome
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let rate = outcome.executions.map_or(String::new(), |n| {
            format!(" ({}/s)", (n as f64 / took.as_secs_f64().max(0.001)) as u64)
        });
        let crashed = !status.success();
        let line = format!(
            "{target}: {executions} executions in {}{rate}, {} crash{}, corpus {} seeds + {} found",
            elapsed(took),
            u8::from(crashed),
            if crashed { "" } else { "es" },
            count_files(&seeds),
            count_files(&found),
        );
        eprintln!("    {line}");
        summary.push(line);
        if crashed {
            crashes.push(crash_report(target, &outcome, &log, &root));
        }
    }
    banner("==> fuzz summary");
    for line in &summary {
        eprintln!("    {line}");
    }
    if !crashes.is_empty() {
        bail!(
            "{} fuzz target(s) crashed:\n{}",
            crashes.len(),
            crashes.join("\n")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND [ARGS] <flags>`: cargo-fuzz needs nightly's sanitizer
/// and coverage flags. Through rustup's `cargo`, not `$CARGO`: `+nightly` is a rustup
/// argument, and `$CARGO` is the stable toolchain's own binary.
fn cargo_fuzz(root: &Path, subcommand: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["+nightly", "fuzz", subcommand])
        .args(BUILD_FLAGS)
        .args(args);
    // `cargo xtask` runs under the stable toolchain's rustup proxy, which exports this;
    // the nested cargo must take nightly from `+nightly` instead.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn crash_report(target: &str, outcome: &Outcome, log: &Path, root: &Path) -> String {
    let mut report = format!("  {target}:");
    if let Some(panic) = &outcome.panic {
        report.push_str(&format!(" {panic}"));
    }
    match &outcome.artifact {
        Some(artifact) => {
            let shown = relative(artifact, root).display().to_string();
            report.push_str(&format!(
                "\n    input: {shown}\n    reproduce: cargo +nightly fuzz run {} {target} {shown}",
                BUILD_FLAGS.join(" ")
            ));
        }
        None => report.push_str("\n    no input was saved (libFuzzer itself failed)"),
    }
    report.push_str(&format!("\n    log: {}", log.display()));
    report
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| entries.flatten().count())
}

/// Executions, the saved input and the panic message from libFuzzer's output.
fn parse_output(text: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            outcome.executions = n.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("Done ")
            && outcome.executions.is_none()
        {
            // `Done N runs in S second(s)`, for a run that printed no final stats.
            outcome.executions = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(path) = line.split("Test unit written to ").nth(1) {
            outcome.artifact = Some(path.trim().to_owned());
        } else if line.contains("panicked at ") && outcome.panic.is_none() {
            // Rust prints the location on this line and the message on the next.
            let message = lines.next().unwrap_or_default().trim();
            outcome.panic = Some(format!("{} {message}", line.trim()));
        }
    }
    outcome
}

/// `artifact` relative to the repository root, where the replay command runs.
fn relative(artifact: &str, root: &Path) -> PathBuf {
    Path::new(artifact)
        .strip_prefix(root)
        .map_or_else(|_| PathBuf::from(artifact), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_defaults_to_a_minute_unless_runs_are_given() {
        let opts = |time, runs| Options {
            time,
            runs,
            targets: Vec::new(),
        };
        assert_eq!(Bound::of(&opts(None, None)).flags(), ["-max_total_time=60"]);
        assert_eq!(
            Bound::of(&opts(Some(5), None)).flags(),
            ["-max_total_time=5"]
        );
        assert_eq!(Bound::of(&opts(None, Some(10))).flags(), ["-runs=10"]);
        assert_eq!(
            Bound::of(&opts(Some(5), Some(10))).flags(),
            ["-max_total_time=5", "-runs=10"]
        );
    }

    #[test]
    fn targets_are_checked_by_name() {
        assert_eq!(selected(&[]).unwrap(), TARGETS);
        assert_eq!(selected(&["framing".to_owned()]).unwrap(), ["framing"]);
        let err = selected(&["scopes".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("no fuzz target `scopes`"), "{err}");
        assert!(err.contains("upstream_response"), "{err}");
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let fuzz = workspace::root().join("fuzz");
        for t in TARGETS {
            assert!(
                fuzz.join("fuzz_targets").join(format!("{t}.rs")).is_file(),
                "{t}"
            );
            assert!(
                count_files(&fuzz.join("corpus").join(t)) > 0,
                "{t} has no seeds"
            );
        }
    }

    #[test]
    fn output_gives_executions_artifact_and_panic() {
        let clean = "#2\tINITED cov: 10\nDone 1234 runs in 10 second(s)\n\
                     stat::number_of_executed_units: 1234\nstat::peak_rss_mb: 40\n";
        assert_eq!(
            parse_output(clean),
            Outcome {
                executions: Some(1234),
                ..Outcome::default()
            }
        );
        let crash = "#512\tNEW cov: 11\n\
                     thread '<unnamed>' panicked at fuzz_targets/scope.rs:12:5:\n\
                     the scope read is the scope written\n\
                     ==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/r/fuzz/artifacts/scope/'; \
                     Test unit written to /r/fuzz/artifacts/scope/crash-abc\n\
                     stat::number_of_executed_units: 600\n";
        let outcome = parse_output(crash);
        assert_eq!(outcome.executions, Some(600));
        assert_eq!(
            outcome.artifact.as_deref(),
            Some("/r/fuzz/artifacts/scope/crash-abc")
        );
        let panic = outcome.panic.unwrap();
        assert!(panic.contains("scope.rs:12:5"), "{panic}");
        assert!(
            panic.contains("the scope read is the scope written"),
            "{panic}"
        );
        assert_eq!(
            relative("/r/fuzz/artifacts/scope/crash-abc", Path::new("/r")),
            Path::new("fuzz/artifacts/scope/crash-abc")
        );
    }

    #[test]
    fn a_crash_report_says_how_to_replay_it() {
        let outcome = Outcome {
            executions: Some(3),
            artifact: Some("/r/fuzz/artifacts/framing/crash-1".to_owned()),
            panic: Some("panicked at x.rs:1:1: boom".to_owned()),
        };
        let report = crash_report(
            "framing",
            &outcome,
            Path::new("/r/target/fuzz/framing.log"),
            Path::new("/r"),
        );
        assert!(report.contains("boom"), "{report}");
        assert!(
            report.contains(
                "reproduce: cargo +nightly fuzz run --sanitizer none --debug-assertions \
                 framing fuzz/artifacts/framing/crash-1"
            ),
            "{report}"
        );
    }
}
