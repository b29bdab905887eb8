//! Two `wsgate` binaries sharing one real `redis-server` through a
//! `[broker]` table: a message published on one reaches a subscriber of the
//! other (with its position), presence counts both, `/readyz` answers 200,
//! and a node killed with SIGKILL (no goodbye) leaves presence within the
//! stated bound, three heartbeats.

#![cfg(feature = "cli")]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::gateway::Gateway;
use support::redis::Redis;
use support::{Ws, block_on_timeout, connect, raw_http};
use wsgate::Message;

const HEARTBEAT: Duration = Duration::from_millis(200);

/// A configuration file for node `name`.
fn config(redis: &Redis, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[broker]
type = "redis"
url = "{}"
node = "{name}"
history_size = 10
history_ttl = "1m"
heartbeat = "{}ms"

[[vhost]]
name = "default"
listen = ["127.0.0.1:0"]

[[vhost.mount]]
path = "/pubsub"
protocol = "pubsub"

[[vhost.mount]]
path = "/readyz"
http = "ready"
"#,
            redis.url(),
            HEARTBEAT.as_millis()
        ),
    )
    .unwrap();
    path
}

fn start(redis: &Redis, name: &str) -> Gateway {
    let path = config(redis, name);
    let gw = Gateway::start(&["--config", path.to_str().unwrap(), "--stats-interval", "0s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&gw) != 200 {
        assert!(Instant::now() < deadline, "{name} never became ready");
    }
    gw
}

fn readyz(gw: &Gateway) -> u16 {
    raw_http(
        gw.addr,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .status
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        if let Message::Text(t) = ws.next().await.expect("open").expect("read") {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn presence(ws: &mut Ws, topic: &str) -> u64 {
    send(ws, json!({"op": "presence", "topic": topic})).await;
    let answer = next(ws).await;
    assert_eq!(answer["op"], "presence", "{answer}");
    answer["count"].as_u64().unwrap()
}

#[test]
fn two_binaries_share_topics_presence_and_history() {
    let Some(redis) = Redis::start() else { return };
    let one = start(&redis, "one");
    let mut two = start(&redis, "two");
    block_on_timeout(Duration::from_secs(60), async {
        let mut reader = connect(one.addr, "/pubsub").await;
        send(&mut reader, json!({"op": "subscribe", "topic": "t"})).await;
        assert_eq!(next(&mut reader).await["op"], "subscribed");
        let mut watchers = Vec::new();
        for _ in 0..2 {
            let mut ws = connect(two.addr, "/pubsub").await;
            send(&mut ws, json!({"op": "subscribe", "topic": "t"})).await;
            assert_eq!(next(&mut ws).await["op"], "subscribed");
            watchers.push(ws);
        }
        // Both nodes write their presence after their subscriptions took
        // effect in Redis.
        let mut asker = connect(one.addr, "/pubsub").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while presence(&mut asker, "t").await != 3 {
            assert!(Instant::now() < deadline, "presence never reached 3");
        }
        // Published on two, read on one, with its position.
        let mut writer = connect(two.addr, "/pubsub").await;
        send(
            &mut writer,
            json!({"op": "publish", "topic": "t", "data": "across"}),
        )
        .await;
        let m = next(&mut reader).await;
        assert_eq!(m["data"], "across", "{m}");
        assert_eq!(m["offset"], 1, "{m}");
        assert!(m["epoch"].is_string(), "{m}");
        // Node two dies without a goodbye; its two subscribers leave
        // presence within three heartbeats of its last one.
        two.signal("-KILL");
        let killed = Instant::now();
        two.wait();
        while presence(&mut asker, "t").await != 1 {
            assert!(
                killed.elapsed() < 3 * HEARTBEAT + Duration::from_secs(5),
                "a killed node stayed in presence"
            );
        }
        let gone = killed.elapsed();
        eprintln!(
            "killed node left presence after {gone:?} (bound: {:?})",
            3 * HEARTBEAT
        );
        drop(watchers);
    });
    assert_eq!(readyz(&one), 200);
}
