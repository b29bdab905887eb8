//! [`run`]: drive an executor on the current thread the way a gateway wants
//! it driven.

use std::future::Future;
use std::pin::pin;

use async_executor::Executor;
use futures_lite::future;

/// Tasks run between two looks at the reactor.
const BATCH: usize = 4;

/// Runs `ex` on the current thread until `future` completes, looking for I/O
/// after every few tasks. A drop-in for `async_io::block_on(ex.run(future))`,
/// which is also fine to use: the context does not depend on how its
/// executors are driven.
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
        loop {
            if let Some(t) = future::poll_once(future.as_mut()).await {
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
            // Nothing is ready: sleep in the reactor until a task or the
            // future is.
            let done = future::or(
                async {
                    ex.tick().await;
                    None
                },
                async { Some(future.as_mut().await) },
            )
            .await;
            if let Some(t) = done {
                return t;
            }
        }
    })
}
