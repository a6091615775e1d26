//! External validators the suites run (`systemd-analyze`, `vagrant`, `promtool`): whether
//! one is installed, and what it printed.

use std::process::Command;

/// Whether `program` runs (`program --version`); when not, skips `test` loudly with
/// `install`, the fix (under `CI=true` that is a failure, as for every skip).
pub fn installed(test: &str, program: &str, install: &str) -> bool {
    match Command::new(program).arg("--version").output() {
        Ok(_) => true,
        Err(e) => crate::netns::skip(
            test,
            &format!("{program} is not installed ({e}); {install}"),
        ),
    }
}

/// Runs `cmd`; whether it exited 0, and its stdout then stderr as text.
pub fn run_printed(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// Asserts that `promtool check metrics` (Debian's `prometheus`) accepts `exposition`;
/// without promtool, skips `test` loudly (a failure under `CI=true`).
pub fn assert_promtool_accepts(test: &str, exposition: &str) {
    if !installed(
        test,
        "promtool",
        "`cargo xtask setup` installs it (Debian's prometheus)",
    ) {
        return;
    }
    let (ok, printed) = promtool_check_metrics(exposition);
    assert!(
        ok,
        "promtool check metrics failed:\n{printed}\nexposition:\n{exposition}"
    );
}

/// `promtool check metrics` on a text exposition: whether it passed, and what it printed.
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .unwrap_or_else(|e| panic!("cannot feed promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool did not finish: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
