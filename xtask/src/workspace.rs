//! Where things are: the workspace root, the cargo that launched us, and the binaries
//! cargo builds (located from cargo's own JSON messages rather than guessed paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::exec;

/// The repository root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// A `cargo` command run from the workspace root, using the same cargo that runs xtask
/// (so `cargo +toolchain xtask` stays consistent).
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    cmd
}

/// Builds the given `(package, binary)` pairs and returns each binary's path by name.
pub fn build_bins(release: bool, bins: &[(&str, &str)]) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = cargo();
    cmd.arg("build")
        .arg("--message-format=json-render-diagnostics");
    if release {
        cmd.arg("--release");
    }
    for (package, bin) in bins {
        cmd.args(["--package", package, "--bin", bin]);
    }
    let stdout = exec::capture(cmd.stdin(Stdio::null()))?;
    let found = executables(&stdout);
    for (_, bin) in bins {
        if !found.contains_key(*bin) {
            bail!(
                "cargo built no executable named `{bin}`: does the package still define \
                 that binary?"
            );
        }
    }
    Ok(found)
}

/// Extracts `target name -> executable` from cargo's `--message-format=json` stream.
fn executables(stream: &str) -> BTreeMap<String, PathBuf> {
    stream
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter_map(|msg| {
            let name = msg["target"]["name"].as_str()?.to_owned();
            let exe = msg["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

/// Names of the integration-test targets (`tests/*.rs`) of `package`.
pub fn test_targets(package: &str) -> Result<Vec<String>> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let metadata = exec::query(&mut cmd)?;
    let json: serde_json::Value =
        serde_json::from_str(&metadata).context("`cargo metadata` printed invalid JSON")?;
    parse_test_targets(&json, package)
        .with_context(|| format!("package `{package}` is not in the workspace"))
}

fn parse_test_targets(metadata: &serde_json::Value, package: &str) -> Option<Vec<String>> {
    let pkg = metadata["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == package)?;
    let targets = pkg["targets"].as_array()?;
    Some(
        targets
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "test"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// The host target triple, as rustc reports it.
pub fn host_triple() -> Result<String> {
    let out = exec::query(Command::new("rustc").arg("-vV"))?;
    parse_host(&out).context("`rustc -vV` printed no `host:` line")
}

fn parse_host(rustc_vv: &str) -> Option<String> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_come_from_compiler_artifacts_only() {
        let stream = r#"{"reason":"compiler-artifact","target":{"name":"scope-router"},"executable":"/t/debug/scope-router"}
{"reason":"compiler-artifact","target":{"name":"scope_router"},"executable":null}
{"reason":"build-finished","success":true}
not json"#;
        let found = executables(stream);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found["scope-router"],
            PathBuf::from("/t/debug/scope-router")
        );
    }

    #[test]
    fn test_targets_are_the_test_kind_only() {
        let metadata: serde_json::Value = serde_json::from_str(
            r#"{"packages":[{"name":"other","targets":[]},{"name":"integration-tests","targets":[
                {"name":"integration_tests","kind":["lib"]},
                {"name":"echo-backend","kind":["bin"]},
                {"name":"routing","kind":["test"]},
                {"name":"privileged_vip","kind":["test"]}]}]}"#,
        )
        .expect("test JSON");
        assert_eq!(
            parse_test_targets(&metadata, "integration-tests"),
            Some(vec!["routing".to_owned(), "privileged_vip".to_owned()])
        );
        assert_eq!(parse_test_targets(&metadata, "missing"), None);
    }

    #[test]
    fn host_triple_is_parsed() {
        let text = "rustc 1.95.0\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(
            parse_host(text).as_deref(),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(parse_host("nothing"), None);
    }

    #[test]
    fn root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root manifest");
        assert!(manifest.contains("[workspace]"));
    }
}
