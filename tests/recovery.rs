//! History and recovery with the in-process broker
//! (`MemoryBroker::with_history`), through the `pubsub` protocol over real
//! sockets: every message carries its offset and epoch, a client that
//! reconnects with `since` gets what it missed and then the live messages
//! (no gap, no duplicate, `recovered: true`), and `recovered: false` when
//! the history no longer reaches back, names another epoch or expired.
//! Without history nothing changes.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Server, Ws, connect, run};
use wsgate::protocols::Pubsub;
use wsgate::pubsub::{MemoryBroker, Position, Remote, Stamp, SubscribeRequest};
use wsgate::{Config, Message, Mount, Protocol, Reject, Request, SessionHandle, VhostConfig};

fn server(broker: MemoryBroker) -> Server {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Pubsub::default())
        .mount(Mount::websocket("/pubsub", ["pubsub"]))
        .build()
        .unwrap();
    Server::start(
        Config::builder()
            .vhost(vhost)
            .broker(broker)
            .build()
            .unwrap(),
    )
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

async fn subscribe(ws: &mut Ws, topic: &str, since: Option<Value>) -> Value {
    let mut req = json!({"op": "subscribe", "topic": topic});
    if let Some(since) = since {
        req["since"] = since;
    }
    send(ws, req).await;
    next(ws).await
}

/// Publishes as the `pubsub` protocol does, from the server's side: done
/// when it returns (a client's publish would race the next request).
fn publish(s: &Server, n: u64) {
    let text = json!({"op": "message", "topic": "t", "data": n}).to_string();
    s.handle
        .publish_stamped("t", Message::text(text), Stamp::Json)
        .unwrap();
}

#[test]
fn a_reconnecting_client_recovers_what_it_missed_then_gets_the_live_messages() {
    let s = server(MemoryBroker::with_history(100, Duration::from_secs(60)));
    let addr = s.addr();
    run(async {
        let mut reader = connect(addr, "/pubsub").await;
        let ack = subscribe(&mut reader, "t", None).await;
        assert_eq!(
            ack,
            json!({"op": "subscribed", "topic": "t"}),
            "no history yet"
        );
        let mut epoch = Value::Null;
        // A client's publish goes the same way.
        let mut publisher = connect(addr, "/pubsub").await;
        send(
            &mut publisher,
            json!({"op": "publish", "topic": "t", "data": 1}),
        )
        .await;
        for n in 1..=3 {
            if n > 1 {
                publish(&s, n);
            }
            let m = next(&mut reader).await;
            assert_eq!(
                (m["data"].as_u64(), m["offset"].as_u64()),
                (Some(n), Some(n))
            );
            epoch = m["epoch"].clone();
            assert_eq!(epoch.as_str().unwrap().len(), 16);
        }
        drop(reader);
        for n in 4..=6 {
            publish(&s, n);
        }
        let mut reader = connect(addr, "/pubsub").await;
        let ack = subscribe(
            &mut reader,
            "t",
            Some(json!({"offset": 3, "epoch": epoch.clone()})),
        )
        .await;
        assert_eq!(
            ack,
            json!({"op": "subscribed", "topic": "t", "recovered": true, "offset": 6, "epoch": epoch.clone()})
        );
        for n in 4..=7 {
            if n == 7 {
                publish(&s, 7);
            }
            let m = next(&mut reader).await;
            assert_eq!(m["data"], n, "{m}");
            assert_eq!(m["offset"], n, "{m}");
        }
        // Another epoch, or a position the history no longer reaches.
        for (since, top) in [
            (json!({"offset": 3, "epoch": "0123456789abcdef"}), 7),
            (json!({"offset": 99, "epoch": epoch.clone()}), 8),
        ] {
            let mut other = connect(addr, "/pubsub").await;
            let ack = subscribe(&mut other, "t", Some(since)).await;
            assert_eq!(ack["recovered"], false, "{ack}");
            assert_eq!(ack["offset"], top);
            publish(&s, 0);
            assert_eq!(next(&mut other).await["data"], 0, "live, nothing replayed");
            assert_eq!(next(&mut reader).await["data"], 0);
        }
    });
}

#[test]
fn recovery_is_refused_when_the_history_is_too_short_or_expired() {
    let s = server(MemoryBroker::with_history(2, Duration::from_millis(200)));
    let addr = s.addr();
    run(async {
        let mut reader = connect(addr, "/pubsub").await;
        subscribe(&mut reader, "t", None).await;
        publish(&s, 1);
        let first = next(&mut reader).await;
        drop(reader);
        for n in 2..=4 {
            publish(&s, n);
        }
        let since = json!({"offset": first["offset"], "epoch": first["epoch"]});
        let mut back = connect(addr, "/pubsub").await;
        let ack = subscribe(&mut back, "t", Some(since)).await;
        assert_eq!(ack["recovered"], false, "2 is gone: {ack}");
        // Expiry is on the clock (200 ms after the last publish): ask until
        // the epoch is gone.
        let since = json!({"offset": 4, "epoch": first["epoch"]});
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = connect(addr, "/pubsub").await;
            let ack = subscribe(&mut again, "t", Some(since.clone())).await;
            if ack["recovered"] == false {
                assert!(ack.get("epoch").is_none(), "{ack}");
                break;
            }
            assert!(Instant::now() < deadline, "the history did not expire");
        }
    });
}

/// Subscribes each session through the library API, recovering from the
/// position in its path (`/from/OFFSET/EPOCH`), and queues what the
/// recovery said.
struct Recovering;

impl Protocol for Recovering {
    type State = ();

    fn name(&self) -> &str {
        "recovering"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        let parts: Vec<&str> = session.path().split('/').collect();
        let mut request = SubscribeRequest::new().acknowledge(|r| {
            Some(Message::text(format!(
                "recovered={} replayed={} at={:?}",
                r.recovered,
                r.replayed,
                r.position.as_ref().map(|p| p.offset)
            )))
        });
        if let [_, "from", offset, epoch] = parts.as_slice() {
            request = request.since(Position::new(offset.parse().unwrap(), *epoch));
        }
        session
            .subscribe_with("lib", request)
            .map(|_| ())
            .map_err(|e| Reject::new(500, e.to_string()))
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}
}

#[test]
fn the_library_api_publishes_stamped_and_recovers() {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Recovering)
        .mount(Mount::websocket("/", ["recovering"]).prefix(true))
        .build()
        .unwrap();
    let s = Server::start(
        Config::builder()
            .vhost(vhost)
            .broker(MemoryBroker::with_history(10, Duration::from_secs(60)))
            .build()
            .unwrap(),
    );
    let addr = s.addr();
    let h = s.handle.clone();
    run(async {
        let mut first = connect(addr, "/").await;
        let text = |m: Message| m.into_text().unwrap().as_str().to_owned();
        assert_eq!(
            text(first.next().await.unwrap().unwrap()),
            "recovered=false replayed=0 at=None"
        );
        let p = h
            .publish_stamped("lib", Message::text(r#"{"a":1}"#), Stamp::Json)
            .unwrap();
        assert_eq!((p.delivered, p.remote), (1, Remote::Local));
        h.publish("lib", Message::text("raw")).unwrap();
        let stamped: Value =
            serde_json::from_str(&text(first.next().await.unwrap().unwrap())).unwrap();
        assert_eq!(stamped["offset"], 1);
        assert_eq!(text(first.next().await.unwrap().unwrap()), "raw");
        let epoch = stamped["epoch"].as_str().unwrap().to_owned();
        let mut again = connect(addr, &format!("/from/0/{epoch}")).await;
        assert_eq!(
            text(again.next().await.unwrap().unwrap()),
            "recovered=true replayed=2 at=Some(2)"
        );
        assert_eq!(
            again.next().await.unwrap().unwrap(),
            Message::text(format!(r#"{{"a":1,"offset":1,"epoch":"{epoch}"}}"#))
        );
        assert_eq!(text(again.next().await.unwrap().unwrap()), "raw");
    });
}
