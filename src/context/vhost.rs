//! Vhosts: refcounted handles to one virtual host's configuration, sessions
//! and user data, and the routing from `Host` and path to a mount.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::ContextShared;
use super::protocol::{ErasedProtocol, HttpHandler, bound_handler, bound_protocol};
use super::session::{SessionHandle, SessionShared};
use crate::common::lock;
#[cfg(feature = "tls")]
use crate::config::LoadedTls;
use crate::config::{Binding, Limits, Mount, MountTarget, Options, VhostConfig};
use crate::proto::admission::{Route, Site};
use crate::proto::extension::ExtensionNegotiator;
use crate::proto::session::SessionConfig;

/// A reference-counted handle to a virtual host.
///
/// Every session holds one, so a vhost removed with
/// [`Context::remove_vhost`](crate::Context::remove_vhost) lives on until its
/// last session has closed; its user data is dropped with the last handle.
#[derive(Clone)]
pub struct Vhost(pub(crate) Arc<VhostInner>);

pub(crate) struct VhostInner {
    name: String,
    hosts: Vec<String>,
    listen: Vec<SocketAddr>,
    mounts: Vec<Mount>,
    /// The handler of each HTTP mount, by the mount's index.
    handlers: Vec<Option<Arc<dyn HttpHandler>>>,
    /// The protocols and their options, resolved from the configuration.
    protocols: Vec<(Arc<dyn ErasedProtocol>, Options)>,
    extensions: Vec<Arc<dyn ExtensionNegotiator>>,
    limits: Limits,
    /// What every session of this vhost runs with, shared.
    session_config: Arc<SessionConfig>,
    /// The vhost as admission sees it.
    site: Site,
    /// What its listeners run accepted streams through (none: plain TCP).
    acceptor: Option<Binding>,
    /// Its configuration's fingerprint, which a reconfiguration compares.
    fingerprint: String,
    /// Whether it serves TLS (fixed for its life: a change replaces it).
    is_tls: bool,
    /// Its TLS settings, loaded; a reload that changed only these swaps
    /// them here (and its listeners' acceptors), keeping the vhost and its
    /// sessions.
    #[cfg(feature = "tls")]
    tls: Mutex<Option<Arc<LoadedTls>>>,
    user_data: Option<Box<dyn Any + Send + Sync>>,
    local_addrs: Mutex<Vec<SocketAddr>>,
    sessions: Mutex<HashMap<u64, SessionHandle>>,
    /// Sessions from handshake to end (bounded by `limits.max_sessions`),
    /// and the [`RETIRED`] bit once the vhost is removed or its context
    /// tears down. One word, so that "no session left" and "retired" are
    /// seen together: whoever takes the count to zero after retirement (or
    /// retires it at zero) runs the destroy hooks.
    reserved: AtomicUsize,
    /// The same per peer address, bounded by `limits.max_sessions_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    origins: Vec<String>,
    destroyed: AtomicBool,
    ctx: Weak<ContextShared>,
}

impl Vhost {
    pub(crate) fn new(cfg: VhostConfig, ctx: Weak<ContextShared>) -> Self {
        let site = site(&cfg);
        let fingerprint = cfg.fingerprint();
        let is_tls = cfg.is_tls();
        #[cfg(feature = "tls")]
        let tls = Mutex::new(cfg.loaded_tls());
        let handlers = cfg
            .mounts
            .iter()
            .map(|m| match m.target() {
                MountTarget::Http(target) => bound_handler(&target.0),
                MountTarget::WebSocket(_) => None,
            })
            .collect();
        // Every entry was bound by `VhostBuilder::protocol` or the loader.
        let protocols = cfg
            .protocols
            .into_iter()
            .filter_map(|p| Some((bound_protocol(&p.protocol)?, p.options)))
            .collect();
        Self(Arc::new(VhostInner {
            name: cfg.name,
            hosts: cfg.hosts,
            listen: cfg.listen,
            mounts: cfg.mounts,
            handlers,
            protocols,
            extensions: cfg.extensions,
            session_config: crate::runtime::driver::session_config(&cfg.limits),
            site,
            acceptor: cfg.acceptor,
            fingerprint,
            is_tls,
            #[cfg(feature = "tls")]
            tls,
            limits: cfg.limits,
            user_data: cfg.user_data,
            local_addrs: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            reserved: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            origins: cfg.origins,
            destroyed: AtomicBool::new(false),
            ctx,
        }))
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The user data, if it was set and is a `T`.
    pub fn user_data<T: Any>(&self) -> Option<&T> {
        self.0.user_data.as_ref()?.downcast_ref::<T>()
    }

    /// The options registered with protocol `protocol` on this vhost.
    pub fn options(&self, protocol: &str) -> Option<&Options> {
        self.0
            .protocols
            .iter()
            .find(|(p, _)| p.name() == protocol)
            .map(|(_, options)| options)
    }

    /// The mounts, in configuration order.
    pub fn mounts(&self) -> &[Mount] {
        &self.0.mounts
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// The `Host` names this vhost answers to.
    pub fn hosts(&self) -> &[String] {
        &self.0.hosts
    }

    /// The addresses actually bound (port 0 resolved), in `listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.0.local_addrs).clone()
    }

    /// Handles to the open sessions.
    pub fn sessions(&self) -> Vec<SessionHandle> {
        lock(&self.0.sessions).values().cloned().collect()
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        lock(&self.0.sessions).len()
    }

    /// Whether the vhost still accepts connections (not removed, context not
    /// tearing down).
    pub fn is_serving(&self) -> bool {
        self.0.reserved.load(Ordering::Acquire) & RETIRED == 0
            && self.0.ctx.upgrade().is_some_and(|c| c.is_running())
    }

    /// A handle to the context this vhost belongs to (for protocols that
    /// publish or broadcast), while the context exists.
    pub fn context_handle(&self) -> Option<crate::ContextHandle> {
        self.context().map(crate::ContextHandle::from_shared)
    }

    /// The context, while it exists.
    pub(crate) fn context(&self) -> Option<Arc<ContextShared>> {
        self.0.ctx.upgrade()
    }

    pub(crate) fn listen(&self) -> &[SocketAddr] {
        &self.0.listen
    }

    pub(crate) fn set_local_addrs(&self, addrs: Vec<SocketAddr>) {
        *lock(&self.0.local_addrs) = addrs;
    }

    /// The protocol called `name`, and its index (which a session keeps
    /// instead of a pointer: see [`Vhost::protocol_name`]).
    pub(crate) fn protocol(&self, name: &str) -> Option<(u32, Arc<dyn ErasedProtocol>)> {
        self.0
            .protocols
            .iter()
            .zip(0..)
            .find(|((p, _), _)| p.name() == name)
            .map(|((p, _), index)| (index, p.clone()))
    }

    /// The name of protocol `index` (as [`Vhost::protocol`] numbered it).
    pub(crate) fn protocol_name(&self, index: u32) -> &str {
        self.0
            .protocols
            .get(index as usize)
            .map_or("", |(p, _)| p.name())
    }

    pub(crate) fn protocols(&self) -> impl Iterator<Item = &Arc<dyn ErasedProtocol>> {
        self.0.protocols.iter().map(|(p, _)| p)
    }

    /// What every session of this vhost runs with.
    pub(crate) fn session_config(&self) -> &Arc<SessionConfig> {
        &self.0.session_config
    }

    /// The extensions this vhost offers, in order.
    pub(crate) fn extensions(&self) -> &[Arc<dyn ExtensionNegotiator>] {
        &self.0.extensions
    }

    /// Whether `other` is a handle to the same vhost.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Takes one of `max_sessions` places and one of `max_sessions_per_ip`
    /// places for `ip`, or says which limit is reached (or that the vhost is
    /// retired).
    pub(crate) fn reserve_session(&self, ip: IpAddr) -> Result<SessionSlot, SlotRefused> {
        let max = self.0.limits.max_sessions;
        self.0
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n & RETIRED == 0 && n < max).then_some(n + 1)
            })
            .map_err(|n| {
                if n & RETIRED == 0 {
                    SlotRefused::Vhost
                } else {
                    SlotRefused::Retired
                }
            })?;
        let mut per_ip = lock(&self.0.per_ip);
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.0.limits.max_sessions_per_ip {
            drop(per_ip);
            self.release_session();
            return Err(SlotRefused::Address);
        }
        *n += 1;
        Ok(SessionSlot(Some((self.clone(), ip))))
    }

    /// Gives back a slot that [`reserve_session`](Self::reserve_session)
    /// reserved for `ip` and a session took over.
    pub(crate) fn release_slot(&self, ip: IpAddr) {
        let mut per_ip = lock(&self.0.per_ip);
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        drop(per_ip);
        self.release_session();
    }

    /// Gives back a session place; the last one of a retired vhost runs its
    /// destroy hooks, here: on the thread that ended the session, which runs
    /// the host's loop (or the host's own `drain`).
    fn release_session(&self) {
        if self.0.reserved.fetch_sub(1, Ordering::AcqRel) == RETIRED | 1 {
            self.destroy_protocols();
        }
    }

    /// The allowed origins (empty: any).
    pub fn origins(&self) -> &[String] {
        &self.0.origins
    }

    pub(crate) fn register(&self, session: &SessionHandle) {
        lock(&self.0.sessions).insert(session.id().get(), session.clone());
    }

    pub(crate) fn unregister(&self, id: u64) {
        lock(&self.0.sessions).remove(&id);
    }

    /// Retires the vhost (removed, or its context tears down): no new
    /// session is admitted, and once the last one has ended (after its
    /// `close` callback) the protocols' destroy hooks run. With no session
    /// left they run at once, as a task on the context's loop, never on the
    /// calling thread (which may be any thread). Returns `false` if it was
    /// already retired.
    pub(crate) fn retire(&self) -> bool {
        let before = self.0.reserved.fetch_or(RETIRED, Ordering::AcqRel);
        if before & RETIRED != 0 {
            return false;
        }
        if before == 0 {
            let job = DestroyJob(Some(self.clone()));
            let spawned = self.context().map(|ctx| ctx.spawner.spawn(job));
            // Without a loop to run on (the context is gone), the job was
            // dropped unrun, which runs the hooks in its `drop`.
            let _ = spawned;
        }
        true
    }

    /// Calls every protocol's destroy hook, once per vhost.
    fn destroy_protocols(&self) {
        if !self.0.destroyed.swap(true, Ordering::AcqRel) {
            for p in self.protocols() {
                p.destroy(self);
            }
        }
    }

    /// Sends Close (`code`, `reason`) to every session.
    pub(crate) fn close_sessions(&self, code: crate::CloseCode, reason: &str) -> usize {
        let sessions: Vec<Arc<SessionShared>> = lock(&self.0.sessions)
            .values()
            .map(|s| s.shared.clone())
            .collect();
        sessions
            .iter()
            .filter(|s| s.outbox.request_close(code, reason))
            .count()
    }

    /// Its configuration's fingerprint.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.0.fingerprint
    }

    /// Whether the vhost serves TLS.
    pub fn is_tls(&self) -> bool {
        self.0.is_tls
    }

    /// Its TLS settings' fingerprint (see `VhostConfig::tls_fingerprint`).
    pub(crate) fn tls_fingerprint(&self) -> Option<String> {
        #[cfg(feature = "tls")]
        return self.loaded_tls().map(|t| t.fingerprint.clone());
        #[cfg(not(feature = "tls"))]
        None
    }

    /// Its TLS settings, as loaded.
    #[cfg(feature = "tls")]
    pub(crate) fn loaded_tls(&self) -> Option<Arc<LoadedTls>> {
        lock(&self.0.tls).clone()
    }

    /// Swaps its TLS settings (a certificate reload); the caller then
    /// recomputes its listeners' acceptors.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self, tls: Option<Arc<LoadedTls>>) {
        *lock(&self.0.tls) = tls;
    }

    /// What its listeners run accepted streams through.
    pub(crate) fn acceptor(&self) -> Option<&Binding> {
        self.0.acceptor.as_ref()
    }

    /// The vhost as admission sees it.
    pub(crate) fn site(&self) -> &Site {
        &self.0.site
    }

    /// The handler of the HTTP mount at `index`.
    pub(crate) fn handler(&self, index: usize) -> Option<&Arc<dyn HttpHandler>> {
        self.0.handlers.get(index)?.as_ref()
    }
}

impl fmt::Debug for Vhost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vhost")
            .field("name", &self.0.name)
            .field("hosts", &self.0.hosts)
            .field("local_addrs", &self.local_addrs())
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}

/// A place under a vhost's `max_sessions` and `max_sessions_per_ip`,
/// released when dropped, or handed over to an open session
/// ([`SessionSlot::hand_over`]), which releases it with
/// [`Vhost::release_slot`] when it ends.
pub(crate) struct SessionSlot(Option<(Vhost, IpAddr)>);

impl SessionSlot {
    /// The session that took the slot releases it itself (its vhost and
    /// peer address are its own already: an idle connection does not carry
    /// them twice).
    pub(crate) fn hand_over(mut self) {
        self.0 = None;
    }
}

/// Which session limit refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefused {
    /// `max_sessions` of the vhost.
    Vhost,
    /// `max_sessions_per_ip`.
    Address,
    /// The vhost is removed or its context is tearing down.
    Retired,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Some((vhost, ip)) = self.0.take() {
            vhost.release_slot(ip);
        }
    }
}

/// The bit of `VhostInner::reserved` that marks a retired vhost.
const RETIRED: usize = 1 << (usize::BITS - 1);

/// The destroy hooks of a retired vhost with no session left, as a task on
/// the context's loop. If the task is dropped unrun (a forced teardown drops
/// the task set), the hooks run in its `drop`, which happens on the host's
/// thread that drops or drains the executor.
struct DestroyJob(Option<Vhost>);

impl Future for DestroyJob {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if let Some(vhost) = self.0.take() {
            vhost.destroy_protocols();
        }
        std::task::Poll::Ready(())
    }
}

impl Drop for DestroyJob {
    fn drop(&mut self) {
        if let Some(vhost) = self.0.take() {
            vhost.destroy_protocols();
        }
    }
}

/// The vhost as admission sees it: names, origins, mounts, and the bearer
/// token each protocol requires (its `token` option, however it was
/// configured).
fn site(cfg: &VhostConfig) -> Site {
    Site {
        hosts: cfg.hosts.clone(),
        origins: cfg.origins.clone(),
        mounts: cfg
            .mounts
            .iter()
            .map(|m| Route {
                path: m.path.as_str().into(),
                prefix: m.prefix,
                protocols: match m.target() {
                    MountTarget::WebSocket(p) => Some(p.clone()),
                    MountTarget::Http(_) => None,
                },
            })
            .collect(),
        tokens: cfg
            .protocols
            .iter()
            .filter_map(|p| Some((p.protocol.name.clone(), p.options.get("token")?.clone())))
            .collect(),
    }
}
