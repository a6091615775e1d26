//! Graceful shutdown: stop accepting, let in-flight work finish within a grace period.
//!
//! Every connection task holds a [`Guard`]; shutdown first raises the "drain"
//! signal (accept loops stop, HTTP connections finish their current request and
//! close), then waits until every guard is dropped or the grace period ends, and
//! finally raises the "abort" signal that ends whatever is still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

/// Owner side: triggers and awaits the shutdown.
#[derive(Debug)]
pub struct Shutdown {
    flags: Arc<Flags>,
    guard_tx: Option<mpsc::Sender<()>>,
    guard_rx: mpsc::Receiver<()>,
}

/// Task side: cheap to clone, handed to every accept loop and connection.
///
/// One pointer: every idle keep-alive connection holds a clone, and its
/// parked task also holds the pending [`Signals::draining`] future.
#[derive(Debug, Clone)]
pub struct Signals {
    flags: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    drain: Flag,
    abort: Flag,
}

/// A one-way switch tasks can wait on.
#[derive(Debug, Default)]
struct Flag {
    raised: AtomicBool,
    notify: Notify,
}

impl Flag {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches a `Notified`
            // from its creation on, so a raise in between is not missed.
            let notified = self.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a task while it does work that shutdown should wait for.
#[derive(Debug, Clone)]
pub struct Guard {
    _tx: mpsc::Sender<()>,
}

/// Outcome of [`Shutdown::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight task finished within the grace period.
    Clean,
    /// The grace period ended first; remaining tasks were told to abort.
    GraceExpired,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        // The channel never carries messages: it only counts live senders.
        let (guard_tx, guard_rx) = mpsc::channel(1);
        Shutdown {
            flags: Arc::default(),
            guard_tx: Some(guard_tx),
            guard_rx,
        }
    }

    pub fn signals(&self) -> Signals {
        Signals {
            flags: self.flags.clone(),
        }
    }

    /// A guard for a task about to start; `None` once shutdown has begun.
    pub fn guard(&self) -> Option<Guard> {
        self.guard_tx.as_ref().map(|tx| Guard { _tx: tx.clone() })
    }

    /// Drains, waits up to `grace` for every guard to drop, then aborts the rest.
    pub async fn run(mut self, grace: Duration) -> Drained {
        self.flags.drain.raise();
        self.guard_tx = None;
        let outcome = match tokio::time::timeout(grace, self.guard_rx.recv()).await {
            Ok(_) => Drained::Clean,
            Err(_) => Drained::GraceExpired,
        };
        self.flags.abort.raise();
        outcome
    }
}

impl Drop for Shutdown {
    /// The owner going away is a shutdown as well: nothing could raise the
    /// signals any more, so every waiter is released now.
    fn drop(&mut self) {
        self.flags.drain.raise();
        self.flags.abort.raise();
    }
}

impl Signals {
    /// Resolves once draining has started (immediately if it already has).
    ///
    /// Not an `async fn`: that would wrap the wait in one more layer of
    /// state, and every parked connection holds this future.
    pub fn draining(&mut self) -> impl Future<Output = ()> + '_ {
        self.flags.drain.wait()
    }

    /// Resolves once the grace period is over and remaining work must stop.
    pub fn aborting(&mut self) -> impl Future<Output = ()> + '_ {
        self.flags.abort.wait()
    }

    pub fn is_draining(&self) -> bool {
        self.flags.drain.is_raised()
    }
}

/// SIGTERM/SIGINT listeners (what systemd, docker and Ctrl-C send), and SIGHUP (a
/// reload: what `systemctl reload` and `scope-router reload` send).
///
/// Install before opening listeners: once installed, a signal can no longer
/// kill the process with the default action mid-request (SIGHUP's default action would
/// kill the router without a drain and leave the VIP and the eBPF programs behind).
#[derive(Debug)]
pub struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks of the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Drain and exit; the signal's name.
    Stop(&'static str),
    /// Re-read the configuration (SIGHUP).
    Reload,
}

impl Termination {
    pub fn install() -> std::io::Result<Termination> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Termination {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves on the next signal.
    pub async fn recv(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop("SIGTERM"),
            _ = self.int.recv() => Request::Stop("SIGINT"),
            _ = self.hup.recv() => Request::Reload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_guards_then_reports_clean() {
        let shutdown = Shutdown::new();
        let mut signals = shutdown.signals();
        let guard = shutdown.guard().unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            signals.draining().await;
            // The in-flight work only finishes after draining began.
            drop(guard);
            let _ = done_tx.send(());
        });
        let outcome = shutdown.run(Duration::from_secs(3600)).await;
        assert_eq!(outcome, Drained::Clean);
        done_rx.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn grace_expiry_aborts_stragglers() {
        let shutdown = Shutdown::new();
        let mut signals = shutdown.signals();
        let guard = shutdown.guard().unwrap();
        let straggler = tokio::spawn(async move {
            let _guard = guard;
            signals.aborting().await;
        });
        let outcome = shutdown.run(Duration::from_secs(5)).await;
        assert_eq!(outcome, Drained::GraceExpired);
        straggler.await.unwrap();
    }

    #[tokio::test]
    async fn no_guards_after_shutdown_started() {
        let shutdown = Shutdown::new();
        let signals = shutdown.signals();
        assert!(!signals.is_draining());
        shutdown.run(Duration::from_secs(1)).await;
        assert!(signals.is_draining());
    }

    #[tokio::test]
    async fn signals_wake_a_waiter_that_started_before_them() {
        let shutdown = Shutdown::new();
        let mut signals = shutdown.signals();
        let waiter = tokio::spawn(async move {
            signals.draining().await;
            signals.aborting().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(shutdown.run(Duration::from_secs(1)).await, Drained::Clean);
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_owner_releases_every_waiter() {
        let shutdown = Shutdown::new();
        let mut signals = shutdown.signals();
        drop(shutdown);
        signals.draining().await;
        signals.aborting().await;
    }
}
