//! The memory budget against the two ways peers can make a gateway hold
//! memory: many connections each leaving a big message unfinished (inbound),
//! and slow readers on a busy topic (outbound). The gateway stays within its
//! budget, sheds the heaviest peers with 1013, refuses handshakes (503) only
//! while under pressure, and well-behaved clients keep being served.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use futures_util::StreamExt;
use support::{LIMIT, Server, client_frame, connect, raw_http, serial, upgrade_request};
use wsgate::{Config, Limits, Message, Mount, OverflowPolicy, VhostConfig, protocols::Pubsub};

const MIB: usize = 1 << 20;

/// Against the binary (its RSS is the gateway's alone).
#[cfg(feature = "cli")]
mod inbound {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::MIB;
    use crate::support::gateway::Gateway;
    use crate::support::{
        self, client_frame, frame_head, raw_http, raw_ws, serial, server_frames, upgrade_request,
    };

    /// One echo round trip on a raw client, within [`LIMIT`].
    fn echo_round_trip(s: &mut TcpStream, n: u32) {
        let payload = n.to_be_bytes();
        s.write_all(&client_frame(0x82, &payload)).unwrap();
        let mut answer = [0u8; 6];
        s.read_exact(&mut answer)
            .expect("the well-behaved client's echo");
        assert_eq!(&answer[..2], &[0x82, 4]);
        assert_eq!(&answer[2..], &payload);
    }

    /// A metric's value from Prometheus text (the first sample whose name and
    /// labels start with `series`).
    fn metric(text: &str, series: &str) -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    #[test]
    fn many_unfinished_messages_are_held_to_the_budget_and_the_heaviest_shed_with_1013() {
        const BUDGET: usize = 64 * MIB;
        const ATTACKERS: usize = 300;
        /// Each attacker announces a 1 MiB message and sends all of it but this.
        const HELD_BACK: usize = 10;
        /// A round of writes that moves nothing for this long means the server
        /// stopped reading every attacker (TCP pushes back).
        const STALL: Duration = Duration::from_secs(1);

        let _serial = serial();
        let dir = std::env::temp_dir().join(format!("wsgate-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                r#"
    memory_budget = "{}MiB"

    [[vhost]]
    name = "default"
    listen = ["127.0.0.1:0"]

    [vhost.limits]
    max_message_size = "1MiB"
    max_frame_size = "1MiB"
    max_sessions_per_ip = 1000

    [[vhost.mount]]
    path = "/echo"
    protocol = "echo"

    [[vhost.mount]]
    path = "/metrics"
    http = "metrics"
    "#,
                BUDGET / MIB
            ),
        )
        .unwrap();
        let gw = Gateway::start(&[
            "--config",
            config.to_str().unwrap(),
            "--threads",
            "1",
            "--stats-interval",
            "0s",
        ]);
        let addr = gw.addr;
        let rss = |field: &str| -> usize {
            let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("VmRSS/VmHWM")
                * 1024
        };

        let mut good = raw_ws(addr, "/echo");
        echo_round_trip(&mut good, 0);
        let baseline = rss("VmRSS:");

        // Every attacker: a 1 MiB binary frame announced, all but 10 bytes sent.
        let mut attackers: Vec<(TcpStream, Vec<u8>, usize, Vec<u8>)> = (0..ATTACKERS)
            .map(|_| {
                let s = raw_ws(addr, "/echo");
                s.set_nonblocking(true).unwrap();
                let mut bytes = frame_head(0x82, MIB as u64, true);
                bytes.extend(std::iter::repeat_n(0x5a_u8, MIB - HELD_BACK));
                (s, bytes, 0, Vec::new())
            })
            .collect();
        let mut last_progress = Instant::now();
        let mut rounds = 0u32;
        while last_progress.elapsed() < STALL {
            rounds += 1;
            for (s, bytes, sent, got) in &mut attackers {
                if *sent < bytes.len() {
                    let end = (*sent + 64 * 1024).min(bytes.len());
                    match s.write(&bytes[*sent..end]) {
                        Ok(n) if n > 0 => {
                            *sent += n;
                            last_progress = Instant::now();
                        }
                        _ => {}
                    }
                }
                // Whatever the server says (a Close 1013 when shed).
                let mut buf = [0u8; 256];
                if let Ok(n) = s.read(&mut buf)
                    && n > 0
                {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            // The well-behaved client is served all along.
            if rounds.is_multiple_of(8) {
                echo_round_trip(&mut good, rounds);
            }
        }
        echo_round_trip(&mut good, u32::MAX);

        let metrics = raw_http(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(metrics.status, 200);
        let held = metric(&metrics.body, "wsgate_buffered_bytes{kind=\"inbound\"}") as usize;
        let shed = metric(&metrics.body, "wsgate_budget_shed_total");
        let paused = metric(&metrics.body, "wsgate_budget_paused_total");
        assert_eq!(
            metric(&metrics.body, "wsgate_memory_budget_bytes") as usize,
            BUDGET
        );
        assert!(
            held <= BUDGET,
            "{held} bytes held against a budget of {BUDGET}"
        );
        assert!(shed > 0, "nobody was shed:\n{}", metrics.body);
        let sent: usize = attackers.iter().map(|a| a.2).sum();
        // Every shed attacker is told why: its Close 1013 arrives (the server
        // discards the rest of the attacker's input for a moment rather than
        // resetting the connection, which would destroy the Close unread).
        let told_1013 = |got: &[u8]| {
            let frames = std::panic::catch_unwind(|| server_frames(got)).unwrap_or_default();
            frames.iter().any(|f| f.close_code() == Some(1013))
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut told = 0;
        while Instant::now() < deadline {
            for (s, _, _, got) in &mut attackers {
                let mut buf = [0u8; 256];
                if let Ok(n) = s.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            told = attackers.iter().filter(|a| told_1013(&a.3)).count();
            if told as u64 >= shed {
                break;
            }
            std::thread::yield_now();
        }
        let heard = attackers.iter().filter(|a| !a.3.is_empty()).count();
        assert_eq!(
            told as u64,
            shed,
            "{told} attackers saw Close 1013, {shed} were shed ({heard} heard anything; first: {:?})\n{}",
            attackers
                .iter()
                .find(|a| !a.3.is_empty())
                .map(|a| a.3.clone()),
            metrics.body
        );
        // Once the shed sessions have let go, the pressure ends and handshakes
        // are accepted again (while the survivors stay connected).
        support::wait_until(
            Duration::from_secs(20),
            "a handshake accepted again",
            || {
                let r = raw_http(addr, &upgrade_request("/echo", ""));
                assert!(matches!(r.status, 101 | 503), "{r:?}");
                r.status == 101
            },
        );
        let peak = rss("VmHWM:");
        let growth = peak.saturating_sub(baseline);
        // The budget, plus what it does not count: the allocator's slack, the
        // per-thread read buffer, each connection's own state.
        let overhead = 32 * MIB;
        eprintln!(
            "budget: {ATTACKERS} attackers sent {:.1} MiB; held {:.1} MiB (budget {} MiB); \
             shed {shed}, {told} saw 1013, {paused} pauses; server RSS {:.1} -> peak {:.1} MiB (+{:.1})",
            sent as f64 / MIB as f64,
            held as f64 / MIB as f64,
            BUDGET / MIB,
            baseline as f64 / MIB as f64,
            peak as f64 / MIB as f64,
            growth as f64 / MIB as f64
        );
        assert!(
            growth < BUDGET + overhead,
            "the server grew by {growth} bytes against a budget of {BUDGET}"
        );
        drop(attackers);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// [`raw_ws`] on a socket whose receive buffer is set to its minimum before
/// it connects (so that the window it advertises stays small).
fn small_window_ws(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(&upgrade_request(path, "")).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    s
}

#[test]
fn slow_readers_on_a_busy_topic_meet_their_overflow_policy_at_the_budget() {
    const BUDGET: usize = 8 * MIB;
    const READERS: usize = 4;
    const MESSAGE: usize = 64 * 1024;
    let _serial = serial();
    // Each queue alone could take 6 MiB; together they would pass the budget.
    let limits = Limits::default()
        .max_queue_bytes(6 * MIB)
        .overflow(OverflowPolicy::DropNewest);
    let vhost = VhostConfig::builder("topics")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Pubsub::default())
        .protocol(wsgate::protocols::Echo)
        .mount(Mount::websocket("/pubsub", ["pubsub"]))
        .mount(Mount::websocket("/echo", ["echo"]))
        .limits(limits)
        .build()
        .unwrap();
    let config = Config::builder()
        .vhost(vhost)
        .memory_budget(Some(BUDGET))
        .build()
        .unwrap();
    let server = Server::start(config);
    let addr = server.addr();
    let handle = server.handle.clone();

    // Slow readers: subscribed, then reading nothing, with receive buffers
    // so small that the kernel cannot take the queues off the budget.
    let mut readers: Vec<TcpStream> = (0..READERS)
        .map(|_| {
            let mut s = small_window_ws(addr, "/pubsub");
            s.write_all(&client_frame(0x81, br#"{"op":"subscribe","topic":"feed"}"#))
                .unwrap();
            let mut ack = [0u8; 64];
            let n = s.read(&mut ack).unwrap();
            assert!(String::from_utf8_lossy(&ack[..n]).contains("subscribed"));
            s
        })
        .collect();
    assert_eq!(handle.presence("feed").unwrap().count, READERS);

    // A publisher that never stops until told: the kernel's buffers fill,
    // then the queues, then the budget.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let handle = handle.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let payload = bytes::Bytes::from(vec![0x61u8; MESSAGE]);
            let mut missed = 0;
            let mut published = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = handle
                    .publish("feed", Message::Binary(payload.clone()))
                    .unwrap();
                missed += p.missed;
                published += 1;
                if published % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            missed
        })
    };
    support::wait_until(LIMIT, "memory pressure", || {
        let stats = handle.stats().unwrap();
        assert!(
            stats.buffered_outbound as usize <= BUDGET,
            "{} bytes queued against a budget of {BUDGET}",
            stats.buffered_outbound
        );
        stats.memory_pressure && stats.dropped > 0
    });

    // Under pressure a new handshake is refused, with a time to come back.
    // (The kernel takes more of the queued bytes as its buffers grow, so the
    // pressure can lift for a moment between two publishes; a handshake that
    // lands in such a moment passes, which is right.)
    let refused = (0..100)
        .map(|_| raw_http(addr, &upgrade_request("/echo", "")))
        .find(|r| {
            assert!(matches!(r.status, 101 | 503), "{r:?}");
            r.status == 503
        })
        .expect("no handshake refused while the publisher held the budget");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    assert!(refused.body.contains("memory budget"), "{refused:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let missed = publisher.join().unwrap();
    assert!(missed > 0, "no publish met the budget");
    let stats = handle.stats().unwrap();
    assert!(stats.buffered_outbound as usize <= BUDGET, "{stats:?}");

    // The readers read: the queues drain, the pressure ends, handshakes pass.
    let drained = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            for s in &mut readers {
                s.set_nonblocking(true).unwrap();
            }
            support::wait_until(LIMIT, "the queues drained", || {
                for s in &mut readers {
                    match s.read(&mut buf) {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("a reader failed: {e}"),
                    }
                }
                let stats = handle.stats().unwrap();
                !stats.memory_pressure && stats.buffered_outbound < (BUDGET / 4 * 3) as u64
            });
            readers
        })
    };
    let _readers = drained.join().unwrap();
    let stats = handle.stats().unwrap();
    assert!(stats.budget_refused >= 1, "{stats:?}");
    support::run(async move {
        let mut ws = connect(addr, "/echo").await;
        ws.send(Message::text("after")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    });
    drop(server);
}

/// Sends one message bigger than the whole budget from a task the session
/// spawned at `open`.
struct BigHello;

impl wsgate::Protocol for BigHello {
    type State = ();

    fn name(&self) -> &str {
        "big-hello"
    }

    fn open(
        &self,
        _request: &wsgate::Request,
        session: &wsgate::SessionHandle,
    ) -> Result<(), wsgate::Reject> {
        let handle = session.clone();
        let _ = session.spawn(async move {
            let _ = handle.send(Message::binary(vec![7u8; 2 * MIB])).await;
        });
        Ok(())
    }

    fn message(&self, _: &mut (), _: &wsgate::SessionHandle, _: Message) {}
}

/// A waiting `send` into an empty queue is not held by the budget: like the
/// queue's own bounds, the budget lets one message go out alone (otherwise a
/// message the budget can never fit would wait for a pop that never comes).
#[test]
fn a_send_into_an_empty_queue_is_not_held_by_the_budget() {
    let vhost = VhostConfig::builder("big")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(BigHello)
        .mount(Mount::websocket("/big", ["big-hello"]))
        .limits(Limits::default().max_queue_bytes(4 * MIB))
        .build()
        .unwrap();
    let config = Config::builder()
        .vhost(vhost)
        .memory_budget(Some(MIB))
        .build()
        .unwrap();
    let server = Server::start(config);
    let addr = server.addr();
    support::run(async move {
        let mut ws = connect(addr, "/big").await;
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.len(), 2 * MIB);
    });
    drop(server);
}
