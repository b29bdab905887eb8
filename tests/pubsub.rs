//! Topics over real sockets: four publisher threads reach a thousand
//! subscribers, every message in order per publisher; presence names the
//! subscribers; a topic lives from its first subscriber to its last; and a
//! subscriber that never reads costs the others nothing while the vhost's
//! overflow policy closes it (close-1008) or drops its oldest messages,
//! counting them (drop-oldest).
//!
//! Each test runs alone (`support::serial`), so that the delivery rates and
//! the thousand connections measure wsgate rather than the other tests.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_io::Async;
use event_listener::{Event, Listener};
use futures_util::StreamExt;
use futures_util::future::join_all;
use support::{LIMIT, Server, Ws, block_on_timeout, connect, read_to_end, run, wait_until};
use wsgate::{
    CloseCode, Config, Limits, Message, Mount, OverflowPolicy, Protocol, Reject, Request,
    SessionHandle, VhostConfig,
};

/// Subscribes every session to the topic named by its path below `/t/` (or
/// `/slow/`), and hands the test every session's handle.
struct Feed {
    sessions: Arc<Mutex<Vec<SessionHandle>>>,
}

impl Protocol for Feed {
    type State = ();

    fn name(&self) -> &str {
        "feed"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        let topic = session.path().rsplit('/').next().unwrap_or_default();
        session
            .subscribe(topic)
            .map_err(|e| Reject::new(500, e.to_string()))?;
        self.sessions.lock().unwrap().push(session.clone());
        Ok(())
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}
}

/// A server whose `/t/TOPIC` and `/slow/TOPIC` sessions subscribe to TOPIC.
fn feed_server(limits: Limits) -> (Server, Arc<Mutex<Vec<SessionHandle>>>) {
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Feed {
            sessions: sessions.clone(),
        })
        .mount(Mount::websocket("/t", ["feed"]).prefix(true))
        .mount(Mount::websocket("/slow", ["feed"]).prefix(true))
        .limits(limits)
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    (server, sessions)
}

/// Opens `n` WebSockets to `path`, `BATCH` handshakes at a time.
async fn connect_many(addr: SocketAddr, path: &str, n: usize) -> Vec<Ws> {
    const BATCH: usize = 50;
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = BATCH.min(n - clients.len());
        clients.extend(join_all((0..batch).map(|_| connect(addr, path))).await);
    }
    clients
}

fn presence_count(server: &Server, topic: &str) -> usize {
    server.handle.presence(topic).unwrap().count
}

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 200;
const SUBSCRIBERS: usize = 1000;
const CLIENT_THREADS: usize = 4;

#[test]
fn four_publisher_threads_reach_a_thousand_subscribers_in_order() {
    let _alone = support::serial();
    let (server, sessions) = feed_server(Limits::default());
    let addr = server.addr();
    let started = Instant::now();

    // The subscribers: a few client threads, each with many connections.
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            thread::spawn(move || {
                block_on_timeout(LIMIT * 2, async move {
                    let clients = connect_many(addr, "/t/feed", SUBSCRIBERS / CLIENT_THREADS).await;
                    join_all(clients.into_iter().map(receive_all_in_order)).await
                })
            })
        })
        .collect();
    wait_until(LIMIT, "every subscriber subscribed", || {
        presence_count(&server, "feed") == SUBSCRIBERS
    });
    let connected = started.elapsed();

    // Presence names exactly the sessions the protocol subscribed.
    let presence = server.handle.presence("feed").unwrap();
    assert_eq!(presence.count, SUBSCRIBERS);
    let ids: HashSet<_> = presence.sessions.iter().copied().collect();
    let opened: HashSet<_> = sessions.lock().unwrap().iter().map(|s| s.id()).collect();
    assert_eq!(ids.len(), SUBSCRIBERS, "presence lists a session twice");
    assert_eq!(ids, opened);
    assert_eq!(server.handle.topics().unwrap(), ["feed"]);

    let publishing = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let handle = server.handle.clone();
            thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    let published = handle
                        .publish("feed", Message::text(format!("{p}:{i}")))
                        .unwrap();
                    assert_eq!(published.delivered, SUBSCRIBERS, "{published:?}");
                    assert_eq!(published.missed, 0, "{published:?}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().expect("publisher panicked");
    }
    let mut closed = 0;
    for c in clients {
        let endings = c.join().expect("client thread panicked");
        closed += endings.len();
    }
    assert_eq!(closed, SUBSCRIBERS);
    eprintln!(
        "{SUBSCRIBERS} subscribers connected in {connected:.2?}; {} messages delivered in {:.2?}",
        SUBSCRIBERS * PUBLISHERS * PER_PUBLISHER,
        publishing.elapsed()
    );

    // The clients have closed: the topic went with its last subscriber.
    wait_until(LIMIT, "every subscriber gone", || {
        server.handle.stats().unwrap().sessions_open == 0
    });
    assert_eq!(server.handle.topics().unwrap(), Vec::<String>::new());
    assert_eq!(presence_count(&server, "feed"), 0);
    let stats = server.handle.stats().unwrap();
    assert_eq!(stats.published, (PUBLISHERS * PER_PUBLISHER) as u64);
    assert_eq!(stats.dropped, 0);
    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
}

/// Reads `p:i` messages until every publisher's last one arrived, checking
/// that each publisher's come in order, then closes the connection.
async fn receive_all_in_order(mut ws: Ws) {
    let mut next = [0usize; PUBLISHERS];
    while next.iter().any(|&n| n < PER_PUBLISHER) {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a message, got {other:?} at {next:?}"),
        };
        let (p, i) = text
            .split_once(':')
            .and_then(|(p, i)| Some((p.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("not a numbered message: {text:?}"));
        assert_eq!(i, next[p], "publisher {p}'s messages out of order");
        next[p] += 1;
    }
    ws.close(None).await.expect("close");
    let ending = read_to_end(&mut ws).await;
    assert!(ending.error.is_none(), "{ending:?}");
}

#[test]
fn a_topic_lives_from_its_first_subscriber_to_its_last() {
    let _alone = support::serial();
    let (server, _sessions) = feed_server(Limits::default());
    run(async {
        assert!(server.handle.topics().unwrap().is_empty());
        let mut a = connect(server.addr(), "/t/room").await;
        wait_until(LIMIT, "first subscriber", || {
            presence_count(&server, "room") == 1
        });
        assert_eq!(server.handle.topics().unwrap(), ["room"]);
        let mut b = connect(server.addr(), "/t/room").await;
        let mut other = connect(server.addr(), "/t/other").await;
        wait_until(LIMIT, "three subscribers", || {
            presence_count(&server, "room") == 2 && presence_count(&server, "other") == 1
        });
        assert_eq!(server.handle.topics().unwrap(), ["other", "room"]);

        a.close(None).await.unwrap();
        read_to_end(&mut a).await;
        wait_until(LIMIT, "first subscriber gone", || {
            presence_count(&server, "room") == 1
        });
        assert_eq!(server.handle.topics().unwrap(), ["other", "room"]);
        // The one left still gets what is published.
        let p = server
            .handle
            .publish("room", Message::text("still here"))
            .unwrap();
        assert_eq!((p.delivered, p.missed), (1, 0));
        assert_eq!(
            b.next().await.unwrap().unwrap(),
            Message::text("still here")
        );

        b.close(None).await.unwrap();
        read_to_end(&mut b).await;
        wait_until(LIMIT, "last subscriber gone", || {
            !server.handle.topics().unwrap().contains(&"room".to_owned())
        });
        assert_eq!(presence_count(&server, "room"), 0);
        let p = server
            .handle
            .publish("room", Message::text("nobody"))
            .unwrap();
        assert_eq!((p.delivered, p.missed), (0, 0));
        assert_eq!(server.handle.topics().unwrap(), ["other"]);
        other.close(None).await.unwrap();
        read_to_end(&mut other).await;
    });
    wait_until(LIMIT, "all gone", || {
        server.handle.topics().unwrap().is_empty()
    });
    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
}

/// Subscribers that read as fast as they can, fed by a publisher that keeps
/// at most `WINDOW` messages ahead of the slowest of them, so their queues
/// never fill: whatever the policy, they receive everything. A subscriber
/// outside that set (one that never reads) does not hold the publisher back.
struct Readers {
    /// Per reader: how many messages it has received, in order.
    progress: Arc<Vec<AtomicUsize>>,
    /// Notified whenever a reader makes progress.
    advanced: Arc<Event>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Messages the publisher may be ahead of the slowest reader.
const WINDOW: usize = 8;

/// The size of one slow-subscriber test message.
const PAYLOAD: usize = 8 * 1024;

impl Readers {
    /// Connects `n` readers to `/t/TOPIC` from `threads` threads.
    fn start(server: &Server, topic: &str, n: usize, threads: usize) -> Self {
        let progress: Arc<Vec<AtomicUsize>> =
            Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let advanced = Arc::new(Event::new());
        let per = n.div_ceil(threads);
        let handles = (0..threads)
            .map(|t| {
                let (addr, path) = (server.addr(), format!("/t/{topic}"));
                let (progress, advanced) = (progress.clone(), advanced.clone());
                thread::spawn(move || {
                    let mine: Vec<usize> = (t * per..((t + 1) * per).min(n)).collect();
                    block_on_timeout(LIMIT * 3, async {
                        let clients = connect_many(addr, &path, mine.len()).await;
                        join_all(
                            clients
                                .into_iter()
                                .zip(mine)
                                .map(|(ws, i)| read_sequence(ws, &progress[i], &advanced)),
                        )
                        .await;
                    });
                })
            })
            .collect();
        wait_until(LIMIT, "every reader subscribed", || {
            presence_count(server, topic) == n
        });
        Self {
            progress,
            advanced,
            threads: handles,
        }
    }

    fn slowest(&self) -> usize {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Blocks until every reader has received `n` messages.
    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let listener = self.advanced.listen();
            if self.slowest() >= n {
                return;
            }
            assert!(
                listener.wait_deadline(deadline).is_some(),
                "readers stalled at {} of {n}",
                self.slowest()
            );
        }
    }

    /// Publishes messages `from..to` to `topic`, paced by the readers, and
    /// returns the readers' delivery rate in messages per second.
    fn publish_paced(&self, server: &Server, topic: &str, from: usize, to: usize) -> f64 {
        let padding = "x".repeat(PAYLOAD - 8);
        let started = Instant::now();
        for k in from..to {
            self.wait_for(k.saturating_sub(WINDOW));
            server
                .handle
                .publish(topic, Message::text(format!("{k:07}:{padding}")))
                .unwrap();
        }
        self.wait_for(to);
        let elapsed = started.elapsed();
        ((to - from) * self.progress.len()) as f64 / elapsed.as_secs_f64()
    }

    /// Waits for the reader threads (after the server closed their sessions).
    fn join(self) {
        for t in self.threads {
            t.join().expect("reader thread panicked");
        }
    }
}

/// Reads `k:…` messages, checking that `k` counts up from 0 without a gap,
/// until the server closes the session with 1001 at shutdown.
async fn read_sequence(mut ws: Ws, progress: &AtomicUsize, advanced: &Event) {
    let mut next = 0usize;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let k: usize = t[..7].parse().expect("numbered message");
                assert_eq!(k, next, "a reader lost or reordered a message");
                next += 1;
                progress.store(next, Ordering::Release);
                advanced.notify(usize::MAX);
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| f.code);
                assert_eq!(code, Some(CloseCode::Away), "reader closed");
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Some(Ok(_)) => {}
            other => panic!("reader: {other:?}"),
        }
    }
}

/// A WebSocket client whose socket has a tiny receive buffer and that is
/// never read: the server's writes to it stall almost at once.
fn never_reading_subscriber(addr: SocketAddr, path: &str) -> Ws {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let tcp = Async::new(TcpStream::from(socket)).unwrap();
    run(async {
        let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
            .await
            .expect("handshake");
        ws
    })
}

/// Limits for the slow-subscriber tests: a queue that holds a few hundred
/// test messages, and time enough for the test to read the slow one's close.
fn slow_limits(overflow: OverflowPolicy) -> Limits {
    Limits::default()
        .max_queue_bytes(256 * 1024)
        .overflow(overflow)
        .close_timeout(Duration::from_secs(60))
}

/// Readers in the slow-subscriber tests.
const READERS: usize = 20;

/// Messages of the unmeasured first run.
const WARMUP: usize = 200;

/// The slow subscriber is sent 8 MiB: twice what the kernel may buffer for
/// its socket (`tcp_wmem`'s usual maximum of 4 MiB, which loopback's send
/// buffer autotuning reaches) plus its queue.
const TO_SLOW: usize = 1000;

/// Opens a subscriber at `/slow/{topic}` that never reads, next to readers
/// of `/t/{topic}` (already subscribed).
fn slow_subscriber(
    server: &Server,
    sessions: &Mutex<Vec<SessionHandle>>,
    topic: &str,
    readers: usize,
) -> (Ws, SessionHandle) {
    let slow = never_reading_subscriber(server.addr(), &format!("/slow/{topic}"));
    wait_until(LIMIT, "the slow subscriber subscribed", || {
        presence_count(server, topic) == readers + 1
    });
    let session = sessions
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.path() == format!("/slow/{topic}"))
        .cloned()
        .expect("the slow session");
    (slow, session)
}

#[test]
fn a_subscriber_that_never_reads_is_closed_1008_and_the_others_get_everything() {
    let _alone = support::serial();
    let (server, sessions) = feed_server(slow_limits(OverflowPolicy::Close(CloseCode::Policy)));
    let readers = Readers::start(&server, "feed", READERS, 2);
    let (mut slow, slow_session) = slow_subscriber(&server, &sessions, "feed", READERS);
    readers.publish_paced(&server, "feed", 0, TO_SLOW);

    // Its queue filled: the policy began its close. The others got every
    // message (their readers check it).
    assert!(
        !slow_session.is_open(),
        "the slow subscriber's queue never filled"
    );
    assert_eq!(slow_session.dropped(), 0, "close-1008 drops nothing");
    assert_eq!(
        presence_count(&server, "feed"),
        READERS + 1,
        "a closing session stays subscribed until it ends"
    );
    // A publish skips it now, without waiting for it.
    let published = server
        .handle
        .publish("feed", Message::text(format!("{TO_SLOW:07}:")))
        .unwrap();
    assert_eq!((published.delivered, published.missed), (READERS, 1));

    // When it finally reads, it finds what was queued before the overflow,
    // in order, then the Close frame with 1008.
    let ending = run(read_to_end(&mut slow));
    ending.assert_closed_with(1008);
    assert!(!ending.messages.is_empty() && ending.messages.len() < TO_SLOW);
    eprintln!(
        "close-1008: the slow subscriber got {} of {TO_SLOW} messages ({:.1} MiB) before \
         Close 1008",
        ending.messages.len(),
        (ending.messages.len() * PAYLOAD) as f64 / f64::from(1 << 20)
    );
    for (k, m) in ending.messages.iter().enumerate() {
        let Message::Text(t) = m else { panic!("{m:?}") };
        assert_eq!(t[..7].parse::<usize>().unwrap(), k);
    }
    wait_until(LIMIT, "the slow session ended", || {
        presence_count(&server, "feed") == READERS
    });
    // The others carry on.
    readers.publish_paced(&server, "feed", TO_SLOW + 1, TO_SLOW + 10);

    let stats = server.handle.stats().unwrap();
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.close_codes.get(&1008), Some(&1), "{stats:?}");
    let report = server.shutdown();
    readers.join();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.clean, READERS, "{report}");
}

#[test]
fn a_subscriber_that_never_reads_does_not_slow_the_others_and_loses_its_oldest_under_drop_oldest() {
    let _alone = support::serial();
    /// Pairs of measured segments, one without the slow subscriber and one
    /// with it, alternating so that a drift in the machine's load affects
    /// both alike; the best segment of each kind counts, so that a burst of
    /// other work does not decide the comparison.
    const PAIRS: usize = 4;
    const SEGMENT: usize = TO_SLOW / PAIRS;

    let (server, sessions) = feed_server(slow_limits(OverflowPolicy::DropOldest));
    let readers = Readers::start(&server, "rate", READERS, 2);
    let (mut slow, slow_session) = slow_subscriber(&server, &sessions, "rate", READERS);
    // Not subscribed during the warm-up and the segments without it, it
    // stays connected, with a full queue once the first segments with it
    // have filled its socket.
    assert!(slow_session.unsubscribe("rate"));
    // A first, unmeasured run warms up what the first messages pay for
    // (allocations, TCP windows), so that the measured ones compare.
    readers.publish_paced(&server, "rate", 0, WARMUP);
    let (mut without, mut with) = (0.0f64, 0.0f64);
    let mut sent_to_slow = Vec::new();
    let mut k = WARMUP;
    for _ in 0..PAIRS {
        without = without.max(readers.publish_paced(&server, "rate", k, k + SEGMENT));
        k += SEGMENT;
        assert!(slow_session.subscribe("rate").unwrap());
        with = with.max(readers.publish_paced(&server, "rate", k, k + SEGMENT));
        sent_to_slow.extend(k..k + SEGMENT);
        k += SEGMENT;
        assert!(slow_session.unsubscribe("rate"));
    }
    eprintln!(
        "drop-oldest: delivery to {READERS} readers of {PAYLOAD}-byte messages, best of \
         {PAIRS} x {SEGMENT}: {without:.0} msg/s without the slow subscriber, {with:.0} msg/s \
         with it ({:.0} %)",
        100.0 * with / without
    );
    assert!(
        with >= 0.5 * without,
        "the slow subscriber slowed the others: {with:.0} msg/s against {without:.0} msg/s"
    );

    let dropped = usize::try_from(slow_session.dropped()).unwrap();
    assert!(dropped > 0, "the slow subscriber's queue never filled");
    assert!(slow_session.is_open(), "drop-oldest keeps the session open");
    // Only the slow one lost anything, and every loss was counted.
    assert_eq!(server.handle.stats().unwrap().dropped, dropped as u64);

    // Reading at last, it gets the newest messages, in order, up to the
    // last one published to it: exactly the ones that were not dropped.
    let last = *sent_to_slow.last().unwrap();
    let received = run(async {
        let mut received = Vec::new();
        while received.last() != Some(&last) {
            match slow.next().await {
                Some(Ok(Message::Text(t))) => received.push(t[..7].parse::<usize>().unwrap()),
                Some(Ok(_)) => {}
                other => panic!("slow subscriber: {other:?}"),
            }
        }
        slow.close(None).await.unwrap();
        read_to_end(&mut slow).await;
        received
    });
    assert!(received.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(
        received
            .iter()
            .all(|k| sent_to_slow.binary_search(k).is_ok()),
        "received a message published while unsubscribed"
    );
    assert_eq!(
        received.len() + dropped,
        sent_to_slow.len(),
        "a message neither delivered nor counted"
    );
    assert_eq!(
        received[0], sent_to_slow[0],
        "the first messages went out before the queue filled"
    );

    let report = server.shutdown();
    readers.join();
    assert!(report.is_clean(), "{report}");
}
