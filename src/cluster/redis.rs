//! [`RedisBroker`]: topics, presence and history shared by every gateway
//! that points at the same Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;
use redis::aio::MultiplexedConnection;
use redis::{
    ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo,
    RedisError, Value,
};

mod link;

use self::link::{Found, run};
use super::wire::{self, Keys};
use crate::common::lock;
use crate::pubsub::{
    Broker, BrokerContext, BrokerFuture, BrokerStats, MemoryBroker, Position, Presence, Published,
    Recovery, Remote, Stamp, SubscribeRequest,
};
use crate::{ConfigError, Message, SessionHandle, SessionId};

/// A [`Broker`] on Redis: every gateway (node) pointed at the same Redis
/// shares its topics, presence and history.
///
/// - **Publish.** A message goes to this node's subscribers at once and to
///   Redis (`PUBLISH` on the topic's channel), from where every other node
///   that holds subscribers of the topic gets it once and fans it out to
///   them. One connection per node carries everything, in order, so one
///   publisher's messages arrive everywhere in the order it published them.
/// - **Subscriptions.** A node subscribes in Redis only to the channels of
///   topics its own sessions hold: on the first local subscriber, and
///   unsubscribes after the last.
/// - **History** (`history_size` > 0): a Lua script gives each message the
///   topic's next offset, appends it to a Redis stream (`XADD` with
///   `MAXLEN`, expiring `history_ttl` after the last publish) and publishes
///   it, atomically. Every node, this one included, delivers such messages
///   in the order Redis gave their offsets, so every client sees increasing
///   offsets. A client that subscribes with `since` gets the missed messages
///   from the stream, then the live ones, with no gap and no duplicate.
/// - **Presence.** Each node keeps its subscriber count per topic in a Redis
///   hash and a heartbeat key that expires after three heartbeats;
///   [`Broker::cluster_presence`] counts only nodes whose heartbeat is alive.
///   A node that dies without saying goodbye drops out of presence within
///   `3 × heartbeat` (15 s by default).
/// - **Redis down.** Publishing and delivery on each node go on (to local
///   subscribers only, [`Remote::Unavailable`]); the broker reconnects with
///   exponential backoff (50 ms doubling to 3 s, ±50 % jitter), subscribes
///   again to what its sessions hold, rewrites its presence, and cross-node
///   delivery resumes. [`is_ready`](Broker::is_ready) (`/readyz`) is false
///   meanwhile. Messages published while Redis was unreachable are not in
///   the history and never reach other nodes.
///
/// The connection runs as tasks of the context ([`Broker::start`]) on the
/// host's executors: no thread, no runtime. Host names in the URL are
/// resolved on the loop when connecting (use an IP address or a Unix
/// socket where a slow resolver is a concern).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use wsgate::cluster::RedisBroker;
/// use wsgate::{Config, Mount, VhostConfig, protocols::Pubsub};
///
/// # fn main() -> Result<(), wsgate::ConfigError> {
/// let broker = RedisBroker::builder("redis://127.0.0.1:6379/0")
///     .node("gw-1")
///     .history(100, Duration::from_secs(300))
///     .build()?;
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:0".parse().unwrap())
///     .protocol(Pubsub::default())
///     .mount(Mount::websocket("/pubsub", ["pubsub"]))
///     .build()?;
/// // Connects to Redis when a context attaches this configuration.
/// let config = Config::builder().vhost(vhost).broker(broker).build()?;
/// # drop(config);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// The settings of a [`RedisBroker`]; [`build`](Self::build) checks them.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct RedisBrokerBuilder {
    url: String,
    node: Option<String>,
    history_size: usize,
    history_ttl: Duration,
    heartbeat: Duration,
    prefix: String,
}

pub use crate::context::broker::MAX_HISTORY_SIZE;

impl RedisBroker {
    /// Settings for a broker on the Redis at `url`: `redis://[user:password@]host[:port][/db]`,
    /// or a Unix socket, `unix:///path/to/redis.sock` (also
    /// `redis+unix://`). `rediss://` (TLS) is not supported yet.
    pub fn builder(url: impl Into<String>) -> RedisBrokerBuilder {
        RedisBrokerBuilder {
            url: url.into(),
            node: None,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            heartbeat: Duration::from_secs(5),
            prefix: "wsgate".to_owned(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }
}

impl RedisBrokerBuilder {
    /// This node's name: 1 to 64 letters, digits and `._:-`, unique among
    /// the nodes. Default: the host name and the process id (`host-1234`).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Keep the last `size` messages of each topic (at most
    /// [`MAX_HISTORY_SIZE`]) for `ttl` after its last publish, for
    /// recovery. Default: no history (size 0), ttl 5 minutes.
    pub fn history(mut self, size: usize, ttl: Duration) -> Self {
        self.history_size = size;
        self.history_ttl = ttl;
        self
    }

    /// How often the node tells Redis it is alive (its presence expires
    /// after three of these). From 10 ms to 1 hour. Default: 5 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// The prefix of every Redis key and channel the broker uses, so that
    /// several clusters can share one Redis. Default: `wsgate`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the settings and builds the broker. It connects once its
    /// context attaches.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting (`broker.url`, `broker.node`,
    /// `broker.history_size`, `broker.history_ttl`, `broker.heartbeat`,
    /// `broker.prefix`): a URL that does not parse or asks for TLS, a bad
    /// node name, a size, duration or prefix out of range.
    pub fn build(self) -> Result<RedisBroker, ConfigError> {
        let (addr, info) = parse_url(&self.url)?;
        let node = match self.node {
            Some(n) if wire::valid_node(&n) => n,
            Some(n) => {
                return Err(ConfigError::new(
                    "broker.node",
                    format!(
                        "invalid node name {n:?}: 1 to {} letters, digits and ._:-",
                        wire::MAX_NODE_BYTES
                    ),
                ));
            }
            None => default_node(),
        };
        if self.history_size > MAX_HISTORY_SIZE {
            return Err(ConfigError::new(
                "broker.history_size",
                format!("must be at most {MAX_HISTORY_SIZE}"),
            ));
        }
        if self.history_size > 0 && self.history_ttl < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "broker.history_ttl",
                "must be at least 1ms when history_size is not 0",
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.heartbeat) {
            return Err(ConfigError::new(
                "broker.heartbeat",
                "must be between 10ms and 1h",
            ));
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || self.prefix.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(ConfigError::new(
                "broker.prefix",
                "must be 1 to 64 bytes without spaces or control characters",
            ));
        }
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                addr,
                info,
                node,
                keys: Keys::new(&self.prefix),
                history: self.history_size,
                history_ttl: self.history_ttl,
                heartbeat: self.heartbeat,
                local: MemoryBroker::new(),
                pending: Mutex::new(HashMap::new()),
                pending_count: AtomicUsize::new(0),
                queue: Mutex::new(Queue::default()),
                work: Event::new(),
                stop: Event::new(),
                stopping: AtomicBool::new(false),
                started: AtomicBool::new(false),
                up: AtomicBool::new(false),
                link: Mutex::new(None),
                inflight: Mutex::new(Vec::new()),
                echoed: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                messages_out: AtomicU64::new(0),
                messages_in: AtomicU64::new(0),
            }),
        })
    }
}

/// Where Redis listens.
#[derive(Debug, Clone)]
enum Addr {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(h, p) => write!(f, "{h}:{p}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The URL as an address and the handshake's settings (RESP3: one
/// connection carries commands and subscriptions).
fn parse_url(url: &str) -> Result<(Addr, RedisConnectionInfo), ConfigError> {
    let err = |why: String| ConfigError::new("broker.url", why);
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        return Err(err(
            "rediss:// (TLS to Redis) is not supported yet: use redis:// on a private network, or a Unix socket".to_owned(),
        ));
    }
    let info = url
        .into_connection_info()
        .map_err(|e| err(format!("invalid Redis URL {url:?}: {e}")))?;
    let addr = match info.addr() {
        ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
        ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
        _ => return Err(err(format!("unsupported Redis address in {url:?}"))),
    };
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok((addr, settings))
}

/// The host name and the process id, as a node name.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "wsgate".to_owned());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let host = if host.is_empty() {
        "wsgate".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// Messages (and bytes) that may wait for Redis; past either, publishes
/// reach local subscribers only ([`Remote::Unavailable`]).
const MAX_QUEUED: usize = 65_536;
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Live messages kept for a subscriber while its recovery is read, at most
/// (and never more than its session's queue takes: `finish` queues them all
/// at once, so the rest would only meet the overflow policy there).
const MAX_BUFFERED: usize = 65_536;

struct Inner {
    addr: Addr,
    info: RedisConnectionInfo,
    node: String,
    keys: Keys,
    history: usize,
    history_ttl: Duration,
    heartbeat: Duration,
    /// This node's subscribers (no history of its own: Redis keeps it).
    local: MemoryBroker,
    /// Subscribers whose subscription is not in effect yet, by topic.
    pending: Mutex<HashMap<Arc<str>, Vec<Pending>>>,
    /// How many there are: deliveries skip the lock while it is 0.
    pending_count: AtomicUsize,
    /// Work for the link task.
    queue: Mutex<Queue>,
    /// Notified when there is work, and on stop.
    work: Event,
    /// Notified on stop.
    stop: Event,
    stopping: AtomicBool,
    started: AtomicBool,
    /// `queue.ready`, readable without the lock.
    up: AtomicBool,
    /// The live connection and the presence script's hash, for
    /// `cluster_presence`; `None` while not connected.
    link: Mutex<Option<(MultiplexedConnection, String)>>,
    /// The batch sent to Redis and not yet answered.
    inflight: Mutex<Vec<Outgoing>>,
    /// The highest publish number of this node's that came back from Redis:
    /// Redis runs a connection's commands in order, so every earlier one
    /// did too. Of a batch lost with its connection, those above it are
    /// the ones to deliver locally.
    echoed: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    messages_out: AtomicU64,
    messages_in: AtomicU64,
}

/// A subscriber waiting for its subscription to take effect.
struct Pending {
    session: SessionHandle,
    request: SubscribeRequest,
    /// Live messages of the topic that arrived meanwhile, with their
    /// offsets.
    buffer: Vec<(Option<u64>, Message)>,
    overflowed: bool,
}

#[derive(Default)]
struct Queue {
    /// Whether the link is up: publishes and subscriptions go through it
    /// only then. Changed under this lock.
    ready: bool,
    /// Subscription work, each with the number of the last publish queued
    /// before it: it runs after that publish was sent.
    ops: VecDeque<(u64, Op)>,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    /// The next publish number.
    next_seq: u64,
    /// Topics whose local subscriber count changed.
    dirty: HashSet<Arc<str>>,
}

enum Op {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

struct Outgoing {
    topic: Arc<str>,
    message: Message,
    stamp: Stamp,
    /// The node's publish number (see `Inner::echoed`).
    seq: u64,
}

impl Inner {
    fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether the link is up, read without a lock (the queue's `ready`
    /// mirrored): `subscribe_with` reads it under the pending lock, and
    /// the queue lock may be held by a publish that waits for the pending
    /// lock.
    fn is_ready(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks the link up or down (under the queue lock).
    fn set_ready(&self, q: &mut Queue, ready: bool) {
        q.ready = ready;
        self.up.store(ready, Ordering::Release);
    }

    /// Queues work for the link and wakes it.
    fn push_op(&self, op: Option<Op>, dirty: &Arc<str>) {
        let mut q = lock(&self.queue);
        if !q.ready {
            return;
        }
        q.dirty.insert(dirty.clone());
        if let Some(op) = op {
            let after = q.next_seq;
            q.ops.push_back((after, op));
        }
        drop(q);
        self.work.notify(1);
    }

    /// Delivers to this node's subscribers of `topic` (and keeps a copy for
    /// those still waiting for their subscription).
    fn deliver_local(&self, topic: &str, message: &Message, offset: Option<u64>) -> Published {
        if self.pending_count.load(Ordering::Acquire) == 0 {
            return self.local.publish(topic, message);
        }
        let mut pending = lock(&self.pending);
        if let Some(list) = pending.get_mut(topic) {
            for p in list {
                let cap = MAX_BUFFERED.min(p.session.vhost().limits().max_queue_messages);
                if p.buffer.len() < cap {
                    p.buffer.push((offset, message.clone()));
                } else {
                    p.overflowed = true;
                }
            }
        }
        // Under the lock: a waiting subscriber joins the local list either
        // before this (and gets the message from it) or after (and gets it
        // from its buffer).
        self.local.publish(topic, message)
    }

    /// A message from Redis (on the link task, inside the connection's
    /// driver).
    fn on_push(&self, info: PushInfo) {
        if info.kind != PushKind::Message {
            return;
        }
        let [Value::BulkString(channel), Value::BulkString(payload)] = info.data.as_slice() else {
            return;
        };
        let Some(topic) = self.keys.topic_of(channel) else {
            return;
        };
        let Some(received) = wire::parse(payload) else {
            self.count_error();
            tracing::debug!(
                topic,
                "a message not written by this wsgate version was ignored"
            );
            return;
        };
        let own = received.node == self.node;
        if own {
            self.echoed.fetch_max(received.seq, Ordering::AcqRel);
        }
        if own && received.position.is_none() {
            // Delivered here when it was published.
            return;
        }
        if !own {
            self.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        let offset = received.position.as_ref().map(|p| p.offset);
        self.deliver_local(topic, &received.message, offset);
    }

    /// Ends a waiting subscription: the acknowledgement, what was recovered,
    /// what arrived meanwhile, then the live list.
    fn finish(&self, topic: &str, id: SessionId, found: Option<Found>) {
        let mut pending = lock(&self.pending);
        let Some(list) = pending.get_mut(topic) else {
            return;
        };
        let Some(i) = list.iter().position(|p| p.session.id() == id) else {
            return;
        };
        let p = list.remove(i);
        if list.is_empty() {
            pending.remove(topic);
        }
        self.pending_count.fetch_sub(1, Ordering::AcqRel);
        let mut recovery = Recovery::default();
        let mut replay = Vec::new();
        let mut top = 0;
        if let Some(found) = found {
            top = found.last;
            if !found.epoch.is_empty() {
                recovery.position = Some(Position::new(found.last, found.epoch.clone()));
            }
            if let Some(since) = p.request.position()
                && since.epoch == found.epoch
                && !p.overflowed
                && wire::covers(since.offset, found.last, found.entries.first().map(|e| e.0))
            {
                recovery.recovered = true;
                replay = found.entries;
            }
            recovery.replayed = replay.len();
        }
        let Pending {
            session,
            request,
            buffer,
            ..
        } = p;
        request.acknowledged(&session, &recovery);
        for (_, m) in replay {
            let _ = session.try_send(m);
        }
        for (offset, m) in buffer {
            if offset.is_none_or(|o| o > top) {
                let _ = session.try_send(m);
            }
        }
        self.local.subscribe(topic, &session);
    }

    /// Ends every waiting subscription with nothing recovered (the link is
    /// down or stopping): local delivery must not wait for Redis.
    fn finish_all(&self) {
        let waiting: Vec<(Arc<str>, SessionId)> = lock(&self.pending)
            .iter()
            .flat_map(|(t, l)| l.iter().map(move |p| (t.clone(), p.session.id())))
            .collect();
        for (topic, id) in waiting {
            self.finish(&topic, id, None);
        }
    }

    /// The topics this node holds (subscribed or waiting) and how many
    /// sessions hold each.
    fn held(&self) -> Vec<(Arc<str>, usize)> {
        let mut counts: HashMap<Arc<str>, usize> = self
            .local
            .topics()
            .into_iter()
            .map(|t| {
                let n = self.local.presence(&t).count;
                (Arc::from(t), n)
            })
            .collect();
        for (t, l) in lock(&self.pending).iter() {
            *counts.entry(t.clone()).or_default() += l.len();
        }
        counts.into_iter().collect()
    }

    fn held_count(&self, topic: &str) -> usize {
        self.local.presence(topic).count + lock(&self.pending).get(topic).map_or(0, Vec::len)
    }

    /// The link is down: nothing more goes through it until it is back.
    /// Publishes still queued reach local subscribers (those of topics with
    /// history were waiting for their offset); waiting subscriptions end.
    fn lost(&self) {
        {
            // Under the queue lock, so that no direct local delivery of a
            // newer publish comes before these older ones.
            let mut q = lock(&self.queue);
            self.set_ready(&mut q, false);
            q.ops.clear();
            q.dirty.clear();
            q.out_bytes = 0;
            let out = std::mem::take(&mut q.out);
            let inflight = std::mem::take(&mut *lock(&self.inflight));
            if self.history > 0 {
                self.deliver_unechoed(inflight.iter().chain(&out));
            }
        }
        *lock(&self.link) = None;
        self.finish_all();
    }

    /// Delivers locally the publishes of topics with history that did not
    /// come back from Redis (their local delivery was to be the echo).
    fn deliver_unechoed<'a>(&self, out: impl Iterator<Item = &'a Outgoing>) {
        let echoed = self.echoed.load(Ordering::Acquire);
        for o in out.filter(|o| o.seq > echoed) {
            self.deliver_local(&o.topic, &o.message, None);
        }
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("redis", &self.inner.addr.to_string())
            .field("node", &self.inner.node)
            .field("history_size", &self.inner.history)
            .field("history_ttl", &self.inner.history_ttl)
            .field("heartbeat", &self.inner.heartbeat)
            .field("ready", &self.inner.is_ready())
            .finish()
    }
}

impl Broker for RedisBroker {
    fn subscribe(&self, topic: &str, session: &SessionHandle) {
        self.subscribe_with(topic, session, SubscribeRequest::new());
    }

    fn subscribe_with(&self, topic: &str, session: &SessionHandle, request: SubscribeRequest) {
        let inner = &self.inner;
        let topic: Arc<str> = Arc::from(topic);
        {
            let mut pending = lock(&inner.pending);
            if !inner.is_ready() {
                // Redis is not there: local delivery must not wait for it.
                // The channel is subscribed when the link comes back.
                drop(pending);
                request.acknowledged(session, &Recovery::default());
                inner.local.subscribe(&topic, session);
                return;
            }
            pending.entry(topic.clone()).or_default().push(Pending {
                session: session.clone(),
                request,
                buffer: Vec::new(),
                overflowed: false,
            });
            inner.pending_count.fetch_add(1, Ordering::AcqRel);
        }
        inner.push_op(Some(Op::Subscribe(topic.clone())), &topic);
    }

    fn unsubscribe(&self, topic: &str, id: SessionId) {
        let inner = &self.inner;
        {
            let mut pending = lock(&inner.pending);
            if let Some(list) = pending.get_mut(topic)
                && let Some(i) = list.iter().position(|p| p.session.id() == id)
            {
                list.remove(i);
                if list.is_empty() {
                    pending.remove(topic);
                }
                inner.pending_count.fetch_sub(1, Ordering::AcqRel);
            }
        }
        inner.local.unsubscribe(topic, id);
        let topic: Arc<str> = Arc::from(topic);
        let op = (inner.held_count(&topic) == 0).then(|| Op::Unsubscribe(topic.clone()));
        inner.push_op(op, &topic);
    }

    fn publish(&self, topic: &str, message: &Message) -> Published {
        self.publish_stamped(topic, message, Stamp::None)
    }

    fn publish_stamped(&self, topic: &str, message: &Message, stamp: Stamp) -> Published {
        let inner = &self.inner;
        {
            let mut q = lock(&inner.queue);
            let bytes = wire::payload(message).len();
            let room = q.out.len() < MAX_QUEUED && q.out_bytes + bytes <= MAX_QUEUED_BYTES;
            if !(q.ready && room) {
                if q.ready {
                    // Redis does not keep up: this one stays local.
                    inner.count_error();
                }
                // Under the queue lock: after whatever `lost` delivers of
                // the older publishes.
                let mut p = inner.deliver_local(topic, message, None);
                p.remote = Remote::Unavailable;
                return p;
            }
            q.next_seq += 1;
            let seq = q.next_seq;
            q.out.push_back(Outgoing {
                topic: Arc::from(topic),
                message: message.clone(),
                stamp,
                seq,
            });
            q.out_bytes += bytes;
        }
        inner.work.notify(1);
        if inner.history > 0 {
            // Delivered here too when Redis has given it its offset.
            return Published {
                remote: Remote::Queued,
                ..Published::default()
            };
        }
        let mut p = inner.deliver_local(topic, message, None);
        p.remote = Remote::Queued;
        p
    }

    fn presence(&self, topic: &str) -> Presence {
        self.inner.local.presence(topic)
    }

    fn topics(&self) -> Vec<String> {
        self.inner.local.topics()
    }

    fn cluster_presence(&self, topic: &str) -> BrokerFuture<Presence> {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        Box::pin(async move {
            let mut presence = inner.local.presence(&topic);
            let mine = inner.held_count(&topic);
            let link = lock(&inner.link).clone();
            let Some((mut conn, sha)) = link else {
                presence.partial = true;
                return presence;
            };
            let asked: Result<(i64, i64, i64), RedisError> = redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(1)
                .arg(inner.keys.presence(&topic))
                .arg(inner.keys.node_prefix())
                .arg(&inner.node)
                .query_async(&mut conn)
                .await;
            match asked {
                Ok((count, _nodes, stored_mine)) => {
                    // This node's own count is exact here; Redis may lag
                    // behind it by a write.
                    let others = usize::try_from((count - stored_mine).max(0)).unwrap_or(0);
                    presence.count = others + mine;
                }
                Err(e) => {
                    inner.count_error();
                    tracing::debug!(error = %e, "presence: Redis did not answer");
                    presence.partial = true;
                }
            }
            presence
        })
    }

    fn start(&self, context: &BrokerContext) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                node = %self.inner.node,
                "a RedisBroker serves one context; it was started again and ignores it"
            );
            return;
        }
        let inner = self.inner.clone();
        if !context.spawn(run(inner)) {
            tracing::warn!("the context is gone; the Redis broker does not start");
        }
    }

    fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.work.notify(usize::MAX);
        self.inner.stop.notify(usize::MAX);
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    #[allow(
        clippy::field_reassign_with_default,
        reason = "BrokerStats is non-exhaustive: outside its module a broker fills in a default, as a third-party one must"
    )]
    fn stats(&self) -> BrokerStats {
        let i = &self.inner;
        let mut s = BrokerStats::default();
        s.ready = i.is_ready();
        s.errors = i.errors.load(Ordering::Relaxed);
        s.reconnects = i.reconnects.load(Ordering::Relaxed);
        s.messages_out = i.messages_out.load(Ordering::Relaxed);
        s.messages_in = i.messages_in.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(matches!(
            parse_url("redis://127.0.0.1:6380/2"),
            Ok((Addr::Tcp(h, 6380), _)) if h == "127.0.0.1"
        ));
        assert!(matches!(
            parse_url("unix:///tmp/r.sock"),
            Ok((Addr::Unix(p), _)) if p == std::path::Path::new("/tmp/r.sock")
        ));
        for bad in ["rediss://h:1", "http://h", "", "redis://"] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.key, "broker.url", "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let b = || RedisBroker::builder("redis://127.0.0.1:6379");
        assert!(b().build().is_ok());
        assert_eq!(b().node("a b").build().unwrap_err().key, "broker.node");
        assert_eq!(
            b().history(MAX_HISTORY_SIZE + 1, Duration::from_secs(1))
                .build()
                .unwrap_err()
                .key,
            "broker.history_size"
        );
        assert_eq!(
            b().history(1, Duration::ZERO).build().unwrap_err().key,
            "broker.history_ttl"
        );
        assert_eq!(
            b().heartbeat(Duration::ZERO).build().unwrap_err().key,
            "broker.heartbeat"
        );
        assert_eq!(b().prefix("").build().unwrap_err().key, "broker.prefix");
        assert!(wire::valid_node(b().build().unwrap().node()));
    }
}
