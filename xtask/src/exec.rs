//! Running external commands: every command is printed before it runs, and a failure
//! becomes an error that names the command line and its exit status.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result, anyhow};

/// Renders a command the way a user would type it, so a failing one can be re-run by hand.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
        .collect();
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%^".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Echoes the command on stderr; dimmed on a terminal so it stands apart from its output.
pub fn announce(cmd: &Command) {
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[2m$ {}\x1b[0m", display(cmd));
    } else {
        eprintln!("$ {}", display(cmd));
    }
}

/// The error for a command that ran and failed.
pub fn failure(cmd: &Command, status: ExitStatus) -> anyhow::Error {
    anyhow!("`{}` failed: {}", display(cmd), status)
}

fn spawn_error(cmd: &Command, err: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(err).context(format!(
        "could not start `{}` (is `{}` installed and on PATH?)",
        display(cmd),
        cmd.get_program().to_string_lossy()
    ))
}

/// Prints and runs `cmd` with the terminal attached; Err names the command if it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    announce(cmd);
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(failure(cmd, status))
    }
}

/// Prints and runs `cmd`, returning its stdout; stderr stays on the terminal.
pub fn capture(cmd: &mut Command) -> Result<String> {
    announce(cmd);
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    into_stdout(cmd, output)
}

/// Runs `cmd` without echoing it and returns its stdout; for read-only queries whose
/// output is the point. The error carries the command's stderr.
pub fn query(cmd: &mut Command) -> Result<String> {
    let output = cmd.output().map_err(|e| spawn_error(cmd, e))?;
    into_stdout(cmd, output)
}

fn into_stdout(cmd: &Command, output: Output) -> Result<String> {
    if output.status.success() {
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed something that is not UTF-8", display(cmd)))
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let err = failure(cmd, output.status);
        if stderr.trim().is_empty() {
            Err(err)
        } else {
            Err(err.context(stderr.trim().to_owned()))
        }
    }
}

/// Runs a check silently: Some(stdout) when it ran and succeeded, None otherwise
/// (missing program included), because a failed check only means "not there yet".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd.stdin(Stdio::null()).output().ok()?;
    if output.status.success() {
        String::from_utf8(output.stdout).ok()
    } else {
        None
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command for something that needs root: run directly as root, otherwise through
/// `sudo` for exactly this one command.
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-H",
            "X-Scope: {\"image\":\"RegionTwo\"}",
            "http://1.2.3.4:9292/v2",
        ]);
        cmd.env("CI", "true");
        assert_eq!(
            display(&cmd),
            r#"CI=true curl -H 'X-Scope: {"image":"RegionTwo"}' http://1.2.3.4:9292/v2"#
        );
    }

    #[test]
    fn display_escapes_single_quotes() {
        let mut cmd = Command::new("echo");
        cmd.arg("it's");
        assert_eq!(display(&cmd), r"echo 'it'\''s'");
    }

    #[test]
    fn failing_command_is_named_with_its_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let err = exec(&mut cmd).expect_err("exit 3 must fail");
        let text = err.to_string();
        assert!(text.contains("`sh -c 'exit 3'`"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[test]
    fn missing_program_says_so() {
        let err = exec(&mut Command::new("surely-not-installed-xtask"))
            .expect_err("missing program must fail");
        assert!(format!("{err:#}").contains("is `surely-not-installed-xtask` installed"));
    }

    #[test]
    fn capture_returns_stdout_and_query_reports_stderr() {
        let out = capture(Command::new("sh").args(["-c", "echo hello"])).expect("echo works");
        assert_eq!(out, "hello\n");
        let err = query(Command::new("sh").args(["-c", "echo oops >&2; exit 1"]))
            .expect_err("exit 1 must fail");
        assert!(format!("{err:#}").contains("oops"));
    }

    #[test]
    fn probe_maps_failure_to_none() {
        assert_eq!(probe(&mut Command::new("true")).as_deref(), Some(""));
        assert_eq!(probe(&mut Command::new("false")), None);
        assert_eq!(probe(&mut Command::new("surely-not-installed-xtask")), None);
    }
}
