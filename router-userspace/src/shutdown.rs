//! Graceful shutdown: stop accepting, let in-flight work finish within a grace period.
//!
//! Every connection task holds a [`Guard`]; shutdown first raises the "drain"
//! signal (accept loops stop, HTTP connections finish their current request and
//! close), then waits until every guard is dropped or the grace period ends, and
//! finally raises the "abort" signal that ends whatever is still running.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Owner side: triggers and awaits the shutdown.
#[derive(Debug)]
pub struct Shutdown {
    drain_tx: watch::Sender<bool>,
    abort_tx: watch::Sender<bool>,
    guard_tx: Option<mpsc::Sender<()>>,
    guard_rx: mpsc::Receiver<()>,
}

/// Task side: cheap to clone, handed to every accept loop and connection.
#[derive(Debug, Clone)]
pub struct Signals {
    drain: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
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
        let (drain_tx, _) = watch::channel(false);
        let (abort_tx, _) = watch::channel(false);
        // The channel never carries messages: it only counts live senders.
        let (guard_tx, guard_rx) = mpsc::channel(1);
        Shutdown {
            drain_tx,
            abort_tx,
            guard_tx: Some(guard_tx),
            guard_rx,
        }
    }

    pub fn signals(&self) -> Signals {
        Signals {
            drain: self.drain_tx.subscribe(),
            abort: self.abort_tx.subscribe(),
        }
    }

    /// A guard for a task about to start; `None` once shutdown has begun.
    pub fn guard(&self) -> Option<Guard> {
        self.guard_tx.as_ref().map(|tx| Guard { _tx: tx.clone() })
    }

    /// Drains, waits up to `grace` for every guard to drop, then aborts the rest.
    pub async fn run(mut self, grace: Duration) -> Drained {
        self.drain_tx.send_replace(true);
        self.guard_tx = None;
        let outcome = match tokio::time::timeout(grace, self.guard_rx.recv()).await {
            Ok(_) => Drained::Clean,
            Err(_) => Drained::GraceExpired,
        };
        self.abort_tx.send_replace(true);
        outcome
    }
}

impl Signals {
    /// Resolves once draining has started (immediately if it already has).
    pub async fn draining(&mut self) {
        // An error means the owner is gone, which is a shutdown as well.
        let _ = self.drain.wait_for(|v| *v).await;
    }

    /// Resolves once the grace period is over and remaining work must stop.
    pub async fn aborting(&mut self) {
        let _ = self.abort.wait_for(|v| *v).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// SIGTERM/SIGINT listeners (what systemd, docker and Ctrl-C send).
///
/// Install before opening listeners: once installed, a signal can no longer
/// kill the process with the default action mid-request.
#[derive(Debug)]
pub struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    pub fn install() -> std::io::Result<Termination> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Termination {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
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
}
