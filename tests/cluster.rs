//! Many gateways as one, in one test process: two or three contexts, each on
//! its own thread and executor, with a `RedisBroker` on one real
//! `redis-server` (started per test, see `support::redis`). Cross-node
//! delivery in order (4 publishers × 1,000 messages to 100 subscribers
//! spread over three nodes), presence over the nodes, recovery after a
//! reconnect (to another node) and when the history no longer reaches back,
//! and Redis stopped mid-traffic and restarted: local delivery never stops,
//! `/readyz` flips to 503 and back, cross-node delivery resumes.
//!
//! The two-binary tests are in `tests/cluster_binary.rs`.

#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::redis::Redis;
use support::{Server, Ws, block_on_timeout, connect, raw_http, run, wait_until};
use wsgate::cluster::RedisBroker;
use wsgate::handlers::Ready;
use wsgate::protocols::Pubsub;
use wsgate::pubsub::Remote;
use wsgate::{Config, Message, Mount, VhostConfig};

/// One node: `/pubsub` and `/readyz` on a context whose broker is on `redis`.
fn node(redis: &Redis, name: &str, history: usize, ttl: Duration) -> Server {
    let broker = RedisBroker::builder(redis.url())
        .node(name)
        .history(history, ttl)
        .heartbeat(Duration::from_millis(200))
        .build()
        .unwrap();
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Pubsub::default())
        .mount(Mount::websocket("/pubsub", ["pubsub"]))
        .mount(Mount::http("/readyz", Ready))
        .build()
        .unwrap();
    start_ready(vhost, broker)
}

/// A context with `vhost` on `broker`, once the broker says it is ready.
fn start_ready(vhost: VhostConfig, broker: RedisBroker) -> Server {
    let server = Server::start(
        Config::builder()
            .vhost(vhost)
            .broker(broker)
            .build()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "node ready", || {
        server.handle.is_ready()
    });
    server
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text message, as JSON.
async fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("stream ended").expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Subscribes and returns the acknowledgement.
async fn subscribe(ws: &mut Ws, topic: &str, since: Option<Value>) -> Value {
    let mut req = json!({"op": "subscribe", "topic": topic});
    if let Some(since) = since {
        req["since"] = since;
    }
    send(ws, req).await;
    let ack = next(ws).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    ack
}

async fn client(addr: SocketAddr) -> Ws {
    connect(addr, "/pubsub").await
}

fn readyz(addr: SocketAddr) -> u16 {
    raw_http(
        addr,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .status
}

#[test]
fn cross_node_delivery_keeps_each_publishers_order_and_the_offsets() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..3)
        .map(|i| node(&redis, &format!("n{i}"), 100, Duration::from_secs(60)))
        .collect();
    const SUBSCRIBERS: usize = 100;
    const PUBLISHERS: usize = 4;
    const MESSAGES: u64 = 1000;
    block_on_timeout(Duration::from_secs(120), async {
        let mut subs = Vec::new();
        for i in 0..SUBSCRIBERS {
            let mut ws = client(nodes[i % 3].addr()).await;
            subscribe(&mut ws, "t", None).await;
            subs.push(ws);
        }
        let mut pubs = Vec::new();
        for p in 0..PUBLISHERS {
            pubs.push(client(nodes[p % 3].addr()).await);
        }
        let publishing = join_all(pubs.iter_mut().enumerate().map(|(p, ws)| async move {
            for n in 0..MESSAGES {
                send(
                    ws,
                    json!({"op": "publish", "topic": "t", "data": {"p": p, "n": n}}),
                )
                .await;
            }
        }));
        let reading = join_all(subs.iter_mut().map(|ws| async move {
            let mut last: HashMap<u64, u64> = HashMap::new();
            let mut offset = None;
            let mut epoch = None;
            for _ in 0..PUBLISHERS as u64 * MESSAGES {
                let m = next(ws).await;
                assert_eq!(m["op"], "message", "{m}");
                let (p, n) = (
                    m["data"]["p"].as_u64().unwrap(),
                    m["data"]["n"].as_u64().unwrap(),
                );
                let expected = last.get(&p).map_or(0, |l| l + 1);
                assert_eq!(n, expected, "publisher {p}: out of order or lost");
                last.insert(p, n);
                let o = m["offset"].as_u64().expect("an offset");
                if let Some(prev) = offset {
                    assert_eq!(o, prev + 1, "offsets in order, no gap");
                }
                offset = Some(o);
                let e = m["epoch"].as_str().expect("an epoch").to_owned();
                assert!(epoch.get_or_insert_with(|| e.clone()) == &e, "one epoch");
            }
        }));
        futures_lite::future::zip(publishing, reading).await;
    });
    let out: u64 = nodes
        .iter()
        .map(|n| n.handle.stats().unwrap().broker.messages_out)
        .sum();
    let received: u64 = nodes
        .iter()
        .map(|n| n.handle.stats().unwrap().broker.messages_in)
        .sum();
    assert_eq!(out, PUBLISHERS as u64 * MESSAGES);
    // Once per node, not once per subscriber: every node has subscribers,
    // and each gets every message published on the two others.
    assert_eq!(received, 2 * PUBLISHERS as u64 * MESSAGES);
}

#[test]
fn without_history_a_publish_reaches_local_subscribers_at_once_and_the_others_in_order() {
    let Some(redis) = Redis::start_tcp() else {
        return;
    };
    let a = node(&redis, "a", 0, Duration::from_secs(1));
    let b = node(&redis, "b", 0, Duration::from_secs(1));
    run(async {
        let mut on_a = client(a.addr()).await;
        let mut on_b = client(b.addr()).await;
        let ack = subscribe(&mut on_a, "plain", None).await;
        assert_eq!(ack, json!({"op": "subscribed", "topic": "plain"}));
        subscribe(&mut on_b, "plain", None).await;
        for n in 0..200 {
            let p = a
                .handle
                .publish("plain", Message::text(json!({"n": n}).to_string()))
                .unwrap();
            assert_eq!((p.delivered, p.remote), (1, Remote::Queued));
        }
        for ws in [&mut on_a, &mut on_b] {
            for n in 0..200 {
                assert_eq!(next(ws).await, json!({"n": n}));
            }
        }
    });
    // The Redis connections ran on the contexts' own task sets: no runtime
    // or executor of the client's started a thread (smol's global
    // executor, the blocking pool, tokio).
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    for prefix in ["smol", "blocking", "tokio", "async-global"] {
        assert!(
            !names.iter().any(|n| n.starts_with(prefix)),
            "a {prefix} thread runs: {names:?}"
        );
    }
}

#[test]
fn presence_counts_the_subscribers_of_every_node() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "a", 0, Duration::from_secs(1));
    let b = node(&redis, "b", 0, Duration::from_secs(1));
    let _clients = run(async {
        let mut on_a = Vec::new();
        for _ in 0..3 {
            let mut ws = client(a.addr()).await;
            subscribe(&mut ws, "room", None).await;
            on_a.push(ws);
        }
        let mut on_b = Vec::new();
        for _ in 0..2 {
            let mut ws = client(b.addr()).await;
            subscribe(&mut ws, "room", None).await;
            on_b.push(ws);
        }
        let p = a.handle.cluster_presence("room").await.unwrap();
        assert_eq!((p.count, p.sessions.len(), p.partial), (5, 3, false));
        assert_eq!(a.handle.presence("room").unwrap().count, 3, "this node's");
        // The pubsub protocol's answer counts every node too.
        send(&mut on_b[0], json!({"op": "presence", "topic": "room"})).await;
        let answer = next(&mut on_b[0]).await;
        assert_eq!(answer["count"], 5, "{answer}");
        assert_eq!(answer["sessions"].as_array().unwrap().len(), 2);
        send(&mut on_a[0], json!({"op": "unsubscribe", "topic": "room"})).await;
        assert_eq!(next(&mut on_a[0]).await["op"], "unsubscribed");
        // Node a writes its new count to Redis within a round trip.
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.handle.cluster_presence("room").await.unwrap().count != 4 {
            assert!(Instant::now() < deadline, "presence did not drop to 4");
        }
        on_a
    });
    // A node that leaves cleanly takes its presence with it at once.
    drop(b);
    let p = run(a.handle.cluster_presence("room")).unwrap();
    assert_eq!(p.count, 2);
}

#[test]
fn a_client_that_reconnects_recovers_what_it_missed_on_another_node() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "a", 100, Duration::from_secs(60));
    let b = node(&redis, "b", 100, Duration::from_secs(60));
    run(async {
        let mut publisher = client(b.addr()).await;
        let publish = |n: u64| json!({"op": "publish", "topic": "news", "data": n});
        let mut reader = client(a.addr()).await;
        subscribe(&mut reader, "news", None).await;
        let mut last = Value::Null;
        for n in 0..5 {
            send(&mut publisher, publish(n)).await;
            last = next(&mut reader).await;
            assert_eq!(last["data"], n);
        }
        let since = json!({"offset": last["offset"], "epoch": last["epoch"]});
        drop(reader);
        for n in 5..10 {
            send(&mut publisher, publish(n)).await;
        }
        // Back, to the other node.
        let mut reader = client(b.addr()).await;
        let ack = subscribe(&mut reader, "news", Some(since)).await;
        assert_eq!(ack["recovered"], true, "{ack}");
        // The publishes above and this subscription travel on different
        // connections: whichever reached Redis first, the messages come
        // once each, in order, after the acknowledgement.
        for n in 5..10 {
            let m = next(&mut reader).await;
            assert_eq!(m["data"], n, "{m}");
        }
        send(&mut publisher, publish(10)).await;
        let m = next(&mut reader).await;
        assert_eq!(m["data"], 10, "live after the replay, no duplicate: {m}");
    });
}

#[test]
fn recovery_says_false_when_the_history_no_longer_reaches_back_or_expired() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "a", 3, Duration::from_millis(300));
    run(async {
        let mut reader = client(a.addr()).await;
        subscribe(&mut reader, "short", None).await;
        let publish = |n: u64| {
            a.handle
                .publish_stamped(
                    "short",
                    Message::text(json!({"n": n}).to_string()),
                    wsgate::pubsub::Stamp::Json,
                )
                .unwrap()
        };
        publish(0);
        let first = next(&mut reader).await;
        let since = json!({"offset": first["offset"], "epoch": first["epoch"]});
        drop(reader);
        // Five more: the history keeps three, so offset+1 is gone.
        for n in 1..6 {
            publish(n);
        }
        let mut back = client(a.addr()).await;
        let ack = subscribe(&mut back, "short", Some(since)).await;
        assert_eq!(ack["recovered"], false, "{ack}");
        assert_eq!(ack["offset"], 6);
        drop(back);
        // Expired: the epoch is gone, a position from it recovers nothing.
        let kept = json!({"offset": 6, "epoch": ack["epoch"]});
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = client(a.addr()).await;
            let ack = subscribe(&mut again, "short", Some(kept.clone())).await;
            if ack["recovered"] == false {
                assert!(ack.get("offset").is_none(), "no history left: {ack}");
                break;
            }
            assert!(Instant::now() < deadline, "the history did not expire");
        }
    });
}

#[test]
fn redis_down_keeps_local_delivery_and_cross_node_delivery_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "a", 100, Duration::from_secs(60));
    let b = node(&redis, "b", 100, Duration::from_secs(60));
    assert_eq!((readyz(a.addr()), readyz(b.addr())), (200, 200));
    let (mut local, mut remote) = run(async {
        let mut local = client(a.addr()).await;
        let mut remote = client(b.addr()).await;
        subscribe(&mut local, "live", None).await;
        subscribe(&mut remote, "live", None).await;
        (local, remote)
    });
    // A publisher on node a, never stopping until told.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let unavailable = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, sent, unavailable) = (stop.clone(), sent.clone(), unavailable.clone());
        let handle = a.handle.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = handle
                    .publish("live", Message::text(json!({"n": n}).to_string()))
                    .unwrap();
                if p.remote == Remote::Unavailable {
                    assert_eq!(p.delivered, 1, "local delivery goes on");
                    unavailable.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                sent.store(n, Ordering::Relaxed);
                // Paced, so that the queues stay small.
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    // Local delivery: every message in order, whatever Redis does.
    let mut expected_local = 0u64;
    let mut read_local = |ws: &mut Ws, until: u64| {
        run(async {
            while expected_local < until {
                let m = next(ws).await;
                let n = m["n"].as_u64().unwrap();
                assert_eq!(n, expected_local, "every one, in order, no duplicate");
                expected_local = n + 1;
            }
        });
    };
    read_local(&mut local, 100);
    redis.stop();
    wait_until(Duration::from_secs(10), "readyz 503", || {
        readyz(a.addr()) == 503
    });
    assert!(!a.handle.is_ready());
    let down_at = sent.load(Ordering::Relaxed);
    read_local(&mut local, down_at + 200);
    assert!(unavailable.load(Ordering::Relaxed) > 0);
    let stats = a.handle.stats().unwrap();
    assert!(!stats.broker.ready && stats.broker.errors > 0);
    assert!(stats.prometheus().contains("wsgate_broker_ready 0"));
    redis.restart();
    wait_until(Duration::from_secs(10), "readyz 200", || {
        readyz(a.addr()) == 200 && readyz(b.addr()) == 200
    });
    let back_at = sent.load(Ordering::Relaxed) + 10;
    // Cross-node delivery resumed: node b gets what a publishes now.
    run(async {
        loop {
            let m = next(&mut remote).await;
            if m["n"].as_u64().unwrap() >= back_at {
                break;
            }
        }
    });
    read_local(&mut local, sent.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let stats = a.handle.stats().unwrap();
    assert!(
        stats.broker.ready && stats.broker.reconnects >= 1,
        "{stats:?}"
    );
}

#[test]
fn a_cluster_broadcast_room_spans_the_nodes() {
    let Some(redis) = Redis::start() else { return };
    let room = |name: &str| {
        let broker = RedisBroker::builder(redis.url())
            .node(name)
            .build()
            .unwrap();
        let vhost = VhostConfig::builder("default")
            .listen("127.0.0.1:0".parse().unwrap())
            .protocol(wsgate::protocols::Broadcast::cluster())
            .mount(Mount::websocket("/room", ["broadcast"]))
            .build()
            .unwrap();
        start_ready(vhost, broker)
    };
    let (a, b) = (room("a"), room("b"));
    run(async {
        let mut on_a = connect(a.addr(), "/room").await;
        let mut on_b = connect(b.addr(), "/room").await;
        // Each node writes its presence after its subscription took effect
        // in Redis: two members counted means both hear the room.
        let deadline = Instant::now() + Duration::from_secs(10);
        while a
            .handle
            .cluster_presence("broadcast:default:/room")
            .await
            .unwrap()
            .count
            != 2
        {
            assert!(Instant::now() < deadline, "the members never met");
        }
        on_a.send(Message::text("hello")).await.unwrap();
        for ws in [&mut on_a, &mut on_b] {
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        }
        on_b.send(Message::text("from b")).await.unwrap();
        for ws in [&mut on_a, &mut on_b] {
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("from b"));
        }
        assert_eq!(a.handle.topics().unwrap(), ["broadcast:default:/room"]);
    });
}

#[test]
fn teardown_says_goodbye_and_ends_the_broker_tasks_even_while_redis_is_down() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "a", 10, Duration::from_secs(60));
    let b = node(&redis, "b", 10, Duration::from_secs(60));
    assert_eq!(redis.command("EXISTS wsgate:node:a"), ":1\r\n");
    // Up: the drain waits for the goodbye, which removes the node at once.
    let report = a.shutdown();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(redis.command("EXISTS wsgate:node:a"), ":0\r\n");
    // Down: the reconnect loop ends at teardown, the drain does not wait
    // for Redis.
    redis.stop();
    wait_until(Duration::from_secs(10), "b notices", || {
        !b.handle.is_ready()
    });
    let report = b.shutdown();
    assert!(report.is_clean(), "{report:?}");
}
