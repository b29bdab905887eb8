//! The built-in protocols over real sockets: `broadcast` reaches every other
//! client of its path and not the sender, `increment` counts at its interval,
//! resets on request and stops with its session, and `pubsub` subscribes,
//! publishes, answers presence and turns every mistake into an error message
//! without closing, within the limits its options set.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Server, Ws, connect, read_to_end, run, wait_until};
use wsgate::protocols::{Broadcast, Increment, Pubsub};
use wsgate::{Config, Message, Mount, Options, VhostConfig};

fn options(pairs: &[(&str, &str)]) -> Options {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// One vhost with `broadcast` under `/room/…`, `increment` at `/increment`
/// and `pubsub` at `/pubsub`, each with the given options.
fn server(
    broadcast: &[(&str, &str)],
    increment: &[(&str, &str)],
    pubsub: &[(&str, &str)],
) -> Server {
    let (b, i, p) = (options(broadcast), options(increment), options(pubsub));
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol_with_options(Broadcast::from_options(&b).unwrap(), b)
        .protocol_with_options(Increment::from_options(&i).unwrap(), i)
        .protocol_with_options(Pubsub::from_options(&p).unwrap(), p)
        .mount(Mount::websocket("/room", ["broadcast"]).prefix(true))
        .mount(Mount::websocket("/increment", ["increment"]))
        .mount(Mount::websocket("/pubsub", ["pubsub"]))
        .build()
        .unwrap();
    Server::start(Config::builder().vhost(vhost).build().unwrap())
}

async fn next(ws: &mut Ws) -> Message {
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return m,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    let ending = read_to_end(&mut ws).await;
    assert!(ending.error.is_none(), "{ending:?}");
}

// ---- broadcast ----

#[test]
fn broadcast_reaches_every_other_client_of_the_path_but_not_the_sender() {
    let server = server(&[], &[], &[]);
    let addr = server.addr();
    run(async {
        let mut a = connect(addr, "/room/a").await;
        let mut b = connect(addr, "/room/a").await;
        let mut c = connect(addr, "/room/a").await;
        let mut elsewhere = connect(addr, "/room/b").await;

        a.send(Message::text("hi from a")).await.unwrap();
        assert_eq!(next(&mut b).await, Message::text("hi from a"));
        assert_eq!(next(&mut c).await, Message::text("hi from a"));

        b.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
        // The first thing `a` receives is `b`'s message: its own did not
        // come back.
        assert_eq!(next(&mut a).await, Message::binary(vec![0u8, 1, 2, 255]));
        assert_eq!(next(&mut c).await, Message::binary(vec![0u8, 1, 2, 255]));

        c.send(Message::text("from c")).await.unwrap();
        assert_eq!(next(&mut a).await, Message::text("from c"));
        assert_eq!(next(&mut b).await, Message::text("from c"));

        // Another path is another room: nothing of the above reached it, and
        // its messages stay there.
        elsewhere.send(Message::text("only b")).await.unwrap();
        let n = server
            .handle
            .broadcast("default", "/room/b", Message::text("marker"))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(next(&mut elsewhere).await, Message::text("marker"));
        let n = server
            .handle
            .broadcast("default", "/room/a", Message::text("marker a"))
            .unwrap();
        assert_eq!(n, 3);
        for ws in [&mut a, &mut b, &mut c] {
            assert_eq!(next(ws).await, Message::text("marker a"));
        }

        // A client that left is no longer a recipient.
        close(c).await;
        wait_until(support::LIMIT, "c gone", || {
            server.handle.stats().unwrap().sessions_open == 3
        });
        a.send(Message::text("two left")).await.unwrap();
        assert_eq!(next(&mut b).await, Message::text("two left"));
        for ws in [a, b, elsewhere] {
            close(ws).await;
        }
    });
    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn broadcast_with_echo_self_sends_back_to_the_sender_too() {
    let server = server(&[("echo_self", "true")], &[], &[]);
    run(async {
        let mut a = connect(server.addr(), "/room/x").await;
        let mut b = connect(server.addr(), "/room/x").await;
        a.send(Message::text("both")).await.unwrap();
        assert_eq!(next(&mut a).await, Message::text("both"));
        assert_eq!(next(&mut b).await, Message::text("both"));
        close(a).await;
        close(b).await;
    });
    assert!(server.shutdown().is_clean());
}

// ---- increment ----

/// The next counter value.
async fn value(ws: &mut Ws) -> u64 {
    match next(ws).await {
        Message::Text(t) => t.parse().unwrap_or_else(|_| panic!("not a count: {t:?}")),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn increment_counts_at_its_interval_and_reset_starts_over() {
    const INTERVAL: Duration = Duration::from_millis(50);
    let server = server(&[], &[("interval_ms", "50")], &[]);
    run(async {
        let mut ws = connect(server.addr(), "/increment").await;
        // The first value comes at once, then one per interval.
        assert_eq!(value(&mut ws).await, 0);
        let started = Instant::now();
        for expected in 1..=6 {
            assert_eq!(value(&mut ws).await, expected);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= INTERVAL * 6 * 4 / 5 && elapsed < INTERVAL * 6 * 10,
            "6 values in {elapsed:?} at a {INTERVAL:?} interval"
        );

        // A value may be on its way while `reset` travels; 0 follows at the
        // latest right after it.
        ws.send(Message::text("reset")).await.unwrap();
        let mut seen = Vec::new();
        while seen.last() != Some(&0) {
            seen.push(value(&mut ws).await);
            assert!(seen.len() <= 2, "no reset: {seen:?}");
        }
        assert_eq!(value(&mut ws).await, 1);
        assert_eq!(value(&mut ws).await, 2);

        // Anything else is ignored.
        ws.send(Message::text("hello")).await.unwrap();
        ws.send(Message::binary(b"reset".to_vec())).await.unwrap();
        assert_eq!(value(&mut ws).await, 3);
        close(ws).await;
    });
    assert!(server.shutdown().is_clean());
}

#[test]
fn increment_counters_are_per_session() {
    let server = server(&[], &[("interval_ms", "20")], &[]);
    run(async {
        let mut a = connect(server.addr(), "/increment").await;
        for expected in 0..5 {
            assert_eq!(value(&mut a).await, expected);
        }
        let mut b = connect(server.addr(), "/increment").await;
        assert_eq!(value(&mut b).await, 0);
        a.send(Message::text("reset")).await.unwrap();
        while value(&mut a).await != 0 {}
        assert_eq!(value(&mut b).await, 1);
        close(a).await;
        close(b).await;
    });
    assert!(server.shutdown().is_clean());
}

#[test]
fn increment_tasks_end_with_their_sessions_without_waiting_for_the_timer() {
    // A minute between values: a task that only ended on its next tick
    // would hold the drain until its deadline.
    let (b, i, p) = (
        options(&[]),
        options(&[("interval_ms", "60000")]),
        options(&[]),
    );
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol_with_options(Broadcast::from_options(&b).unwrap(), b)
        .protocol_with_options(Increment::from_options(&i).unwrap(), i)
        .protocol_with_options(Pubsub::from_options(&p).unwrap(), p)
        .mount(Mount::websocket("/increment", ["increment"]))
        .build()
        .unwrap();
    let server = Server::start_drain(
        Config::builder().vhost(vhost).build().unwrap(),
        Duration::from_secs(5),
        |_| {},
    );
    let stays = run(async {
        // One session that the client closes...
        let mut gone = connect(server.addr(), "/increment").await;
        assert_eq!(value(&mut gone).await, 0);
        close(gone).await;
        // ... and one that teardown closes.
        let mut stays = connect(server.addr(), "/increment").await;
        assert_eq!(value(&mut stays).await, 0);
        stays
    });
    wait_until(support::LIMIT, "the first session ended", || {
        server.handle.stats().unwrap().sessions_open == 1
    });
    let reader = std::thread::spawn(move || {
        let mut stays = stays;
        run(read_to_end(&mut stays))
    });
    let report = server.shutdown();
    reader.join().unwrap().assert_closed_with(1001);
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.clean, report.tasks_forced), (1, 0), "{report}");
    assert!(report.elapsed < Duration::from_secs(3), "{report}");
}

// ---- pubsub ----

async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

async fn recv_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t:?}")),
        other => panic!("expected JSON text, got {other:?}"),
    }
}

/// Sends `request` and returns the answer.
async fn ask(ws: &mut Ws, request: Value) -> Value {
    send_json(ws, request).await;
    recv_json(ws).await
}

async fn subscribe(ws: &mut Ws, topic: &str) {
    let answer = ask(ws, json!({"op": "subscribe", "topic": topic})).await;
    assert_eq!(answer, json!({"op": "subscribed", "topic": topic}));
}

fn error(reason: &str) -> Value {
    json!({"op": "error", "reason": reason})
}

#[test]
fn pubsub_subscribe_publish_presence_and_unsubscribe() {
    let server = server(&[], &[], &[]);
    let addr = server.addr();
    run(async {
        let mut a = connect(addr, "/pubsub").await;
        let mut b = connect(addr, "/pubsub").await;
        let mut outsider = connect(addr, "/pubsub").await;
        subscribe(&mut a, "news").await;
        subscribe(&mut b, "news").await;
        // Subscribing again is acknowledged and counts once.
        subscribe(&mut b, "news").await;
        subscribe(&mut b, "sport").await;

        // Presence: the count and the ids, in subscription order.
        let presence = ask(&mut outsider, json!({"op": "presence", "topic": "news"})).await;
        assert_eq!(presence["op"], "presence");
        assert_eq!(presence["topic"], "news");
        assert_eq!(presence["count"], 2);
        let ids: Vec<u64> = serde_json::from_value(presence["sessions"].clone()).unwrap();
        let server_side = server.handle.presence("news").unwrap();
        assert_eq!(
            ids,
            server_side
                .sessions
                .iter()
                .map(|s| s.get())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            ask(&mut outsider, json!({"op": "presence", "topic": "nobody"})).await,
            json!({"op": "presence", "topic": "nobody", "count": 0, "sessions": []})
        );
        assert_eq!(server.handle.topics().unwrap(), ["news", "sport"]);

        // A publish from a non-subscriber reaches both subscribers, with
        // any JSON as data.
        let data = json!({"headline": "wsgate ships", "n": [1, 2.5, null, true]});
        send_json(
            &mut outsider,
            json!({"op": "publish", "topic": "news", "data": data}),
        )
        .await;
        let delivered = json!({"op": "message", "topic": "news", "data": data});
        assert_eq!(recv_json(&mut a).await, delivered);
        assert_eq!(recv_json(&mut b).await, delivered);

        // A subscriber that publishes gets its own message too.
        send_json(
            &mut a,
            json!({"op": "publish", "topic": "news", "data": "from a"}),
        )
        .await;
        let from_a = json!({"op": "message", "topic": "news", "data": "from a"});
        assert_eq!(recv_json(&mut a).await, from_a);
        assert_eq!(recv_json(&mut b).await, from_a);

        // Topics are the context's: a server-side publish reaches them.
        let published = server
            .handle
            .publish(
                "sport",
                Message::text(r#"{"op":"message","topic":"sport","data":0}"#),
            )
            .unwrap();
        assert_eq!(published.delivered, 1);
        assert_eq!(
            recv_json(&mut b).await,
            json!({"op": "message", "topic": "sport", "data": 0})
        );

        // Unsubscribing: acknowledged, then nothing more arrives.
        assert_eq!(
            ask(&mut a, json!({"op": "unsubscribe", "topic": "news"})).await,
            json!({"op": "unsubscribed", "topic": "news"})
        );
        assert_eq!(
            ask(&mut a, json!({"op": "unsubscribe", "topic": "news"})).await,
            error(r#"not subscribed to "news""#)
        );
        send_json(
            &mut outsider,
            json!({"op": "publish", "topic": "news", "data": 2}),
        )
        .await;
        assert_eq!(
            recv_json(&mut b).await,
            json!({"op": "message", "topic": "news", "data": 2})
        );
        assert_eq!(
            ask(&mut a, json!({"op": "presence", "topic": "news"})).await["count"],
            1
        );

        // A client that leaves leaves its topics; the last one takes them.
        close(b).await;
        wait_until(support::LIMIT, "b's topics gone", || {
            server.handle.topics().unwrap().is_empty()
        });
        for ws in [a, outsider] {
            close(ws).await;
        }
    });
    let stats = server.handle.stats().unwrap();
    assert_eq!(stats.published, 4, "{stats:?}");
    assert!(server.shutdown().is_clean());
}

#[test]
fn pubsub_answers_mistakes_with_errors_and_stays_open() {
    let server = server(&[], &[], &[]);
    run(async {
        let mut ws = connect(server.addr(), "/pubsub").await;
        let mut expect = async |request: Message, reason: &str| {
            ws.send(request).await.unwrap();
            let answer = recv_json(&mut ws).await;
            assert_eq!(answer["op"], "error", "{answer}");
            let got = answer["reason"].as_str().unwrap();
            assert!(got.starts_with(reason), "{got:?} for {reason:?}");
        };
        expect(Message::text("{not json"), "invalid JSON").await;
        expect(Message::text("[1,2]"), "expected a JSON object").await;
        expect(Message::text(r#"{"topic":"t"}"#), "missing op").await;
        expect(
            Message::text(r#"{"op":5,"topic":"t"}"#),
            "op must be a string",
        )
        .await;
        expect(
            Message::text(r#"{"op":"shout","topic":"t"}"#),
            r#"unknown op "shout""#,
        )
        .await;
        expect(Message::text(r#"{"op":"subscribe"}"#), "missing topic").await;
        expect(
            Message::text(r#"{"op":"subscribe","topic":["t"]}"#),
            "topic must be a string",
        )
        .await;
        expect(
            Message::text(r#"{"op":"subscribe","topic":""}"#),
            "invalid topic",
        )
        .await;
        let long = "t".repeat(129);
        expect(
            Message::text(json!({"op": "subscribe", "topic": long}).to_string()),
            "invalid topic",
        )
        .await;
        expect(
            Message::text(r#"{"op":"subscribe","topic":"new\nline"}"#),
            "invalid topic",
        )
        .await;
        expect(
            Message::text(r#"{"op":"publish","topic":"t"}"#),
            "missing data",
        )
        .await;
        expect(
            Message::binary(b"{}".to_vec()),
            "binary messages are not supported",
        )
        .await;

        // Still open, and still working: 128 bytes is a valid topic.
        let longest = "t".repeat(128);
        subscribe(&mut ws, &longest).await;
        send_json(
            &mut ws,
            json!({"op": "publish", "topic": longest, "data": null}),
        )
        .await;
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"op": "message", "topic": longest, "data": null})
        );
        close(ws).await;
    });
    assert!(server.shutdown().is_clean());
}

#[test]
fn pubsub_options_restrict_topics_publishing_and_subscriptions() {
    let server = server(
        &[],
        &[],
        &[
            ("topics", "chat.*, news"),
            ("allow_publish", "false"),
            ("max_subscriptions", "2"),
        ],
    );
    run(async {
        let mut ws = connect(server.addr(), "/pubsub").await;
        for refused in ["admin", "chat", "newsroom"] {
            assert_eq!(
                ask(&mut ws, json!({"op": "subscribe", "topic": refused})).await,
                error(&format!("topic {refused:?} is not allowed"))
            );
            assert_eq!(
                ask(&mut ws, json!({"op": "presence", "topic": refused})).await,
                error(&format!("topic {refused:?} is not allowed"))
            );
        }
        subscribe(&mut ws, "chat.lobby").await;
        subscribe(&mut ws, "news").await;
        assert_eq!(
            ask(&mut ws, json!({"op": "subscribe", "topic": "chat.other"})).await,
            error("too many subscriptions (at most 2)")
        );
        // Subscribing again to one of the two is not a third.
        subscribe(&mut ws, "news").await;
        assert_eq!(
            ask(
                &mut ws,
                json!({"op": "publish", "topic": "chat.lobby", "data": 1})
            )
            .await,
            error("publishing is not allowed")
        );
        // The server may still publish to them.
        server
            .handle
            .publish("chat.lobby", Message::text("from the server"))
            .unwrap();
        assert_eq!(next(&mut ws).await, Message::text("from the server"));
        // After leaving one, there is room for another.
        assert_eq!(
            ask(&mut ws, json!({"op": "unsubscribe", "topic": "news"})).await,
            json!({"op": "unsubscribed", "topic": "news"})
        );
        subscribe(&mut ws, "chat.other").await;
        close(ws).await;
    });
    assert!(server.shutdown().is_clean());
}

#[test]
fn pubsub_max_subscriptions_never_exceeds_the_vhost_limit() {
    let p = options(&[("max_subscriptions", "100")]);
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol_with_options(Pubsub::from_options(&p).unwrap(), p)
        .mount(Mount::websocket("/pubsub", ["pubsub"]))
        .limits(wsgate::Limits::default().max_subscriptions(1))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    run(async {
        let mut ws = connect(server.addr(), "/pubsub").await;
        subscribe(&mut ws, "one").await;
        assert_eq!(
            ask(&mut ws, json!({"op": "subscribe", "topic": "two"})).await,
            error("too many subscriptions (at most 1)")
        );
        close(ws).await;
    });
    assert!(server.shutdown().is_clean());
}

// ---- configuration file ----

#[cfg(feature = "toml-config")]
#[test]
fn the_built_in_protocols_are_mounted_from_the_config_file_with_their_options() {
    let text = r#"
[[vhost]]
name = "t"
listen = ["127.0.0.1:0"]

[vhost.options.broadcast]
echo_self = true

[vhost.options.increment]
interval_ms = 20

[vhost.options.pubsub]
topics = "public.*"
max_subscriptions = 1
allow_publish = true

[[vhost.mount]]
path = "/broadcast"
protocol = "broadcast"

[[vhost.mount]]
path = "/increment"
protocol = "increment"

[[vhost.mount]]
path = "/pubsub"
protocol = "pubsub"
"#;
    let config = wsgate::load_toml(text, &wsgate::ProtocolRegistry::builtin()).unwrap();
    let server = Server::start(config);
    let addr = server.addr();
    run(async {
        let mut b = connect(addr, "/broadcast").await;
        b.send(Message::text("me too")).await.unwrap();
        assert_eq!(next(&mut b).await, Message::text("me too"));

        let mut i = connect(addr, "/increment").await;
        let started = Instant::now();
        for expected in 0..=5 {
            assert_eq!(value(&mut i).await, expected);
        }
        assert!(started.elapsed() < Duration::from_secs(2));

        let mut p = connect(addr, "/pubsub").await;
        assert_eq!(
            ask(&mut p, json!({"op": "subscribe", "topic": "private"})).await,
            error(r#"topic "private" is not allowed"#)
        );
        subscribe(&mut p, "public.a").await;
        assert_eq!(
            ask(&mut p, json!({"op": "subscribe", "topic": "public.b"})).await,
            error("too many subscriptions (at most 1)")
        );
        for ws in [b, i, p] {
            close(ws).await;
        }
    });
    assert!(server.shutdown().is_clean());
}

#[cfg(feature = "toml-config")]
#[test]
fn bad_option_values_are_config_errors_that_name_the_option() {
    let config = |protocol: &str, option: &str| {
        format!(
            r#"
[[vhost]]
name = "t"
listen = ["127.0.0.1:0"]

[vhost.options.{protocol}]
{option}

[[vhost.mount]]
path = "/x"
protocol = "{protocol}"
"#
        )
    };
    for (protocol, option, named) in [
        ("broadcast", "echo_self = \"yes\"", "echo_self: "),
        ("broadcast", "echo = true", "unknown option \"echo\""),
        ("increment", "interval_ms = 5", "interval_ms: "),
        ("increment", "interval_ms = 60001", "interval_ms: "),
        ("increment", "interval_ms = \"fast\"", "interval_ms: "),
        ("pubsub", "topics = \"a*b\"", "topics: "),
        ("pubsub", "topics = \"a,,b\"", "topics: "),
        ("pubsub", "max_subscriptions = -1", "max_subscriptions: "),
        ("pubsub", "allow_publish = \"sometimes\"", "allow_publish: "),
    ] {
        let text = config(protocol, option);
        let err = wsgate::load_toml(&text, &wsgate::ProtocolRegistry::builtin()).unwrap_err();
        assert_eq!(
            err.key,
            format!("vhost.t.options.{protocol}"),
            "{option}: {err}"
        );
        assert!(err.reason.starts_with(named), "{option}: {err}");
        assert!(err.line.is_some(), "{option}: {err}");
    }
}
