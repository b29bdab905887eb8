//! Teardown: Close 1001 to every session before TCP closes, accepted messages
//! before the Close, destroy while the loop runs, deadlines that force, and
//! independent contexts on one executor; every descriptor is given back.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use futures_util::StreamExt;
use futures_util::future::join_all;
use support::{
    LIMIT, Server, Ws, connect, connect_echoing, echo_config, fd_baseline, open_fds, read_to_end,
    run, serial,
};
use wsgate::{
    Config, Context, ContextHandle, DrainReport, Limits, Message, Mount, Protocol, Reject, Request,
    SessionHandle, VhostConfig,
};

/// Reads every client to the end of its stream and checks that each got Close
/// 1001 (and nothing else) before its TCP stream ended.
async fn expect_going_away(clients: &mut [Ws]) {
    let endings = join_all(clients.iter_mut().map(read_to_end)).await;
    for (i, e) in endings.iter().enumerate() {
        assert!(e.messages.is_empty(), "client {i}: {e:?}");
        e.assert_closed_with(1001);
    }
}

fn assert_all_clean(report: &DrainReport, sessions: usize) {
    assert_eq!(report.clean, sessions, "{report:?}");
    assert_eq!(report.aborted, 0, "{report:?}");
    assert_eq!(report.forced, 0, "{report:?}");
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn thousand_live_sessions_get_1001_before_tcp_closes_and_fds_return_to_baseline() {
    const N: usize = 1000;
    let _serial = serial();
    let baseline = fd_baseline();
    let mut server = Server::start(echo_config("default", Limits::default()));
    let addr = server.addr();
    let mut clients = run(connect_echoing(addr, N));
    let counters = server.handle.stats().unwrap();
    assert_eq!(counters.sessions_open, N as u64, "{counters:?}");
    assert_eq!(counters.sessions_total, N as u64, "{counters:?}");

    server.handle.shutdown().unwrap();
    run(expect_going_away(&mut clients));
    let report = server.join();
    assert_all_clean(&report, N);

    drop(clients);
    drop(server);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

/// On `burst N`, queues N messages with `try_send` (reporting how many were
/// accepted), then optionally requests shutdown from inside the callback.
struct Burst {
    queued: Mutex<mpsc::Sender<usize>>,
    shutdown_from_callback: Option<Arc<OnceLock<ContextHandle>>>,
}

impl Protocol for Burst {
    type State = ();

    fn name(&self) -> &str {
        "burst"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        let text = message.into_text().unwrap_or_default();
        let Some(n) = text
            .strip_prefix("burst ")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        let accepted = (0..n)
            .filter(|i| session.try_send(Message::text(burst_message(*i))).is_ok())
            .count();
        if let Some(handle) = self.shutdown_from_callback.as_ref().and_then(|h| h.get()) {
            handle.shutdown().unwrap();
        }
        let _ = self.queued.lock().unwrap().send(accepted);
    }
}

/// Message `i` of a burst: its number padded to 1000 bytes, so that a burst of
/// 500 is far more than one write while staying under the 1 MiB queue bound.
fn burst_message(i: usize) -> String {
    format!("{i:0>1000}")
}

fn burst_server(shutdown_from_callback: bool) -> (Server, mpsc::Receiver<usize>) {
    let (tx, rx) = mpsc::channel();
    let cell = Arc::new(OnceLock::new());
    let protocol = Burst {
        queued: Mutex::new(tx),
        shutdown_from_callback: shutdown_from_callback.then(|| cell.clone()),
    };
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(protocol)
        .mount(Mount::websocket("/burst", ["burst"]))
        .build()
        .unwrap();
    let config = Config::builder().vhost(vhost).build().unwrap();
    let server = Server::start_with(config, move |ctx| {
        cell.set(ctx.handle()).unwrap();
    });
    (server, rx)
}

fn check_burst_then_close(mut ws: Ws, n: usize) {
    let ending = run(read_to_end(&mut ws));
    let expected: Vec<Message> = (0..n).map(|i| Message::text(burst_message(i))).collect();
    assert_eq!(ending.messages.len(), n, "messages lost before the Close");
    assert!(ending.messages == expected, "messages out of order");
    ending.assert_closed_with(1001);
}

#[test]
fn messages_queued_before_shutdown_go_out_before_the_close_frame() {
    const N: usize = 500;
    let _serial = serial();
    let (mut server, queued) = burst_server(false);
    let addr = server.addr();
    // The client does not read until teardown has begun, so the burst is
    // still on its way (queue or socket buffers) when shutdown is requested.
    let ws = run(async {
        let mut ws = connect(addr, "/burst").await;
        ws.send(Message::text(format!("burst {N}"))).await.unwrap();
        ws
    });
    assert_eq!(queued.recv_timeout(LIMIT).unwrap(), N, "try_send refused");
    server.handle.shutdown().unwrap();
    check_burst_then_close(ws, N);
    assert_all_clean(&server.join(), 1);
}

#[test]
fn messages_queued_in_the_callback_that_shuts_down_go_out_before_the_close_frame() {
    const N: usize = 500;
    let _serial = serial();
    let (mut server, queued) = burst_server(true);
    let addr = server.addr();
    // The callback queues the burst and requests shutdown before the session's
    // writer has had a chance to send any of it.
    let ws = run(async {
        let mut ws = connect(addr, "/burst").await;
        ws.send(Message::text(format!("burst {N}"))).await.unwrap();
        ws
    });
    assert_eq!(queued.recv_timeout(LIMIT).unwrap(), N, "try_send refused");
    check_burst_then_close(ws, N);
    assert_all_clean(&server.join(), 1);
    assert!(server.handle.stats().is_err());
}

#[test]
fn shutdown_from_another_thread_while_the_loop_runs_leaves_drain_only_waiting() {
    const N: usize = 20;
    let _serial = serial();
    let baseline = fd_baseline();
    let clients_done = Arc::new(support::Flag::default());
    let (tx, rx) = mpsc::channel();
    let host = {
        let clients_done = clients_done.clone();
        thread::spawn(move || {
            let ex = Executor::new();
            let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
            tx.send((ctx.local_addrs()[0], ctx.handle())).unwrap();
            let handle = ctx.handle();
            // The host keeps its loop running after the shutdown request until
            // the clients have seen their close handshakes complete: the
            // running loop, not the drain, finishes them.
            async_io::block_on(ex.run(async {
                handle.shutdown_requested().await;
                clients_done.wait().await;
            }));
            let drain = ctx.destroy();
            let report = drain.drain(&ex, Instant::now() + Duration::from_secs(10));
            drop(ex);
            report
        })
    };
    let (addr, handle) = rx.recv_timeout(LIMIT).unwrap();
    let mut clients = run(connect_echoing(addr, N));
    handle.shutdown().unwrap();
    assert!(!handle.is_running());
    assert!(
        handle.shutdown().is_err(),
        "a second shutdown must say Closed"
    );
    run(expect_going_away(&mut clients));
    drop(clients);
    clients_done.set();
    let report = host.join().expect("host thread panicked");
    assert_all_clean(&report, N);
    // Nothing was left for the drain but releasing the pump (one tick).
    assert!(report.iterations <= 1, "{report:?}");
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

/// Reads a response head from a raw socket, one byte at a time so that
/// nothing after it is consumed.
fn read_head(raw: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        raw.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads until the server closes the connection; panics if it stays open.
fn read_until_closed(raw: &mut TcpStream) -> Vec<u8> {
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server kept the connection open")
            }
            // A reset also proves the server side is closed.
            Err(_) => return out,
        }
    }
}

#[test]
fn drain_deadline_forces_a_peer_that_never_answers_the_close() {
    let _serial = serial();
    let baseline = fd_baseline();
    let drain_for = Duration::from_millis(300);
    // The session would wait 30 s for the peer's Close; the drain must not.
    let limits = Limits::default().close_timeout(Duration::from_secs(30));
    let server = Server::start_drain(echo_config("default", limits), drain_for, |_| {});
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(LIMIT)).unwrap();
    raw.write_all(&support::upgrade_request("/echo", ""))
        .unwrap();
    let head = read_head(&mut raw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(server.handle.stats().unwrap().sessions_open, 1);

    // From here on the client never reads until the drain is over.
    let started = Instant::now();
    let report = server.shutdown();
    let took = started.elapsed();
    assert_eq!(report.forced, 1, "{report:?}");
    assert_eq!(report.clean, 0, "{report:?}");
    assert_eq!(report.aborted, 0, "{report:?}");
    assert!(!report.is_clean());
    assert!(
        report.elapsed >= drain_for,
        "returned before the deadline: {report:?}"
    );
    assert!(
        took < drain_for + Duration::from_secs(1),
        "drain overran its deadline: {took:?}, {report:?}"
    );

    // The Close 1001 went out before the deadline; then the socket was closed.
    let rest = read_until_closed(&mut raw);
    let reason = b"going away";
    let mut close = vec![0x88, 2 + reason.len() as u8, 0x03, 0xE9];
    close.extend_from_slice(reason);
    assert_eq!(
        rest, close,
        "expected exactly one Close 1001 frame, then EOF"
    );
    drop(raw);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn two_contexts_on_one_executor_are_independent() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let (first_tx, first_rx) = mpsc::channel();
    let host = thread::spawn(move || {
        let ex = Executor::new();
        let a = Context::attach(&ex, echo_config("a", Limits::default())).unwrap();
        let b = Context::attach(&ex, echo_config("b", Limits::default())).unwrap();
        let (ha, hb) = (a.handle(), b.handle());
        tx.send((
            a.local_addrs()[0],
            b.local_addrs()[0],
            ha.clone(),
            hb.clone(),
        ))
        .unwrap();
        async_io::block_on(ex.run(ha.shutdown_requested()));
        let report_a = a
            .destroy()
            .drain(&ex, Instant::now() + Duration::from_secs(10));
        first_tx.send(report_a).unwrap();
        async_io::block_on(ex.run(hb.shutdown_requested()));
        b.destroy()
            .drain(&ex, Instant::now() + Duration::from_secs(10))
    });
    let (addr_a, addr_b, ha, hb) = rx.recv_timeout(LIMIT).unwrap();
    let mut on_a = run(connect_echoing(addr_a, 1));
    let mut on_b = run(connect_echoing(addr_b, 1));

    ha.shutdown().unwrap();
    run(expect_going_away(&mut on_a));
    let report_a = first_rx.recv_timeout(LIMIT).unwrap();
    assert_all_clean(&report_a, 1);
    assert!(ha.stats().is_err());
    assert!(
        TcpStream::connect(addr_a).is_err(),
        "a's listener must be closed"
    );

    // b never noticed: its session echoes and it accepts new ones.
    assert!(hb.is_running());
    run(async {
        on_b[0].send(Message::binary(vec![1, 2, 3])).await.unwrap();
        let m = on_b[0].next().await.unwrap().unwrap();
        assert_eq!(m, Message::binary(vec![1, 2, 3]));
    });
    on_b.extend(run(connect_echoing(addr_b, 1)));
    let counters = hb.stats().unwrap();
    assert_eq!(counters.sessions_open, 2, "{counters:?}");
    assert_eq!(counters.sessions_total, 2, "{counters:?}");

    hb.shutdown().unwrap();
    run(expect_going_away(&mut on_b));
    let report_b = host.join().expect("host thread panicked");
    assert_all_clean(&report_b, 2);
}

#[test]
fn a_peer_that_never_answers_hits_the_close_timeout_before_the_deadline() {
    let _serial = serial();
    let close_timeout = Duration::from_millis(200);
    let limits = Limits::default().close_timeout(close_timeout);
    let server = Server::start_drain(
        echo_config("default", limits),
        Duration::from_secs(10),
        |_| {},
    );
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(LIMIT)).unwrap();
    raw.write_all(&support::upgrade_request("/echo", ""))
        .unwrap();
    let head = read_head(&mut raw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let started = Instant::now();
    let report = server.shutdown();
    let took = started.elapsed();
    // The session gave up on its own (close timeout), so the drain ended long
    // before its deadline and counts the session as aborted, not forced.
    assert_eq!(report.aborted, 1, "{report:?}");
    assert_eq!(report.clean, 0, "{report:?}");
    assert_eq!(report.forced, 0, "{report:?}");
    assert!(!report.is_clean());
    // The close timeout starts when the Close goes out, after `shutdown`.
    assert!(took >= close_timeout, "{took:?} {report:?}");
    assert!(took < Duration::from_secs(5), "{took:?} {report:?}");
    let rest = read_until_closed(&mut raw);
    assert_eq!(
        &rest[..4],
        [0x88, 12, 0x03, 0xE9],
        "expected Close 1001, got {rest:?}"
    );
    assert_eq!(
        rest.len(),
        14,
        "nothing may follow the Close frame: {rest:?}"
    );
}

#[test]
fn a_loop_run_by_two_threads_with_two_pumps_drains_clean() {
    const N: usize = 50;
    let _serial = serial();
    let baseline = fd_baseline();
    let config = {
        let vhost = VhostConfig::builder("default")
            .listen("127.0.0.1:0".parse().unwrap())
            .protocol(wsgate::protocols::Echo)
            .mount(Mount::websocket("/echo", ["echo"]))
            .build()
            .unwrap();
        Config::builder().vhost(vhost).pumps(2).build().unwrap()
    };
    let ex = Executor::new();
    let ctx = Context::attach(&ex, config).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    let (report, mut clients) = thread::scope(|s| {
        // The host runs its executor on two threads until shutdown.
        let loops: Vec<_> = (0..2)
            .map(|_| s.spawn(|| async_io::block_on(ex.run(handle.shutdown_requested()))))
            .collect();
        let mut clients = run(connect_echoing(addr, N));
        assert_eq!(handle.stats().unwrap().sessions_open, N as u64);
        handle.shutdown().unwrap();
        for l in loops {
            l.join().expect("loop thread panicked");
        }
        let drain = ctx.destroy();
        let readers = s.spawn(move || {
            run(expect_going_away(&mut clients));
            clients
        });
        let report = drain.drain(&ex, Instant::now() + Duration::from_secs(10));
        (report, readers.join().expect("client thread panicked"))
    });
    assert_all_clean(&report, N);
    assert!(ex.is_empty(), "the drain left tasks on the host executor");
    clients.clear();
    drop(ex);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn close_frames_crossing_at_teardown_count_as_clean() {
    let _serial = serial();
    let mut server = Server::start(echo_config("default", Limits::default()));
    let mut clients = run(connect_echoing(server.addr(), 1));
    // With the loop held, the client's Close waits unread in the server's
    // socket while teardown queues the server's Close 1001: they cross.
    let release = support::hold_loop(&server.handle);
    run(clients[0].close(None)).unwrap();
    server.handle.shutdown().unwrap();
    drop(release);
    let ending = run(read_to_end(&mut clients[0]));
    ending.assert_closed_with(1001);
    assert_all_clean(&server.join(), 1);
}

#[test]
fn an_idle_keep_alive_http_connection_does_not_hold_the_drain() {
    let _serial = serial();
    let baseline = fd_baseline();
    let server = Server::start(echo_config("default", Limits::default()));
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(LIMIT)).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let head = read_head(&mut raw);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0; length];
    raw.read_exact(&mut body).unwrap();
    assert_eq!(server.handle.stats().unwrap().connections, 1);

    // The connection now waits for its next request (10 s head timeout).
    let started = Instant::now();
    let report = server.shutdown();
    assert!(started.elapsed() < Duration::from_secs(5), "{report:?}");
    assert_eq!(
        (report.clean, report.aborted, report.forced),
        (0, 0, 0),
        "{report:?}"
    );
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    assert!(read_until_closed(&mut raw).is_empty());
    drop(raw);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}
