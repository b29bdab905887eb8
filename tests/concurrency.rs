//! Eight threads send to the same 100 sessions through `SessionHandle`s while
//! those sessions echo their clients: nothing is lost, duplicated or reordered
//! per sender, waiting sends survive full queues, and nothing panics.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use futures_lite::future::poll_once;
use futures_util::StreamExt;
use futures_util::future::join_all;
use support::{LIMIT, Server, Ws, block_on_timeout, connect, read_to_end, run};
use wsgate::{
    Config, Limits, Message, Mount, OverflowPolicy, Protocol, Reject, Request, SendError,
    SessionHandle, VhostConfig,
};

const SESSIONS: usize = 100;
const THREADS: usize = 8;

/// Echoes like the built-in protocol, but counts echoes the queue refused,
/// and hands every opened session's handle to the test.
struct Collect {
    handles: Arc<Mutex<Vec<SessionHandle>>>,
    echo_refused: Arc<AtomicUsize>,
}

impl Protocol for Collect {
    type State = ();

    fn name(&self) -> &str {
        "collect"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        self.handles.lock().unwrap().push(session.clone());
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        if session.try_send(message).is_err() {
            self.echo_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Setup {
    server: Server,
    clients: Vec<Ws>,
    handles: Arc<Vec<SessionHandle>>,
    echo_refused: Arc<AtomicUsize>,
}

fn start(limits: Limits) -> Setup {
    start_n(limits, SESSIONS)
}

fn start_n(limits: Limits, sessions: usize) -> Setup {
    let handles = Arc::new(Mutex::new(Vec::new()));
    let echo_refused = Arc::new(AtomicUsize::new(0));
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Collect {
            handles: handles.clone(),
            echo_refused: echo_refused.clone(),
        })
        .mount(Mount::websocket("/collect", ["collect"]))
        .limits(limits)
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr: SocketAddr = server.addr();
    let clients = run(join_all((0..sessions).map(|_| connect(addr, "/collect"))));
    // `open` runs before the 101 goes out, so every handle is in by now.
    let handles = std::mem::take(&mut *handles.lock().unwrap());
    assert_eq!(handles.len(), sessions);
    let ids: HashSet<_> = handles.iter().map(SessionHandle::id).collect();
    assert_eq!(ids.len(), sessions, "session ids must be unique");
    Setup {
        server,
        clients,
        handles: Arc::new(handles),
        echo_refused,
    }
}

/// Message `seq` of sender thread `thread`, padded to `size` bytes.
fn numbered(thread: usize, seq: usize, size: usize) -> String {
    format!("{:<size$}", format!("t{thread}:{seq}"))
}

/// Reads one client's stream until it has `per_thread` messages from every
/// sender thread and the echoes of its own `own` messages, which it sends one
/// per message received so that sends and receives interleave. Panics on any
/// loss, duplicate or reordering.
async fn client(ws: &mut Ws, per_thread: usize, own: usize) {
    let mut next_from = [0usize; THREADS];
    let mut next_echo = 0;
    let mut sent = 0;
    if own > 0 {
        ws.send(Message::text("c:0")).await.unwrap();
        sent = 1;
    }
    while next_from.iter().any(|n| *n < per_thread) || next_echo < own {
        let m = ws
            .next()
            .await
            .expect("stream ended early")
            .expect("read failed");
        let Message::Text(text) = m else {
            panic!("unexpected {m:?}");
        };
        let text = text.as_str().trim_end();
        if let Some(seq) = text.strip_prefix("c:") {
            assert_eq!(
                seq.parse::<usize>().unwrap(),
                next_echo,
                "echo out of order"
            );
            next_echo += 1;
        } else {
            let (t, seq) = text
                .strip_prefix('t')
                .and_then(|r| r.split_once(':'))
                .unwrap_or_else(|| panic!("unexpected {text:?}"));
            let t: usize = t.parse().unwrap();
            let seq: usize = seq.parse().unwrap();
            assert_eq!(seq, next_from[t], "thread {t}'s messages lost or reordered");
            next_from[t] += 1;
        }
        if sent < own {
            ws.send(Message::text(format!("c:{sent}"))).await.unwrap();
            sent += 1;
        }
    }
}

/// Shuts the server down and checks that every client then sees exactly a
/// Close 1001 (no extra message) and that the drain was clean.
fn finish(mut setup: Setup) {
    let sessions = setup.clients.len();
    setup.server.handle.shutdown().unwrap();
    let endings = run(join_all(setup.clients.iter_mut().map(read_to_end)));
    for e in &endings {
        assert!(e.messages.is_empty(), "extra messages: {e:?}");
        e.assert_closed_with(1001);
    }
    let report = setup.server.join();
    assert_eq!(report.clean, sessions, "{report:?}");
    assert!(report.is_clean(), "{report:?}");
    for h in setup.handles.iter() {
        assert!(matches!(
            h.try_send(Message::text("late")),
            Err(SendError::Closed(_))
        ));
    }
}

#[test]
fn eight_threads_and_echo_share_100_sessions_without_loss_or_reordering() {
    const PER_THREAD: usize = 200;
    const OWN: usize = 50;
    let mut setup = start(Limits::default());
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let handles = setup.handles.clone();
            thread::spawn(move || {
                block_on_timeout(LIMIT, async {
                    for seq in 0..PER_THREAD {
                        for h in handles.iter() {
                            h.send(Message::text(numbered(t, seq, 0))).await.unwrap();
                        }
                    }
                });
            })
        })
        .collect();
    run(join_all(
        setup
            .clients
            .iter_mut()
            .map(|ws| client(ws, PER_THREAD, OWN)),
    ));
    for s in senders {
        s.join().expect("sender thread panicked");
    }
    assert_eq!(setup.echo_refused.load(Ordering::Relaxed), 0);
    finish(setup);
}

#[test]
fn waiting_sends_from_eight_threads_survive_full_queues() {
    const PER_THREAD: usize = 50;
    const SIZE: usize = 64;
    // Room for one message: a second one to the same session must wait.
    let limits = Limits::default()
        .max_queue_bytes(100)
        .overflow(OverflowPolicy::Reject);
    let mut setup = start(limits);

    // Hold the loop, so that no writer drains a queue, until a sender has
    // found a queue full; then every full queue makes its sender wait.
    let full_tx = support::hold_loop(&setup.server.handle);

    let waited = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let handles = setup.handles.clone();
            let waited = waited.clone();
            let full_tx = full_tx.clone();
            thread::spawn(move || {
                block_on_timeout(LIMIT, async {
                    for seq in 0..PER_THREAD {
                        for h in handles.iter() {
                            let m = Message::text(numbered(t, seq, SIZE));
                            match h.try_send(m) {
                                Ok(()) => {}
                                Err(SendError::Full(m)) => {
                                    waited.fetch_add(1, Ordering::Relaxed);
                                    let _ = full_tx.send(());
                                    h.send(m).await.unwrap();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                });
            })
        })
        .collect();
    drop(full_tx);
    run(join_all(
        setup.clients.iter_mut().map(|ws| client(ws, PER_THREAD, 0)),
    ));
    for s in senders {
        s.join().expect("sender thread panicked");
    }
    assert!(waited.load(Ordering::Relaxed) > 0, "no send ever waited");
    finish(setup);
}

#[test]
fn a_sender_waiting_for_room_learns_of_teardown_at_once() {
    let limits = Limits::default()
        .max_queue_bytes(100)
        .overflow(OverflowPolicy::Reject);
    let mut setup = start_n(limits, 1);
    let release = support::hold_loop(&setup.server.handle);
    let session = setup.handles[0].clone();
    let first = Message::text(numbered(0, 0, 64));
    let second = Message::text(numbered(0, 1, 64));
    session.try_send(first.clone()).unwrap();
    let Err(SendError::Full(second)) = session.try_send(second) else {
        panic!("the queue must be full");
    };
    // The send is now parked, waiting for room that only the (held) writer
    // could make.
    let mut waiting = std::pin::pin!(session.send(second));
    assert!(block_on_timeout(LIMIT, poll_once(&mut waiting)).is_none());

    setup.server.handle.shutdown().unwrap();
    // The session is closing: the message can never be queued, and the
    // waiting sender must be told so now, not when the writer next runs.
    let outcome = block_on_timeout(Duration::from_secs(2), waiting);
    assert!(matches!(outcome, Err(SendError::Closed(_))), "{outcome:?}");

    drop(release);
    let ending = run(read_to_end(&mut setup.clients[0]));
    assert_eq!(ending.messages, [first], "{ending:?}");
    ending.assert_closed_with(1001);
    setup.clients.clear();
    let report = setup.server.join();
    assert_eq!(report.clean, 1, "{report:?}");
}
