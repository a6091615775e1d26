//! Keep-alive upstream connections, per upstream address: most recently used
//! first (the warmest, least likely to have been closed by the backend), a cap
//! per address, and an age limit below common backend keep-alive timeouts.
//!
//! TLS connections are kept apart, per [`TlsHop`] (the name and trust they were
//! verified with): a cleartext connection is never lent to a TLS server nor the reverse,
//! and a connection verified under a table's trust is not lent to another table's hop.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::io::UpstreamIo;
use crate::proxy::idle::IdleIo;
use crate::server_slots::Slot;
use crate::tls::TlsHop;

/// Idle connections kept per upstream; beyond that they are closed rather than
/// left to pile up after a burst.
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// Longest an idle connection is kept. Below the 5 s keep-alive of Apache
/// (keystone, horizon) and our own request-header timeout, so the pool rarely
/// picks a connection the server is closing at that very moment.
pub const POOL_IDLE_MAX: Duration = Duration::from_secs(4);

/// A pooled connection keeps its inactivity timer (unarmed or armed for a deadline now
/// past or soon superseded): the next lease re-arms it instead of registering a new one.
struct Idle {
    stream: IdleIo<UpstreamIo>,
    since: Instant,
}

/// The idle connections to one address, oldest first in each queue.
#[derive(Default)]
struct Conns {
    plain: VecDeque<Idle>,
    /// By hop, compared by identity; the `Arc` held here keeps its address from being
    /// reused by another hop while connections verified by it wait.
    tls: Vec<(Arc<TlsHop>, VecDeque<Idle>)>,
}

impl Conns {
    fn queue(&mut self, tls: Option<&Arc<TlsHop>>) -> Option<&mut VecDeque<Idle>> {
        match tls {
            None => Some(&mut self.plain),
            Some(hop) => self
                .tls
                .iter_mut()
                .find(|(h, _)| Arc::ptr_eq(h, hop))
                .map(|(_, q)| q),
        }
    }

    fn len(&self) -> usize {
        self.plain.len() + self.tls.iter().map(|(_, q)| q.len()).sum::<usize>()
    }
}

/// Keyed by configured upstream addresses, never by client input: foldhash's fast hash
/// is safe here, and SipHash cost 1.3 % of a request's instructions (callgrind, bench j).
type Slots = HashMap<Arc<str>, Conns, foldhash::fast::RandomState>;

/// The idle connections of every upstream.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Slots>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self
            .idle
            .lock()
            .map(|m| m.values().map(Conns::len).sum())
            .unwrap_or(0);
        f.debug_struct("Pool").field("idle", &idle).finish()
    }
}

/// A connection lent to one exchange; [`Lease::release`] gives it back.
#[derive(Debug)]
pub struct Lease {
    pub stream: IdleIo<UpstreamIo>,
    /// Taken from the pool (so it may have been closed by the backend meanwhile).
    pub reused: bool,
    /// The server's `maxconn` slot, once the exchange has a response to relay: given back
    /// with the connection, whether to the pool or closed (`None` when unlimited).
    pub slot: Option<Slot>,
    pool: Arc<Pool>,
    upstream: Arc<str>,
    /// The hop a TLS connection was verified by; it goes back to that hop's queue.
    tls: Option<Arc<TlsHop>>,
}

impl Lease {
    pub fn new(
        stream: IdleIo<UpstreamIo>,
        reused: bool,
        pool: Arc<Pool>,
        (upstream, tls): (Arc<str>, Option<Arc<TlsHop>>),
    ) -> Self {
        Lease {
            stream,
            reused,
            slot: None,
            pool,
            upstream,
            tls,
        }
    }

    /// The exchange ended cleanly and the backend keeps the connection open. The slot
    /// goes back after the connection, so the request it wakes finds it pooled.
    pub fn release(self) {
        let Lease {
            mut stream,
            pool,
            upstream,
            tls,
            slot,
            ..
        } = self;
        if stream.get_mut().reusable() {
            pool.put(upstream, tls, stream);
        }
        drop(slot);
    }
}

impl Pool {
    /// A pool whose expired connections are closed every [`POOL_IDLE_MAX`] by a
    /// background task (which ends with the pool).
    pub fn start() -> Arc<Pool> {
        let pool = Arc::new(Pool::default());
        let weak = Arc::downgrade(&pool);
        tokio::spawn(sweep(weak));
        pool
    }

    /// The most recently used live connection to `upstream`, cleartext (`tls` is
    /// `None`) or made by the hop `tls`, if any. Costs no syscall: a connection the
    /// backend closed (or wrote to, unasked: a TLS close_notify too) is readable
    /// according to the reactor and is dropped here.
    pub fn take(&self, upstream: &str, tls: Option<&Arc<TlsHop>>) -> Option<IdleIo<UpstreamIo>> {
        let mut idle = self.idle.lock().ok()?;
        let slot = idle.get_mut(upstream)?.queue(tls)?;
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(conn) = slot.pop_back() {
            if conn.since.elapsed() >= POOL_IDLE_MAX {
                // Everything older sits in front of it: all expired.
                slot.clear();
                return None;
            }
            if conn
                .stream
                .get_ref()
                .tcp()
                .poll_read_ready(&mut cx)
                .is_pending()
            {
                return Some(conn.stream);
            }
        }
        None
    }

    fn put(&self, upstream: Arc<str>, tls: Option<Arc<TlsHop>>, stream: IdleIo<UpstreamIo>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let conns = idle.entry(upstream).or_default();
        let slot = match tls {
            None => &mut conns.plain,
            Some(hop) => match conns.tls.iter().position(|(h, _)| Arc::ptr_eq(h, &hop)) {
                Some(i) => &mut conns.tls[i].1,
                None => {
                    conns.tls.push((hop, VecDeque::new()));
                    &mut conns.tls.last_mut().expect("just pushed").1
                }
            },
        };
        if slot.len() >= MAX_IDLE_PER_UPSTREAM {
            return;
        }
        slot.push_back(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Closes expired connections; drops empty slots.
    fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let expire = |slot: &mut VecDeque<Idle>| {
            while slot
                .front()
                .is_some_and(|c| c.since.elapsed() >= POOL_IDLE_MAX)
            {
                slot.pop_front();
            }
            !slot.is_empty()
        };
        idle.retain(|_, conns| {
            expire(&mut conns.plain);
            // An emptied hop's queue goes, and its hop with it (a replaced table's).
            conns.tls.retain_mut(|(_, slot)| expire(slot));
            conns.len() > 0
        });
    }

    /// Idle connections kept, per upstream (`host:port`), for `/metrics`.
    pub fn idle_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.idle
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.len())).collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    pub fn idle_count(&self, upstream: &str) -> usize {
        self.idle
            .lock()
            .map(|m| m.get(upstream).map_or(0, Conns::len))
            .unwrap_or(0)
    }
}

async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(POOL_IDLE_MAX);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    fn pooled(tcp: TcpStream) -> IdleIo<UpstreamIo> {
        IdleIo::new(UpstreamIo::Plain(tcp), Duration::from_secs(60))
    }

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn most_recent_live_connection_is_lent_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::start();
        let key: Arc<str> = Arc::from("backend");
        let (a, _a_srv) = pair(&listener).await;
        let (b, _b_srv) = pair(&listener).await;
        let b_port = b.local_addr().unwrap().port();
        pool.put(key.clone(), None, pooled(a));
        pool.put(key.clone(), None, pooled(b));
        assert_eq!(pool.idle_count("backend"), 2);
        let got = pool.take("backend", None).unwrap();
        assert_eq!(got.get_ref().tcp().local_addr().unwrap().port(), b_port);
        assert!(pool.take("other", None).is_none());
    }

    #[tokio::test]
    async fn connections_closed_by_the_backend_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::start();
        let key: Arc<str> = Arc::from("backend");
        let (live, _live_srv) = pair(&listener).await;
        let live_port = live.local_addr().unwrap().port();
        let (closed, mut closed_srv) = pair(&listener).await;
        closed_srv.shutdown().await.unwrap();
        drop(closed_srv);
        // Once this returns, the reactor has seen the FIN.
        closed.readable().await.unwrap();
        pool.put(key.clone(), None, pooled(live));
        pool.put(key.clone(), None, pooled(closed));
        let got = pool.take("backend", None).unwrap();
        assert_eq!(got.get_ref().tcp().local_addr().unwrap().port(), live_port);
        assert_eq!(pool.idle_count("backend"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_connections_are_neither_lent_nor_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::start();
        let (a, _a_srv) = pair(&listener).await;
        pool.put(Arc::from("backend"), None, pooled(a));
        tokio::time::advance(POOL_IDLE_MAX + Duration::from_millis(1)).await;
        assert!(pool.take("backend", None).is_none());
        let (b, _b_srv) = pair(&listener).await;
        pool.put(Arc::from("backend"), None, pooled(b));
        tokio::time::advance(POOL_IDLE_MAX * 2).await;
        // The sweeper ran meanwhile.
        tokio::task::yield_now().await;
        assert_eq!(pool.idle_count("backend"), 0);
    }

    #[tokio::test]
    async fn at_most_the_cap_is_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::start();
        let mut servers = Vec::new();
        for _ in 0..MAX_IDLE_PER_UPSTREAM + 3 {
            let (c, s) = pair(&listener).await;
            servers.push(s);
            pool.put(Arc::from("backend"), None, pooled(c));
        }
        assert_eq!(pool.idle_count("backend"), MAX_IDLE_PER_UPSTREAM);
    }
}
