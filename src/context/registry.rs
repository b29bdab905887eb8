//! The registry: a context's vhosts (and those removed while sessions still
//! use them), its listeners with the services they answer with, and the
//! service for host-provided streams. Sessions are registered once, with
//! their vhost; the context's view of all sessions goes through the vhosts.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::ContextShared;
use super::service::ListenerService;
use super::session::SessionHandle;
use super::vhost::{Vhost, VhostInner};
use crate::common::lock;
use crate::config::{Binding, VhostConfig, same_binding};
use crate::error::{ConfigError, Error};
use crate::runtime::listener::{Listener, bind_all};
use crate::runtime::transport::{Acceptor, bound_acceptor};
use crate::runtime::workers::Workers;

/// A context's vhosts and listeners.
pub(crate) struct Registry {
    /// The vhosts serving, in configuration order.
    vhosts: Mutex<Vec<Vhost>>,
    /// Removed vhosts, weakly: while their sessions (which hold them) have
    /// not all ended, teardown still closes them and they still count; the
    /// registry never keeps one (and its user data) alive itself.
    removed: Mutex<Vec<Weak<VhostInner>>>,
    listeners: Mutex<Vec<ListenerEntry>>,
    /// What host-provided streams are answered with: every vhost, routed by
    /// `Host`.
    streams: Arc<ListenerService>,
    next_id: AtomicU64,
}

/// A listener and the service its connections are answered with.
struct ListenerEntry {
    listener: Arc<Listener>,
    service: Arc<ListenerService>,
    /// The acceptor every vhost on this listener shares.
    acceptor: Option<Binding>,
    /// Whether its vhosts serve TLS: its acceptor is then computed from
    /// them (see [`acceptor_for`]) whenever they or their certificates
    /// change.
    tls: bool,
}

/// The acceptor of a listener shared by `vhosts`: TLS, computed from their
/// names and certificates, if they serve TLS (all of them do then: checked
/// before); else the host's acceptor they share (`binding`), if any.
fn acceptor_for(
    ctx: &Arc<ContextShared>,
    vhosts: &[Vhost],
    binding: Option<&Binding>,
) -> Option<Arc<dyn Acceptor>> {
    #[cfg(feature = "tls")]
    if vhosts.iter().any(Vhost::is_tls) {
        use crate::runtime::tls::{TlsAcceptor, TlsSite};
        let sites = vhosts
            .iter()
            .filter_map(|v| {
                Some(TlsSite {
                    hosts: v.hosts().to_vec(),
                    server: v.loaded_tls()?.server.clone(),
                })
            })
            .collect();
        let weak = Arc::downgrade(ctx);
        let failures = Arc::new(move |f: crate::runtime::tls::TlsFailure| {
            if let Some(ctx) = weak.upgrade() {
                ctx.metrics.tls_failed(f.label());
            }
        });
        return Some(Arc::new(TlsAcceptor::new(sites, failures)));
    }
    let _ = (ctx, vhosts);
    binding.and_then(bound_acceptor)
}

impl Registry {
    pub(crate) fn new(ctx: Weak<ContextShared>) -> Self {
        Self {
            vhosts: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            streams: ListenerService::new(ctx),
            next_id: AtomicU64::new(1),
        }
    }

    /// The service host-provided streams are answered with.
    pub(crate) fn streams(&self) -> &Arc<ListenerService> {
        &self.streams
    }

    /// A new session id, unique within the context.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The serving vhosts.
    pub(crate) fn vhosts(&self) -> Vec<Vhost> {
        lock(&self.vhosts).clone()
    }

    /// The serving vhost called `name`.
    pub(crate) fn vhost(&self, name: &str) -> Option<Vhost> {
        lock(&self.vhosts)
            .iter()
            .find(|v| v.name() == name)
            .cloned()
    }

    /// Every bound listen address (port 0 resolved).
    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.listeners)
            .iter()
            .map(|l| l.listener.local)
            .collect()
    }

    /// The configured addresses of the listeners.
    pub(crate) fn listening(&self) -> Vec<SocketAddr> {
        lock(&self.listeners)
            .iter()
            .map(|l| l.listener.configured)
            .collect()
    }

    /// Every open session, of serving and of removed vhosts.
    pub(crate) fn sessions(&self) -> Vec<SessionHandle> {
        self.with_all_vhosts(|vhosts| vhosts.iter().flat_map(Vhost::sessions).collect())
    }

    /// How many sessions are open.
    pub(crate) fn session_count(&self) -> usize {
        self.with_all_vhosts(|vhosts| vhosts.iter().map(Vhost::session_count).sum())
    }

    /// Runs `f` over the serving vhosts and the removed ones still in use
    /// (those no longer in use are let go here).
    fn with_all_vhosts<T>(&self, f: impl FnOnce(&[Vhost]) -> T) -> T {
        let mut all = self.vhosts();
        let mut removed = lock(&self.removed);
        removed.retain(|v| v.strong_count() > 0);
        all.extend(removed.iter().filter_map(|v| v.upgrade().map(Vhost)));
        drop(removed);
        f(&all)
    }

    /// Checks that `config` can join the listeners it names: vhosts sharing
    /// a listener share its acceptor.
    pub(crate) fn check_acceptor(&self, config: &VhostConfig) -> Result<(), Error> {
        let listeners = lock(&self.listeners);
        let mixed = listeners
            .iter()
            .find(|l| config.listen().contains(&l.listener.configured) && l.tls != config.is_tls());
        if let Some(l) = mixed {
            return Err(Error::Config(ConfigError::new(
                format!("vhost.{}.tls", config.name()),
                format!(
                    "listener {} serves {}: a listener is either TLS or plain",
                    l.listener.configured,
                    if l.tls { "TLS" } else { "plain TCP" }
                ),
            )));
        }
        let mismatch = listeners.iter().find(|l| {
            config.listen().contains(&l.listener.configured)
                && !same_binding(&l.acceptor, &config.acceptor)
        });
        match mismatch {
            Some(l) => Err(Error::Config(ConfigError::new(
                format!("vhost.{}.acceptor", config.name()),
                format!("{} is served with another acceptor", l.listener.configured),
            ))),
            None => Ok(()),
        }
    }

    /// Installs `vhost`: on the listeners it names (new ones are started
    /// from `bound`), then in the serving list.
    pub(crate) fn install(
        &self,
        ctx: &Arc<ContextShared>,
        workers: &Arc<Workers>,
        vhost: &Vhost,
        bound: &mut Vec<(SocketAddr, TcpListener)>,
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
                    let service = ListenerService::new(Arc::downgrade(ctx));
                    let acceptor = vhost.acceptor().cloned();
                    let listener = Listener::start(
                        *addr,
                        socket,
                        workers,
                        service.clone(),
                        acceptor_for(ctx, std::slice::from_ref(vhost), acceptor.as_ref()),
                    );
                    listeners.push(ListenerEntry {
                        listener,
                        service,
                        acceptor,
                        tls: vhost.is_tls(),
                    });
                    Some(listeners.len() - 1)
                });
            let Some(pos) = pos else {
                continue;
            };
            let entry = &listeners[pos];
            locals.push(entry.listener.local);
            entry.service.add_vhost(vhost.clone());
            if entry.tls {
                // One more vhost (name, certificate) to choose by SNI.
                let vhosts = entry.service.vhosts();
                entry
                    .listener
                    .set_acceptor(acceptor_for(ctx, &vhosts, entry.acceptor.as_ref()));
            }
        }
        drop(listeners);
        vhost.set_local_addrs(locals);
        lock(&self.vhosts).push(vhost.clone());
        self.streams.add_vhost(vhost.clone());
    }

    /// Takes the serving vhost `name` out of routing: off its listeners
    /// (those left without a vhost stop), off the streams' routing, and into
    /// the removed list while its sessions end.
    pub(crate) fn remove(&self, name: &str) -> Result<Vhost, Error> {
        let vhost = {
            let mut vhosts = lock(&self.vhosts);
            let pos = vhosts
                .iter()
                .position(|v| v.name() == name)
                .ok_or_else(|| Error::NoSuchVhost(name.to_owned()))?;
            vhosts.remove(pos)
        };
        self.streams.remove_vhost(&vhost);
        let ctx = vhost.context();
        lock(&self.listeners).retain(|l| {
            let empty = l.service.remove_vhost(&vhost);
            if empty {
                l.listener.stop();
            } else if l.tls
                && let Some(ctx) = &ctx
            {
                // One vhost (name, certificate) fewer to choose by SNI.
                let vhosts = l.service.vhosts();
                l.listener
                    .set_acceptor(acceptor_for(ctx, &vhosts, l.acceptor.as_ref()));
            }
            !empty
        });
        lock(&self.removed).push(Arc::downgrade(&vhost.0));
        Ok(vhost)
    }

    /// Replaces the serving vhosts with `next` (in configuration order, the
    /// kept ones among them), in the order a reload must go: listeners for
    /// new addresses start (from `bound`, bound beforehand), every
    /// listener's routing is swapped to its share of `next` in one step,
    /// listeners no vhost names any more stop last. Returns the vhosts taken
    /// out (for the caller to retire and close).
    pub(crate) fn apply(
        &self,
        ctx: &Arc<ContextShared>,
        workers: &Arc<Workers>,
        next: &[Vhost],
        bound: &mut Vec<(SocketAddr, TcpListener)>,
    ) -> Vec<Vhost> {
        let mut listeners = lock(&self.listeners);
        // Every address of `next`, with the vhosts that name it, in order.
        let mut addrs: Vec<(SocketAddr, Vec<Vhost>)> = Vec::new();
        for v in next {
            for a in v.listen() {
                match addrs.iter_mut().find(|(b, _)| b == a) {
                    Some((_, list)) => list.push(v.clone()),
                    None => addrs.push((*a, vec![v.clone()])),
                }
            }
        }
        for (addr, vhosts) in &addrs {
            // Vhosts sharing an address share its acceptor, and all serve
            // TLS or none does (checked before).
            let acceptor = vhosts[0].acceptor().cloned();
            let tls = vhosts[0].is_tls();
            if let Some(entry) = listeners
                .iter_mut()
                .find(|l| l.listener.configured == *addr)
            {
                if tls || entry.tls {
                    // The set of vhosts, their names or certificates may
                    // have changed: a new acceptor for new handshakes; the
                    // connections already accepted keep theirs.
                    entry
                        .listener
                        .set_acceptor(acceptor_for(ctx, vhosts, acceptor.as_ref()));
                    entry.acceptor = acceptor;
                    entry.tls = tls;
                } else if !same_binding(&entry.acceptor, &acceptor) {
                    entry
                        .listener
                        .set_acceptor(acceptor.as_ref().and_then(bound_acceptor));
                    entry.acceptor = acceptor;
                }
                entry.service.set_vhosts(vhosts.clone());
            } else if let Some(pos) = bound.iter().position(|(a, _)| a == addr) {
                let (_, socket) = bound.swap_remove(pos);
                let service = ListenerService::new(Arc::downgrade(ctx));
                service.set_vhosts(vhosts.clone());
                let listener = Listener::start(
                    *addr,
                    socket,
                    workers,
                    service.clone(),
                    acceptor_for(ctx, vhosts, acceptor.as_ref()),
                );
                listeners.push(ListenerEntry {
                    listener,
                    service,
                    acceptor,
                    tls,
                });
            }
        }
        for v in next {
            let locals = v
                .listen()
                .iter()
                .filter_map(|a| listeners.iter().find(|l| l.listener.configured == *a))
                .map(|l| l.listener.local)
                .collect();
            v.set_local_addrs(locals);
        }
        // Last: the listeners nobody names any more.
        listeners.retain(|l| {
            let named = addrs.iter().any(|(a, _)| *a == l.listener.configured);
            if !named {
                l.listener.stop();
            }
            named
        });
        drop(listeners);
        self.streams.set_vhosts(next.to_vec());
        let old = std::mem::replace(&mut *lock(&self.vhosts), next.to_vec());
        let out: Vec<Vhost> = old
            .into_iter()
            .filter(|o| !next.iter().any(|n| n.same(o)))
            .collect();
        lock(&self.removed).extend(out.iter().map(|v| Arc::downgrade(&v.0)));
        out
    }

    /// Stops every listener (teardown).
    pub(crate) fn stop_listeners(&self) {
        for l in lock(&self.listeners).drain(..) {
            l.listener.stop();
        }
    }
}

/// Binds the addresses of `configs` that no listener has yet.
pub(crate) fn bind_new(
    registry: &Registry,
    configs: &[&VhostConfig],
) -> Result<Vec<(SocketAddr, TcpListener)>, Error> {
    let addrs: Vec<SocketAddr> = configs
        .iter()
        .flat_map(|v| v.listen().iter().copied())
        .collect();
    bind_all(&addrs, &registry.listening())
}
