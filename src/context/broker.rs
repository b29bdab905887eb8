//! Topics behind a seam: the [`Broker`] trait, and [`MemoryBroker`], the
//! in-process broker every context uses unless it is given another.
//!
//! The context keeps each session's own list of topics (for
//! `max_subscriptions`, and to leave them all when the session ends); the
//! broker keeps who subscribes to what and carries each publish to them.
//! [`ContextHandle::publish`](crate::ContextHandle::publish),
//! [`SessionHandle::subscribe`] and the `pubsub` protocol all go through it,
//! so a broker that spans several nodes (`cluster::RedisBroker`, feature
//! `redis`) changes nothing for them.
//!
//! # History and recovery
//!
//! A broker may keep a history per topic (Centrifugo's model): every message
//! published to such a topic gets the next `offset` within the topic's
//! `epoch` (a [`Position`]). A client that reconnects subscribes again
//! *since* the last position it saw ([`SubscribeRequest::since`]) and gets,
//! in order, the acknowledgement, the messages it missed, then the live ones,
//! with no gap and no duplicate; the acknowledgement's [`Recovery`] says
//! whether the history still reached back that far (when it did not, the
//! client must resync from its source of truth). A new epoch means the
//! offsets started again (the history expired, or the broker lost it).
//!
//! A message published with [`Stamp::Json`] (what the `pubsub` protocol
//! does) is a JSON object whose position is written into it as
//! `"offset"` and `"epoch"` fields ([`Position::stamp`]).
//!
//! # The in-process broker
//!
//! A message is published once and shared: every subscriber's queue holds a
//! clone of the same [`Message`], whose payload is reference-counted
//! `Bytes`, so nothing is copied per subscriber. Each topic's subscriber
//! list is copy-on-write: a publish takes a snapshot under a short lock and
//! fans out without it, so publishers on several threads never wait for
//! each other's fan-out, and one publisher's messages reach every subscriber
//! in order. A slow subscriber costs the publisher one failed `try_send`;
//! its own queue bound and the vhost's
//! [`OverflowPolicy`](crate::OverflowPolicy) decide what happens to it.
//! With history ([`MemoryBroker::with_history`]), a topic's offsets are
//! assigned and fanned out under the topic's own lock, so every subscriber
//! sees them in increasing order whoever published them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Message;
use crate::common::lock;
use crate::config::{Binding, ConfigBuilder};
use crate::context::session::{SessionHandle, SessionId};
use crate::runtime::tasks::Spawner;

mod memory;

pub use memory::{MAX_HISTORY_SIZE, MAX_HISTORY_TOPICS, MemoryBroker, new_epoch};

/// Who is subscribed to a topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Presence {
    /// How many sessions are subscribed (on every node, for a broker that
    /// spans several and a [`cluster_presence`](Broker::cluster_presence)).
    pub count: usize,
    /// The ids of this context's subscribers, in subscription order (a
    /// [`SessionId`] means nothing on another node).
    pub sessions: Vec<SessionId>,
    /// Whether the count is this node's alone because the other nodes could
    /// not be asked (the cluster bus is unreachable).
    pub partial: bool,
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Published {
    /// This context's subscribers whose queue accepted the message.
    pub delivered: usize,
    /// This context's subscribers that did not take it (full queue under a
    /// non-dropping policy, dropped by `drop-newest`, or closing).
    pub missed: usize,
    /// What happened beyond this process.
    pub remote: Remote,
}

/// Where a publish went beyond this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Remote {
    /// The broker spans this process only (the in-process broker).
    #[default]
    Local,
    /// Handed to the cluster bus, in publish order; the other nodes deliver
    /// it when it arrives. A topic with history is delivered on this node
    /// too when the bus gives it its offset, so `delivered` is 0 then. A
    /// send that fails later is counted in
    /// [`BrokerStats::errors`] and its local delivery still happens.
    Queued,
    /// The cluster bus is unreachable: only this node's subscribers got the
    /// message (without a position), no other node will.
    Unavailable,
}

/// How the broker may change a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Stamp {
    /// The message is delivered as it is.
    #[default]
    None,
    /// The message is a JSON object in a text message: on a topic with
    /// history its [`Position`] is written into it (see [`Position::stamp`]).
    /// A message that is not a JSON object text is delivered as it is.
    Json,
}

/// Where a message stands in its topic's history: its `offset`, counted from
/// 1 within the `epoch`, a name that changes whenever the offsets start again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Position {
    /// The message's number in its epoch (the first message is 1).
    pub offset: u64,
    /// The history's name: a client compares it to know that an offset it
    /// kept still means the same message.
    pub epoch: String,
}

/// Longest epoch a client may name (ours are 16 hex digits).
pub const MAX_EPOCH_BYTES: usize = 64;

impl Position {
    /// A position.
    pub fn new(offset: u64, epoch: impl Into<String>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }

    /// Writes this position into a JSON object text message as two more
    /// fields, `"offset":N,"epoch":"E"`, before its closing brace. `None`
    /// for anything else (a binary message, text that is not an object).
    ///
    /// Only the outer braces are looked at, so the message must be a whole
    /// JSON object (what a serializer writes); the epoch is escaped.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsgate::Message;
    /// use wsgate::pubsub::Position;
    ///
    /// let stamped = Position::new(17, "e1").stamp(&Message::text(r#"{"op":"message"}"#));
    /// assert_eq!(
    ///     stamped,
    ///     Some(Message::text(r#"{"op":"message","offset":17,"epoch":"e1"}"#))
    /// );
    /// assert_eq!(Position::new(1, "e1").stamp(&Message::text("[1]")), None);
    /// ```
    pub fn stamp(&self, message: &Message) -> Option<Message> {
        let Message::Text(text) = message else {
            return None;
        };
        let body = text.as_str().trim_end();
        let inner = body.trim_start().strip_prefix('{')?.strip_suffix('}')?;
        let head = &body[..body.len() - 1];
        let epoch = serde_json::to_string(&self.epoch).ok()?;
        let sep = if inner.trim().is_empty() { "" } else { "," };
        Some(Message::text(format!(
            "{head}{sep}\"offset\":{},\"epoch\":{epoch}}}",
            self.offset
        )))
    }
}

/// What a subscription found when it began.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Recovery {
    /// Whether the session was given every message published since the
    /// position it named (`false` without one, or when the history no
    /// longer reaches back to it, or the epoch changed: the client must then
    /// resync from its source).
    pub recovered: bool,
    /// How many missed messages were queued after the acknowledgement.
    pub replayed: usize,
    /// The topic's newest position when the subscription began, if it keeps
    /// history and has one.
    pub position: Option<Position>,
}

/// The acknowledgement a subscriber wants queued before anything else it gets
/// from the topic: given the [`Recovery`], the message to send (or none).
pub type Acknowledge = Box<dyn FnOnce(&Recovery) -> Option<Message> + Send>;

/// A subscription with its options: where to recover from, and the
/// acknowledgement to queue once the subscription is in effect.
///
/// # Examples
///
/// ```
/// use wsgate::Message;
/// use wsgate::pubsub::{Position, SubscribeRequest};
///
/// let request = SubscribeRequest::new()
///     .since(Position::new(17, "c0ffee"))
///     .acknowledge(|r| Some(Message::text(format!("recovered: {}", r.recovered))));
/// # drop(request);
/// ```
#[derive(Default)]
#[must_use = "a request does nothing until it is passed to subscribe_with"]
pub struct SubscribeRequest {
    since: Option<Position>,
    ack: Option<Acknowledge>,
}

impl SubscribeRequest {
    /// A plain subscription: no recovery, no acknowledgement.
    pub fn new() -> Self {
        Self::default()
    }

    /// Recover the messages published after `position`.
    pub fn since(mut self, position: Position) -> Self {
        self.since = Some(position);
        self
    }

    /// Queue the message `ack` returns first, once the subscription is in
    /// effect (for a cluster broker: once the bus confirmed it), before the
    /// recovered messages and the live ones.
    pub fn acknowledge(
        mut self,
        ack: impl FnOnce(&Recovery) -> Option<Message> + Send + 'static,
    ) -> Self {
        self.ack = Some(Box::new(ack));
        self
    }

    /// The position to recover from, if any.
    pub fn position(&self) -> Option<&Position> {
        self.since.as_ref()
    }

    /// Queues the acknowledgement (if one was asked for) to `session`; for
    /// brokers, at the moment the subscription is in effect.
    pub fn acknowledged(self, session: &SessionHandle, recovery: &Recovery) {
        if let Some(message) = self.ack.and_then(|ack| ack(recovery)) {
            // A full queue is the overflow policy's business; a closing
            // session needs no answer.
            let _ = session.try_send(message);
        }
    }
}

impl fmt::Debug for SubscribeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeRequest")
            .field("since", &self.since)
            .field("acknowledge", &self.ack.is_some())
            .finish()
    }
}

/// A broker's own counters and state, for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Whether the broker can carry messages between nodes now (always true
    /// for an in-process broker).
    pub ready: bool,
    /// Failed operations on the cluster bus (connects, commands, sends).
    pub errors: u64,
    /// Connections to the cluster bus made again after one was lost.
    pub reconnects: u64,
    /// Messages sent to the other nodes.
    pub messages_out: u64,
    /// Messages received from the other nodes.
    pub messages_in: u64,
}

impl Default for BrokerStats {
    fn default() -> Self {
        Self {
            ready: true,
            errors: 0,
            reconnects: 0,
            messages_out: 0,
            messages_in: 0,
        }
    }
}

/// A future a broker answers with (boxed, so that the trait stays object
/// safe).
pub type BrokerFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a broker gets when its context attaches: the place to run its tasks
/// (connections to a cluster bus, timers), which is the context's own task
/// set on the host's executors. wsgate starts no thread, and neither should
/// a broker.
///
/// Tasks spawned here count as the context's: the drain waits for them, so a
/// broker must end them when [`Broker::stop`] is called.
#[derive(Clone)]
pub struct BrokerContext {
    spawner: Spawner,
}

impl BrokerContext {
    /// Runs `task` on the context's loop (its first service thread).
    /// Returns `false` if the context is already gone.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        self.spawner.spawn(task)
    }
}

impl fmt::Debug for BrokerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerContext").finish_non_exhaustive()
    }
}

/// Where a context's topics live: who is subscribed to what, and how a
/// publish reaches them.
///
/// Implementations must be cheap on `publish` (it runs on the publisher's
/// thread, often on the loop) and must not block. They are called only with
/// sessions of their own context; subscribing the same session to the same
/// topic twice does not happen (the context checks its own list first).
///
/// The context calls [`subscribe_with`](Self::subscribe_with),
/// [`publish_stamped`](Self::publish_stamped) and
/// [`cluster_presence`](Self::cluster_presence); their defaults fall back on
/// the five required methods, so a broker without history or cluster only
/// implements those.
///
/// Lifecycle: [`start`](Self::start) once when the context attaches,
/// [`stop`](Self::stop) once when its teardown begins.
pub trait Broker: fmt::Debug + Send + Sync + 'static {
    /// Adds `session` to `topic`.
    fn subscribe(&self, topic: &str, session: &SessionHandle);

    /// Removes the session `id` from `topic`.
    fn unsubscribe(&self, topic: &str, id: SessionId);

    /// Delivers `message` to every subscriber of `topic` (through each one's
    /// queue and overflow policy) and says how many took it.
    fn publish(&self, topic: &str, message: &Message) -> Published;

    /// Who is subscribed to `topic` in this context.
    fn presence(&self, topic: &str) -> Presence;

    /// The topics that have subscribers in this context, sorted.
    fn topics(&self) -> Vec<String>;

    /// Adds `session` to `topic` with the request's options: recovers from
    /// its position if the broker keeps history, and queues its
    /// acknowledgement before any message of the topic. Default:
    /// [`subscribe`](Self::subscribe), then the acknowledgement with nothing
    /// recovered.
    fn subscribe_with(&self, topic: &str, session: &SessionHandle, request: SubscribeRequest) {
        self.subscribe(topic, session);
        request.acknowledged(session, &Recovery::default());
    }

    /// Publishes `message`, letting the broker write the message's position
    /// into it as `stamp` says. Default: [`publish`](Self::publish).
    fn publish_stamped(&self, topic: &str, message: &Message, stamp: Stamp) -> Published {
        let _ = stamp;
        self.publish(topic, message)
    }

    /// Who is subscribed to `topic` on every node. Default: this context's
    /// [`presence`](Self::presence).
    fn cluster_presence(&self, topic: &str) -> BrokerFuture<Presence> {
        let presence = self.presence(topic);
        Box::pin(async move { presence })
    }

    /// Called once when the context attaches: spawn the broker's tasks here.
    /// Default: nothing.
    fn start(&self, context: &BrokerContext) {
        let _ = context;
    }

    /// Called once when the context's teardown begins: end every task
    /// spawned in [`start`](Self::start) soon (the drain waits for them).
    /// Must not block. Default: nothing.
    fn stop(&self) {}

    /// Whether the broker can do its whole job now (what `/readyz`
    /// answers). Default: `true`.
    fn is_ready(&self) -> bool {
        true
    }

    /// The broker's counters. Default: ready, all zero.
    fn stats(&self) -> BrokerStats {
        BrokerStats::default()
    }
}

/// Delivers `message` to `subscribers` through their queues and counts
/// what happened.
pub(crate) fn fan_out(subscribers: &[SessionHandle], message: &Message) -> Published {
    let mut report = Published::default();
    for s in subscribers {
        if s.offer(message).is_ok() {
            report.delivered += 1;
        } else {
            report.missed += 1;
        }
    }
    report
}

/// A broker as a configuration carries it.
struct BrokerObject(Arc<dyn Broker>);

/// The broker a configuration carries.
pub(crate) fn bound_broker(binding: &Binding) -> Option<Arc<dyn Broker>> {
    binding.get::<BrokerObject>().map(|b| b.0.clone())
}

impl ConfigBuilder {
    /// Where the context's topics live. Default: a [`MemoryBroker`] of its
    /// own (in-process topics, no history).
    pub fn broker(self, broker: impl Broker) -> Self {
        let name = format!("{broker:?}");
        self.broker_binding(Binding::new(name, BrokerObject(Arc::new(broker))))
    }
}

/// The context's side of topics: each session's own list (bounded by its
/// vhost's `max_subscriptions`) in front of the broker.
#[derive(Debug)]
pub(crate) struct Topics {
    broker: Arc<dyn Broker>,
}

impl Topics {
    pub(crate) fn new(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
    }

    pub(crate) fn broker(&self) -> &dyn Broker {
        self.broker.as_ref()
    }

    /// Starts the broker's tasks on `spawner`'s task set.
    pub(crate) fn start(&self, spawner: Spawner) {
        self.broker.start(&BrokerContext { spawner });
    }

    /// Adds `session` to `topic`; `Ok(false)` if it was already there (the
    /// request's acknowledgement is queued anyway, with nothing recovered).
    pub(crate) fn subscribe(
        &self,
        topic: &str,
        session: &SessionHandle,
        request: SubscribeRequest,
    ) -> Result<bool, crate::Error> {
        let max = session.vhost().limits().max_subscriptions;
        let mut guard = lock(&session.shared.topics);
        // Checked under the session's topic lock: a session that ends marks
        // itself closed before it leaves its topics under the same lock, so
        // either this sees it closed or `leave_all` sees this subscription.
        if !session.is_open() {
            return Err(crate::Error::SessionClosed);
        }
        let mine = guard.get_or_insert_with(Box::default);
        if mine.iter().any(|t| &**t == topic) {
            drop(guard);
            request.acknowledged(session, &Recovery::default());
            return Ok(false);
        }
        if mine.len() >= max {
            return Err(crate::Error::TooManySubscriptions(max));
        }
        self.broker.subscribe_with(topic, session, request);
        mine.push(Arc::from(topic));
        Ok(true)
    }

    /// Removes `session` from `topic`; returns whether it was there.
    pub(crate) fn unsubscribe(&self, topic: &str, session: &SessionHandle) -> bool {
        let mut mine = lock(&session.shared.topics);
        let Some(mine) = mine.as_mut() else {
            return false;
        };
        let Some(pos) = mine.iter().position(|t| &**t == topic) else {
            return false;
        };
        mine.swap_remove(pos);
        self.broker.unsubscribe(topic, session.id());
        true
    }

    /// Removes a session that ended from all of its topics.
    pub(crate) fn leave_all(&self, session: &SessionHandle) {
        let mut mine = lock(&session.shared.topics);
        for t in mine
            .take()
            .into_iter()
            .flat_map(|topics| topics.into_iter())
        {
            self.broker.unsubscribe(&t, session.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_writes_the_position_into_a_json_object() {
        let p = Position::new(3, "ab");
        let s = |t: &str| p.stamp(&Message::text(t.to_owned()));
        assert_eq!(
            s(r#"{"a":1}"#),
            Some(Message::text(r#"{"a":1,"offset":3,"epoch":"ab"}"#))
        );
        assert_eq!(
            s(" { } \n"),
            Some(Message::text(r#" { "offset":3,"epoch":"ab"}"#))
        );
        assert_eq!(s("[1]"), None);
        assert_eq!(s("{"), None);
        assert_eq!(s(""), None);
        assert_eq!(p.stamp(&Message::binary(b"{}".to_vec())), None);
        let odd = Position::new(1, "a\"b");
        assert_eq!(
            odd.stamp(&Message::text("{}")),
            Some(Message::text(r#"{"offset":1,"epoch":"a\"b"}"#))
        );
    }
}
