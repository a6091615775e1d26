//! Serving certificates replaced on disk (a renewal by certbot, Kolla's Let's Encrypt
//! support, or an operator's copy) without a reload: their files are polled, and a
//! changed set is loaded and swapped in for the next handshakes.
//!
//! Polled rather than watched with inotify: renewals often re-point a symlink
//! (`live/` → `archive/`), which inotify on the path does not report, and two `stat`
//! calls per file every few seconds cost nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Refresh, Served};

/// How often the certificate files are looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Until `stop` resolves, every `interval` reloads each of `served()`'s certificate sets
/// whose files changed, and logs what it did (a set it cannot load is logged once per
/// change, and the certificates served before stay).
pub async fn watch_certificates(
    served: impl Fn() -> Vec<Arc<Served>>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        for set in served() {
            let file = set.files.certificate.display();
            match set.reload_if_changed() {
                Refresh::Unchanged => {}
                Refresh::Reloaded { warnings } => {
                    let identities = set.store.identities();
                    for id in &identities {
                        tracing::info!(
                            certificate = %id.files.certificate.display(),
                            names = %id.names.join(","),
                            days_left = id.days_left(std::time::SystemTime::now()),
                            "certificate changed on disk: serving it to new connections"
                        );
                    }
                    for w in warnings {
                        tracing::warn!("{w}");
                    }
                }
                Refresh::Refused(e) => {
                    tracing::warn!(
                        certificate = %file,
                        "certificate files changed but cannot be served ({e}); the previous \
                         certificate is still served: fix the files and it is picked up"
                    );
                }
            }
        }
    }
}
