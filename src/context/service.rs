//! What the context answers a connection with: the runtime's
//! [`Service`], one per listener (and one for host-provided streams).
//!
//! For each request head it routes (vhost by `Host`, mount by path), answers
//! HTTP through the vhost's handler, or admits a WebSocket handshake: the
//! upgrade check, the origin and token checks, a session place under the
//! vhost's limits, the subprotocol and extension, then the protocol's
//! `open`, which accepts with a state or refuses with a status. An accepted
//! session is registered and handed back to the runtime with its hooks (the
//! protocol's callbacks and the context's [`OpenSession`] bookkeeping, one
//! allocation), which run the callbacks and, when the session ends (or is
//! forced down), its `close` exactly once.

use std::sync::{Arc, Mutex, Weak};

use event_listener::EventListener;

use super::ContextShared;
use super::metrics::CompressionCounters;
use super::session::{SessionHandle, SessionId};
use super::vhost::{SlotRefused, Vhost};
use crate::Limits;
use crate::common::lock;
use crate::proto::admission::{Admission, Route, Table, admit};
use crate::proto::close::CloseReason;
use crate::proto::extension;
use crate::proto::http::{Refused, Request, Upgrade, switching_protocols};
use crate::proto::session::Tally;
use crate::runtime::connection::{Answer, HeadLimits, Service, Upgraded};
use crate::runtime::driver::driver_config;
use crate::runtime::tasks::Spawner;

/// The service of one listener: the vhosts that share it, in configuration
/// order (the first without `Host` names is the default), and the routing
/// table admission reads, swapped together as one value.
pub(crate) struct ListenerService {
    ctx: Weak<ContextShared>,
    routing: Mutex<Arc<Routing>>,
}

/// A listener's vhosts and their table, index for index.
#[derive(Default)]
struct Routing {
    vhosts: Vec<Vhost>,
    table: Table,
}

impl Routing {
    fn of(vhosts: Vec<Vhost>) -> Arc<Self> {
        let table = Table {
            sites: vhosts.iter().map(|v| v.site().clone()).collect(),
        };
        Arc::new(Self { vhosts, table })
    }
}

impl ListenerService {
    pub(crate) fn new(ctx: Weak<ContextShared>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            routing: Mutex::new(Arc::default()),
        })
    }

    pub(crate) fn add_vhost(&self, vhost: Vhost) {
        let mut routing = lock(&self.routing);
        let mut vhosts = routing.vhosts.clone();
        vhosts.push(vhost);
        *routing = Routing::of(vhosts);
    }

    /// Removes `vhost`; returns `true` if no vhost is left.
    pub(crate) fn remove_vhost(&self, vhost: &Vhost) -> bool {
        let mut routing = lock(&self.routing);
        let vhosts: Vec<Vhost> = routing
            .vhosts
            .iter()
            .filter(|w| !w.same(vhost))
            .cloned()
            .collect();
        let empty = vhosts.is_empty();
        *routing = Routing::of(vhosts);
        empty
    }

    /// Replaces the whole vhost list at once (a reconfiguration): a request
    /// is routed by the old list or by the new one, never by a mix.
    pub(crate) fn set_vhosts(&self, vhosts: Vec<Vhost>) {
        *lock(&self.routing) = Routing::of(vhosts);
    }

    /// The vhosts, in order.
    pub(crate) fn vhosts(&self) -> Vec<Vhost> {
        self.routing().vhosts.clone()
    }

    fn routing(&self) -> Arc<Routing> {
        lock(&self.routing).clone()
    }
}

impl Service for ListenerService {
    fn head_limits(&self) -> HeadLimits {
        // The head is read before the vhost is known, so the listener's
        // default vhost's limits apply to it.
        let routing = self.routing();
        head_limits(
            routing
                .vhosts
                .first()
                .map_or(&Limits::default(), |v| v.limits()),
        )
    }

    fn is_running(&self) -> bool {
        self.ctx.upgrade().is_some_and(|c| c.is_running())
    }

    fn teardown(&self) -> EventListener {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.teardown_listener(),
            // Gone: a listener on an event nobody notifies, next to an
            // `is_running` that says false.
            None => event_listener::Event::new().listen(),
        }
    }

    fn refused(&self, status: u16) {
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.rejected(status);
        }
    }

    fn answer(&self, request: Request, worker: &Spawner) -> Answer {
        let Some(ctx) = self.ctx.upgrade() else {
            return Answer::Refuse(Refused::ShuttingDown);
        };
        let routing = self.routing();
        match admit(&request, &routing.table) {
            Admission::Refuse(refused) => Answer::Refuse(refused),
            Admission::Health { site } => http(&request, &routing.vhosts[site], |_, v| health(v)),
            Admission::Http { site, mount } => {
                let vhost = &routing.vhosts[site];
                match vhost.handler(mount) {
                    Some(handler) => http(&request, vhost, |r, v| handler.handle(r, v)),
                    None => Answer::Refuse(Refused::Internal),
                }
            }
            Admission::Upgrade {
                site,
                mount,
                protocol,
                echo,
                upgrade: up,
            } => {
                let vhost = &routing.vhosts[site];
                let asked = Asked {
                    route: &routing.table.sites[site].mounts[mount],
                    protocol: &protocol,
                    echo,
                    upgrade: &up,
                };
                open(&ctx, vhost, request, &asked, worker).unwrap_or_else(Answer::Refuse)
            }
        }
    }
}

/// The bounds on reading a head, from a vhost's limits.
pub(crate) fn head_limits(limits: &Limits) -> HeadLimits {
    HeadLimits {
        max_head_bytes: limits.max_head_bytes,
        max_headers: limits.max_headers,
        handshake_timeout: limits.handshake_timeout,
    }
}

/// `/healthz`: 200 `ok` while the vhost serves, 503 once it does not.
pub(crate) fn health(vhost: &Vhost) -> crate::Response {
    if vhost.is_serving() {
        crate::Response::text(200, "ok\n")
    } else {
        crate::Response::text(503, "shutting down\n")
    }
}

fn http(
    request: &Request,
    vhost: &Vhost,
    handle: impl FnOnce(&Request, &Vhost) -> crate::Response,
) -> Answer {
    match super::protocol::isolate(request.path(), "http", || handle(request, vhost)) {
        Some(response) => Answer::Http(response),
        None => Answer::Refuse(Refused::Internal),
    }
}

/// The session a handshake asks for, as admission found it.
struct Asked<'a> {
    /// The mount it matched.
    route: &'a Route,
    protocol: &'a str,
    /// The client offered the protocol: the `101` names it.
    echo: bool,
    upgrade: &'a Upgrade,
}

/// Opens the session admission let through: a place under the vhost's
/// limits, the extension, then the protocol's `open`.
fn open(
    ctx: &Arc<ContextShared>,
    vhost: &Vhost,
    request: Request,
    asked: &Asked<'_>,
    worker: &Spawner,
) -> Result<Answer, Refused> {
    let &Asked {
        route,
        protocol: name,
        echo,
        upgrade: up,
    } = asked;
    if !ctx.is_running() || !vhost.is_serving() {
        return Err(Refused::ShuttingDown);
    }
    if let Some(budget) = ctx.budget()
        && budget.under_pressure()
    {
        budget.count_refusal();
        return Err(Refused::MemoryExhausted);
    }
    // Reserved before `open` and held until the session ends, so that
    // concurrent handshakes on several threads cannot overshoot the limits.
    let slot = vhost
        .reserve_session(request.peer().ip())
        .map_err(|refused| match refused {
            SlotRefused::Vhost => Refused::TooManySessions,
            SlotRefused::Address => Refused::TooManyFromAddress,
            SlotRefused::Retired => Refused::ShuttingDown,
        })?;
    // Configuration validation makes a missing protocol impossible; answer
    // sanely anyway.
    let (protocol_index, protocol) = vhost.protocol(name).ok_or(Refused::Internal)?;
    let (extension, extension_header, extension_name) = negotiate_extension(vhost, &request);
    let handle = SessionHandle::new(
        SessionId(ctx.next_id()),
        request.peer(),
        vhost.clone(),
        route.session_path(request.path()),
        protocol_index,
        worker.clone(),
        extension.is_none(),
    );
    let mut callbacks = match protocol.open(&request, &handle) {
        Ok(cb) => cb,
        Err(reject) => {
            // The handle `open` saw must not outlive the refusal as a live
            // session: closed, out of every topic, its tasks cancelled now
            // (the slot is given back when this function returns).
            ctx.discard(&handle);
            return Ok(Answer::Reject(reject.response()));
        }
    };
    let span = tracing::debug_span!("session", id = %handle.id(), peer = %request.peer());
    ctx.register(&handle);
    let compression = (extension_name == Some("permessage-deflate"))
        .then(|| ctx.metrics.count_compressed_session(vhost.name()));
    let limits = vhost.limits();
    // From here on the session's end gives the place back (`OpenSession`).
    slot.hand_over();
    callbacks.attach(OpenSession {
        ctx: ctx.clone(),
        compression,
    });
    let response = switching_protocols(
        &up.accept,
        echo.then_some(name),
        extension_header.as_deref(),
    );
    Ok(Answer::Upgrade(Box::new(Upgraded {
        response,
        session: vhost.session_config().clone(),
        driver: driver_config(limits),
        budget: ctx.budget().cloned(),
        extension,
        hooks: callbacks,
        span,
    })))
}

/// The first of the vhost's extensions that accepts one of the client's
/// offers, its response header, and its name.
fn negotiate_extension<'v>(
    vhost: &'v Vhost,
    request: &Request,
) -> (
    Option<Box<dyn extension::Extension>>,
    Option<String>,
    Option<&'v str>,
) {
    let negotiators = vhost.extensions();
    if negotiators.is_empty() {
        return (None, None, None);
    }
    let offers = extension::offers(request);
    for n in negotiators {
        let mine: Vec<_> = offers
            .iter()
            .filter(|o| o.name().eq_ignore_ascii_case(n.name()))
            .cloned()
            .collect();
        if mine.is_empty() {
            continue;
        }
        let accepted = super::protocol::isolate(n.name(), "extension", || n.accept(&mine));
        if let Some(Some((ext, header))) = accepted {
            return (Some(ext), Some(header), Some(n.name()));
        }
    }
    (None, None, None)
}

/// The context's bookkeeping for a session between its registration and
/// its end, carried by its hooks (`protocol::Bound`), which end it exactly
/// once, also when its task is dropped by a forced teardown (then after
/// running `close`). It holds the session's place under its vhost's limits
/// (handed over by the handshake's `SessionSlot`), given back last.
pub(crate) struct OpenSession {
    ctx: Arc<ContextShared>,
    /// The vhost's permessage-deflate counters, if negotiated.
    compression: Option<Arc<CompressionCounters>>,
}

impl OpenSession {
    pub(crate) fn traffic(&self, tally: Tally) {
        self.ctx.metrics.add_traffic(tally);
        if let Some(c) = &self.compression {
            c.add(tally.extension);
        }
    }

    /// Unregisters `session` (`outcome`: how it ended; `None`: forced down)
    /// and gives its place back.
    pub(crate) fn end(self, session: &SessionHandle, outcome: Option<&CloseReason>) {
        self.ctx.unregister(session, outcome);
        // The place the handshake reserved (see `OpenSession`).
        session.vhost().release_slot(session.peer().ip());
    }
}
