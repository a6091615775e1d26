//! Per-server connection limits (HAProxy's `maxconn`) and the queue of requests waiting
//! for a slot (`timeout queue`), docs/ARCHITECTURE.md §3.10.
//!
//! A limited server has [`Slots`]: one slot per exchange in progress on it, taken before
//! connecting and given back when the exchange ends (the response body relayed, or the
//! upstream connection dropped), so a 6 h upload holds its slot for 6 h. An unlimited
//! server has none, and a request to it pays one `Option` check here.
//!
//! A request takes the first of its candidate servers with a free slot ([`Picker`]):
//! round robin skips a full server when another has room; `source` keeps the client on
//! its server and waits for it, as HAProxy queues a request on the server a hash chose.
//! When every candidate is full, the request waits for whichever frees a slot first,
//! first come first served, up to `[timeouts] queue`, then gets a 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::balance::Server;

/// Largest `maxconn` accepted: more exchanges than the router's descriptors allow
/// (`LimitNOFILE=1048576`, two sockets each) is a typo, not a limit.
pub const MAXCONN_MAX: u32 = 1_000_000;

/// The slots of one limited server, shared by every request to it and kept across
/// reloads while the server stays (a slot taken before a reload is given back to the same
/// count after it).
#[derive(Debug)]
pub struct Slots {
    /// Free slots. tokio's semaphore hands a released slot to the longest waiter and
    /// never to a newcomer while someone waits: the queue is FIFO per server.
    free: Semaphore,
    /// The limit in force.
    max: AtomicU32,
    in_use: AtomicU32,
    /// Requests waiting now whose balanced pick this server was (each counted once).
    queued: AtomicU32,
    /// Requests that gave up waiting, counted on their balanced pick.
    queue_timeouts: AtomicU64,
    /// Slots to retire as they come back, after a reload lowered the limit below the
    /// slots in use then.
    owed: AtomicU32,
}

/// An exchange in progress on a limited server; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

/// What one look at a server's slots found.
enum Try {
    Taken(Slot),
    Full,
    /// The limit was removed by a reload while requests waited: go ahead without a slot.
    Lifted,
}

impl Slots {
    /// `max` free slots (`max` > 0).
    pub fn new(max: u32) -> Arc<Slots> {
        Arc::new(Slots {
            free: Semaphore::new(max as usize),
            max: AtomicU32::new(max),
            in_use: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            queue_timeouts: AtomicU64::new(0),
            owed: AtomicU32::new(0),
        })
    }

    /// The limit in force.
    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// Exchanges in progress.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot now, counted on the server the balancer picked for them.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests that waited `[timeouts] queue` in vain since the router started.
    pub fn queue_timeouts(&self) -> u64 {
        self.queue_timeouts.load(Ordering::Relaxed)
    }

    /// Whether a reload removed this limit ([`Slots::lift`]).
    pub fn lifted(&self) -> bool {
        self.free.is_closed()
    }

    fn try_take(self: &Arc<Self>) -> Try {
        match self.free.try_acquire() {
            Ok(permit) => {
                permit.forget();
                Try::Taken(self.taken())
            }
            Err(TryAcquireError::NoPermits) => Try::Full,
            Err(TryAcquireError::Closed) => Try::Lifted,
        }
    }

    /// Waits for a slot; `None` when the limit is lifted meanwhile. Cancel-safe: a
    /// waiter dropped before it is served leaves the queue, and a slot it was handed
    /// goes to the next one.
    async fn take(self: Arc<Self>) -> Option<Slot> {
        let permit = self.free.acquire().await.ok()?;
        permit.forget();
        Some(self.taken())
    }

    fn taken(self: &Arc<Self>) -> Slot {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Slot(Arc::clone(self))
    }

    /// A reload's new limit. Raising it frees slots at once (to the waiters first);
    /// lowering it below the slots in use retires the difference as exchanges end, so the
    /// server never has more than the new limit once they have.
    pub fn set_max(&self, max: u32) {
        let old = self.max.swap(max, Ordering::Relaxed);
        if max > old {
            let mut add = max - old;
            // Slots still owed from an earlier cut are simply not retired.
            let _ = self
                .owed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                    let keep = owed.min(add);
                    add = max - old - keep;
                    Some(owed - keep)
                });
            self.free.add_permits(add as usize);
        } else if max < old {
            let cut = old - max;
            let retired = self.free.forget_permits(cut as usize) as u32;
            self.owed.fetch_add(cut - retired, Ordering::Relaxed);
        }
    }

    /// A reload removed the limit: every waiter goes ahead at once, and later requests
    /// take no slot here.
    pub fn lift(&self) {
        self.free.close();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.0;
        slots.in_use.fetch_sub(1, Ordering::Relaxed);
        let retired = slots
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| {
                owed.checked_sub(1)
            })
            .is_ok();
        if !retired {
            slots.free.add_permits(1);
        }
    }
}

/// A response body holding its server's slot until it ends (passthrough HTTP, whose
/// upstream body is hyper's): the slot goes back at its last frame, an error, or when
/// the body is dropped unfinished.
#[derive(Debug)]
pub struct SlotBody<B> {
    inner: B,
    slot: Option<Slot>,
}

impl<B> SlotBody<B> {
    pub fn new(inner: B, slot: Option<Slot>) -> Self {
        SlotBody { inner, slot }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            this.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// No slot freed on any server a request could go to within `[timeouts] queue`.
#[derive(Debug, thiserror::Error)]
#[error(
    "no slot freed within {} ([timeouts] queue): {servers} server(s) at their maxconn",
    humantime::format_duration(*.queue)
)]
pub struct QueueTimeout {
    /// The `[timeouts] queue` that ran out (the wait itself is [`Picker::waited`]).
    pub queue: Duration,
    /// How many full servers it waited for.
    pub servers: usize,
}

/// Counts a request in its pick's queue while it waits.
struct Waiting<'a>(&'a Slots);

impl<'a> Waiting<'a> {
    fn new(slots: &'a Slots) -> Self {
        slots.queued.fetch_add(1, Ordering::Relaxed);
        Waiting(slots)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The servers one request may still go to, in the balancer's order, and the slots it
/// takes on them. Each server at most once; allocates only when a server is full.
#[derive(Debug)]
pub struct Picker<'a, I> {
    candidates: I,
    /// `source`: wait for each candidate in turn instead of skipping a full one.
    affinity: bool,
    /// `[timeouts] queue`: the whole time a request may spend waiting, over every wait.
    budget: Duration,
    deadline: Option<Instant>,
    /// Candidates found full and not yet served, oldest pick first.
    full: Vec<&'a Server>,
    waited: Duration,
}

impl<'a, I: Iterator<Item = &'a Server>> Picker<'a, I> {
    /// Picks among `candidates` (the balancer's order); `affinity` keeps a client on its
    /// server (`balance source`); `queue` bounds the waiting.
    pub fn new(candidates: I, affinity: bool, queue: Duration) -> Self {
        Picker {
            candidates,
            affinity,
            budget: queue,
            deadline: None,
            full: Vec::new(),
            waited: Duration::ZERO,
        }
    }

    /// Time spent waiting for slots so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The next server to send to, with its slot (`None` for an unlimited server), waiting
    /// when every remaining candidate is full; `Ok(None)` when no candidate is left.
    pub async fn next(&mut self) -> Result<Option<(&'a Server, Option<Slot>)>, QueueTimeout> {
        for server in self.candidates.by_ref() {
            let Some(slots) = &server.slots else {
                return Ok(Some((server, None)));
            };
            match slots.try_take() {
                Try::Taken(slot) => return Ok(Some((server, Some(slot)))),
                Try::Lifted => return Ok(Some((server, None))),
                Try::Full => {
                    self.full.push(server);
                    if self.affinity {
                        break;
                    }
                }
            }
        }
        if self.full.is_empty() {
            return Ok(None);
        }
        // Boxed: the waiting's state costs an allocation when a request waits, instead of
        // growing every request's future.
        Box::pin(self.wait()).await.map(Some)
    }

    /// Waits for the first of the full candidates to free a slot.
    async fn wait(&mut self) -> Result<(&'a Server, Option<Slot>), QueueTimeout> {
        let started = Instant::now();
        let deadline = *self.deadline.get_or_insert(started + self.budget);
        let pick = self.full[0];
        let pick_slots = pick.slots.as_deref();
        let waiting = pick_slots.map(Waiting::new);
        let won = tokio::time::timeout_at(deadline, first_free(&self.full)).await;
        drop(waiting);
        self.waited += started.elapsed();
        match won {
            Ok((index, slot)) => Ok((self.full.remove(index), slot)),
            Err(_) => {
                if let Some(slots) = pick_slots {
                    slots.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Err(QueueTimeout {
                    queue: self.budget,
                    servers: self.full.len(),
                })
            }
        }
    }
}

/// Which of `servers` frees a slot first, and the slot (`None`: its limit was lifted).
async fn first_free(servers: &[&Server]) -> (usize, Option<Slot>) {
    let slots = |s: &Server| s.slots.clone();
    if let [one] = servers {
        return match slots(one) {
            Some(s) => (0, s.take().await),
            None => (0, None),
        };
    }
    // Several full servers (round robin): wait in each one's queue, keep the first slot;
    // the other waits are dropped, which gives back any slot they were handed meanwhile.
    let waits: Vec<Pin<Box<dyn Future<Output = Option<Slot>> + Send>>> = servers
        .iter()
        .map(|s| match slots(s) {
            Some(s) => Box::pin(s.take()) as Pin<Box<dyn Future<Output = _> + Send>>,
            None => Box::pin(std::future::ready(None)),
        })
        .collect();
    let (slot, index, _rest) = futures_util::future::select_all(waits).await;
    (index, slot)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::health::Health;

    fn server(name: &str, maxconn: u32) -> Server {
        let mut s = Server::new(Health::new(name.to_owned()));
        s.slots = (maxconn > 0).then(|| Slots::new(maxconn));
        s
    }

    fn names(taken: &[(&Server, Option<Slot>)]) -> Vec<String> {
        taken
            .iter()
            .map(|(s, _)| s.health.addr().to_owned())
            .collect()
    }

    const QUEUE: Duration = Duration::from_secs(60);

    /// `f`, or a failed test after 10 s (a wait the code under test never ends).
    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("stalled")
    }

    /// Polls once: whether the future is still waiting.
    fn pending<F: Future>(f: Pin<&mut F>) -> bool {
        futures_util::FutureExt::now_or_never(f).is_none()
    }

    #[test]
    fn picking_carries_no_waiting_state_unless_it_waits() {
        // The queue's state (hundreds of bytes) is boxed when a request waits: every
        // request's future grows by a few words only.
        let servers = [server("a", 0)];
        let mut picker = Picker::new(servers.iter(), false, QUEUE);
        let next = picker.next();
        assert!(std::mem::size_of_val(&next) <= 4 * std::mem::size_of::<usize>());
    }

    #[tokio::test]
    async fn unlimited_servers_take_no_slot() {
        let servers = [server("a", 0), server("b", 0)];
        let mut picker = Picker::new(servers.iter(), false, QUEUE);
        let (s, slot) = picker.next().await.unwrap().unwrap();
        assert_eq!(s.health.addr(), "a");
        assert!(slot.is_none());
        let (s, _) = picker.next().await.unwrap().unwrap();
        assert_eq!(s.health.addr(), "b");
        assert!(picker.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn slots_are_counted_and_given_back() {
        let a = server("a", 2);
        let slots = a.slots.clone().unwrap();
        let one = [&a];
        let first = Picker::new(one.into_iter(), false, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        let second = Picker::new(one.into_iter(), false, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!((slots.in_use(), slots.max()), (2, 2));
        drop(first);
        assert_eq!(slots.in_use(), 1);
        drop(second);
        assert_eq!(slots.in_use(), 0);
    }

    #[tokio::test]
    async fn round_robin_skips_a_full_server_and_source_waits_for_its_own() {
        let servers = [server("a", 1), server("b", 1)];
        let held = Picker::new(servers.iter(), false, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held.0.health.addr(), "a");
        // Round robin: a is full, b has room.
        let mut picker = Picker::new(servers.iter(), false, QUEUE);
        let got = picker.next().await.unwrap().unwrap();
        assert_eq!(names(&[got]), ["b"]);
        assert_eq!(picker.waited(), Duration::ZERO);

        // Source: the client's server is a; it waits for a although b is free.
        let servers = [server("a", 1), server("b", 1)];
        let held = Picker::new(servers.iter(), true, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        let mut picker = Picker::new(servers.iter(), true, QUEUE);
        let (s, slot) = {
            let waiting = picker.next();
            tokio::pin!(waiting);
            assert!(pending(waiting.as_mut()), "source went elsewhere");
            assert_eq!(servers[0].slots.as_ref().unwrap().queued(), 1);
            drop(held);
            within(waiting).await.unwrap().unwrap()
        };
        assert_eq!(s.health.addr(), "a");
        assert!(slot.is_some());
        assert_eq!(servers[0].slots.as_ref().unwrap().queued(), 0);
    }

    #[tokio::test]
    async fn waiters_are_served_first_come_first_served() {
        let a = Arc::new(server("a", 1));
        let slots = a.slots.clone().unwrap();
        let held = match slots.try_take() {
            Try::Taken(slot) => slot,
            _ => panic!("room expected"),
        };
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (a, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let one = [&*a];
                let got = Picker::new(one.into_iter(), false, QUEUE).next().await;
                order.lock().unwrap().push(i);
                drop(got);
            }));
            // Each waiter is in the queue before the next arrives.
            for _ in 0..1000 {
                if slots.queued() > i {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(slots.queued(), i + 1, "waiter {i} not queued");
        }
        drop(held);
        for t in tasks {
            within(t).await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
        assert_eq!(a.slots.as_ref().unwrap().in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn every_server_full_waits_for_the_first_free_then_times_out() {
        let servers = [server("a", 1), server("b", 1)];
        let held_a = Picker::new(servers[..1].iter(), false, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        let held_b = Picker::new(servers[1..].iter(), false, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        // b frees a slot first: the waiter takes it although a was the pick.
        let mut picker = Picker::new(servers.iter(), false, QUEUE);
        let (s, slot) = {
            let waiting = picker.next();
            tokio::pin!(waiting);
            assert!(pending(waiting.as_mut()));
            tokio::time::advance(Duration::from_secs(5)).await;
            drop(held_b);
            waiting.await.unwrap().unwrap()
        };
        assert_eq!(s.health.addr(), "b");
        assert_eq!(picker.waited(), Duration::from_secs(5));

        // Nothing frees: the queue time runs out, counted on the pick.
        let mut picker = Picker::new(servers.iter(), false, QUEUE);
        let err = picker.next().await.unwrap_err();
        assert_eq!((err.queue, err.servers), (QUEUE, 2));
        assert_eq!(picker.waited(), QUEUE);
        assert!(err.to_string().contains("1m ([timeouts] queue)"), "{err}");
        let a = servers[0].slots.as_ref().unwrap();
        assert_eq!((a.queue_timeouts(), a.queued()), (1, 0));
        assert_eq!(servers[1].slots.as_ref().unwrap().queue_timeouts(), 0);
        drop((held_a, slot));
        assert_eq!(a.in_use(), 0);
    }

    #[tokio::test]
    async fn a_lowered_limit_retires_slots_as_they_come_back() {
        let slots = Slots::new(3);
        let taken: Vec<Slot> = (0..3)
            .map(|_| match slots.try_take() {
                Try::Taken(s) => s,
                _ => panic!("room expected"),
            })
            .collect();
        slots.set_max(1);
        let mut taken = taken.into_iter();
        drop(taken.next());
        assert!(matches!(slots.try_take(), Try::Full), "over the new limit");
        drop(taken.next());
        assert!(matches!(slots.try_take(), Try::Full), "over the new limit");
        drop(taken.next());
        let again = slots.try_take();
        assert!(matches!(again, Try::Taken(_)));
        assert!(matches!(slots.try_take(), Try::Full));
        drop(again);
        // Raised: the new room is there at once.
        slots.set_max(2);
        let (x, y) = (slots.try_take(), slots.try_take());
        assert!(matches!((&x, &y), (Try::Taken(_), Try::Taken(_))));
        assert!(matches!(slots.try_take(), Try::Full));
        assert_eq!((slots.in_use(), slots.max()), (2, 2));
    }

    #[tokio::test]
    async fn a_lifted_limit_lets_the_waiters_go() {
        let a = server("a", 1);
        let one = [&a];
        let _held = Picker::new(one.into_iter(), false, QUEUE)
            .next()
            .await
            .unwrap()
            .unwrap();
        let mut picker = Picker::new(one.into_iter(), false, QUEUE);
        let waiting = picker.next();
        tokio::pin!(waiting);
        assert!(pending(waiting.as_mut()));
        a.slots.as_ref().unwrap().lift();
        let (s, slot) = within(waiting).await.unwrap().unwrap();
        assert_eq!(s.health.addr(), "a");
        assert!(slot.is_none());
    }
}
