//! wsgate's tasks and how the host's executor drives them.
//!
//! A task that accepts a connection must spawn the task that serves it, but
//! wsgate only *borrows* the host's `Executor`, and a borrowed executor cannot
//! be reached from a `'static` task. So each context keeps its tasks in a task
//! set of its own (an `async_executor::Executor<'static>`, which is only a run
//! queue: it owns no thread and never runs by itself) and spawns `pumps` tasks
//! on the host's executor that run it. Nothing of wsgate's runs unless the host
//! runs its loop, and everything runs on the host's threads.
//!
//! A context attached to several executors (service threads) has one task set
//! per executor, a *worker*; their spawners share one [`Live`] count, so the
//! drain knows when every task of the context has ended, whichever worker ran
//! it.
//!
//! Dropping the task set drops every task's future at once, which closes their
//! sockets: that is how a deadline forces the remaining sessions down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_executor::{Executor, LocalExecutor, Task};
use event_listener::Event;

use super::reactor::Reactor;

/// The host's executor, as wsgate uses it: spawn the pumps, and tick it while
/// draining. Implemented for `async_executor::Executor` and `LocalExecutor`.
///
/// Not `Send` or `Sync` itself, so that a `LocalExecutor` qualifies: the
/// context's [`LoopKind`](crate::context::LoopKind) decides whether a context may
/// cross threads. `pub` only so that the sealed `LoopKind` can name it; it is not
/// reachable from outside the crate.
pub trait HostExecutor {
    /// Spawns a pump task on the host's executor.
    fn spawn_pump(&self, pump: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) -> Task<()>;
    /// Runs one task, waiting for one to be ready.
    fn tick(&self) -> Pin<Box<dyn Future<Output = ()> + '_>>;
    /// Runs one task if one is ready.
    fn try_tick(&self) -> bool;
    /// The executor's identity (its address), to check that `drain` ticks
    /// the executors the context was attached to.
    fn id(&self) -> usize;
}

impl HostExecutor for Executor<'_> {
    fn spawn_pump(&self, pump: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) -> Task<()> {
        self.spawn(pump)
    }

    fn tick(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(Executor::tick(self))
    }

    fn try_tick(&self) -> bool {
        Executor::try_tick(self)
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

impl HostExecutor for LocalExecutor<'_> {
    fn spawn_pump(&self, pump: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) -> Task<()> {
        self.spawn(pump)
    }

    fn tick(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(LocalExecutor::tick(self))
    }

    fn try_tick(&self) -> bool {
        LocalExecutor::try_tick(self)
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// Tasks a pump runs before it hands the thread back to the host's loop.
const PUMP_BATCH: usize = 32;

/// Runs the task set on the host's executor: a bounded batch at a time, so
/// that the host's loop (and with it the reactor) gets its turn often, the
/// way tokio polls for I/O every 61 tasks. `Executor::run` would run 200 of
/// our tasks per poll, and the host's own `run` 200 polls of the pump before
/// the reactor looked for I/O again.
async fn pump(exec: Arc<Executor<'static>>) {
    loop {
        let mut ran = 0;
        while ran < PUMP_BATCH && exec.try_tick() {
            ran += 1;
        }
        if ran == PUMP_BATCH {
            futures_lite::future::yield_now().await;
        } else {
            // Nothing is ready: sleep until a task is, then run it.
            exec.tick().await;
        }
    }
}

/// The owning side of a context's task set.
pub(crate) struct TaskSet {
    exec: Option<Arc<Executor<'static>>>,
    pumps: Vec<Task<()>>,
    /// The worker's reactor; its task and the streams registered there
    /// hold it too, so it goes (and its epoll descriptor closes) with the
    /// last of them.
    reactor: Option<Arc<Reactor>>,
}

impl TaskSet {
    /// A task set run by `pumps` pump tasks on `host`, counting its tasks in
    /// `live` (shared by every worker of a context), with its reactor and
    /// the reactor's task.
    pub(crate) fn new(host: &dyn HostExecutor, pumps: usize, live: &Arc<Live>) -> (Self, Spawner) {
        let exec = Arc::new(Executor::new());
        let pumps = (0..pumps)
            .map(|_| {
                let exec = exec.clone();
                host.spawn_pump(Box::pin(pump(exec)))
            })
            .collect();
        let reactor = Reactor::new();
        // Not counted as a live task: it serves the others and lives as
        // long as the task set, so a drain does not wait for it.
        let drive = futures_lite::FutureExt::catch_unwind(AssertUnwindSafe(reactor.drive()));
        exec.spawn(async move {
            if drive.await.is_err() {
                tracing::error!("a worker's reactor task panicked; its sessions stall");
            }
        })
        .detach();
        let spawner = Spawner(Arc::new(SpawnerInner {
            exec: Arc::downgrade(&exec),
            live: live.clone(),
            reactor: Arc::downgrade(&reactor),
        }));
        (
            Self {
                exec: Some(exec),
                pumps,
                reactor: Some(reactor),
            },
            spawner,
        )
    }

    /// Cancels the pumps and lets go of the task set. Returns what is left of
    /// it: the pumps' futures still hold it until their host executor runs
    /// them (to drop them) or is dropped.
    fn release(&mut self) -> Weak<Executor<'static>> {
        // Dropping a pump's `Task` cancels it; the executor drops the pump's
        // future (and with it the pump's reference) the next time it runs.
        self.pumps.clear();
        self.reactor = None;
        self.exec
            .take()
            .map_or_else(Weak::new, |exec| Arc::downgrade(&exec))
    }
}

impl Drop for TaskSet {
    fn drop(&mut self) {
        if self.release().strong_count() > 0 {
            tracing::debug!(
                "task set outlives the pumps until the host executor runs or drops them"
            );
        }
    }
}

/// Forces every worker: cancels all the pumps and lets go of every task set
/// first, so that no worker's task runs again once forcing has begun (a
/// session dropped on one worker may wake tasks on another), then ticks each
/// worker's host until its pumps have let go of its task set (at most
/// `max_ticks` ticks per host). Without hosts it only releases; the task sets
/// then go when their executors next run or are dropped. Never blocks.
/// Returns the number of ticks used.
pub(crate) fn force_all(
    workers: Vec<TaskSet>,
    hosts: &[&dyn HostExecutor],
    max_ticks: usize,
) -> usize {
    let released: Vec<Weak<Executor<'static>>> = workers
        .into_iter()
        .map(|mut tasks| tasks.release())
        .collect();
    let mut ticks = 0;
    for (weak, host) in released.iter().zip(hosts) {
        let mut n = 0;
        while weak.strong_count() > 0 && n < max_ticks {
            if !host.try_tick() {
                break;
            }
            n += 1;
        }
        ticks += n;
    }
    let outliving = released.iter().filter(|w| w.strong_count() > 0).count();
    if outliving > 0 {
        tracing::debug!(
            workers = outliving,
            "task sets outlive their pumps until the host executors run or drop them"
        );
    }
    ticks
}

/// Spawns onto a context's task set from anywhere; counts live tasks. A
/// pointer: every session keeps its worker's (for `SessionHandle::spawn`).
#[derive(Clone)]
pub(crate) struct Spawner(Arc<SpawnerInner>);

struct SpawnerInner {
    exec: Weak<Executor<'static>>,
    live: Arc<Live>,
    /// The worker's reactor: its sockets' readiness and its sessions'
    /// deadlines.
    reactor: Weak<Reactor>,
}

/// The live-task count of a context, shared by every worker's spawner, and
/// the stall watch the drain turns on.
pub(crate) struct Live {
    count: AtomicUsize,
    zero: Event,
    /// Whether polls are timed (only while a drain runs: one relaxed load per
    /// poll otherwise).
    watching: AtomicBool,
    /// The longest single poll of a wsgate task while watched, in
    /// nanoseconds: a protocol callback that blocks shows up here.
    longest_poll_ns: AtomicU64,
}

impl Live {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            zero: Event::new(),
            watching: AtomicBool::new(false),
            longest_poll_ns: AtomicU64::new(0),
        })
    }

    /// Starts timing every poll of every wsgate task.
    pub(crate) fn watch_stalls(&self) {
        self.watching.store(true, Ordering::Relaxed);
    }

    /// Records that something wsgate ran (a poll, a forced drop) took `d`.
    pub(crate) fn record_stall(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.longest_poll_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The longest poll (or forced drop) recorded while watched.
    pub(crate) fn longest_stall(&self) -> Duration {
        Duration::from_nanos(self.longest_poll_ns.load(Ordering::Relaxed))
    }
}

struct LiveGuard(Arc<Live>);

pin_project_lite::pin_project! {
    /// A wsgate task as spawned: counted while it lives, and stopped (not
    /// unwound into the host's loop) if it panics. A plain struct rather than
    /// an `async` block, which would hold the future twice (once captured,
    /// once being awaited) and double every connection's memory.
    struct Guarded<F> {
        #[pin]
        fut: futures_lite::future::CatchUnwind<AssertUnwindSafe<F>>,
        guard: LiveGuard,
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        let live = &this.guard.0;
        // Backstop: a panic in a task must not unwind through the pump into
        // the host's loop. Callbacks are isolated one by one already.
        let poll = if live.watching.load(Ordering::Relaxed) {
            let started = Instant::now();
            let poll = this.fut.poll(cx);
            live.record_stall(started.elapsed());
            poll
        } else {
            this.fut.poll(cx)
        };
        match poll {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(_)) => {
                tracing::error!("a wsgate task panicked; it was stopped");
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify(usize::MAX);
        }
    }
}

impl Spawner {
    /// Spawns `fut` to run until it ends; returns `false` if the task set
    /// is gone.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> bool {
        self.spawn_task(fut).map(Task::detach).is_some()
    }

    /// Spawns `fut` and returns its task, which cancels it when dropped;
    /// `None` if the task set is gone.
    pub(crate) fn spawn_task(
        &self,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> Option<Task<()>> {
        let exec = self.0.exec.upgrade()?;
        self.0.live.count.fetch_add(1, Ordering::AcqRel);
        Some(exec.spawn(Guarded {
            fut: futures_lite::FutureExt::catch_unwind(AssertUnwindSafe(fut)),
            guard: LiveGuard(self.0.live.clone()),
        }))
    }

    /// The worker's reactor; `None` once the task set is gone.
    pub(crate) fn reactor(&self) -> Option<Arc<Reactor>> {
        self.0.reactor.upgrade()
    }

    /// The context's live count and stall watch.
    pub(crate) fn live_state(&self) -> &Arc<Live> {
        &self.0.live
    }

    /// Tasks spawned and not yet finished (or dropped), on every worker of
    /// the context.
    pub(crate) fn live(&self) -> usize {
        self.0.live.count.load(Ordering::Acquire)
    }

    /// Resolves once no task is left on any worker.
    pub(crate) async fn idle(&self) {
        loop {
            let l = self.0.live.zero.listen();
            if self.live() == 0 {
                return;
            }
            l.await;
        }
    }
}
