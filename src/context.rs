//! `Context`: one gateway instance attached to the host's executor (or to
//! several, one per service thread), and `ContextHandle`, its thread-safe
//! remote control.

use std::any::Any;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use async_executor::{Executor, LocalExecutor};

use crate::config::{Config, VhostConfig};
use crate::error::Error;
use crate::proto::close::CloseReason;
use crate::runtime::budget::Budget;
use crate::runtime::tasks::{HostExecutor, Live, Spawner, TaskSet, force_all};
use crate::runtime::workers::Workers;
use crate::{CloseCode, Message};

pub(crate) mod broker;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub(crate) mod protocol;
pub(crate) mod registry;
pub(crate) mod service;
pub(crate) mod session;
pub(crate) mod vhost;

use broker::{MemoryBroker, Presence, Published, Stamp, Topics};
use lifecycle::{Drain, Lifecycle};
use metrics::{Metrics, Stats};
use protocol::Wake;
use registry::{Registry, bind_new};
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

/// What [`Context::reconfigure`] did, by vhost name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconfigured {
    /// New vhosts.
    pub added: Vec<String>,
    /// Vhosts whose configuration changed: replaced by the new one.
    pub replaced: Vec<String>,
    /// Vhosts no longer configured.
    pub removed: Vec<String>,
    /// Vhosts that kept running untouched.
    pub unchanged: Vec<String>,
    /// Vhosts that kept running, with their sessions, while their TLS
    /// certificates, keys or client CAs changed: new handshakes use the new
    /// ones at once.
    pub certificates: Vec<String>,
    /// The addresses the added and replaced vhosts listen on (port 0
    /// resolved).
    pub listening: Vec<(String, Vec<SocketAddr>)>,
}

impl Reconfigured {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.replaced.is_empty()
            && self.removed.is_empty()
            && self.certificates.is_empty()
    }
}

/// One line: `+vhost NAME on ADDR...` per added vhost, `~vhost NAME on
/// ADDR...` per replaced one, `-vhost NAME` per removed one, `*vhost NAME
/// certificates` per vhost whose certificates changed, or `no changes`.
impl fmt::Display for Reconfigured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let on = |name: &str| {
            self.listening
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, addrs)| {
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let mut parts = Vec::new();
        for n in &self.added {
            parts.push(format!("+vhost {n} on {}", on(n)));
        }
        for n in &self.replaced {
            parts.push(format!("~vhost {n} on {}", on(n)));
        }
        for n in &self.removed {
            parts.push(format!("-vhost {n}"));
        }
        for n in &self.certificates {
            parts.push(format!("*vhost {n} certificates"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// What a context's handles share, split by owner: its lifecycle
/// (teardown), its registry (vhosts, listeners), its workers, its topics and
/// its metrics.
pub(crate) struct ContextShared {
    lifecycle: Lifecycle,
    registry: Registry,
    /// Every worker (one per host executor), for the hand-off of connections.
    workers: Arc<Workers>,
    /// Worker 0's spawner: accept loops, posted closures and wake-ups run
    /// there. Its live count is context-wide.
    spawner: Spawner,
    topics: Topics,
    metrics: Metrics,
    /// The memory budget, when accounted.
    budget: Option<Arc<Budget>>,
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
    /// there. See [`Stats::connections_per_thread`].
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
            memory_budget,
        } = config;
        let broker = broker.and_then(|b| broker::bound_broker(&b));
        let addrs: Vec<SocketAddr> = vhosts
            .iter()
            .flat_map(|v| v.listen().iter().copied())
            .collect();
        let mut bound = crate::runtime::listener::bind_all(&addrs, &[])?;
        let live = Live::new();
        let (tasks, spawners): (Vec<TaskSet>, Vec<Spawner>) = hosts
            .iter()
            .map(|host| TaskSet::new(K::host(host), pumps, &live))
            .unzip();
        let workers = Workers::new(spawners, max_connections);
        let shared = Arc::new_cyclic(|weak| ContextShared {
            lifecycle: Lifecycle::new(),
            registry: Registry::new(weak.clone()),
            spawner: workers.first().clone(),
            workers,
            topics: Topics::new(broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()))),
            metrics: Metrics::default(),
            budget: memory_budget.map(Budget::new),
        });
        // The broker's tasks (a cluster bus connection) run on worker 0, as
        // the context's own; its `stop` at teardown ends them.
        shared.topics.start(shared.spawner.clone());
        for cfg in vhosts {
            if cfg.mounts().is_empty() {
                // Legal (a vhost may be filled in later, or only hold an
                // address), but at start it is almost always a forgotten
                // `[[vhost.mount]]`.
                tracing::warn!(vhost = %cfg.name(), "vhost has no mounts: requests to it get 404 (only /healthz answers)");
            }
            let vhost = Vhost::new(cfg, Arc::downgrade(&shared));
            shared.install(&vhost, &mut bound);
        }
        tracing::info!(
            listeners = ?shared.registry.local_addrs(),
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
        let registry = &self.shared.registry;
        registry.check_acceptor(&config)?;
        let mut bound = bind_new(registry, &[&config])?;
        let vhost = Vhost::new(config, Arc::downgrade(&self.shared));
        self.shared.install(&vhost, &mut bound);
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

    /// Replaces the running vhosts with `vhosts`, without dropping a
    /// session that need not go: the library's reload (the binary's SIGHUP
    /// calls it; a host can too).
    ///
    /// A vhost whose name and configuration are unchanged keeps running as
    /// it is, with its sessions, protocols and user data (the new
    /// configuration of it is dropped). Unchanged means equal settings
    /// (listen addresses, `Host` names, mounts, limits, origins), the same
    /// protocols by name and options, HTTP handlers of the same types,
    /// extensions with the same `Debug` form, and the same acceptor. A vhost
    /// whose only change is its TLS files' contents (a certificate rotated,
    /// under the same paths or new ones) keeps running with its sessions too;
    /// its listeners' acceptors are replaced, so new handshakes see the new
    /// certificate at once. A changed vhost is replaced: the new one serves new connections at once,
    /// and the old one's sessions get Close 1001 "vhost replaced". Vhosts
    /// not named any more are removed the same way (1001 "vhost removed").
    /// New vhosts are added.
    ///
    /// The order: every new address is bound first (a failure changes
    /// nothing); then each listener's routing is swapped to the new vhosts in
    /// one step (a request is routed by the old set or by the new one, never
    /// by a mix); listeners no vhost names any more stop last. Each replaced
    /// or removed vhost's `destroy` hooks run on the loop after its last
    /// session closed.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a set that [`ConfigBuilder::build`] would refuse
    /// (no vhost, a name twice, vhosts sharing an address with different
    /// acceptors), [`Error::Bind`] if a new address cannot be bound,
    /// [`Error::Closed`] during teardown. The running configuration is then
    /// untouched.
    ///
    /// [`ConfigBuilder::build`]: crate::ConfigBuilder::build
    pub fn reconfigure(&self, vhosts: Vec<VhostConfig>) -> Result<Reconfigured, Error> {
        if !self.shared.is_running() {
            return Err(Error::Closed);
        }
        crate::config::validate_vhosts(&vhosts)?;
        let registry = &self.shared.registry;
        let running = registry.vhosts();
        let mut outcome = Reconfigured::default();
        let mut fresh: Vec<&VhostConfig> = Vec::new();
        for cfg in &vhosts {
            match running.iter().find(|v| v.name() == cfg.name()) {
                Some(v)
                    if v.fingerprint() == cfg.fingerprint()
                        && v.tls_fingerprint() == cfg.tls_fingerprint() =>
                {
                    outcome.unchanged.push(cfg.name().to_owned());
                }
                Some(v) if v.fingerprint() == cfg.fingerprint() => {
                    outcome.certificates.push(cfg.name().to_owned());
                }
                Some(_) => {
                    outcome.replaced.push(cfg.name().to_owned());
                    fresh.push(cfg);
                }
                None => {
                    outcome.added.push(cfg.name().to_owned());
                    fresh.push(cfg);
                }
            }
        }
        outcome.removed = running
            .iter()
            .filter(|v| !vhosts.iter().any(|c| c.name() == v.name()))
            .map(|v| v.name().to_owned())
            .collect();
        if outcome.is_empty() {
            return Ok(outcome);
        }
        // Everything that can fail, first: binding the new addresses.
        let mut bound = bind_new(registry, &fresh)?;
        for cfg in fresh.iter().filter(|c| c.mounts().is_empty()) {
            // As `attach` warns.
            tracing::warn!(vhost = %cfg.name(), "vhost has no mounts: requests to it get 404 (only /healthz answers)");
        }
        let kept = |name: &str| {
            outcome.unchanged.iter().any(|n| n == name)
                || outcome.certificates.iter().any(|n| n == name)
        };
        let next: Vec<Vhost> = vhosts
            .into_iter()
            .map(
                |cfg| match running.iter().find(|v| v.name() == cfg.name()) {
                    Some(v) if kept(v.name()) => {
                        // New certificates for a kept vhost: `apply` below
                        // builds its listeners' acceptors from them.
                        #[cfg(feature = "tls")]
                        if outcome.certificates.iter().any(|n| n == v.name()) {
                            v.set_tls(cfg.loaded_tls());
                        }
                        v.clone()
                    }
                    _ => Vhost::new(cfg, Arc::downgrade(&self.shared)),
                },
            )
            .collect();
        let taken_out = registry.apply(&self.shared, &self.shared.workers, &next, &mut bound);
        for v in taken_out {
            v.retire();
            let why = if outcome.replaced.iter().any(|n| n == v.name()) {
                "vhost replaced"
            } else {
                "vhost removed"
            };
            v.close_sessions(CloseCode::Away, why);
        }
        outcome.listening = next
            .iter()
            .filter(|v| !kept(v.name()))
            .map(|v| (v.name().to_owned(), v.local_addrs()))
            .collect();
        tracing::info!(%outcome, "reconfigured");
        Ok(outcome)
    }

    /// The vhost called `name`.
    pub fn vhost(&self, name: &str) -> Option<Vhost> {
        self.shared.registry.vhost(name)
    }

    /// Every bound listen address (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.registry.local_addrs()
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
                sessions = self.shared.registry.session_count(),
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
            for vhost in shared.registry.vhosts() {
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
            .registry
            .vhost(vhost)
            .ok_or_else(|| Error::NoSuchVhost(vhost.to_owned()))?;
        Ok(v.sessions()
            .iter()
            .filter(|s| s.path() == path)
            .filter(|s| s.offer(&message).is_ok())
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
    ///
    /// With a broker that spans several nodes the message also goes to the
    /// subscribers of every other node, in publish order;
    /// [`Published::remote`](crate::pubsub::Published::remote) says whether
    /// it could.
    pub fn publish(&self, topic: &str, message: Message) -> Result<Published, Error> {
        self.publish_stamped(topic, message, Stamp::None)
    }

    /// Publishes like [`publish`](Self::publish), and on a topic with
    /// history lets the broker write the message's position into it as
    /// `stamp` says ([`Stamp::Json`]: `"offset"` and `"epoch"` fields in a
    /// JSON object, as the `pubsub` protocol's messages carry them).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(handle: &wsgate::ContextHandle) -> Result<(), wsgate::Error> {
    /// use wsgate::Message;
    /// use wsgate::pubsub::Stamp;
    ///
    /// let text = r#"{"op":"message","topic":"news","data":"hello"}"#;
    /// handle.publish_stamped("news", Message::text(text), Stamp::Json)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn publish_stamped(
        &self,
        topic: &str,
        message: Message,
        stamp: Stamp,
    ) -> Result<Published, Error> {
        self.check()?;
        self.shared.metrics.count_published();
        Ok(self
            .shared
            .topics
            .broker()
            .publish_stamped(topic, &message, stamp))
    }

    /// Who is subscribed to `topic` in this context (this node).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub fn presence(&self, topic: &str) -> Result<Presence, Error> {
        self.check()?;
        Ok(self.shared.topics.broker().presence(topic))
    }

    /// Who is subscribed to `topic` on every node of the cluster (with the
    /// in-process broker: the same as [`presence`](Self::presence)). A node
    /// that stopped without saying goodbye drops out within the broker's
    /// stated bound; if the other nodes cannot be asked, the answer is this
    /// node's, marked [`partial`](crate::pubsub::Presence::partial).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began.
    pub async fn cluster_presence(&self, topic: &str) -> Result<Presence, Error> {
        self.check()?;
        let mut presence = self.shared.topics.broker().cluster_presence(topic).await;
        // The broker knows the ids of this node's subscribers only.
        if presence.sessions.is_empty() {
            presence.sessions = self.shared.topics.broker().presence(topic).sessions;
        }
        Ok(presence)
    }

    /// Whether the context serves and its broker can do its whole job (a
    /// cluster broker: its bus is reachable): what `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.shared.is_running() && self.shared.topics.broker().is_ready()
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
        Ok(self.shared.stats())
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
            let l = self.shared.lifecycle.listen();
            if !self.shared.is_running() {
                return;
            }
            l.await;
        }
    }

    /// Serves a connection the host accepted itself (a Unix socket, an
    /// in-memory pipe, a stream its own TLS already terminated), exactly as
    /// a listener serves a TCP connection: request heads, HTTP answers,
    /// WebSocket sessions, under every limit. Requests are routed by `Host`
    /// among all of the context's vhosts (the first without names is the
    /// default). `peer` is what [`Request::peer`](crate::Request::peer)
    /// reports and what `max_sessions_per_ip` counts: for a stream without
    /// an IP address, pass one that stands for its origin (for example
    /// `127.0.0.1:0` for a local socket).
    ///
    /// The connection is handed to the least loaded service thread and
    /// counts against `max_connections` (over it, it is answered 503).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(handle: &wsgate::ContextHandle) -> std::io::Result<()> {
    /// use std::os::unix::net::UnixListener;
    /// use async_io::Async;
    ///
    /// let listener = Async::<UnixListener>::bind("/tmp/wsgate.sock")?;
    /// # async_io::block_on(async {
    /// let (stream, _) = listener.accept().await?;
    /// let _ = handle.serve_stream(stream, "127.0.0.1:0".parse().unwrap());
    /// # std::io::Result::Ok(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after teardown began (the stream is dropped).
    pub fn serve_stream(
        &self,
        stream: impl crate::transport::Transport,
        peer: SocketAddr,
    ) -> Result<(), Error> {
        self.check()?;
        let stream: Box<dyn crate::transport::Transport> = Box::new(stream);
        let service: Arc<dyn crate::runtime::connection::Service> =
            self.shared.registry.streams().clone();
        match self.shared.workers.try_connection() {
            Some(mut slot) => {
                let worker = slot.hand_off();
                worker.spawn(crate::runtime::connection::serve(
                    stream,
                    peer,
                    service,
                    slot,
                    std::time::Instant::now(),
                ));
            }
            None => {
                self.shared.rejected(503);
                self.shared
                    .spawner
                    .spawn(crate::runtime::connection::refuse_busy(stream));
            }
        }
        Ok(())
    }

    /// Whether the context is still serving.
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
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
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ContextShared {
    pub(crate) fn is_running(&self) -> bool {
        self.lifecycle.is_running()
    }

    /// Every counter and gauge, now.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.metrics.snapshot(
            self.registry.session_count(),
            self.workers.connections(),
            self.workers.loads(),
            self.topics.broker().topics().len(),
            self.lifecycle.ends(),
            self.topics.broker().stats(),
        );
        if let Some(b) = &self.budget {
            stats.set_budget(b.usage());
        }
        stats
    }

    /// The memory budget, when accounted.
    pub(crate) fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// Installs `vhost` with its listeners (new ones from `bound` start).
    fn install(self: &Arc<Self>, vhost: &Vhost, bound: &mut Vec<(SocketAddr, TcpListener)>) {
        self.registry.install(self, &self.workers, vhost, bound);
    }

    fn remove_vhost(&self, name: &str) -> Result<(), Error> {
        let vhost = self.registry.remove(name)?;
        vhost.retire();
        let closing = vhost.close_sessions(CloseCode::Away, "vhost removed");
        tracing::info!(vhost = name, closing, "vhost removed");
        Ok(())
    }

    /// The first step of teardown, from any thread: stop the listeners, ask
    /// every session to close, retire every vhost. No protocol callback runs
    /// here; the loop runs them. Returns `false` if it had already begun.
    pub(crate) fn begin_teardown(&self, why: &str) -> bool {
        if !self.lifecycle.begin() {
            return false;
        }
        self.registry.stop_listeners();
        let closing = self
            .registry
            .sessions()
            .iter()
            .filter(|s| s.shared.outbox.request_close(CloseCode::Away, "going away"))
            .count();
        self.lifecycle.announce();
        for vhost in self.registry.vhosts() {
            vhost.retire();
        }
        // The broker ends its tasks (the drain waits for them).
        self.topics.broker().stop();
        tracing::info!(why, closing, "teardown begun");
        true
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.registry.next_id()
    }

    pub(crate) fn teardown_listener(&self) -> event_listener::EventListener {
        self.lifecycle.listen()
    }

    /// Counts a refused request.
    pub(crate) fn rejected(&self, status: u16) {
        self.metrics.rejected(status);
    }

    /// Registers an accepted session (with its vhost). If teardown raced with
    /// the handshake, the session is asked to close at once.
    pub(crate) fn register(&self, session: &SessionHandle) {
        self.metrics.count_session();
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
        session.vhost().unregister(session.id().get());
        self.discard(session);
        self.metrics
            .closed(outcome.map_or(1006, |r| u16::from(r.code)));
        self.lifecycle.count_end(outcome);
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ContextHandle>();
    send_sync::<Stats>();
    send_sync::<SessionHandle>();
    send_sync::<Vhost>();
    send_sync::<Context<'static>>();
    send_sync::<Drain<'static>>();
};
