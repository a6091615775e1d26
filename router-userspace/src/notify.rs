//! systemd service notifications (`sd_notify`): READY, RELOADING, STOPPING, STATUS and the
//! watchdog, over the `sd-notify` crate (docs/ARCHITECTURE.md §14).
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (a router started by hand, by
//! `cargo xtask run`, by a test), so callers never check whether systemd is there.
//!
//! The unit (`dist/scope-router.service`) is `Type=notify`, so systemd holds `systemctl
//! start` until [`ready`] and treats the service as started only then. The order in
//! `run`: listeners open, VIP taken, admin listener up, then [`ready`]; [`stopping`] as
//! soon as the termination signal arrives, before the drain.
//!
//! A reload (SIGHUP from `ExecReload=`) must be bracketed so that `systemctl reload`
//! waits for it and `systemctl status` shows it:
//!
//! 1. [`reloading`] (`RELOADING=1` with `MONOTONIC_USEC`, which systemd ≥ 253 requires
//!    to match the reload to its request);
//! 2. the reload itself;
//! 3. [`ready`] again, whether the reload succeeded or was refused (the old
//!    configuration keeps serving; say which with [`status`]).

use std::time::Duration;

use sd_notify::NotifyState;

/// A notification systemd did not receive.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot send {state} to the service manager at NOTIFY_SOCKET={socket}: {source}; \
     under systemd check that the unit has NotifyAccess=main and that the socket is \
     reachable (no PrivateNetwork/RestrictAddressFamilies without AF_UNIX)"
)]
pub struct NotifyError {
    /// What was being sent, e.g. `READY=1`.
    state: &'static str,
    /// `NOTIFY_SOCKET` as found in the environment.
    socket: String,
    #[source]
    source: std::io::Error,
}

fn send(label: &'static str, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
    sd_notify::notify(states).map_err(|source| NotifyError {
        state: label,
        socket: std::env::var("NOTIFY_SOCKET").unwrap_or_default(),
        source,
    })
}

/// `READY=1`: the router serves. Sent at start once every listener, the VIP and the admin
/// listener are up, and again at the end of every reload.
pub fn ready() -> Result<(), NotifyError> {
    send("READY=1", &[NotifyState::Ready])
}

/// `RELOADING=1` with the current `CLOCK_MONOTONIC` time: a reload starts. Follow it with
/// [`ready`] when the reload is over, whatever its outcome.
pub fn reloading() -> Result<(), NotifyError> {
    let now = NotifyState::monotonic_usec_now().map_err(|source| NotifyError {
        state: "RELOADING=1",
        socket: std::env::var("NOTIFY_SOCKET").unwrap_or_default(),
        source,
    })?;
    send("RELOADING=1", &[NotifyState::Reloading, now])
}

/// `MAINPID=pid`: a restart handed the service over to the router `pid` (a process of the
/// unit when `scope-router restart` ran inside it); sent by the old main process, which
/// then drains and exits without the unit stopping.
pub fn main_pid(pid: u32) -> Result<(), NotifyError> {
    send("MAINPID=…", &[NotifyState::MainPid(pid)])
}

/// `STOPPING=1`: the router drains and will exit; systemd shows `deactivating`.
pub fn stopping() -> Result<(), NotifyError> {
    send("STOPPING=1", &[NotifyState::Stopping])
}

/// `STATUS=text`: one line `systemctl status` shows under the unit.
pub fn status(text: &str) -> Result<(), NotifyError> {
    // A newline would end the field early and start a bogus one.
    let line = text.replace('\n', " ");
    send("STATUS=…", &[NotifyState::Status(&line)])
}

/// The interval systemd asks for (`WATCHDOG_USEC`, for this process when `WATCHDOG_PID`
/// is set), or None when no watchdog is configured or there is no `NOTIFY_SOCKET` to
/// ping.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for, from a task on the router's
/// async runtime: a runtime that stops scheduling tasks stops pinging, and systemd
/// restarts the router (`Restart=on-failure`). Dropping it stops the pings.
#[derive(Debug)]
pub struct Watchdog {
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    /// Starts pinging when systemd configured a watchdog; None otherwise. Call from
    /// inside the runtime.
    pub fn start() -> Option<Self> {
        Self::start_with(watchdog_interval()?)
    }

    /// Starts pinging every `interval / 2`: for a router that took the service over on a
    /// restart, whose environment came from `restart`, not from systemd's start.
    pub fn start_with(interval: Duration) -> Option<Self> {
        std::env::var_os("NOTIFY_SOCKET")?;
        // Half the interval, systemd's own advice: one late tick is not yet a miss.
        let period = interval / 2;
        tracing::info!(
            interval = %humantime::format_duration(interval),
            "systemd watchdog enabled: pinging every {}",
            humantime::format_duration(period)
        );
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            // After a stall, ping once and keep the rhythm, not a burst that would hide it.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            loop {
                tick.tick().await;
                if let Err(e) = send("WATCHDOG=1", &[NotifyState::Watchdog]) {
                    // Once: systemd restarts the router anyway if the pings do not arrive.
                    if !warned {
                        tracing::warn!("{e}");
                        warned = true;
                    }
                }
            }
        });
        Some(Self { task })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_state_the_socket_and_what_to_check() {
        let err = NotifyError {
            state: "READY=1",
            socket: "/run/systemd/notify".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let text = err.to_string();
        assert!(text.contains("READY=1"), "{text}");
        assert!(text.contains("/run/systemd/notify"), "{text}");
        assert!(text.contains("NotifyAccess=main"), "{text}");
    }
}
