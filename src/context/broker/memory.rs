//! [`MemoryBroker`]: topics in this process, with an optional history per
//! topic for recovery.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{Broker, Position, Presence, Published, Recovery, Stamp, SubscribeRequest, fan_out};
use crate::Message;
use crate::common::lock;
use crate::context::session::{SessionHandle, SessionId};

/// The in-process broker: topics live in this process, published messages
/// reach this context's sessions. A topic exists from its first subscriber
/// until its last one leaves (and, with history, until its history expires).
///
/// Without history (the default) it keeps nothing of a message once it is in
/// the subscribers' queues. With [`with_history`](Self::with_history) each
/// topic keeps its last `size` messages for `ttl` after the last publish, and
/// every message gets a [`Position`]. Topics that only publishers use (no
/// subscriber) keep their history too, at most [`MAX_HISTORY_TOPICS`] of
/// them at a time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use wsgate::pubsub::MemoryBroker;
/// use wsgate::{Config, Mount, VhostConfig, protocols::Pubsub};
///
/// # fn main() -> Result<(), wsgate::ConfigError> {
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:0".parse().unwrap())
///     .protocol(Pubsub::default())
///     .mount(Mount::websocket("/pubsub", ["pubsub"]))
///     .build()?;
/// let config = Config::builder()
///     .vhost(vhost)
///     .broker(MemoryBroker::with_history(100, Duration::from_secs(300)))
///     .build()?;
/// # drop(config);
/// # Ok(())
/// # }
/// ```
pub struct MemoryBroker {
    map: Mutex<HashMap<Arc<str>, Arc<Topic>>>,
    history: Option<History>,
    /// Publishes since the last sweep of expired histories.
    since_sweep: AtomicU64,
}

/// How much history each topic keeps.
#[derive(Debug, Clone, Copy)]
struct History {
    size: usize,
    ttl: Duration,
}

/// One topic: its subscribers and its history, behind the topic's own lock.
#[derive(Default)]
struct Topic {
    state: Mutex<TopicState>,
}

#[derive(Default)]
struct TopicState {
    /// Copy-on-write: a publish without history fans out from a snapshot.
    subscribers: Arc<Vec<SessionHandle>>,
    log: Option<Log>,
}

/// A topic's history.
struct Log {
    epoch: String,
    /// The newest offset given out.
    last: u64,
    /// The newest messages, oldest first, as delivered (stamped).
    entries: VecDeque<(u64, Message)>,
    /// When the history expires unless something is published.
    expires: Instant,
}

/// Publishes between two sweeps of expired histories: the sweep walks every
/// topic, so it runs once per this many publishes.
const SWEEP_EVERY: u64 = 4096;

/// Topics a publish may create to keep their history while nobody
/// subscribes (publishers choose topic names, so this is bounded): beyond
/// it, a publish to a topic nobody subscribes to keeps no history.
pub const MAX_HISTORY_TOPICS: usize = 100_000;

/// Most messages a topic's history may keep, in every broker
/// ([`MemoryBroker::with_history`] takes a larger `size` as this; the Redis
/// broker's builder and the TOML `history_size` refuse it).
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

impl MemoryBroker {
    /// An empty broker without history.
    pub fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            history: None,
            since_sweep: AtomicU64::new(0),
        }
    }

    /// An empty broker whose topics keep their last `size` messages, for
    /// `ttl` after their last publish, so that subscribers can recover
    /// what they missed. A `size` of 0 or a zero `ttl` keeps no history.
    pub fn with_history(size: usize, ttl: Duration) -> Self {
        Self {
            history: (size > 0 && !ttl.is_zero()).then_some(History {
                size: size.min(MAX_HISTORY_SIZE),
                ttl,
            }),
            ..Self::new()
        }
    }

    /// The topic called `topic`, if it exists.
    fn topic(&self, topic: &str) -> Option<Arc<Topic>> {
        lock(&self.map).get(topic).cloned()
    }

    /// Runs `f` on the topic called `topic` (created if there are fewer
    /// than `within` topics), with the topic's lock taken before the map's
    /// is let go: an unsubscribe or a sweep, which judge a topic unused
    /// under the map's lock, cannot drop it between the lookup and `f`
    /// (a subscription or a history entry would go to a topic nobody finds).
    fn with_topic<R>(
        &self,
        topic: &str,
        within: usize,
        f: impl FnOnce(&mut TopicState) -> R,
    ) -> Option<R> {
        let mut map = lock(&self.map);
        let t = match map.get(topic) {
            Some(t) => t.clone(),
            None if map.len() < within => {
                let t = Arc::new(Topic::default());
                map.insert(Arc::from(topic), t.clone());
                t
            }
            None => return None,
        };
        let mut state = lock(&t.state);
        drop(map);
        Some(f(&mut state))
    }

    /// Drops the topic if nothing keeps it: no subscriber and no live history.
    fn forget_if_unused(&self, topic: &str, now: Instant) {
        let mut map = lock(&self.map);
        let unused = map
            .get(topic)
            .is_some_and(|t| lock(&t.state).is_unused(now));
        if unused {
            map.remove(topic);
        }
    }

    /// Drops every topic that nothing keeps any more.
    fn sweep(&self, now: Instant) {
        lock(&self.map).retain(|_, t| !lock(&t.state).is_unused(now));
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemoryBroker");
        d.field("topics", &lock(&self.map).len());
        if let Some(h) = self.history {
            d.field("history_size", &h.size)
                .field("history_ttl", &h.ttl);
        }
        d.finish()
    }
}

impl TopicState {
    fn is_unused(&self, now: Instant) -> bool {
        self.subscribers.is_empty() && self.log.as_ref().is_none_or(|l| l.expires <= now)
    }

    /// The history, if it has not expired (an expired one is dropped).
    fn live_log(&mut self, now: Instant) -> Option<&mut Log> {
        if self.log.as_ref().is_some_and(|l| l.expires <= now) {
            self.log = None;
        }
        self.log.as_mut()
    }

    fn add(&mut self, session: &SessionHandle) {
        let mut next = Vec::with_capacity(self.subscribers.len() + 1);
        next.extend(self.subscribers.iter().cloned());
        next.push(session.clone());
        self.subscribers = Arc::new(next);
    }
}

impl Log {
    fn position(&self) -> Position {
        Position::new(self.last, self.epoch.clone())
    }

    /// What a subscriber that last saw `since` missed: `None` if the
    /// history does not reach back to it (or it names another epoch).
    fn missed_since(&self, since: &Position) -> Option<impl Iterator<Item = &Message>> {
        if since.epoch != self.epoch || since.offset > self.last {
            return None;
        }
        let first_needed = since.offset.saturating_add(1);
        let reaches = since.offset == self.last
            || self
                .entries
                .front()
                .is_some_and(|(o, _)| *o <= first_needed);
        reaches.then(|| {
            self.entries
                .iter()
                .filter(move |(o, _)| *o >= first_needed)
                .map(|(_, m)| m)
        })
    }
}

/// A fresh epoch name for a history that starts: 16 hex digits that no
/// earlier history of this process (or, with overwhelming likelihood, of
/// another) used.
pub fn new_epoch() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    // RandomState's keys are random per process (and differ per instance),
    // so hashing the time and a counter gives an unpredictable, unique name.
    let mut h = std::hash::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

impl Broker for MemoryBroker {
    fn subscribe(&self, topic: &str, session: &SessionHandle) {
        self.subscribe_with(topic, session, SubscribeRequest::new());
    }

    fn subscribe_with(&self, topic: &str, session: &SessionHandle, request: SubscribeRequest) {
        let now = Instant::now();
        self.with_topic(topic, usize::MAX, |state| {
            // Under the topic's lock: no publish comes between the replay and
            // the live messages, so nothing is lost or doubled.
            let mut recovery = Recovery::default();
            let mut replay = Vec::new();
            if let Some(log) = state.live_log(now) {
                recovery.position = Some(log.position());
                if let Some(since) = request.position()
                    && let Some(missed) = log.missed_since(since)
                {
                    replay.extend(missed.cloned());
                    recovery.recovered = true;
                    recovery.replayed = replay.len();
                }
            }
            request.acknowledged(session, &recovery);
            for m in replay {
                let _ = session.try_send(m);
            }
            state.add(session);
        });
    }

    fn unsubscribe(&self, topic: &str, id: SessionId) {
        let Some(t) = self.topic(topic) else {
            return;
        };
        let empty = {
            let mut state = lock(&t.state);
            if !state.subscribers.iter().any(|s| s.id() == id) {
                return;
            }
            let next: Vec<SessionHandle> = state
                .subscribers
                .iter()
                .filter(|s| s.id() != id)
                .cloned()
                .collect();
            state.subscribers = Arc::new(next);
            state.subscribers.is_empty()
        };
        if empty {
            self.forget_if_unused(topic, Instant::now());
        }
    }

    fn publish(&self, topic: &str, message: &Message) -> Published {
        self.publish_stamped(topic, message, Stamp::None)
    }

    fn publish_stamped(&self, topic: &str, message: &Message, stamp: Stamp) -> Published {
        let Some(history) = self.history else {
            let Some(t) = self.topic(topic) else {
                return Published::default();
            };
            let subscribers = lock(&t.state).subscribers.clone();
            return fan_out(&subscribers, message);
        };
        let now = Instant::now();
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) + 1 >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            self.sweep(now);
        }
        // Too many topics: this one (which nobody subscribes to) keeps no
        // history until the periodic sweep above makes room. (Sweeping
        // here would walk every topic on every such publish, and the
        // publisher chooses the names.)
        self.with_topic(topic, MAX_HISTORY_TOPICS, |state| {
            if state.live_log(now).is_none() {
                state.log = Some(Log {
                    epoch: new_epoch(),
                    last: 0,
                    entries: VecDeque::new(),
                    expires: now,
                });
            }
            let TopicState { subscribers, log } = state;
            let Some(log) = log.as_mut() else {
                return Published::default();
            };
            log.last += 1;
            log.expires = now + history.ttl;
            let position = log.position();
            let delivered = match stamp {
                Stamp::Json => position.stamp(message).unwrap_or_else(|| message.clone()),
                _ => message.clone(),
            };
            if log.entries.len() >= history.size {
                log.entries.pop_front();
            }
            log.entries.push_back((position.offset, delivered.clone()));
            // Under the topic's lock, so that every subscriber gets the
            // offsets in increasing order, whichever thread published them.
            fan_out(subscribers, &delivered)
        })
        .unwrap_or_default()
    }

    fn presence(&self, topic: &str) -> Presence {
        let Some(t) = self.topic(topic) else {
            return Presence::default();
        };
        let state = lock(&t.state);
        Presence {
            count: state.subscribers.len(),
            sessions: state.subscribers.iter().map(SessionHandle::id).collect(),
            partial: false,
        }
    }

    fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.map)
            .iter()
            .filter(|(_, t)| !lock(&t.state).subscribers.is_empty())
            .map(|(k, _)| k.to_string())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(last: u64, first: u64) -> Log {
        Log {
            epoch: "e".into(),
            last,
            entries: (first..=last)
                .map(|o| (o, Message::text(o.to_string())))
                .collect(),
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    fn missed(log: &Log, offset: u64, epoch: &str) -> Option<Vec<String>> {
        log.missed_since(&Position::new(offset, epoch)).map(|it| {
            it.map(|m| m.to_text().unwrap_or_default().to_owned())
                .collect()
        })
    }

    #[test]
    fn recovery_reaches_back_only_as_far_as_the_history() {
        let l = log(10, 6);
        assert_eq!(missed(&l, 8, "e"), Some(vec!["9".into(), "10".into()]));
        assert_eq!(missed(&l, 10, "e"), Some(vec![]));
        assert_eq!(
            missed(&l, 5, "e").map(|v| v.len()),
            Some(5),
            "5 is the last one seen: 6..=10 are all kept"
        );
        assert_eq!(missed(&l, 4, "e"), None, "5 is gone");
        assert_eq!(missed(&l, 8, "other"), None, "another epoch");
        assert_eq!(missed(&l, 11, "e"), None, "from the future");
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 16);
    }

    #[test]
    fn publishers_cannot_grow_the_topics_without_bound() {
        let b = MemoryBroker::with_history(1, Duration::from_secs(60));
        let m = Message::text("x");
        for n in 0..=MAX_HISTORY_TOPICS {
            b.publish(&format!("t{n}"), &m);
        }
        assert_eq!(lock(&b.map).len(), MAX_HISTORY_TOPICS);
        assert!(!lock(&b.map).contains_key(format!("t{MAX_HISTORY_TOPICS}").as_str()));
    }
}
