//! The link task: one RESP3 connection to Redis, driven on the context's
//! task set; publishes in pipelines, subscriptions and their recovery,
//! presence and heartbeats; on failure, reconnects with backoff and jitter.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, RedisError, Value};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{Addr, Inner, Op, Outgoing};
use crate::cluster::wire;
use crate::common::lock;
use crate::pubsub::{Position, new_epoch};
use crate::{Message, SessionId};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis may take to answer a command before the connection is
/// given up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry's delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Messages sent to Redis in one pipeline (one write, one round trip).
const BATCH: usize = 512;
/// Topics per pipeline when the whole presence is written.
const PRESENCE_CHUNK: usize = 1024;

/// The scripts' hashes on the current connection.
struct Scripts {
    publish: String,
    recover: String,
}

/// A topic's history as Redis had it when a subscription began.
pub(super) struct Found {
    pub(super) epoch: String,
    pub(super) last: u64,
    pub(super) entries: Vec<(u64, Message)>,
}

impl Inner {
    /// Connects and completes the handshake; returns the connection and its
    /// driver, which must be polled for the connection to work.
    async fn connect(
        self: &Arc<Self>,
    ) -> Result<
        (
            MultiplexedConnection,
            Pin<Box<dyn Future<Output = ()> + Send>>,
        ),
        RedisError,
    > {
        let weak: Weak<Self> = Arc::downgrade(self);
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(move |info: PushInfo| {
                if let Some(inner) = weak.upgrade() {
                    inner.on_push(info);
                }
                Ok::<(), ()>(())
            });
        let timeout = async {
            Timer::after(CONNECT_TIMEOUT).await;
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to Redis timed out",
            )))
        };
        let connect = async {
            match &self.addr {
                Addr::Tcp(host, port) => {
                    let addr = resolve(host, *port)?;
                    let stream = Async::<TcpStream>::connect(addr).await?;
                    stream.get_ref().set_nodelay(true)?;
                    let (conn, driver) =
                        MultiplexedConnection::new_with_config(&self.info, stream.compat(), config)
                            .await?;
                    Ok((
                        conn,
                        Box::pin(driver) as Pin<Box<dyn Future<Output = ()> + Send>>,
                    ))
                }
                Addr::Unix(path) => {
                    let stream = Async::<UnixStream>::connect(path).await?;
                    let (conn, driver) =
                        MultiplexedConnection::new_with_config(&self.info, stream.compat(), config)
                            .await?;
                    Ok((
                        conn,
                        Box::pin(driver) as Pin<Box<dyn Future<Output = ()> + Send>>,
                    ))
                }
            }
        };
        future::or(connect, timeout).await
    }

    /// Runs one connection until it fails or the broker stops.
    async fn serve(&self, mut conn: MultiplexedConnection) -> Result<(), RedisError> {
        let load = |script: &str| {
            let mut conn = conn.clone();
            let script = script.to_owned();
            async move {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script)
                    .query_async::<String>(&mut conn)
                    .await
            }
        };
        let scripts = Scripts {
            publish: load(wire::PUBLISH).await?,
            recover: load(wire::RECOVER).await?,
        };
        let presence = load(wire::PRESENCE).await?;
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        let held = self.held();
        if !held.is_empty() {
            let channels: Vec<String> = held.iter().map(|(t, _)| self.keys.channel(t)).collect();
            conn.subscribe(channels).await?;
            subscribed.extend(held.iter().map(|(t, _)| t.clone()));
        }
        self.beat(&mut conn).await?;
        *lock(&self.link) = Some((conn.clone(), presence));
        {
            let mut q = lock(&self.queue);
            self.set_ready(&mut q, true);
        }
        // Those who subscribed while the link was down were served
        // locally; the channels above cover them. Anyone waiting now gets
        // a Subscribe op from here on.
        let waiting: Vec<Arc<str>> = lock(&self.pending).keys().cloned().collect();
        {
            let mut q = lock(&self.queue);
            let after = q.next_seq;
            q.ops
                .extend(waiting.into_iter().map(|t| (after, Op::Subscribe(t))));
        }
        let mut next_beat = Instant::now() + self.heartbeat;
        loop {
            let listener = self.work.listen();
            if self.is_stopping() {
                self.goodbye(&mut conn).await;
                return Ok(());
            }
            let (ops, batch, dirty) = {
                let mut q = lock(&self.queue);
                let n = q.out.len().min(BATCH);
                let batch: Vec<Outgoing> = q.out.drain(..n).collect();
                // The ops whose earlier publishes are all in this batch (or
                // sent before it).
                let sent = if q.out.is_empty() {
                    u64::MAX
                } else {
                    batch.last().map_or(0, |o| o.seq)
                };
                let ready = q.ops.iter().take_while(|(after, _)| *after <= sent).count();
                let ops: Vec<Op> = q.ops.drain(..ready).map(|(_, op)| op).collect();
                let bytes: usize = batch.iter().map(|o| wire::payload(&o.message).len()).sum();
                q.out_bytes = q.out_bytes.saturating_sub(bytes);
                let dirty: Vec<Arc<str>> = q.dirty.drain().collect();
                (ops, batch, dirty)
            };
            let now = Instant::now();
            if ops.is_empty() && batch.is_empty() && dirty.is_empty() && now < next_beat {
                future::or(listener, async {
                    Timer::at(next_beat).await;
                })
                .await;
                continue;
            }
            if now >= next_beat {
                self.beat(&mut conn).await?;
                next_beat = now + self.heartbeat;
            }
            // Publishes first: a subscription asked for after a publish on
            // this node sees it in its recovery (the ops taken wait for no
            // later publish).
            if !batch.is_empty() {
                self.send(&mut conn, batch, &scripts).await?;
            }
            for op in ops {
                match op {
                    Op::Subscribe(topic) => {
                        self.subscribe_op(&mut conn, &mut subscribed, topic, &scripts)
                            .await?;
                    }
                    Op::Unsubscribe(topic) => {
                        if self.held_count(&topic) == 0 && subscribed.remove(&topic) {
                            conn.unsubscribe(self.keys.channel(&topic)).await?;
                        }
                    }
                }
            }
            if !dirty.is_empty() {
                let counts: Vec<(Arc<str>, usize)> = dirty
                    .into_iter()
                    .map(|t| {
                        let n = self.held_count(&t);
                        (t, n)
                    })
                    .collect();
                self.write_presence(&mut conn, &counts).await?;
            }
        }
    }

    /// Makes the topic's subscription take effect in Redis, then ends the
    /// waiting subscriptions of the topic with what their recovery found.
    async fn subscribe_op(
        &self,
        conn: &mut MultiplexedConnection,
        subscribed: &mut HashSet<Arc<str>>,
        topic: Arc<str>,
        scripts: &Scripts,
    ) -> Result<(), RedisError> {
        if !subscribed.contains(&topic) && self.held_count(&topic) > 0 {
            conn.subscribe(self.keys.channel(&topic)).await?;
            subscribed.insert(topic.clone());
        }
        let waiting: Vec<(SessionId, Option<Position>)> = lock(&self.pending)
            .get(&topic)
            .map(|l| {
                l.iter()
                    .map(|p| (p.session.id(), p.request.position().cloned()))
                    .collect()
            })
            .unwrap_or_default();
        if self.history == 0 {
            for (id, _) in waiting {
                self.finish(&topic, id, None);
            }
            return Ok(());
        }
        // Plain subscriptions share one read of the position.
        let mut plain: Option<(String, u64)> = None;
        for (id, since) in waiting {
            let found = match since {
                Some(since) => self.recover(conn, &topic, Some(&since), scripts).await?,
                None => {
                    if plain.is_none() {
                        let f = self.recover(conn, &topic, None, scripts).await?;
                        plain = Some((f.epoch, f.last));
                    }
                    let (epoch, last) = plain.clone().unwrap_or_default();
                    Found {
                        epoch,
                        last,
                        entries: Vec::new(),
                    }
                }
            };
            self.finish(&topic, id, Some(found));
        }
        Ok(())
    }

    /// Reads the topic's position, and the entries after `since`.
    async fn recover(
        &self,
        conn: &mut MultiplexedConnection,
        topic: &str,
        since: Option<&Position>,
        scripts: &Scripts,
    ) -> Result<Found, RedisError> {
        let (offset, epoch) = since.map_or((0, ""), |p| (p.offset, p.epoch.as_str()));
        let reply: Value = redis::cmd("EVALSHA")
            .arg(&scripts.recover)
            .arg(2)
            .arg(self.keys.meta(topic))
            .arg(self.keys.history(topic))
            .arg(offset)
            .arg(epoch)
            .arg(self.history)
            .query_async(conn)
            .await?;
        Ok(parse_found(reply).unwrap_or(Found {
            epoch: String::new(),
            last: 0,
            entries: Vec::new(),
        }))
    }

    /// Sends a batch of publishes in one pipeline.
    async fn send(
        &self,
        conn: &mut MultiplexedConnection,
        batch: Vec<Outgoing>,
        scripts: &Scripts,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        let ttl_ms = u64::try_from(self.history_ttl.as_millis()).unwrap_or(u64::MAX);
        for o in &batch {
            if self.history > 0 {
                pipe.cmd("EVALSHA")
                    .arg(&scripts.publish)
                    .arg(2)
                    .arg(self.keys.meta(&o.topic))
                    .arg(self.keys.history(&o.topic))
                    .arg(self.keys.channel(&o.topic))
                    .arg(wire::head(&self.node, o.seq, &o.message, o.stamp))
                    .arg(wire::payload(&o.message))
                    .arg(self.history)
                    .arg(ttl_ms)
                    .arg(new_epoch());
            } else {
                pipe.cmd("PUBLISH")
                    .arg(self.keys.channel(&o.topic))
                    .arg(wire::plain(&self.node, o.seq, &o.message));
            }
        }
        pipe.ignore_errors();
        // Kept where `lost` finds it should the connection go down (and
        // this future be dropped) before Redis answers.
        *lock(&self.inflight) = batch;
        // On an error the batch stays in `inflight`: `lost` delivers locally
        // the ones whose echo did not come back.
        let replies = pipe.query_async::<Vec<Value>>(conn).await?;
        let batch = std::mem::take(&mut *lock(&self.inflight));
        let mut refused = Vec::new();
        for (o, reply) in batch.into_iter().zip(&replies) {
            if matches!(reply, Value::ServerError(_)) {
                self.count_error();
                tracing::warn!(topic = %o.topic, ?reply, "Redis refused a publish");
                refused.push(o);
            } else {
                self.messages_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.history > 0 {
            // Their local delivery was to come back from Redis.
            for o in refused {
                self.deliver_local(&o.topic, &o.message, None);
            }
        }
        Ok(())
    }

    /// The heartbeat: this node's key, and its whole presence.
    async fn beat(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let ttl = self.node_ttl_ms();
        redis::cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .exec_async(conn)
            .await?;
        let held = self.held();
        for chunk in held.chunks(PRESENCE_CHUNK) {
            self.write_presence(conn, chunk).await?;
        }
        Ok(())
    }

    /// Writes this node's subscriber count of each topic.
    async fn write_presence(
        &self,
        conn: &mut MultiplexedConnection,
        counts: &[(Arc<str>, usize)],
    ) -> Result<(), RedisError> {
        let ttl = self.node_ttl_ms();
        let mut pipe = redis::pipe();
        for (topic, n) in counts {
            let key = self.keys.presence(topic);
            if *n > 0 {
                pipe.cmd("HSET").arg(&key).arg(&self.node).arg(*n).ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
            } else {
                pipe.cmd("HDEL").arg(&key).arg(&self.node).ignore();
            }
        }
        pipe.exec_async(conn).await
    }

    /// Says goodbye on a clean stop: the node key and its presence go at
    /// once instead of expiring. Bounded: teardown does not wait for Redis.
    async fn goodbye(&self, conn: &mut MultiplexedConnection) {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.keys.node(&self.node)).ignore();
        for (topic, _) in self.held() {
            pipe.cmd("HDEL")
                .arg(self.keys.presence(&topic))
                .arg(&self.node)
                .ignore();
        }
        let bye = pipe.exec_async(conn);
        let _ = future::or(async { bye.await.ok() }, async {
            Timer::after(Duration::from_secs(1)).await;
            None
        })
        .await;
    }

    fn node_ttl_ms(&self) -> u64 {
        u64::try_from(self.heartbeat.as_millis().saturating_mul(3)).unwrap_or(u64::MAX)
    }

    /// Resolves once `stop` was called.
    async fn stopped(&self) {
        loop {
            let l = self.stop.listen();
            if self.is_stopping() {
                return;
            }
            l.await;
        }
    }
}

/// The link task: connect, serve, and on failure reconnect with backoff,
/// until the broker stops.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut failures: u32 = 0;
    let mut connected_once = false;
    while !inner.is_stopping() {
        let attempt = future::or(async { Some(inner.connect().await) }, async {
            inner.stopped().await;
            None
        })
        .await;
        let Some(attempt) = attempt else {
            break;
        };
        match attempt {
            Ok((conn, driver)) => {
                if connected_once {
                    inner.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(redis = %inner.addr, node = %inner.node, "reconnected to Redis");
                } else {
                    tracing::info!(redis = %inner.addr, node = %inner.node, "connected to Redis");
                }
                connected_once = true;
                failures = 0;
                let closed = async {
                    driver.await;
                    Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the connection to Redis closed",
                    )))
                };
                // On stop, `serve` says goodbye and returns; should Redis
                // hang, teardown waits one second more, not a response
                // timeout.
                let hung = async {
                    inner.stopped().await;
                    Timer::after(Duration::from_secs(1)).await;
                    Ok(())
                };
                let served = future::or(future::or(inner.serve(conn), closed), hung).await;
                inner.lost();
                if let Err(e) = served
                    && !inner.is_stopping()
                {
                    inner.count_error();
                    tracing::warn!(redis = %inner.addr, error = %e, "lost Redis; cross-node delivery paused, reconnecting");
                }
            }
            Err(e) => {
                inner.count_error();
                if failures == 0 {
                    tracing::warn!(redis = %inner.addr, error = %e, "cannot reach Redis; retrying with backoff");
                } else {
                    tracing::debug!(redis = %inner.addr, error = %e, failures, "cannot reach Redis");
                }
                failures = failures.saturating_add(1);
            }
        }
        if inner.is_stopping() {
            break;
        }
        let delay = backoff(failures);
        future::or(
            async {
                Timer::after(delay).await;
            },
            inner.stopped(),
        )
        .await;
    }
    inner.lost();
}

/// The delay before retry `n` (0-based): 50 ms doubling to 3 s, ±50 %.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1 << n.min(16)).min(BACKOFF_MAX);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(n);
    // A factor in [0.5, 1.5).
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(jitter)
}

/// Resolves a host name (on the calling thread: an IP address costs
/// nothing).
fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        )
    })
}

/// The recovery script's reply: `{epoch, last, entries}`, each entry
/// `[id, [field, value, ...]]`.
fn parse_found(reply: Value) -> Option<Found> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let [epoch, last, entries] = <[Value; 3]>::try_from(parts).ok()?;
    let epoch = match epoch {
        Value::BulkString(b) => String::from_utf8(b).ok()?,
        Value::SimpleString(s) => s,
        _ => return None,
    };
    let last = match last {
        Value::Int(n) => u64::try_from(n).ok()?,
        _ => return None,
    };
    let mut found = Vec::new();
    if let Value::Array(entries) = entries {
        for entry in entries {
            let Value::Array(pair) = entry else { continue };
            let [Value::BulkString(id), Value::Array(fields)] = pair.as_slice() else {
                continue;
            };
            let Some(offset) = std::str::from_utf8(id)
                .ok()
                .and_then(|id| id.split('-').next())
                .and_then(|o| o.parse::<u64>().ok())
            else {
                continue;
            };
            let field = |name: &[u8]| {
                fields.chunks(2).find_map(|kv| match kv {
                    [Value::BulkString(k), Value::BulkString(v)] if k == name => Some(v.clone()),
                    _ => None,
                })
            };
            let (Some(head), Some(data)) = (field(b"h"), field(b"d")) else {
                continue;
            };
            let mut wire = head;
            wire.extend_from_slice(format!("{offset}|{epoch}|").as_bytes());
            wire.extend_from_slice(&data);
            if let Some(r) = wire::parse(&wire) {
                found.push((offset, r.message));
            }
        }
    }
    Some(Found {
        epoch,
        last,
        entries: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for n in 0..40 {
            let d = backoff(n);
            let base = BACKOFF_MIN.saturating_mul(1 << n.min(16)).min(BACKOFF_MAX);
            assert!(d >= base / 2 && d < base + base / 2, "{n}: {d:?}");
        }
    }

    #[test]
    fn recovery_replies_parse() {
        let entry = |o: u64, data: &str| {
            Value::Array(vec![
                Value::BulkString(format!("{o}-1").into_bytes()),
                Value::Array(vec![
                    Value::BulkString(b"h".to_vec()),
                    Value::BulkString(b"v1|n|1|tj|".to_vec()),
                    Value::BulkString(b"d".to_vec()),
                    Value::BulkString(data.as_bytes().to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            Value::BulkString(b"ep".to_vec()),
            Value::Int(9),
            Value::Array(vec![entry(8, "{}"), entry(9, "x")]),
        ]);
        let f = parse_found(reply).unwrap();
        assert_eq!(f.epoch, "ep");
        assert_eq!(f.last, 9);
        assert_eq!(
            f.entries,
            vec![
                (8, Message::text(r#"{"offset":8,"epoch":"ep"}"#)),
                (9, Message::text("x"))
            ]
        );
    }
}
