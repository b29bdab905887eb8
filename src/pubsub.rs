//! Topics: publish from any thread, fan out to every subscriber's queue.
//!
//! A message is published once and shared: every subscriber's queue holds a
//! clone of the same [`Message`], whose payload is reference-counted `Bytes`,
//! so nothing is copied per subscriber. Each topic's subscriber list is
//! copy-on-write: a publish takes a snapshot under a short lock and fans out
//! without it, so publishers on several threads never wait for each other's
//! fan-out, and one publisher's messages reach every subscriber in order.
//! A slow subscriber costs the publisher one failed `try_send`; its own queue
//! bound and the vhost's [`OverflowPolicy`](crate::OverflowPolicy) decide
//! what happens to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::Message;
use crate::error::Error;
use crate::session::{SessionHandle, SessionId};
use crate::vhost::lock;

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

/// A context's topics. A topic exists from its first subscriber until its
/// last one leaves.
#[derive(Default)]
pub(crate) struct Topics {
    map: Mutex<HashMap<Arc<str>, Arc<Vec<SessionHandle>>>>,
}

impl Topics {
    /// Adds `session` to `topic`; `Ok(false)` if it was already there.
    pub(crate) fn subscribe(&self, topic: &str, session: &SessionHandle) -> Result<bool, Error> {
        let max = session.vhost().limits().max_subscriptions;
        let mut mine = lock(&session.shared.topics);
        // Checked under the session's topic lock: a session that ends marks
        // itself closed before it leaves its topics under the same lock, so
        // either this sees it closed or `leave_all` sees this subscription.
        if !session.is_open() {
            return Err(Error::SessionClosed);
        }
        if mine.iter().any(|t| &**t == topic) {
            return Ok(false);
        }
        if mine.len() >= max {
            return Err(Error::TooManySubscriptions(max));
        }
        let mut map = lock(&self.map);
        let key: Arc<str> = match map.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        let list = map.entry(key.clone()).or_default();
        let mut next = Vec::with_capacity(list.len() + 1);
        next.extend(list.iter().cloned());
        next.push(session.clone());
        *list = Arc::new(next);
        mine.push(key);
        Ok(true)
    }

    /// Removes `session` from `topic`; returns whether it was there.
    pub(crate) fn unsubscribe(&self, topic: &str, session: &SessionHandle) -> bool {
        let mut mine = lock(&session.shared.topics);
        let Some(pos) = mine.iter().position(|t| &**t == topic) else {
            return false;
        };
        mine.swap_remove(pos);
        drop(mine);
        self.remove(topic, session.id());
        true
    }

    /// Removes a session that ended from all of its topics.
    pub(crate) fn leave_all(&self, session: &SessionHandle) {
        let topics = std::mem::take(&mut *lock(&session.shared.topics));
        for t in topics {
            self.remove(&t, session.id());
        }
    }

    fn remove(&self, topic: &str, id: SessionId) {
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

    /// Queues `message` to every subscriber of `topic`.
    pub(crate) fn publish(&self, topic: &str, message: &Message) -> Published {
        let Some(subscribers) = lock(&self.map).get(topic).cloned() else {
            return Published::default();
        };
        let mut report = Published::default();
        for s in subscribers.iter() {
            if s.try_send(message.clone()).is_ok() {
                report.delivered += 1;
            } else {
                report.missed += 1;
            }
        }
        report
    }

    pub(crate) fn presence(&self, topic: &str) -> Presence {
        lock(&self.map)
            .get(topic)
            .map_or_else(Presence::default, |list| Presence {
                count: list.len(),
                sessions: list.iter().map(SessionHandle::id).collect(),
            })
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.map).keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}
