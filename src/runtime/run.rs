//! [`run`]: drive an executor on the current thread the way a gateway wants
//! it driven.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use async_executor::Executor;
use futures_lite::future;

/// Tasks run between two looks at the reactor.
const BATCH: usize = 4;

/// Runs `ex` on the current thread until `future` completes, looking for I/O
/// after every few tasks. A drop-in for `async_io::block_on(ex.run(future))`,
/// which is also fine to use: the context does not depend on how its
/// executors are driven. `future` is polled once at the start and then
/// whenever its waker is woken, as any executor polls a task (not on every
/// turn of the loop, so a future that makes a system call when polled, such
/// as a read on a signal pipe, costs nothing while it sleeps).
///
/// Why it exists: under `block_on(ex.run(..))` a busy executor runs 200 tasks
/// before the loop polls the reactor again. Meanwhile async-io's helper
/// thread, seeing the reactor untouched, takes it over, and the two threads
/// then trade it back and forth with a context switch each time, which costs
/// a loaded single-core server a fifth of its CPU. Polling the reactor (a
/// non-blocking `epoll_wait`) every few tasks keeps it on this thread. The
/// binary and the examples use it; it starts no thread.
///
/// # Examples
///
/// ```no_run
/// # use async_executor::Executor;
/// let ex = Executor::new();
/// let answer = wsgate::run(&ex, async { 42 });
/// assert_eq!(answer, 42);
/// ```
pub fn run<T>(ex: &Executor<'_>, future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    async_io::block_on(async {
        // `future` is polled only when it was woken (and once at the start):
        // a future that makes a system call whenever it is polled (a read
        // on a signal pipe, say) would otherwise make it on every turn of
        // the loop, twice per message on a lightly loaded server.
        let woken = Arc::new(Woken {
            flag: AtomicBool::new(true),
            outer: future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await,
        });
        let waker = Waker::from(woken.clone());
        let mut poll_host = || {
            if !woken.flag.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            future.as_mut().poll(&mut Context::from_waker(&waker))
        };
        loop {
            if let Poll::Ready(t) = poll_host() {
                return t;
            }
            let mut ran = 0;
            while ran < BATCH && ex.try_tick() {
                ran += 1;
            }
            if ran == BATCH {
                // More may be ready: let `block_on` poll the reactor without
                // blocking, then come back.
                future::yield_now().await;
                continue;
            }
            // Nothing is ready: sleep in the reactor until a task is, or
            // the future was woken.
            let done = future::or(
                async {
                    ex.tick().await;
                    None
                },
                future::poll_fn(|_| poll_host().map(Some)),
            )
            .await;
            if let Some(t) = done {
                return t;
            }
        }
    })
}

/// The waker `run` polls its future with: it notes the wake-up, then wakes
/// `block_on`.
struct Woken {
    flag: AtomicBool,
    outer: Waker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.outer.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Done once `finished` is set, counting its polls.
    struct Host {
        polls: Arc<AtomicUsize>,
        finished: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Host {
        type Output = usize;

        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let polls = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.finished.load(Ordering::SeqCst) {
                Poll::Ready(polls)
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn the_future_is_polled_when_woken_not_on_every_turn() {
        let ex = Executor::new();
        let finished = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        // A busy executor: a thousand turns of the loop before the end.
        let task = ex.spawn({
            let (finished, waker) = (finished.clone(), waker.clone());
            async move {
                for _ in 0..1000 {
                    future::yield_now().await;
                }
                finished.store(true, Ordering::SeqCst);
                if let Some(w) = waker.lock().unwrap().take() {
                    w.wake();
                }
            }
        });
        let polls = run(
            &ex,
            Host {
                polls: Arc::new(AtomicUsize::new(0)),
                finished,
                waker,
            },
        );
        // Once at the start, once when woken.
        assert_eq!(polls, 2);
        drop(task);
    }
}
