//! The global client connection limit, `[proxy] max_connections` (HAProxy's global
//! `maxconn`): the client connections the router holds at once across its listeners,
//! scoped and passthrough. At the limit the accept loops stop taking connections, which
//! wait in the kernel's listen backlog (refused once that is full) until some close;
//! nothing is accepted only to be closed. One warning says so when the limit is reached,
//! one line when the router is back under it (docs/ARCHITECTURE.md §4).
//!
//! The count is also the `open` client connection gauge of `/metrics`:
//! [`crate::metrics::OpenConnection`] takes a place ([`ConnectionLimit::try_take`]) and
//! gives it back when dropped ([`ConnectionLimit::release`]).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

/// Descriptors set aside from the open-file limit for everything but client connections
/// and their upstream connections: listeners, the admin listener, health checks, eBPF
/// maps and programs, netlink, log files and the runtime's own (a fixed amount: none of
/// them grows with traffic). Never more than half the limit.
const RESERVED_FILES: u64 = 256;

/// The limit in force and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxConnections {
    pub max: usize,
    /// The open-file limit the router runs with (`None`: it could not be read).
    pub open_files: Option<u64>,
    /// Set by `[proxy] max_connections`; otherwise derived from `open_files`.
    pub configured: bool,
}

impl MaxConnections {
    /// `[proxy] max_connections`, or when it is unset what the open-file limit allows:
    /// each proxied connection needs two descriptors, the client's and its upstream's
    /// (like HAProxy, which derives its `maxconn` from `ulimit -n` the same way).
    pub fn resolve(configured: Option<usize>) -> MaxConnections {
        let open_files = open_file_limit().ok();
        match configured {
            Some(max) => MaxConnections {
                max,
                open_files,
                configured: true,
            },
            None => MaxConnections {
                max: open_files.map_or(usize::MAX, from_open_files),
                open_files,
                configured: false,
            },
        }
    }

    /// Why `[proxy] max_connections` cannot be reached: the open-file limit runs out
    /// first, and accepts then fail instead of waiting their turn.
    pub fn unreachable(&self) -> Option<String> {
        let files = self.open_files?;
        let needed = files_needed(self.max);
        (self.configured && needed > files).then(|| {
            format!(
                "[proxy] max_connections = {} needs about {needed} open files (two per \
                 connection, {RESERVED_FILES} for the rest), but the router may open {files}: \
                 accepts will fail with \"too many open files\" before the limit is reached. \
                 Raise LimitNOFILE in the unit (or lower max_connections, or remove it to \
                 derive it from the open-file limit)",
                self.max
            )
        })
    }

    /// What to raise, for the log line that says the limit was reached.
    fn remedy(&self) -> String {
        if self.configured {
            format!(
                "raise [proxy] max_connections if this load is expected, and LimitNOFILE in \
                 the unit with it (two open files per connection and {RESERVED_FILES} more; \
                 the router may open {} now)",
                self.open_files
                    .map_or_else(|| "unknown".to_owned(), |f| f.to_string())
            )
        } else {
            format!(
                "the limit is derived from the open-file limit ({}): raise LimitNOFILE in \
                 the unit if this load is expected, or set [proxy] max_connections",
                self.open_files
                    .map_or_else(|| "unknown".to_owned(), |f| f.to_string())
            )
        }
    }
}

/// The default limit for an open-file limit of `files`.
fn from_open_files(files: u64) -> usize {
    let usable = files.saturating_sub(RESERVED_FILES.min(files / 2));
    usize::try_from(usable / 2).unwrap_or(usize::MAX).max(1)
}

fn files_needed(connections: usize) -> u64 {
    (connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVED_FILES)
}

/// `RLIMIT_NOFILE`'s soft limit: the descriptors this process may open.
fn open_file_limit() -> std::io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rl.rlim_cur)
}

/// Raises the soft open-file limit to the hard one, as HAProxy (to what its `maxconn`
/// needs) and Go's runtime do: the soft limit is often 1024 for compatibility with
/// `select`, which the router does not use, while the hard one (`LimitNOFILE` in the unit)
/// is what the operator meant. Returns the limits before and after.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = rl.rlim_cur;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` is a valid, initialised rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, rl.rlim_cur))
}

/// The count of client connections and its limit, shared by every accept loop and client
/// connection of one router (inside [`crate::metrics::ClientGauges`]); both outlive
/// reloads.
#[derive(Debug, Default)]
pub struct ConnectionLimit(Arc<State>);

#[derive(Debug)]
struct State {
    /// Client connections open (accepted and not yet closed).
    open: AtomicI64,
    max: AtomicUsize,
    /// The rest of what [`ConnectionLimit::set`] was given, for the log lines and `/status`.
    settings: Mutex<MaxConnections>,
    /// Tasks waiting for the count to fall: only then does a close wake anyone.
    waiting: AtomicUsize,
    /// The limit was reached and the router is not back under it yet.
    at_limit: AtomicBool,
    /// Times the limit was reached (one warning each).
    reached: AtomicU64,
    /// Times an accept loop found no room, within or outside an episode.
    full: AtomicU64,
    room: Notify,
}

impl Default for State {
    /// No limit (until [`ConnectionLimit::set`]).
    fn default() -> Self {
        State {
            open: AtomicI64::new(0),
            max: AtomicUsize::new(usize::MAX),
            settings: Mutex::new(MaxConnections {
                max: usize::MAX,
                open_files: None,
                configured: false,
            }),
            waiting: AtomicUsize::new(0),
            at_limit: AtomicBool::new(false),
            reached: AtomicU64::new(0),
            full: AtomicU64::new(0),
            room: Notify::new(),
        }
    }
}

/// Counted in [`State::waiting`] while alive (a waiting accept loop can be dropped by a
/// drain or a reload).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long the count must stay well under the limit (a tenth under it) before the
/// router says it is back under: a router hovering at the limit (one in, one out, even
/// at a limit of 2) logs nothing more.
const BACK_UNDER_AFTER: Duration = Duration::from_secs(1);

/// The limit as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LimitView {
    /// Client connections open now.
    pub open: i64,
    /// `[proxy] max_connections` in force.
    pub max: usize,
    /// `"config"` (`[proxy] max_connections`) or `"open files"` (derived from the
    /// open-file limit).
    pub max_from: String,
    /// The open-file limit the router runs with.
    pub open_files: Option<u64>,
    /// Reached and not back under it yet: new connections wait in the listen backlog.
    pub at_limit: bool,
    /// Times the limit was reached since the router started.
    pub reached: u64,
}

impl ConnectionLimit {
    /// Enforces `max` from now on (start and reload); the count carries on.
    pub fn set(&self, max: MaxConnections) {
        if let Ok(mut settings) = self.0.settings.lock() {
            *settings = max;
        }
        self.0.max.store(max.max, Ordering::SeqCst);
        // A raised limit may have room for the accept loops waiting.
        self.0.room.notify_waiters();
    }

    /// Client connections open now.
    pub fn open(&self) -> i64 {
        self.0.open.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.0.max.load(Ordering::SeqCst)
    }

    /// Times the limit was reached.
    pub fn reached(&self) -> u64 {
        self.0.reached.load(Ordering::Relaxed)
    }

    /// Counts one more connection whatever the limit (tests).
    #[cfg(test)]
    pub fn take(&self) {
        self.0.open.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one more connection if there is room for it.
    pub fn try_take(&self) -> bool {
        let max = self.max();
        self.0
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (usize::try_from(n).unwrap_or(0) < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A connection closed: wakes whoever waits for the count to fall.
    pub fn release(&self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.room.notify_waiters();
        }
    }

    /// Returns once the count is under the limit; the first time it finds none since the
    /// router was last back under it, logs the warning (and watches for the way back).
    pub async fn room(&self) {
        let state = &self.0;
        loop {
            if state.open() < state.max() {
                return;
            }
            // From its creation on, `notified` receives every `notify_waiters`; counting
            // this wait before looking again means a close that the look misses sees it.
            let notified = state.room.notified();
            let _waiting = Waiting::enter(&state.waiting);
            if state.open() < state.max() {
                return;
            }
            state.full.fetch_add(1, Ordering::SeqCst);
            if !state.at_limit.swap(true, Ordering::SeqCst) {
                self.reached_now();
            }
            notified.await;
        }
    }

    fn reached_now(&self) {
        let state = &self.0;
        state.reached.fetch_add(1, Ordering::Relaxed);
        let settings = state.settings();
        let open = state.open.load(Ordering::SeqCst);
        tracing::warn!(
            max_connections = settings.max,
            open,
            "client connection limit reached: {open} connections open, the most the router \
             holds at once; new connections wait in the listen backlog (refused once it is \
             full) until some close; {}",
            settings.remedy()
        );
        tokio::spawn(until_back_under(self.0.clone()));
    }

    /// The limit and the count as `/status` shows them.
    pub fn view(&self) -> LimitView {
        let settings = self.0.settings();
        LimitView {
            open: self.open(),
            max: settings.max,
            max_from: if settings.configured {
                "config"
            } else {
                "open files"
            }
            .to_owned(),
            open_files: settings.open_files,
            at_limit: self.0.at_limit.load(Ordering::Relaxed),
            reached: self.reached(),
        }
    }
}

impl State {
    fn open(&self) -> usize {
        usize::try_from(self.open.load(Ordering::SeqCst)).unwrap_or(0)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    fn settings(&self) -> MaxConnections {
        match self.settings.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// Spawned when the limit is reached: ends the episode, with the info line, once the
/// count has stayed a tenth under the limit for [`BACK_UNDER_AFTER`] without an accept
/// loop finding it full again.
async fn until_back_under(state: Arc<State>) {
    loop {
        loop {
            let notified = state.room.notified();
            let _waiting = Waiting::enter(&state.waiting);
            if state.open() <= low_water(state.max()) {
                break;
            }
            notified.await;
        }
        let full = state.full.load(Ordering::SeqCst);
        tokio::time::sleep(BACK_UNDER_AFTER).await;
        let max = state.max();
        let open = state.open();
        if state.full.load(Ordering::SeqCst) == full && open <= low_water(max) {
            state.at_limit.store(false, Ordering::SeqCst);
            tracing::info!(
                max_connections = max,
                open,
                "client connections back under the limit: {open} open of {max}; the limit \
                 was reached {} times since the router started",
                state.reached.load(Ordering::Relaxed)
            );
            return;
        }
    }
}

/// How far under `max` the count must fall for the router to be back under the limit: a
/// tenth of it (one for small limits).
fn low_water(max: usize) -> usize {
    max - (max / 10).max(1).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: usize) -> ConnectionLimit {
        let l = ConnectionLimit::default();
        l.set(MaxConnections {
            max,
            open_files: Some(1024),
            configured: true,
        });
        l
    }

    #[test]
    fn the_default_follows_the_open_file_limit() {
        assert_eq!(from_open_files(1_048_576), (1_048_576 - 256) / 2);
        assert_eq!(from_open_files(1024), 384);
        // Small limits keep half for connections rather than nothing.
        assert_eq!(from_open_files(256), 64);
        assert_eq!(from_open_files(0), 1);
        let derived = MaxConnections::resolve(None);
        assert!(!derived.configured);
        assert_eq!(
            derived.max,
            from_open_files(open_file_limit().unwrap()),
            "{derived:?}"
        );
        assert_eq!(MaxConnections::resolve(Some(7)).max, 7);
    }

    #[test]
    fn a_limit_the_open_files_cannot_hold_is_named() {
        let m = |max, configured| MaxConnections {
            max,
            open_files: Some(1024),
            configured,
        };
        assert!(m(384, true).unreachable().is_none());
        let warning = m(10_000, true).unreachable().unwrap();
        assert!(warning.contains("LimitNOFILE"), "{warning}");
        assert!(warning.contains("20256"), "{warning}");
        assert!(
            m(10_000, false).unreachable().is_none(),
            "derived: fits by construction"
        );
    }

    #[test]
    fn places_are_taken_up_to_the_limit_and_given_back() {
        let l = limit(2);
        assert!(l.try_take() && l.try_take());
        assert!(!l.try_take(), "at the limit");
        assert_eq!(l.open(), 2);
        l.release();
        assert!(l.try_take());
    }

    #[test]
    fn back_under_is_a_tenth_under() {
        assert_eq!(low_water(40_000), 36_000);
        assert_eq!(low_water(20), 18);
        assert_eq!(low_water(2), 1);
        assert_eq!(low_water(1), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_episode_is_one_warning_however_the_count_hovers() {
        let l = std::sync::Arc::new(limit(2));
        l.take();
        l.take();
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            waiters.push(tokio::spawn(async move { l.room().await }));
        }
        tokio::task::yield_now().await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "no room at the limit"
        );
        assert_eq!((l.reached(), l.view().at_limit), (1, true));
        // One out, one in, within the second: still the same episode.
        l.release();
        for w in waiters.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("woken by the close")
                .unwrap();
        }
        assert!(l.try_take());
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.room().await });
        tokio::time::sleep(BACK_UNDER_AFTER * 3).await;
        assert!(!waiter.is_finished());
        assert_eq!((l.reached(), l.view().at_limit), (1, true));
        // Well under for long enough: the episode ends.
        l.release();
        waiter.await.unwrap();
        tokio::time::sleep(BACK_UNDER_AFTER * 2).await;
        assert!(!l.view().at_limit);
        assert_eq!(l.0.waiting.load(Ordering::SeqCst), 0);
        // The next time is a new episode.
        l.take();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.room().await });
        tokio::task::yield_now().await;
        assert_eq!(l.reached(), 2);
        waiter.abort();
    }

    #[tokio::test]
    async fn a_raised_limit_wakes_the_waiting_loops() {
        let l = std::sync::Arc::new(limit(1));
        l.take();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        l.set(MaxConnections::resolve(Some(2)));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the reload")
            .unwrap();
    }
}
