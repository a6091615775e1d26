//! Post-link optimisation of the release router with LLVM BOLT.
//!
//! The release binary (linked with its relocations kept: `router-userspace/build.rs`) is
//! instrumented, run under a representative mix of requests on loopback
//! ([`train`]), and laid out again from the counts: the hot functions together, each
//! function's hot blocks in a line, its cold ones moved to `.text.cold`. The request path
//! spans more code than a 32 KiB instruction cache holds, so this is what moves it
//! (docs/performance.md, *Issue 16*: 43 % fewer L1i misses per request under callgrind,
//! ≈ 11 % more req/s in bench scenario j). Debian's `bolt-15` (`cargo xtask setup`); BOLT
//! works on the machine code, so its LLVM need not match rustc's, which PGO would need.
//!
//! The optimised binary drops the DWARF line tables (BOLT 15 cannot rewrite rustc's
//! DWARF 5): panics still name the function, not the line.

mod train;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::progress::step;
use crate::workspace;

/// The Debian package with `llvm-bolt` (bookworm).
pub const PACKAGE: &str = "bolt-15";

/// Names `llvm-bolt` goes by: Debian's versioned one first.
const LLVM_BOLT: &[&str] = &["llvm-bolt-15", "llvm-bolt"];

/// The release router, laid out with BOLT unless `bolt` is false (`--no-bolt`): what
/// `install` installs, `bench` measures and `cargo xtask test` soaks.
pub fn release_router(bolt: bool) -> Result<PathBuf> {
    let built = step("build scope-router (release)");
    let bins = workspace::build_bins(true, &[("router-userspace", "scope-router")])?;
    built.done();
    let bin = bins
        .get("scope-router")
        .context("cargo reported no scope-router binary")?;
    if bolt { optimize(bin) } else { Ok(bin.clone()) }
}

/// The BOLT-optimised copy of `release_bin`, made under `target/bolt/` (reused while
/// `release_bin` is the same file).
pub fn optimize(release_bin: &Path) -> Result<PathBuf> {
    let dir = workspace::root().join("target/bolt");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join("scope-router");
    let stamp = dir.join("scope-router.input");
    let input = identity(release_bin)?;
    let step = step("optimize scope-router with BOLT (instrument, train on loopback, lay out)");
    if out.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&input) {
        step.skip(&format!("{} is up to date", out.display()));
        return Ok(out);
    }
    let bolt = find_bolt()?;
    let instrumented = dir.join("scope-router.instrumented");
    let profile = dir.join("scope-router.fdata");
    // A stale profile would be read as this binary's.
    let _ = std::fs::remove_file(&profile);
    let _ = std::fs::remove_file(&stamp);
    exec::query(Command::new(&bolt).args(instrument_args(release_bin, &instrumented, &profile)))
        .context(
            "BOLT could not instrument the release binary; it must be linked with \
         --emit-relocs (router-userspace/build.rs does for the release profile)",
        )?;
    let requests = train::run(&instrumented, release_bin, &dir)?;
    if std::fs::metadata(&profile).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!(
            "the instrumented router wrote no profile to {} after {requests} requests: it must \
             exit normally on SIGTERM (its log: {})",
            profile.display(),
            dir.join("train.log").display()
        );
    }
    let partial = dir.join("scope-router.partial");
    exec::query(Command::new(&bolt).args(optimize_args(release_bin, &profile, &partial)))
        .context("BOLT could not optimize the release binary from its profile")?;
    // What BOLT wrote must still be a working router before it replaces anything.
    let version = exec::query(Command::new(&partial).arg("--version"))
        .context("the BOLT-optimized router does not run")?;
    // BOLT leaves its output world-writable.
    std::fs::set_permissions(
        &partial,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .with_context(|| format!("cannot set the mode of {}", partial.display()))?;
    std::fs::rename(&partial, &out)
        .with_context(|| format!("cannot move {} into place", partial.display()))?;
    std::fs::write(&stamp, &input).with_context(|| format!("cannot write {}", stamp.display()))?;
    let _ = std::fs::remove_file(&instrumented);
    eprintln!(
        "    {} ({}, trained on {requests} requests) -> {}",
        version.trim(),
        release_bin.display(),
        out.display()
    );
    step.done();
    Ok(out)
}

/// `llvm-bolt` from PATH, or an error saying how to get it. Resolved through symlinks:
/// it finds its instrumentation runtime relative to where it really is (Debian's
/// `/usr/bin/llvm-bolt-15` would look in `/usr/lib`, not `/usr/lib/llvm-15/lib`).
fn find_bolt() -> Result<PathBuf> {
    LLVM_BOLT
        .iter()
        .find_map(|name| which(name))
        .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
        .with_context(|| {
            format!(
                "llvm-bolt not found (looked for {}): run `cargo xtask setup` (Debian package \
                 {PACKAGE}), or pass --no-bolt to use the plain release build",
                LLVM_BOLT.join(", ")
            )
        })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What makes a build the same build: its size and modification time, and the recipe
/// (this module and the training run's source), so a changed recipe lays it out again.
fn identity(bin: &Path) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut recipe = std::collections::hash_map::DefaultHasher::new();
    include_str!("bolt.rs").hash(&mut recipe);
    include_str!("bolt/train.rs").hash(&mut recipe);
    let meta = std::fs::metadata(bin)
        .with_context(|| format!("cannot read {} (was it built?)", bin.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!(
        "{} {} {modified} recipe {:016x}\n",
        bin.display(),
        meta.len(),
        recipe.finish()
    ))
}

fn instrument_args(input: &Path, output: &Path, profile: &Path) -> Vec<OsString> {
    let mut file = OsString::from("-instrumentation-file=");
    file.push(profile);
    vec![
        input.into(),
        "-instrument".into(),
        file,
        "-o".into(),
        output.into(),
    ]
}

/// The layout passes: blocks by extended TSP, functions by call-graph clustering
/// (hfsort+), hot and cold parts of each function split (landing pads too), identical
/// functions folded.
fn optimize_args(input: &Path, profile: &Path, output: &Path) -> Vec<OsString> {
    let mut data = OsString::from("-data=");
    data.push(profile);
    let mut args: Vec<OsString> = vec![input.into(), data, "-o".into(), output.into()];
    args.extend(
        [
            "-reorder-blocks=ext-tsp",
            "-reorder-functions=hfsort+",
            "-split-functions",
            "-split-all-cold",
            "-split-eh",
            "-icf=1",
            "-use-gnu-stack",
        ]
        .map(OsString::from),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instrumented_run_writes_the_profile_the_layout_reads() {
        let profile = Path::new("/t/scope-router.fdata");
        let instrument = instrument_args(Path::new("/t/in"), Path::new("/t/instr"), profile);
        let optimize = optimize_args(Path::new("/t/in"), profile, Path::new("/t/out"));
        assert!(instrument.contains(&"-instrumentation-file=/t/scope-router.fdata".into()));
        assert!(optimize.contains(&"-data=/t/scope-router.fdata".into()));
        // Both read the release binary; neither writes over it.
        assert_eq!(instrument[0], "/t/in");
        assert_eq!(optimize[0], "/t/in");
        let output = |args: &[OsString]| {
            let at = args.iter().position(|a| a == "-o").map(|i| i + 1);
            at.and_then(|i| args.get(i)).cloned()
        };
        assert_eq!(output(&instrument), Some("/t/instr".into()));
        assert_eq!(output(&optimize), Some("/t/out".into()));
    }

    #[test]
    fn a_rebuilt_binary_is_a_different_input() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("scope-router");
        std::fs::write(&bin, b"one").expect("write");
        let first = identity(&bin).expect("identity");
        std::fs::write(&bin, b"three").expect("write");
        assert_ne!(identity(&bin).expect("identity"), first);
        assert!(
            identity(&dir.path().join("missing"))
                .expect_err("missing binary")
                .to_string()
                .contains("was it built?")
        );
    }
}
