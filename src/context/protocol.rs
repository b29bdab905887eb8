//! The traits applications implement, [`Protocol`] (a WebSocket endpoint)
//! and [`HttpHandler`] (an HTTP endpoint), the type-erased forms a vhost
//! stores, and the isolation of every callback.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use super::service::OpenSession;
use super::session::SessionHandle;
use super::vhost::Vhost;
use crate::config::{Binding, Mount, Options, VhostBuilder};
use crate::proto::close::CloseReason;
use crate::proto::http::{Reject, Request, Response};
use crate::proto::session::Tally;
use crate::runtime::driver::SessionHooks;
use crate::runtime::outbox::Outbox;
use crate::{CloseCode, Message};

/// An application protocol: the callbacks of one WebSocket endpoint.
///
/// A protocol instance belongs to one vhost (register it with
/// [`VhostConfig::protocol`](crate::VhostConfig)) and is shared by all of that
/// vhost's sessions that negotiated it. Its name is matched against the
/// client's `Sec-WebSocket-Protocol` offer.
///
/// Callbacks are plain methods that run on the host's loop; they must not
/// block. Long work belongs in a task that holds a clone of the
/// [`SessionHandle`], which can send from anywhere.
///
/// # Threads
///
/// Every callback runs on a thread that is running one of the executors the
/// context is attached to (inside the host's `run`, `tick` or `try_tick`),
/// or inside the host's own call to [`Drain::drain`](crate::Drain::drain),
/// which runs them. Never anywhere else: [`ContextHandle::shutdown`],
/// [`Context::destroy`], [`Context::remove_vhost`] and dropping a `Context`
/// or `Drain` only *request* work, whatever thread calls them, and the loop
/// does it. (After a forced teardown, the remaining `close` and `destroy`
/// callbacks run where the host next runs, or drops, its executor.)
///
/// - `open`, `message` and `close` of one session run on the service thread
///   serving it, one at a time, in that order.
/// - `wake` runs on the context's first executor, once per vhost per
///   [`ContextHandle::wake`].
/// - `destroy` runs once per vhost, after the `close` of the vhost's last
///   session (the vhost was removed or the context torn down), so it never
///   overlaps a callback of that vhost's sessions.
///
/// With service threads ([`Context::attach_set`]) sessions on different
/// threads run their callbacks in parallel; that is why a `Protocol` is
/// `Sync`.
///
/// # Exactly once
///
/// [`close`](Self::close) runs exactly once for every session whose `open`
/// returned `Ok`, however it ends: a clean close, a peer that vanished, a
/// limit, a forced drain, or a panic in `message` (then the session is
/// closed with 1011 and `close` still gets the state). A session whose `open`
/// returned `Err` (or panicked) never gets `close`; its handle is closed at
/// once: sends return [`SendError::Closed`](crate::SendError::Closed), it is
/// in no topic, and the tasks it spawned are cancelled.
///
/// # Panics and blocking
///
/// A panic in any callback is caught and logged; it never unwinds into the
/// host's loop. `open` answers 500, `message` closes its session with 1011,
/// and a panic in `close`, `wake` or `destroy` only logs. No library can
/// pre-empt a callback that blocks: it stalls every session on its thread,
/// and a drain runs past its deadline for as long
/// ([`DrainReport::overrun`](crate::DrainReport::overrun) says by how much).
///
/// [`ContextHandle::shutdown`]: crate::ContextHandle::shutdown
/// [`ContextHandle::wake`]: crate::ContextHandle::wake
/// [`Context::destroy`]: crate::Context::destroy
/// [`Context::remove_vhost`]: crate::Context::remove_vhost
/// [`Context::attach_set`]: crate::Context::attach_set
///
/// # Examples
///
/// ```
/// use wsgate::{Message, Protocol, Reject, Request, SessionHandle};
///
/// /// Counts the messages of each session and answers with the count.
/// struct Counter;
///
/// impl Protocol for Counter {
///     type State = u64;
///
///     fn name(&self) -> &str {
///         "counter"
///     }
///
///     fn open(&self, _req: &Request, _session: &SessionHandle) -> Result<u64, Reject> {
///         Ok(0)
///     }
///
///     fn message(&self, count: &mut u64, session: &SessionHandle, _msg: Message) {
///         *count += 1;
///         let _ = session.try_send(Message::text(count.to_string()));
///     }
/// }
/// ```
pub trait Protocol: Send + Sync + 'static {
    /// Per-session state, created by [`open`](Self::open) and handed back by
    /// [`close`](Self::close).
    type State: Send + 'static;

    /// The protocol's name, as offered in `Sec-WebSocket-Protocol`.
    fn name(&self) -> &str;

    /// Decides whether to accept the upgrade, seeing the whole request head.
    ///
    /// Returning `Err(Reject)` answers the handshake with that HTTP status
    /// instead of `101`. Messages sent through `session` here are delivered
    /// right after the handshake.
    fn open(&self, request: &Request, session: &SessionHandle) -> Result<Self::State, Reject>;

    /// A complete text or binary message arrived.
    fn message(&self, state: &mut Self::State, session: &SessionHandle, message: Message);

    /// The session ended; `reason` says how. Called exactly once per opened
    /// session, also when the session is forced down by teardown or a
    /// `message` callback panicked (see "Exactly once" above). The handle no
    /// longer accepts messages; the session's tasks are cancelled and it
    /// leaves its topics once this returns.
    fn close(&self, state: Self::State, session: &SessionHandle, reason: &CloseReason) {
        let _ = (state, session, reason);
    }

    /// [`ContextHandle::wake`](crate::ContextHandle::wake) was called; runs on
    /// the loop once per vhost that registered this protocol.
    fn wake(&self, vhost: &Vhost, payload: &Wake) {
        let _ = (vhost, payload);
    }

    /// The vhost is going away (context teardown or vhost removal). Called
    /// once, on the loop, after the last of the vhost's sessions has closed.
    fn destroy(&self, vhost: &Vhost) {
        let _ = vhost;
    }
}

/// A payload delivered by [`ContextHandle::wake`](crate::ContextHandle::wake)
/// to every protocol's [`wake`](Protocol::wake) callback.
#[derive(Clone)]
pub struct Wake(Arc<dyn Any + Send + Sync>);

impl Wake {
    pub(crate) fn new<T: Any + Send + Sync>(payload: T) -> Self {
        Self(Arc::new(payload))
    }

    /// The payload, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for Wake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wake").finish_non_exhaustive()
    }
}

/// The object-safe form of [`Protocol`] that a vhost stores.
pub(crate) trait ErasedProtocol: Send + Sync {
    fn name(&self) -> &str;
    /// Calls the protocol's `open`: the session's callbacks with its state
    /// bound in, which become its hooks once the context has attached its
    /// bookkeeping ([`SessionCallbacks::attach`]).
    fn open(
        self: Arc<Self>,
        request: &Request,
        session: &SessionHandle,
    ) -> Result<Box<dyn SessionCallbacks>, Reject>;
    fn wake(&self, vhost: &Vhost, payload: &Wake);
    fn destroy(&self, vhost: &Vhost);
}

/// One open session as the driver sees it: the protocol's callbacks with
/// the session's state bound in, and the context's bookkeeping, in one
/// allocation.
pub(crate) trait SessionCallbacks: SessionHooks {
    /// Hands over the context's bookkeeping (the session is registered and
    /// holds its place): from now on its end, or its hooks being dropped,
    /// undoes it.
    fn attach(&mut self, open: OpenSession);
}

pub(crate) struct Erased<P>(pub(crate) P);

struct Bound<P: Protocol> {
    protocol: Arc<Erased<P>>,
    session: SessionHandle,
    /// The session's state, handed to `close` in the end whatever happened
    /// (taken then, so that `close` runs exactly once).
    state: Option<P::State>,
    /// A callback panicked with the state borrowed: the state may be half
    /// updated, so `message` is not called again (but `close` still is).
    poisoned: bool,
    /// The context's bookkeeping, once attached.
    open: Option<OpenSession>,
}

// A panic in an application callback must not unwind into the host's loop
// (wsgate's tasks run inside the host's executor) nor take other sessions
// down: each callback is isolated, logged, and answered on the wire (500 for
// `open`, Close 1011 for `message`).

impl<P: Protocol> ErasedProtocol for Erased<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn open(
        self: Arc<Self>,
        request: &Request,
        session: &SessionHandle,
    ) -> Result<Box<dyn SessionCallbacks>, Reject> {
        let state = isolate(self.0.name(), "open", || self.0.open(request, session))
            .unwrap_or_else(|| Err(Reject::new(500, "internal error")))?;
        Ok(Box::new(Bound {
            protocol: self,
            session: session.clone(),
            state: Some(state),
            poisoned: false,
            open: None,
        }))
    }

    fn wake(&self, vhost: &Vhost, payload: &Wake) {
        isolate(self.0.name(), "wake", || self.0.wake(vhost, payload));
    }

    fn destroy(&self, vhost: &Vhost) {
        isolate(self.0.name(), "destroy", || self.0.destroy(vhost));
    }
}

impl<P: Protocol> Bound<P> {
    /// The session's end, once: no more sends, the protocol's `close`, then
    /// the bookkeeping undone (`forced`: by a teardown or a dropped task,
    /// which the metrics count as 1006).
    fn end(&mut self, reason: &CloseReason, forced: bool) {
        self.session.shared.outbox.mark_closed();
        if let Some(state) = self.state.take() {
            let protocol = &self.protocol.0;
            let session = &self.session;
            isolate(protocol.name(), "close", || {
                protocol.close(state, session, reason);
            });
        }
        if let Some(open) = self.open.take() {
            open.end(&self.session, (!forced).then_some(reason));
        }
    }
}

impl<P: Protocol> SessionCallbacks for Bound<P> {
    fn attach(&mut self, open: OpenSession) {
        self.open = Some(open);
    }
}

impl<P: Protocol> SessionHooks for Bound<P> {
    fn outbox(&self) -> &Outbox {
        &self.session.shared.outbox
    }

    fn message(&mut self, message: Message) {
        if self.poisoned {
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let protocol = &self.protocol.0;
        let session = &self.session;
        if isolate(protocol.name(), "message", || {
            protocol.message(state, session, message);
        })
        .is_none()
        {
            // The state may be half-updated: stop feeding it, and close the
            // session with 1011; `close` still runs with it, exactly once.
            self.poisoned = true;
            let _ = session.close(CloseCode::Error, "internal error");
        }
    }

    fn traffic(&mut self, tally: Tally) {
        if let Some(open) = &self.open {
            open.traffic(tally);
        }
    }

    fn finish(mut self: Box<Self>, reason: CloseReason) {
        self.end(&reason, false);
    }
}

impl<P: Protocol> Drop for Bound<P> {
    fn drop(&mut self) {
        if self.state.is_some() || self.open.is_some() {
            self.end(&CloseReason::abnormal("forced closed by teardown"), true);
        }
    }
}

/// Runs an application callback, turning a panic into `None` and a log line.
pub(crate) fn isolate<T>(protocol: &str, callback: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::error!(protocol, callback, "protocol callback panicked");
            None
        }
    }
}

pub(crate) fn erase<P: Protocol>(protocol: P) -> Arc<dyn ErasedProtocol> {
    Arc::new(Erased(protocol))
}

/// A protocol as a configuration carries it (see [`Binding`]).
pub(crate) struct ProtocolObject(pub(crate) Arc<dyn ErasedProtocol>);

/// An HTTP handler as a configuration carries it.
pub(crate) struct HandlerObject(pub(crate) Arc<dyn HttpHandler>);

/// The protocol a configuration entry carries (every entry is made by
/// [`VhostBuilder::protocol`] or the TOML loader, both of which bind a
/// [`ProtocolObject`]).
pub(crate) fn bound_protocol(binding: &Binding) -> Option<Arc<dyn ErasedProtocol>> {
    binding.get::<ProtocolObject>().map(|p| p.0.clone())
}

/// The handler an HTTP mount carries.
pub(crate) fn bound_handler(binding: &Binding) -> Option<Arc<dyn HttpHandler>> {
    binding.get::<HandlerObject>().map(|h| h.0.clone())
}

/// Binds an erased protocol for a configuration.
pub(crate) fn bind_protocol(protocol: Arc<dyn ErasedProtocol>) -> Binding {
    Binding::new(protocol.name().to_owned(), ProtocolObject(protocol))
}

/// Binds a handler for a configuration.
pub(crate) fn bind_handler<H: HttpHandler>(handler: H) -> Binding {
    bind_handler_arc(std::any::type_name::<H>(), Arc::new(handler))
}

pub(crate) fn bind_handler_arc(type_name: &str, handler: Arc<dyn HttpHandler>) -> Binding {
    let short = type_name.rsplit("::").next().unwrap_or(type_name);
    Binding::new(short.to_owned(), HandlerObject(handler))
}

impl VhostBuilder {
    /// Registers a protocol with no options. Default: none.
    pub fn protocol<P: Protocol>(self, protocol: P) -> Self {
        self.protocol_with_options(protocol, Options::new())
    }

    /// Registers a protocol with its per-vhost options, which the protocol can
    /// read back with [`Vhost::options`](crate::Vhost::options).
    pub fn protocol_with_options<P: Protocol>(self, protocol: P, options: Options) -> Self {
        self.protocol_binding(bind_protocol(erase(protocol)), options)
    }
}

impl Mount {
    /// An HTTP handler at `path`.
    pub fn http(path: impl Into<String>, handler: impl HttpHandler) -> Self {
        Self::http_binding(path, bind_handler(handler))
    }
}

/// An HTTP endpoint mounted on a vhost. Runs on the loop; must not block.
pub trait HttpHandler: Send + Sync + 'static {
    /// Answers one GET or HEAD request.
    fn handle(&self, request: &Request, vhost: &Vhost) -> Response;
}

impl<F> HttpHandler for F
where
    F: Fn(&Request, &Vhost) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request, vhost: &Vhost) -> Response {
        self(request, vhost)
    }
}
