//! `dist/scope-router.service`: `systemd-analyze verify` accepts it (with the built binary
//! in place of /usr/local/bin/scope-router, which a test machine lacks), and its numbers
//! agree with the router's defaults (stop timeout above the drain, runtime directory =
//! the default state directory).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scope_router::config::ProxySettings;

const BIN: &str = env!("CARGO_BIN_EXE_scope-router");
const INSTALLED_BIN: &str = "/usr/local/bin/scope-router";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/scope-router.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read dist/scope-router.service")
}

/// The value of `Key=` in the unit (the last one, as systemd reads single-valued keys).
fn value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// Runs `systemd-analyze verify` on `text` written to DIR/NAME; returns whatever it
/// printed. It exits 0 on an unknown key or an unparsable value (it only warns), so the
/// output is the verdict: a clean unit prints nothing.
fn verify(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the unit copy");
    test_support::tool::run_printed(Command::new("systemd-analyze").arg("verify").arg(&path))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_and_catches_a_broken_directive() {
    const TEST: &str = "systemd_analyze_verify_accepts_the_unit_and_catches_a_broken_directive";
    if !test_support::tool::installed(
        TEST,
        "systemd-analyze",
        "`cargo xtask setup` installs Debian's systemd",
    ) {
        return;
    }
    let unit = unit_text();
    assert!(
        unit.contains(INSTALLED_BIN),
        "the unit no longer runs {INSTALLED_BIN}"
    );
    // verify checks that every Exec*= program exists: point it at the binary just built.
    let local = unit.replace(INSTALLED_BIN, BIN);
    let dir = tempfile::tempdir().expect("tempdir");

    let (ok, printed) = verify(dir.path(), "scope-router.service", &local);
    assert!(
        ok && printed.trim().is_empty(),
        "systemd-analyze verify complained about dist/scope-router.service:\n{printed}"
    );

    // The control: the same check on a misspelt directive must say so, or a clean result
    // above proves nothing.
    let broken = local.replace("ProtectSystem=strict", "ProtectSystem=strictly");
    assert_ne!(broken, local);
    let (_, printed) = verify(dir.path(), "broken.service", &broken);
    assert!(
        printed.contains("strictly"),
        "systemd-analyze verify let a broken directive through: {printed:?}"
    );
}

#[test]
fn the_unit_is_type_notify_with_a_watchdog_reload_and_restart_on_failure() {
    let unit = unit_text();
    assert_eq!(value(&unit, "Type"), Some("notify"));
    assert_eq!(value(&unit, "NotifyAccess"), Some("main"));
    assert_eq!(value(&unit, "Restart"), Some("on-failure"));
    assert_eq!(
        value(&unit, "ExecStart"),
        Some("/usr/local/bin/scope-router run --config /etc/scope-router/router.toml")
    );
    assert!(
        unit.lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP to the router"
    );
    let watchdog = value(&unit, "WatchdogSec").expect("WatchdogSec");
    humantime::parse_duration(watchdog).expect("WatchdogSec is a duration");
}

#[test]
fn the_stop_timeout_outlasts_the_default_drain() {
    let unit = unit_text();
    let stop = value(&unit, "TimeoutStopSec").expect("TimeoutStopSec");
    let stop = humantime::parse_duration(stop).expect("TimeoutStopSec is a duration");
    let grace = ProxySettings::default().shutdown_grace;
    // Releasing the VIP and detaching eBPF come after the drain: leave them time.
    assert!(
        stop >= grace + Duration::from_secs(10),
        "TimeoutStopSec={stop:?} would SIGKILL a router still draining (shutdown_grace {grace:?})"
    );
}

#[test]
fn the_runtime_directory_is_the_default_state_directory() {
    let unit = unit_text();
    let dir = value(&unit, "RuntimeDirectory").expect("RuntimeDirectory");
    // The examples' [vip] state_dir, and health_state's default without [vip].
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/RegionOne.toml"),
    )
    .expect("read config/RegionOne.toml");
    assert!(
        example.contains(&format!("state_dir = \"/run/{dir}\"")),
        "RuntimeDirectory={dir} is not config/RegionOne.toml's state_dir"
    );
}
