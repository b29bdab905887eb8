//! `/metrics` counts exactly the traffic a test generates (sessions,
//! messages and bytes each way, refused requests by status, sessions ended by
//! close code), `ContextHandle::stats()` agrees with it, and the binary
//! publishes its counters as JSON to the topic `stats`.

mod support;

use std::collections::BTreeMap;

use async_tungstenite::tungstenite::protocol::CloseFrame;
use futures_util::StreamExt;
use support::Server;
use wsgate::metrics::{MetricsHandler, Stats};
use wsgate::{CloseCode, Config, Limits, Message, Mount, VhostConfig, protocols::Echo};

/// The samples of a Prometheus text page: `name{labels}` → value.
fn samples(page: &str) -> BTreeMap<String, u64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect(l);
            (name.to_owned(), value.parse().expect(l))
        })
        .collect()
}

/// GET /metrics on a connection of its own.
fn scrape(server: &Server) -> BTreeMap<String, u64> {
    let reply = support::raw_http(
        server.addr(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    samples(&reply.body)
}

/// Waits until `stats` says `what`.
fn wait_stats(server: &Server, what: &str, cond: impl Fn(&Stats) -> bool) {
    support::wait_until(support::LIMIT, what, || {
        server.handle.stats().is_ok_and(|s| cond(&s))
    });
}

fn server() -> Server {
    let limits = Limits::default()
        .max_message_size(1024)
        .max_frame_size(1024);
    let vhost = VhostConfig::builder("m")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .mount(Mount::http("/metrics", MetricsHandler))
        .limits(limits)
        .build()
        .unwrap();
    Server::start(Config::builder().vhost(vhost).build().unwrap())
}

fn close(code: u16) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "done".into(),
    })
}

#[test]
fn metrics_match_the_generated_traffic_exactly() {
    let server = server();
    let addr = server.addr();

    // Nothing yet: every counter is there, at zero.
    let before = scrape(&server);
    assert_eq!(before["wsgate_sessions_total"], 0);
    assert_eq!(before["wsgate_messages_in_total"], 0);
    assert!(
        !before
            .keys()
            .any(|k| k.starts_with("wsgate_handshakes_rejected_total{"))
    );

    // 3 sessions; session i sends a text of 10·(i+1) bytes and a binary of
    // 100 bytes, and echo sends both back: 6 messages and 360 bytes each way.
    let clients = support::run(async move {
        let mut clients = Vec::new();
        for i in 0..3usize {
            let mut ws = support::connect(addr, "/echo").await;
            let text = "t".repeat(10 * (i + 1));
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
            ws.send(Message::binary(vec![7u8; 100])).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::binary(vec![7u8; 100])
            );
            clients.push(ws);
        }
        clients
    });
    // The counters are updated after the write that the client has just
    // read: wait for them to settle, then demand exact values.
    wait_stats(&server, "6 messages out", |s| s.messages_out == 6);
    let open = scrape(&server);
    assert_eq!(open["wsgate_sessions_open"], 3);
    assert_eq!(open["wsgate_sessions_total"], 3);
    assert_eq!(
        open["wsgate_connections_open"], 4,
        "3 sessions and the scrape"
    );
    assert_eq!(open["wsgate_messages_in_total"], 6);
    assert_eq!(open["wsgate_bytes_in_total"], 360);
    assert_eq!(open["wsgate_messages_out_total"], 6);
    assert_eq!(open["wsgate_bytes_out_total"], 360);

    // Refused requests with known statuses: 2 × 404 (no such mount), 2 × 426
    // (a plain GET to a WebSocket endpoint, a wrong WebSocket version) and
    // 1 × 400 (a header line without a colon).
    for _ in 0..2 {
        let r = support::raw_http(addr, &support::upgrade_request("/nope", ""));
        assert_eq!(r.status, 404);
    }
    let r = support::raw_http(
        addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 426);
    let wrong_version = String::from_utf8(support::upgrade_request("/echo", ""))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    let r = support::raw_http(addr, wrong_version.as_bytes());
    assert_eq!(r.status, 426);
    let r = support::raw_http(
        addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    );
    assert_eq!(r.status, 400);

    // Endings with known codes: two clients close with 1000, one with 4000,
    // and a fourth session is failed by the server with 1009 (a message over
    // the 1 KiB limit, which counts as no message at all).
    support::run(async move {
        for (ws, code) in clients.into_iter().zip([1000, 1000, 4000]) {
            let mut ws = ws;
            ws.close(close(code)).await.unwrap();
            let ending = support::read_to_end(&mut ws).await;
            assert_eq!(ending.close_code(), Some(code), "{ending:?}");
        }
        let mut big = support::connect(addr, "/echo").await;
        big.send(Message::binary(vec![0u8; 2048])).await.unwrap();
        support::read_to_end(&mut big)
            .await
            .assert_closed_with(1009);
    });
    wait_stats(&server, "4 sessions ended, 0 connections", |s| {
        s.close_codes.values().sum::<u64>() == 4 && s.connections == 0
    });

    let m = scrape(&server);
    let expected: &[(&str, u64)] = &[
        ("wsgate_sessions_open", 0),
        ("wsgate_sessions_total", 4),
        ("wsgate_connections_open", 1),
        ("wsgate_thread_connections_open{thread=\"0\"}", 1),
        ("wsgate_handshakes_rejected_total{status=\"400\"}", 1),
        ("wsgate_handshakes_rejected_total{status=\"404\"}", 2),
        ("wsgate_handshakes_rejected_total{status=\"426\"}", 2),
        ("wsgate_messages_in_total", 6),
        ("wsgate_bytes_in_total", 360),
        ("wsgate_messages_out_total", 6),
        ("wsgate_bytes_out_total", 360),
        ("wsgate_dropped_total", 0),
        ("wsgate_published_total", 0),
        ("wsgate_topics", 0),
        ("wsgate_sessions_closed_total{code=\"1000\"}", 2),
        ("wsgate_sessions_closed_total{code=\"1009\"}", 1),
        ("wsgate_sessions_closed_total{code=\"4000\"}", 1),
        ("wsgate_drain_sessions_total{result=\"clean\"}", 0),
        ("wsgate_drain_sessions_total{result=\"aborted\"}", 0),
        ("wsgate_drain_sessions_total{result=\"forced\"}", 0),
        // The memory budget (the default, 512 MiB): nothing held once the
        // sessions are gone, never under pressure.
        ("wsgate_memory_budget_bytes", 512 << 20),
        ("wsgate_memory_pressure", 0),
        ("wsgate_buffered_bytes{kind=\"inbound\"}", 0),
        ("wsgate_buffered_bytes{kind=\"outbound\"}", 0),
        ("wsgate_buffered_bytes{kind=\"compression\"}", 0),
        ("wsgate_budget_paused_total", 0),
        ("wsgate_budget_shed_total", 0),
        ("wsgate_budget_refused_total", 0),
        // The in-process broker: always ready, nothing across nodes.
        ("wsgate_broker_ready", 1),
        ("wsgate_broker_errors_total", 0),
        ("wsgate_broker_reconnects_total", 0),
        ("wsgate_broker_messages_total{direction=\"out\"}", 0),
        ("wsgate_broker_messages_total{direction=\"in\"}", 0),
    ];
    let expected: BTreeMap<String, u64> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    assert_eq!(m, expected, "every sample, and no other");

    // The same numbers through the API (the scrape's connection aside).
    wait_stats(&server, "the scrape's connection closed", |s| {
        s.connections == 0
    });
    let s = server.handle.stats().unwrap();
    assert_eq!(s.sessions_open, m["wsgate_sessions_open"]);
    assert_eq!(s.sessions_total, m["wsgate_sessions_total"]);
    assert_eq!(s.connections, 0);
    assert_eq!(s.connections_per_thread, [0]);
    assert_eq!(s.messages_in, m["wsgate_messages_in_total"]);
    assert_eq!(s.bytes_in, m["wsgate_bytes_in_total"]);
    assert_eq!(s.messages_out, m["wsgate_messages_out_total"]);
    assert_eq!(s.bytes_out, m["wsgate_bytes_out_total"]);
    assert_eq!(s.dropped, 0);
    assert_eq!(s.published, 0);
    assert_eq!(s.topics, 0);
    assert_eq!(s.rejected, BTreeMap::from([(400, 1), (404, 2), (426, 2)]));
    assert_eq!(
        s.close_codes,
        BTreeMap::from([(1000, 2), (1009, 1), (4000, 1)])
    );
    assert_eq!((s.drain_clean, s.drain_aborted, s.drain_forced), (0, 0, 0));
    // And the API's own Prometheus rendering is the page that was served,
    // but for the scrape's own connection.
    let mut page = samples(&s.prometheus());
    page.insert("wsgate_connections_open".to_owned(), 1);
    page.insert("wsgate_thread_connections_open{thread=\"0\"}".to_owned(), 1);
    assert_eq!(page, m);

    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
}

/// The binary publishes `{"op":"message","topic":"stats","data":{...}}` to
/// subscribers of `stats` every `--stats-interval`, through the same topics
/// as the `pubsub` protocol.
#[cfg(feature = "cli")]
#[test]
fn the_binary_publishes_its_counters_to_the_stats_topic() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", "127.0.0.1:0", "--stats-interval", "100ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsgate");
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr: std::net::SocketAddr = first
        .trim()
        .strip_prefix("wsgate listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();

    support::run(async move {
        // Some traffic of our own first, so the counters are not all zero.
        let mut echo = support::connect(addr, "/echo").await;
        echo.send(Message::text("x")).await.unwrap();
        assert_eq!(echo.next().await.unwrap().unwrap(), Message::text("x"));

        let mut ws = support::connect(addr, "/pubsub").await;
        ws.send(Message::text(r#"{"op":"subscribe","topic":"stats"}"#))
            .await
            .unwrap();
        let mut snapshots = Vec::new();
        while snapshots.len() < 2 {
            let m = ws.next().await.expect("stream open").expect("message");
            let Message::Text(text) = m else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            match v["op"].as_str() {
                Some("subscribed") => assert_eq!(v["topic"], "stats"),
                Some("message") => {
                    assert_eq!(v["topic"], "stats", "{v}");
                    snapshots.push(v["data"].clone());
                }
                _ => panic!("unexpected {v}"),
            }
        }
        for data in &snapshots {
            let fields = data.as_object().expect("an object");
            let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "connections",
                    "dropped",
                    "messages_in",
                    "messages_out",
                    "messages_per_sec",
                    "published",
                    "sessions"
                ],
                "{data}"
            );
            assert!(fields.values().all(serde_json::Value::is_number), "{data}");
            // The echo session and the subscriber.
            assert_eq!(data["sessions"], 2, "{data}");
            assert_eq!(data["connections"], 2, "{data}");
            // The echo and the subscribe request in, at least the echo out.
            assert!(data["messages_in"].as_u64().unwrap() >= 2, "{data}");
            assert!(data["messages_out"].as_u64().unwrap() >= 1, "{data}");
            assert!(data["messages_per_sec"].as_f64().unwrap() >= 0.0, "{data}");
        }
        // Each snapshot counts the publishes before it: the second one sees
        // at least the first.
        assert!(
            snapshots[1]["published"].as_u64() > snapshots[0]["published"].as_u64(),
            "{snapshots:?}"
        );
    });
}
