//! Topics behind a seam: the [`Broker`] trait, and [`MemoryBroker`], the
//! in-process broker every context uses unless it is given another.
//!
//! The context keeps each session's own list of topics (for
//! `max_subscriptions`, and to leave them all when the session ends); the
//! broker keeps who subscribes to what and carries each publish to them.
//! [`ContextHandle::publish`](crate::ContextHandle::publish),
//! [`SessionHandle::subscribe`] and the `pubsub` protocol all go through it,
//! so a broker that spans several nodes (a cluster bus) changes nothing for
//! them.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::common::lock;
use crate::config::{Binding, ConfigBuilder};
use crate::context::session::{SessionHandle, SessionId};
use crate::{Message, SendError};

/// Who is subscribed to a topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Presence {
    /// How many sessions are subscribed.
    pub count: usize,
    /// Their ids, in subscription order.
    pub sessions: Vec<SessionId>,
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Published {
    /// Subscribers whose queue accepted the message.
    pub delivered: usize,
    /// Subscribers that did not take it (full queue under a non-dropping
    /// policy, dropped by `drop-newest`, or closing).
    pub missed: usize,
}

/// Where a context's topics live: who is subscribed to what, and how a
/// publish reaches them.
///
/// Implementations must be cheap on `publish` (it runs on the publisher's
/// thread, often on the loop) and must not block. They are called only with
/// sessions of their own context; subscribing the same session to the same
/// topic twice does not happen (the context checks its own list first).
pub trait Broker: fmt::Debug + Send + Sync + 'static {
    /// Adds `session` to `topic`.
    fn subscribe(&self, topic: &str, session: &SessionHandle);

    /// Removes the session `id` from `topic`.
    fn unsubscribe(&self, topic: &str, id: SessionId);

    /// Delivers `message` to every subscriber of `topic` (through each one's
    /// queue and overflow policy) and says how many took it.
    fn publish(&self, topic: &str, message: &Message) -> Published;

    /// Who is subscribed to `topic`.
    fn presence(&self, topic: &str) -> Presence;

    /// The topics that have subscribers, sorted.
    fn topics(&self) -> Vec<String>;
}

/// The in-process broker: topics live in this process, published messages
/// reach this context's sessions. A topic exists from its first subscriber
/// until its last one leaves.
#[derive(Default)]
pub struct MemoryBroker {
    map: Mutex<HashMap<Arc<str>, Arc<Vec<SessionHandle>>>>,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("topics", &lock(&self.map).len())
            .finish()
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, topic: &str, session: &SessionHandle) {
        let mut map = lock(&self.map);
        let list = match map.get_mut(topic) {
            Some(list) => list,
            None => map.entry(Arc::from(topic)).or_default(),
        };
        let mut next = Vec::with_capacity(list.len() + 1);
        next.extend(list.iter().cloned());
        next.push(session.clone());
        *list = Arc::new(next);
    }

    fn unsubscribe(&self, topic: &str, id: SessionId) {
        let mut map = lock(&self.map);
        let Some(list) = map.get_mut(topic) else {
            return;
        };
        let next: Vec<SessionHandle> = list.iter().filter(|s| s.id() != id).cloned().collect();
        if next.is_empty() {
            map.remove(topic);
        } else {
            *list = Arc::new(next);
        }
    }

    fn publish(&self, topic: &str, message: &Message) -> Published {
        let Some(subscribers) = lock(&self.map).get(topic).cloned() else {
            return Published::default();
        };
        let mut report = Published::default();
        for s in subscribers.iter() {
            match s.try_send(message.clone()) {
                Ok(()) => report.delivered += 1,
                Err(SendError::Closed(_) | SendError::Full(_)) => report.missed += 1,
            }
        }
        report
    }

    fn presence(&self, topic: &str) -> Presence {
        lock(&self.map)
            .get(topic)
            .map_or_else(Presence::default, |list| Presence {
                count: list.len(),
                sessions: list.iter().map(SessionHandle::id).collect(),
            })
    }

    fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.map).keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}

/// A broker as a configuration carries it.
struct BrokerObject(Arc<dyn Broker>);

/// The broker a configuration carries.
pub(crate) fn bound_broker(binding: &Binding) -> Option<Arc<dyn Broker>> {
    binding.get::<BrokerObject>().map(|b| b.0.clone())
}

impl ConfigBuilder {
    /// Where the context's topics live. Default: a [`MemoryBroker`] of its
    /// own (in-process topics).
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

    /// Adds `session` to `topic`; `Ok(false)` if it was already there.
    pub(crate) fn subscribe(
        &self,
        topic: &str,
        session: &SessionHandle,
    ) -> Result<bool, crate::Error> {
        let max = session.vhost().limits().max_subscriptions;
        let mut mine = lock(&session.shared.topics);
        // Checked under the session's topic lock: a session that ends marks
        // itself closed before it leaves its topics under the same lock, so
        // either this sees it closed or `leave_all` sees this subscription.
        if !session.is_open() {
            return Err(crate::Error::SessionClosed);
        }
        if mine.iter().any(|t| &**t == topic) {
            return Ok(false);
        }
        if mine.len() >= max {
            return Err(crate::Error::TooManySubscriptions(max));
        }
        self.broker.subscribe(topic, session);
        mine.push(Arc::from(topic));
        Ok(true)
    }

    /// Removes `session` from `topic`; returns whether it was there.
    pub(crate) fn unsubscribe(&self, topic: &str, session: &SessionHandle) -> bool {
        let mut mine = lock(&session.shared.topics);
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
        for t in mine.drain(..) {
            self.broker.unsubscribe(&t, session.id());
        }
    }
}
