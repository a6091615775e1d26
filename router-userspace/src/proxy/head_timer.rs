//! hyper's request-header timer, without a runtime timer per request.
//!
//! hyper arms its header-read timeout for every request head and drops it once the head
//! is parsed. With hyper-util's `TokioTimer` that is a boxed tokio `Sleep` created,
//! registered in the runtime's timer wheel and removed again for every request: about
//! 700 instructions per request under callgrind in bench scenario j
//! (`docs/performance.md`). Here the sleeps hyper asks for on one connection share one
//! tokio `Sleep`, re-armed lazily as [`super::idle::IdleIo`] does: a head whose deadline
//! is later than the armed one only records it, and the armed sleep, when it fires
//! early, moves out to the deadline of the head being read. The deadlines themselves
//! are hyper's, so what a slow head gets is unchanged.
//!
//! The cost: a shared sleep outlives the head it was armed for, so a busy connection
//! gets one spurious wake-up per header timeout, and it is freed with the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The [`hyper::rt::Timer`] of one client connection (one per hyper connection).
#[derive(Clone, Default)]
pub struct HeadTimer {
    armed: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

/// One of hyper's sleeps: a deadline, served by the connection's shared sleep.
struct HeadSleep {
    deadline: Instant,
    armed: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until((Instant::now() + duration).into_std())
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline: deadline.into(),
            armed: Arc::clone(&self.armed),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(sleep) => sleep.get_mut().deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    // The runtime's clock, as hyper-util's timer: a paused test clock applies.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if deadline < sleep.deadline() {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => return Poll::Ready(()),
                // Armed for an earlier head: on to this one's deadline.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::proxy::idle::tests::assert_fired_at;
    use hyper::rt::Timer;

    fn armed_deadline(timer: &HeadTimer) -> Option<Instant> {
        timer.armed.lock().unwrap().as_ref().map(|s| s.deadline())
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_times_out_at_its_deadline() {
        let timer = HeadTimer::default();
        let start = Instant::now();
        timer.sleep(Duration::from_secs(10)).await;
        assert_fired_at(start + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn heads_share_one_armed_sleep_and_each_gets_its_own_deadline() {
        let timer = HeadTimer::default();
        let start = Instant::now();
        // The first head is read within its budget: its sleep is polled, then dropped.
        let mut first = timer.sleep(Duration::from_secs(10));
        let pending = tokio::time::timeout(Duration::from_secs(1), first.as_mut()).await;
        assert!(
            pending.is_err(),
            "the first head's timer must not fire early"
        );
        drop(first);
        let armed = armed_deadline(&timer).unwrap();
        assert_eq!(armed, start + Duration::from_secs(10));
        // The next head, 3 s after the first: the armed sleep is kept, not moved.
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = timer.sleep(Duration::from_secs(10));
        let mut second = std::pin::pin!(second);
        let pending = tokio::time::timeout(Duration::from_secs(1), second.as_mut()).await;
        assert!(
            pending.is_err(),
            "the second head's timer must not fire early"
        );
        assert_eq!(armed_deadline(&timer), Some(armed));
        // It fires at the second head's deadline, not the first's.
        second.await;
        assert_fired_at(start + Duration::from_secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_rearms_at_once() {
        let timer = HeadTimer::default();
        let start = Instant::now();
        let mut long = timer.sleep(Duration::from_secs(60));
        let pending = tokio::time::timeout(Duration::from_secs(1), long.as_mut()).await;
        assert!(pending.is_err());
        timer.reset(&mut long, (start + Duration::from_secs(5)).into_std());
        long.await;
        assert_fired_at(start + Duration::from_secs(5));
    }
}
