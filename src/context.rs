//! `Context`: one gateway instance attached to the host's executor (or to
//! several, one per service thread), and `ContextHandle`, its thread-safe
//! remote control.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_executor::{Executor, LocalExecutor};
use event_listener::Event;

use crate::common::lock;
use crate::config::{Config, VhostConfig};
use crate::error::Error;
use crate::proto::close::CloseReason;
use crate::runtime::listener::{Listener, bind_all};
use crate::runtime::tasks::{HostExecutor, Live, Spawner, TaskSet, force_all};
use crate::runtime::workers::Workers;
use crate::{CloseCode, Message};

pub(crate) mod broker;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub(crate) mod protocol;
pub(crate) mod service;
pub(crate) mod session;
pub(crate) mod vhost;

use broker::{MemoryBroker, Presence, Published, Topics};
use lifecycle::Drain;
use metrics::{Metrics, Stats};
use protocol::Wake;
use service::ListenerService;
use session::SessionHandle;
use vhost::Vhost;

/// One gateway instance, attached to an executor that the host owns and runs
/// ([`attach`](Self::attach)), or to several executors that the host runs on
/// its service threads ([`attach_set`](Self::attach_set)).
///
/// `attach` binds every listener and spawns wsgate's tasks on the host's
/// executor; it starts no thread, no runtime and no signal handler. The
/// context borrows the executor, so the executor cannot be dropped while the
/// context (or the [`Drain`] it turns into) is alive.
///
/// Teardown is a typestate: [`destroy`](Self::destroy) consumes the context and
/// returns a [`Drain`], whose [`drain`](Drain::drain) runs the extra loop
/// iterations that let the close handshakes finish.
///
/// # Examples
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use async_executor::{Executor, LocalExecutor};
/// use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ex = Executor::new();
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:7681".parse()?)
///     .protocol(Echo)
///     .mount(Mount::websocket("/echo", ["echo"]))
///     .build()?;
/// let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build()?)?;
/// let handle = ctx.handle();
/// // The host runs its loop until something asks for shutdown.
/// async_io::block_on(ex.run(handle.shutdown_requested()));
/// let report = ctx.destroy().drain(&ex, Instant::now() + Duration::from_secs(5));
/// println!("{report:?}");
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a Context forces every session closed; call destroy() and drain()"]
pub struct Context<'ex, K: LoopKind = SharedLoop> {
    /// The host's executors, one per worker, in `attach_set`'s order.
    hosts: Vec<K::Host<'ex>>,
    shared: Arc<ContextShared>,
    /// One task set per worker; empty once handed to the `Drain` or forced.
    tasks: Vec<TaskSet>,
}

/// The thread-safe remote control of a [`Context`]: `Clone + Send + Sync`.
///
/// Every call returns [`Error::Closed`] once teardown has begun.
#[derive(Clone)]
pub struct ContextHandle {
    shared: Arc<ContextShared>,
}

/// What kind of loop a context is attached to, which decides whether the
/// [`Context`] (and its [`Drain`]) may move between threads: [`SharedLoop`] (the
/// default) for `async_executor::Executor`s, [`LocalLoop`] for a
/// `LocalExecutor`. Sealed: implemented for these two only.
///
/// Either way the sessions run in wsgate's own task set, so [`Protocol`]s
/// and their states are `Send` and the handles work from any thread; only
/// the context itself stays on the thread of a `LocalExecutor`.
///
/// [`Protocol`]: crate::Protocol
pub trait LoopKind: kind::Sealed {}

/// A context attached to one or more `async_executor::Executor`s (which are
/// `Send + Sync`): the context is `Send + Sync` too. The default [`LoopKind`].
#[derive(Debug)]
pub enum SharedLoop {}

/// A context attached to an `async_executor::LocalExecutor` with
/// [`Context::attach_local`]: the context and its [`Drain`] stay on that
/// executor's thread (they are neither `Send` nor `Sync`).
#[derive(Debug)]
pub enum LocalLoop {}

impl LoopKind for SharedLoop {}
impl LoopKind for LocalLoop {}

pub(crate) mod kind {
    use crate::runtime::tasks::HostExecutor;

    /// How a context of this kind holds its executors.
    pub trait Sealed {
        /// A reference to one of the host's executors.
        type Host<'ex>: Copy;
        /// The reference as wsgate uses it.
        fn host<'a>(host: &Self::Host<'a>) -> &'a dyn HostExecutor;
    }

    impl Sealed for super::SharedLoop {
        type Host<'ex> = &'ex (dyn HostExecutor + Send + Sync);
        fn host<'a>(host: &Self::Host<'a>) -> &'a dyn HostExecutor {
            *host
        }
    }

    impl Sealed for super::LocalLoop {
        type Host<'ex> = &'ex dyn HostExecutor;
        fn host<'a>(host: &Self::Host<'a>) -> &'a dyn HostExecutor {
            *host
        }
    }
}

/// A snapshot of a context's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Sessions open now.
    pub sessions_open: usize,
    /// WebSocket handshakes accepted since attach.
    pub accepted: u64,
    /// Requests refused with an HTTP error status since attach.
    pub rejected: u64,
    /// Sessions that have ended since attach.
    pub closed: u64,
    /// TCP connections open now (HTTP and WebSocket).
    pub connections: usize,
    /// The accepted connections each service thread serves now, indexed like
    /// the executors given to [`Context::attach_set`] (one entry for
    /// [`Context::attach`]). New connections go to the lowest of these. They
    /// add up to `connections`, but for a connection being accepted at that
    /// very moment.
    pub connections_per_thread: Vec<usize>,
}

pub(crate) struct ContextShared {
    running: AtomicBool,
    /// Worker 0's spawner: accept loops, posted closures and wake-ups run
    /// there. Its live count is context-wide.
    pub(crate) spawner: Spawner,
    /// Every worker (one per host executor), for the hand-off of connections.
    workers: Arc<Workers>,
    vhosts: Mutex<Vec<Vhost>>,
    listeners: Mutex<Vec<ListenerEntry>>,
    sessions: Mutex<HashMap<u64, SessionHandle>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    closed: AtomicU64,
    pub(crate) drain_clean: AtomicUsize,
    pub(crate) drain_aborted: AtomicUsize,
    pub(crate) drain_forced: AtomicUsize,
    teardown: Event,
    pub(crate) topics: Topics,
    pub(crate) metrics: Metrics,
    /// When teardown began (by `shutdown`, `destroy` or drop).
    teardown_started: Mutex<Option<std::time::Instant>>,
}

impl<'ex> Context<'ex> {
    /// Binds every listener of `config`, then spawns wsgate's tasks on `ex`.
    ///
    /// The one-executor case of [`attach_set`](Self::attach_set).
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if an address cannot be bound; nothing is left running
    /// and every socket bound so far is closed.
    pub fn attach(ex: &'ex Executor<'_>, config: Config) -> Result<Self, Error> {
        Self::attach_set(std::slice::from_ref(ex), config)
    }

    /// Binds every listener of `config`, then attaches one *worker* to each
    /// executor of `executors`, which the host runs on its service threads
    /// (one thread per executor, typically).
    ///
    /// Each worker is a task set of its own run by `config.pumps` pump tasks
    /// spawned on its executor. Worker 0 (on `executors[0]`) runs the accept
    /// loops and the context-wide tasks ([`ContextHandle::post`],
    /// [`ContextHandle::wake`]); each accepted connection (HTTP, then its
    /// WebSocket session) is handed to the worker serving the fewest
    /// connections at that moment, the lowest index on a tie, and stays
    /// there. See [`Counters::connections_per_thread`].
    ///
    /// It returns once every listener is bound, before anything has run: a
    /// client may connect at once and is served when the host runs the
    /// executors. Teardown is one [`Drain`] over all of them.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
    /// use async_executor::{Executor, LocalExecutor};
    /// use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let executors: Vec<Executor<'_>> = (0..4).map(|_| Executor::new()).collect();
    /// let vhost = VhostConfig::builder("default")
    ///     .listen("127.0.0.1:7681".parse()?)
    ///     .protocol(Echo)
    ///     .mount(Mount::websocket("/echo", ["echo"]))
    ///     .build()?;
    /// let ctx = Context::attach_set(&executors, Config::builder().vhost(vhost).build()?)?;
    /// let handle = ctx.handle();
    /// // One service thread per executor, until something asks for shutdown.
    /// std::thread::scope(|s| {
    ///     for ex in &executors {
    ///         let handle = &handle;
    ///         s.spawn(move || async_io::block_on(ex.run(handle.shutdown_requested())));
    ///     }
    /// });
    /// // The threads have stopped: one drain drives every executor.
    /// let report = ctx.destroy().drain(&executors, Instant::now() + Duration::from_secs(5));
    /// println!("{report}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NoExecutors`] if `executors` is empty; [`Error::Bind`] if an
    /// address cannot be bound. Either way nothing is left running and every
    /// socket bound so far is closed.
    pub fn attach_set(executors: &'ex [Executor<'_>], config: Config) -> Result<Self, Error> {
        let hosts = executors
            .iter()
            .map(|ex| ex as &(dyn HostExecutor + Send + Sync))
            .collect();
        Self::attach_hosts(hosts, config)
    }
}

impl<'ex> Context<'ex, LocalLoop> {
    /// Binds every listener of `config`, then spawns wsgate's tasks on a
    /// `LocalExecutor`: for single-threaded hosts (a GUI or game loop) whose
    /// loop is a `LocalExecutor`.
    ///
    /// Everything else is as with [`attach`](Context::attach): the host runs
    /// `ex` (`run`, `tick`, `try_tick`), then calls `destroy` and
    /// `drain(&ex, deadline)`. The context and its [`Drain`] stay on `ex`'s
    /// thread. Protocols are still `Send + Sync` and their states `Send`:
    /// the sessions run in wsgate's own task set, which the host's loop
    /// drives. To reach `!Send` state of the host (a GUI's widgets), a
    /// protocol sends through a channel that a local task of the host
    /// drains (see docs/ARCHITECTURE.md, "Local executors").
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
    /// use async_executor::LocalExecutor;
    /// use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ex = LocalExecutor::new();
    /// let vhost = VhostConfig::builder("default")
    ///     .listen("127.0.0.1:7681".parse()?)
    ///     .protocol(Echo)
    ///     .mount(Mount::websocket("/echo", ["echo"]))
    ///     .build()?;
    /// let ctx = Context::attach_local(&ex, Config::builder().vhost(vhost).build()?)?;
    /// let handle = ctx.handle();
    /// async_io::block_on(ex.run(handle.shutdown_requested()));
    /// let report = ctx.destroy().drain(&ex, Instant::now() + Duration::from_secs(5));
    /// println!("{report}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if an address cannot be bound; nothing is left running
    /// and every socket bound so far is closed.
    pub fn attach_local(ex: &'ex LocalExecutor<'_>, config: Config) -> Result<Self, Error> {
        Self::attach_hosts(vec![ex as &dyn HostExecutor], config)
    }
}

impl<'ex, K: LoopKind> Context<'ex, K> {
    /// Binds every listener, then creates one worker per host executor.
    fn attach_hosts(hosts: Vec<K::Host<'ex>>, config: Config) -> Result<Self, Error> {
        if hosts.is_empty() {
            return Err(Error::NoExecutors);
        }
        let Config {
            vhosts,
            max_connections,
            pumps,
            broker,
        } = config;
        let broker = broker.and_then(|b| broker::bound_broker(&b));
        let addrs: Vec<SocketAddr> = vhosts
            .iter()
            .flat_map(|v| v.listen().iter().copied())
            .collect();
        let mut bound = bind_all(&addrs, &[])?;
        let live = Live::new();
        let (tasks, spawners): (Vec<TaskSet>, Vec<Spawner>) = hosts
            .iter()
            .map(|host| TaskSet::new(K::host(host), pumps, &live))
            .unzip();
        let workers = Workers::new(spawners, max_connections);
        let shared = Arc::new(ContextShared {
            running: AtomicBool::new(true),
            spawner: workers.first().clone(),
            workers,
            vhosts: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            drain_clean: AtomicUsize::new(0),
            drain_aborted: AtomicUsize::new(0),
            drain_forced: AtomicUsize::new(0),
            teardown: Event::new(),
            topics: Topics::new(broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()))),
            metrics: Metrics::default(),
            teardown_started: Mutex::new(None),
        });
        for cfg in vhosts {
            let vhost = Vhost::new(cfg, Arc::downgrade(&shared));
            shared.install_vhost(&vhost, &mut bound);
        }
        tracing::info!(
            listeners = ?shared.local_addrs(),
            workers = hosts.len(),
            "context attached"
        );
        Ok(Self {
            hosts,
            shared,
            tasks,
        })
    }

    /// A thread-safe handle for wake-ups, posts, broadcasts and shutdown.
    pub fn handle(&self) -> ContextHandle {
        ContextHandle {
            shared: self.shared.clone(),
        }
    }

    /// Adds a vhost at runtime, binding any new listen addresses first.
    ///
    /// # Errors
    ///
    /// [`Error::VhostExists`], [`Error::Bind`], or [`Error::Closed`] during teardown.
    pub fn add_vhost(&self, config: VhostConfig) -> Result<Vhost, Error> {
        if !self.shared.is_running() {
            return Err(Error::Closed);
        }
        if self.vhost(config.name()).is_some() {
            return Err(Error::VhostExists(config.name().to_owned()));
        }
        let existing: Vec<SocketAddr> = lock(&self.shared.listeners)
            .iter()
            .map(|l| l.listener.configured)
            .collect();
        let mut bound = bind_all(config.listen(), &existing)?;
        let vhost = Vhost::new(config, Arc::downgrade(&self.shared));
        self.shared.install_vhost(&vhost, &mut bound);
        Ok(vhost)
    }

    /// Removes a vhost: stops the listeners no other vhost uses and sends
    /// Close 1001 to its sessions. Its protocols' destroy hooks run on the
    /// loop once the last of those sessions has ended (at once, on the loop,
    /// if it has none), never on the calling thread. The vhost (and its user
    /// data) lives on while handles to it remain.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchVhost`].
    pub fn remove_vhost(&self, name: &str) -> Result<(), Error> {
        self.shared.remove_vhost(name)
    }

    /// The vhost called `name`.
    pub fn vhost(&self, name: &str) -> Option<Vhost> {
        lock(&self.shared.vhosts)
            .iter()
            .find(|v| v.name() == name)
            .cloned()
    }

    /// Every bound listen address (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.local_addrs()
    }

    /// Begins teardown: stops every listener and sends Close 1001 "going
    /// away" to every session. Each vhost's destroy hooks run on the loop (or
    /// in [`Drain::drain`]) once its sessions have ended. Returns the
    /// [`Drain`] that finishes the job.
    ///
    /// May be called while the loop runs or after it stopped; if a
    /// [`ContextHandle::shutdown`] already began teardown, this only moves on
    /// to the drain.
    pub fn destroy(mut self) -> Drain<'ex, K> {
        self.shared.begin_teardown("destroy");
        let tasks = std::mem::take(&mut self.tasks);
        Drain::new(self.hosts.clone(), self.shared.clone(), tasks)
    }
}

impl<K: LoopKind> Drop for Context<'_, K> {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            tracing::warn!(
                sessions = self.shared.session_count(),
                workers = self.tasks.len(),
                "context dropped without destroy(): forcing every session closed"
            );
            self.shared.begin_teardown("drop");
            force_all(std::mem::take(&mut self.tasks), &[], 0);
        }
    }
}

impl<K: LoopKind> fmt::Debug for Context<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl ContextHandle {
    pub(crate) fn from_shared(shared: Arc<ContextShared>) -> Self {
        Self { shared }
    }

    /// Delivers `payload` to every protocol's [`wake`](crate::Protocol::wake)
    /// callback, on the loop.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn wake<T: Any + Send + Sync>(&self, payload: T) -> Result<(), Error> {
        let wake = Wake::new(payload);
        let shared = self.shared.clone();
        self.spawn(async move {
            for vhost in shared.vhosts() {
                for p in vhost.protocols() {
                    p.wake(&vhost, &wake);
                }
            }
        })
    }

    /// Runs `f` on the loop.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn post<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), Error> {
        self.spawn(async move { f() })
    }

    /// Queues `message` to every session of vhost `vhost` connected to mount
    /// `path`; the payload is shared, not copied. Returns how many sessions
    /// accepted it (a full or closing session does not).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchVhost`], or [`Error::Closed`] after teardown began.
    pub fn broadcast(&self, vhost: &str, path: &str, message: Message) -> Result<usize, Error> {
        self.check()?;
        let v = self
            .shared
            .vhosts()
            .into_iter()
            .find(|v| v.name() == vhost)
            .ok_or_else(|| Error::NoSuchVhost(vhost.to_owned()))?;
        Ok(v.sessions()
            .iter()
            .filter(|s| s.path() == path)
            .filter(|s| s.try_send(message.clone()).is_ok())
            .count())
    }

    /// Publishes `message` to every subscriber of `topic`, from any thread.
    /// The payload is shared among them, not copied; a subscriber whose queue
    /// is full is handled by its vhost's overflow policy and never slows the
    /// others. Publishing to a topic nobody subscribes to delivers nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn publish(&self, topic: &str, message: Message) -> Result<Published, Error> {
        self.check()?;
        self.shared
            .metrics
            .published
            .fetch_add(1, Ordering::Relaxed);
        Ok(self.shared.topics.broker().publish(topic, &message))
    }

    /// Who is subscribed to `topic`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn presence(&self, topic: &str) -> Result<Presence, Error> {
        self.check()?;
        Ok(self.shared.topics.broker().presence(topic))
    }

    /// The topics that have subscribers, sorted.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn topics(&self) -> Result<Vec<String>, Error> {
        self.check()?;
        Ok(self.shared.topics.broker().topics())
    }

    /// Counters and gauges (also served as Prometheus text by the `metrics`
    /// HTTP handler).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.check()?;
        Ok(Stats::collect(&self.shared))
    }

    /// Requests teardown from any thread (a signal thread, a GUI thread): the
    /// same first step as [`Context::destroy`]. The host notices through
    /// [`shutdown_requested`](Self::shutdown_requested), stops its loop, and
    /// calls `destroy` and `drain`.
    ///
    /// It only *requests*: it stops the listeners and queues Close 1001 for
    /// every session, and returns. No protocol callback runs on the calling
    /// thread; the closes, `close` callbacks and `destroy` hooks run on the
    /// loop (or in the drain).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if teardown had already begun.
    pub fn shutdown(&self) -> Result<(), Error> {
        if self.shared.begin_teardown("shutdown") {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    /// Resolves once teardown has begun (by `shutdown`, `destroy` or drop).
    pub async fn shutdown_requested(&self) {
        loop {
            let l = self.shared.teardown.listen();
            if !self.shared.is_running() {
                return;
            }
            l.await;
        }
    }

    /// Whether the context is still serving.
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    /// The counters.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn counters(&self) -> Result<Counters, Error> {
        self.check()?;
        Ok(self.shared.counters())
    }

    fn check(&self) -> Result<(), Error> {
        if self.shared.is_running() {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        self.check()?;
        if self.shared.spawner.spawn(fut) {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }
}

impl fmt::Debug for ContextHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextHandle")
            .field("shared", &self.shared)
            .finish()
    }
}

impl fmt::Debug for ContextShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextShared")
            .field("running", &self.is_running())
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl ContextShared {
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub(crate) fn vhosts(&self) -> Vec<Vhost> {
        lock(&self.vhosts).clone()
    }

    pub(crate) fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.listeners)
            .iter()
            .map(|l| l.listener.local)
            .collect()
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            sessions_open: self.session_count(),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            connections: self.workers.connections(),
            connections_per_thread: self.workers.loads(),
        }
    }

    /// Registers `vhost` with its listeners (new ones from `bound` are started).
    fn install_vhost(
        self: &Arc<Self>,
        vhost: &Vhost,
        bound: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) {
        let mut locals = Vec::new();
        let mut listeners = lock(&self.listeners);
        for addr in vhost.listen() {
            let pos = listeners
                .iter()
                .position(|l| l.listener.configured == *addr)
                .or_else(|| {
                    let pos = bound.iter().position(|(a, _)| a == addr)?;
                    let (_, socket) = bound.swap_remove(pos);
                    let service = ListenerService::new(Arc::downgrade(self));
                    let listener =
                        Listener::start(*addr, socket, &self.workers, service.clone(), None);
                    listeners.push(ListenerEntry { listener, service });
                    Some(listeners.len() - 1)
                });
            let Some(pos) = pos else {
                continue;
            };
            let entry = &listeners[pos];
            locals.push(entry.listener.local);
            entry.service.add_vhost(vhost.clone());
        }
        drop(listeners);
        vhost.set_local_addrs(locals);
        lock(&self.vhosts).push(vhost.clone());
    }

    fn remove_vhost(&self, name: &str) -> Result<(), Error> {
        let vhost = {
            let mut vhosts = lock(&self.vhosts);
            let pos = vhosts
                .iter()
                .position(|v| v.name() == name)
                .ok_or_else(|| Error::NoSuchVhost(name.to_owned()))?;
            vhosts.remove(pos)
        };
        vhost.retire();
        lock(&self.listeners).retain(|l| {
            let empty = l.service.remove_vhost(&vhost);
            if empty {
                l.listener.stop();
            }
            !empty
        });
        let closing = vhost.close_sessions(CloseCode::Away, "vhost removed");
        tracing::info!(vhost = name, closing, "vhost removed");
        Ok(())
    }

    /// The first step of teardown, from any thread: stop the listeners, ask
    /// every session to close, retire every vhost. No protocol callback runs
    /// here; the loop runs them. Returns `false` if it had already begun.
    pub(crate) fn begin_teardown(&self, why: &str) -> bool {
        if !self.running.swap(false, Ordering::AcqRel) {
            return false;
        }
        *lock(&self.teardown_started) = Some(std::time::Instant::now());
        for l in lock(&self.listeners).drain(..) {
            l.listener.stop();
        }
        let sessions: Vec<SessionHandle> = lock(&self.sessions).values().cloned().collect();
        let closing = sessions
            .iter()
            .filter(|s| s.shared.outbox.request_close(CloseCode::Away, "going away"))
            .count();
        self.teardown.notify(usize::MAX);
        for vhost in self.vhosts() {
            vhost.retire();
        }
        tracing::info!(why, closing, "teardown begun");
        true
    }

    /// When teardown began, if it has.
    pub(crate) fn teardown_started(&self) -> Option<std::time::Instant> {
        *lock(&self.teardown_started)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn teardown_listener(&self) -> event_listener::EventListener {
        self.teardown.listen()
    }

    /// Counts a refused request.
    pub(crate) fn rejected(&self, status: u16) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected(status);
    }

    /// Registers an accepted session. If teardown raced with the handshake, the
    /// session is asked to close at once.
    pub(crate) fn register(&self, session: &SessionHandle) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(session.id().get(), session.clone());
        session.vhost().register(session);
        if !self.is_running() || !session.vhost().is_serving() {
            session
                .shared
                .outbox
                .request_close(CloseCode::Away, "going away");
        }
    }

    /// Ends a session that never opened (its `open` refused or panicked):
    /// its handle is closed, its tasks are cancelled, it leaves every topic.
    pub(crate) fn discard(&self, session: &SessionHandle) {
        session.shared.outbox.mark_closed();
        session.shared.cancel_tasks();
        self.topics.leave_all(session);
    }

    /// Unregisters a session after its `close` callback; `outcome` is `None`
    /// when it was forced down.
    pub(crate) fn unregister(&self, session: &SessionHandle, outcome: Option<&CloseReason>) {
        lock(&self.sessions).remove(&session.id().get());
        session.vhost().unregister(session.id().get());
        self.discard(session);
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .closed(outcome.map_or(1006, |r| u16::from(r.code)));
        if !self.is_running() {
            let counter = match outcome {
                Some(r) if r.clean => &self.drain_clean,
                Some(_) => &self.drain_aborted,
                None => &self.drain_forced,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A listener and the service its connections are answered with.
struct ListenerEntry {
    listener: Arc<Listener>,
    service: Arc<ListenerService>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ContextHandle>();
    send_sync::<SessionHandle>();
    send_sync::<Vhost>();
    send_sync::<Context<'static>>();
    send_sync::<Drain<'static>>();
};
