//! The drop contract: a Context dropped undestroyed, a Drain dropped
//! undrained, the Executor dropped after the drain, drops mid-handshake and
//! forgotten handles never panic, never block, end every connection and give
//! every descriptor back; handles are inert afterwards. Also `wake` and `post`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_tungstenite::tungstenite::Error as WsError;
use async_tungstenite::tungstenite::error::ProtocolError;
use futures_lite::future;
use futures_util::future::join_all;
use support::{
    Ending, LIMIT, Server, Ws, connect_echoing, echo_config, fd_baseline, open_fds, read_to_end,
    run, serial,
};
use wsgate::{
    Config, Context, ContextHandle, DrainReport, Error, Limits, Message, Mount, Protocol, Reject,
    Request, SessionHandle, Vhost, VhostConfig, Wake, protocols::Echo,
};

const SESSIONS: usize = 5;

/// What the test abandons instead of finishing teardown.
#[derive(Debug, Clone, Copy)]
enum Abandon {
    /// `drop(ctx)` without `destroy()`.
    Context,
    /// `drop(ctx.destroy())` without `drain()`.
    Drain,
}

/// What the host does afterwards.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Runs its executor again (for something of its own).
    RunsLoop,
    /// Drops its executor.
    DropsExecutor,
}

/// Every `ContextHandle` call fails with `Error::Closed` and none panics.
fn assert_inert(handle: &ContextHandle) {
    assert!(!handle.is_running());
    assert!(matches!(handle.wake(7u32), Err(Error::Closed)));
    assert!(matches!(handle.post(|| {}), Err(Error::Closed)));
    assert!(matches!(
        handle.broadcast("default", "/echo", Message::text("late")),
        Err(Error::Closed)
    ));
    assert!(matches!(handle.shutdown(), Err(Error::Closed)));
    assert!(matches!(handle.stats(), Err(Error::Closed)));
    // Already torn down: resolves at once.
    run(handle.shutdown_requested());
}

/// A forced end: no message and no Close frame; the TCP connection was closed
/// under the session, which the client sees as a reset without handshake.
fn assert_forced_end(ending: &Ending) {
    assert!(ending.messages.is_empty(), "{ending:?}");
    assert!(ending.close.is_none(), "{ending:?}");
    assert!(
        matches!(
            ending.error,
            Some(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            ))
        ),
        "{ending:?}"
    );
}

/// A forced end while another thread runs the loop: that thread may still
/// have sent the Close 1001 that teardown queued before the force, so either
/// a forced end or a Close 1001 followed by the end of the stream.
fn assert_forced_or_going_away(ending: &Ending) {
    if ending.close.is_none() {
        return assert_forced_end(ending);
    }
    assert!(ending.messages.is_empty(), "{ending:?}");
    assert_eq!(ending.close_code(), Some(1001), "{ending:?}");
    assert!(ending.after_close.is_empty(), "{ending:?}");
}

/// Sets the flag when dropped, also while unwinding from a failed assertion.
struct SetOnDrop<'a>(&'a support::Flag);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set();
    }
}

fn abandoned_teardown_still_ends_every_session(abandon: Abandon, then: Then) {
    let _serial = serial();
    let baseline = fd_baseline();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    // The clients run on the host's loop, beside the server's tasks.
    let mut clients = run(ex.run(connect_echoing(addr, SESSIONS)));
    let session = ctx.vhost("default").unwrap().sessions()[0].clone();
    assert!(session.is_open());

    // Neither drop blocks: the loop is not running, and nothing waits for it.
    let started = Instant::now();
    match abandon {
        Abandon::Context => drop(ctx),
        Abandon::Drain => drop(ctx.destroy()),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "a drop blocked");
    assert_inert(&handle);

    let endings = match then {
        Then::RunsLoop => {
            let endings = run(ex.run(join_all(clients.iter_mut().map(read_to_end))));
            assert!(ex.is_empty(), "wsgate tasks left on the host executor");
            drop(ex);
            endings
        }
        Then::DropsExecutor => {
            drop(ex);
            run(join_all(clients.iter_mut().map(read_to_end)))
        }
    };
    for ending in &endings {
        assert_forced_end(ending);
    }
    assert!(!session.is_open());
    assert!(
        session
            .try_send(Message::text("late"))
            .unwrap_err()
            .is_closed()
    );
    drop(clients);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn context_dropped_undestroyed_then_loop_runs() {
    abandoned_teardown_still_ends_every_session(Abandon::Context, Then::RunsLoop);
}

#[test]
fn context_dropped_undestroyed_then_executor_dropped() {
    abandoned_teardown_still_ends_every_session(Abandon::Context, Then::DropsExecutor);
}

#[test]
fn drain_dropped_undrained_then_loop_runs() {
    abandoned_teardown_still_ends_every_session(Abandon::Drain, Then::RunsLoop);
}

#[test]
fn drain_dropped_undrained_then_executor_dropped() {
    abandoned_teardown_still_ends_every_session(Abandon::Drain, Then::DropsExecutor);
}

/// A host whose loop runs on another thread drops the context (or its Drain)
/// from this one: the running loop ends every session without waiting.
fn abandoned_while_another_thread_runs_the_loop(abandon: Abandon) {
    let _serial = serial();
    let baseline = fd_baseline();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    let stop = support::Flag::default();
    thread::scope(|s| {
        let host = s.spawn(|| support::block_on_timeout(LIMIT, ex.run(stop.wait())));
        let stop_host = SetOnDrop(&stop);
        let mut clients = run(connect_echoing(addr, SESSIONS));
        match abandon {
            Abandon::Context => drop(ctx),
            Abandon::Drain => drop(ctx.destroy()),
        }
        assert_inert(&handle);
        let endings = run(join_all(clients.iter_mut().map(read_to_end)));
        for ending in &endings {
            assert_forced_or_going_away(ending);
        }
        drop(clients);
        drop(stop_host);
        host.join().expect("host thread panicked");
    });
    assert!(ex.is_empty(), "wsgate tasks left on the host executor");
    drop(ex);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn context_dropped_while_another_thread_runs_the_loop() {
    abandoned_while_another_thread_runs_the_loop(Abandon::Context);
}

#[test]
fn drain_dropped_while_another_thread_runs_the_loop() {
    abandoned_while_another_thread_runs_the_loop(Abandon::Drain);
}

/// `destroy`, then `drain` on this thread while another thread's clients
/// answer the Close frames; returns the report and how each client ended.
fn destroy_and_drain(
    ex: &Executor<'_>,
    ctx: Context<'_>,
    clients: Vec<Ws>,
) -> (DrainReport, Vec<Ending>) {
    thread::scope(|s| {
        let drain = ctx.destroy();
        let readers = s.spawn(move || {
            let mut clients = clients;
            run(join_all(clients.iter_mut().map(read_to_end)))
        });
        let report = drain.drain(ex, Instant::now() + Duration::from_secs(10));
        (report, readers.join().expect("client thread panicked"))
    })
}

fn assert_clean(report: &DrainReport, endings: &[Ending]) {
    for ending in endings {
        assert!(ending.messages.is_empty(), "{ending:?}");
        ending.assert_closed_with(1001);
    }
    assert_eq!(report.clean, endings.len(), "{report:?}");
    assert_eq!(report.aborted, 0, "{report:?}");
    assert_eq!(report.forced, 0, "{report:?}");
}

#[test]
fn executor_dropped_after_the_drain() {
    let _serial = serial();
    let baseline = fd_baseline();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let clients = run(ex.run(connect_echoing(ctx.local_addrs()[0], SESSIONS)));
    let (report, endings) = destroy_and_drain(&ex, ctx, clients);
    assert_clean(&report, &endings);
    assert!(ex.is_empty(), "the drain left tasks on the host executor");
    drop(ex);
    assert_inert(&handle);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn forgotten_handles_do_not_break_teardown() {
    let _serial = serial();
    let baseline = fd_baseline();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let clients = run(ex.run(connect_echoing(ctx.local_addrs()[0], SESSIONS)));
    let sessions = ctx.vhost("default").unwrap().sessions();
    assert_eq!(sessions.len(), SESSIONS);
    std::mem::forget(ctx.handle());
    std::mem::forget(ctx.vhost("default").unwrap());
    for s in &sessions {
        std::mem::forget(s.clone());
    }
    let (report, endings) = destroy_and_drain(&ex, ctx, clients);
    assert_clean(&report, &endings);
    for s in &sessions {
        assert!(s.try_send(Message::text("late")).unwrap_err().is_closed());
    }
    drop(ex);
    assert_inert(&handle);
    // Forgetting leaks memory, never a socket: the sockets belong to tasks.
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

/// Connects a raw client that sends half a request head, and runs the loop
/// until the server has accepted it.
fn half_open_client(ex: &Executor<'_>, ctx: &Context<'_>) -> TcpStream {
    let handle = ctx.handle();
    let mut raw = TcpStream::connect(ctx.local_addrs()[0]).unwrap();
    raw.write_all(b"GET /echo HTTP/1.1\r\nHost: local").unwrap();
    run(ex.run(async {
        while handle.stats().unwrap().connections == 0 {
            future::yield_now().await;
        }
    }));
    raw
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

fn dropped_mid_handshake(then: Then) {
    let _serial = serial();
    let baseline = fd_baseline();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let mut raw = half_open_client(&ex, &ctx);
    drop(ctx);
    assert_inert(&handle);
    match then {
        Then::RunsLoop => {
            async_io::block_on(ex.run(future::yield_now()));
            assert!(ex.is_empty(), "wsgate tasks left on the host executor");
        }
        Then::DropsExecutor => {}
    }
    drop(ex);
    // An unfinished request is owed no answer; the connection just ends.
    let answer = read_until_closed(&mut raw);
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    drop(raw);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn context_dropped_mid_handshake_then_loop_runs() {
    dropped_mid_handshake(Then::RunsLoop);
}

#[test]
fn context_dropped_mid_handshake_then_executor_dropped() {
    dropped_mid_handshake(Then::DropsExecutor);
}

#[test]
fn destroy_mid_handshake_drains_at_once() {
    let _serial = serial();
    let baseline = fd_baseline();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, echo_config("default", Limits::default())).unwrap();
    let mut raw = half_open_client(&ex, &ctx);
    let report = ctx
        .destroy()
        .drain(&ex, Instant::now() + Duration::from_secs(10));
    // The half-read request was abandoned at once, not after the head timeout.
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    assert_eq!(
        (report.clean, report.aborted, report.forced),
        (0, 0, 0),
        "{report:?}"
    );
    assert!(ex.is_empty());
    let answer = read_until_closed(&mut raw);
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    drop(ex);
    drop(raw);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

/// A wake payload type only this test knows.
#[derive(Debug, Clone, PartialEq)]
struct Reading(f64);

/// What the `wake` callback saw.
#[derive(Debug, PartialEq)]
struct Woken {
    vhost: String,
    thread: ThreadId,
    reading: Option<Reading>,
}

struct WakeProbe(Mutex<mpsc::Sender<Woken>>);

impl Protocol for WakeProbe {
    type State = ();

    fn name(&self) -> &str {
        "probe"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}

    fn wake(&self, vhost: &Vhost, payload: &Wake) {
        let woken = Woken {
            vhost: vhost.name().to_owned(),
            thread: thread::current().id(),
            reading: payload.get::<Reading>().cloned(),
        };
        let _ = self.0.lock().unwrap().send(woken);
    }
}

/// Two vhosts ("a" and "b"), each with its own `WakeProbe`, on a server
/// thread whose id is returned.
fn probe_server() -> (Server, mpsc::Receiver<Woken>, ThreadId) {
    let (tx, rx) = mpsc::channel();
    let vhost = |name: &str| {
        VhostConfig::builder(name)
            .listen("127.0.0.1:0".parse().unwrap())
            .protocol(WakeProbe(Mutex::new(tx.clone())))
            .protocol(Echo)
            .mount(Mount::websocket("/probe", ["probe"]))
            .build()
            .unwrap()
    };
    let config = Config::builder()
        .vhost(vhost("a"))
        .vhost(vhost("b"))
        .build()
        .unwrap();
    let (id_tx, id_rx) = mpsc::channel();
    let server = Server::start_with(config, move |_| {
        id_tx.send(thread::current().id()).unwrap();
    });
    (server, rx, id_rx.recv_timeout(LIMIT).unwrap())
}

#[test]
fn wake_delivers_a_typed_payload_to_every_vhost_on_the_loop_thread() {
    let _serial = serial();
    let (server, woken, loop_thread) = probe_server();
    assert_ne!(loop_thread, thread::current().id());

    server.handle.wake(Reading(21.5)).unwrap();
    let mut got: Vec<Woken> = (0..2).map(|_| woken.recv_timeout(LIMIT).unwrap()).collect();
    got.sort_by(|x, y| x.vhost.cmp(&y.vhost));
    let expect = |vhost: &str| Woken {
        vhost: vhost.to_owned(),
        thread: loop_thread,
        reading: Some(Reading(21.5)),
    };
    assert_eq!(got, [expect("a"), expect("b")]);

    // A payload of another type is delivered too, but is not a `Reading`.
    server.handle.wake("not a reading").unwrap();
    for _ in 0..2 {
        let w = woken.recv_timeout(LIMIT).unwrap();
        assert_eq!(w.reading, None);
        assert_eq!(w.thread, loop_thread);
    }
    let handle = server.handle.clone();
    let report = server.shutdown();
    assert!(report.is_clean(), "{report:?}");
    assert_inert(&handle);
    assert!(
        woken.try_recv().is_err(),
        "wake called more than once per vhost"
    );
}

#[test]
fn post_runs_the_closure_on_the_loop_thread_and_fails_after_teardown() {
    let _serial = serial();
    let (server, _woken, loop_thread) = probe_server();
    let (tx, rx) = mpsc::channel();
    server
        .handle
        .post(move || tx.send(thread::current().id()).unwrap())
        .unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), loop_thread);

    let handle = server.handle.clone();
    let report = server.shutdown();
    assert!(report.is_clean(), "{report:?}");
    // A refused closure is dropped at once, neither run nor leaked.
    let captured = Arc::new(());
    let inside = captured.clone();
    assert!(matches!(
        handle.post(move || drop(inside)),
        Err(Error::Closed)
    ));
    assert_eq!(Arc::strong_count(&captured), 1);
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let _serial = serial();
    let baseline = fd_baseline();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .listen(taken_addr)
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    let ex = Executor::new();
    let err = Context::attach(&ex, Config::builder().vhost(vhost).build().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::Bind { addr, .. } if addr == taken_addr),
        "{err:?}"
    );
    assert!(ex.is_empty(), "a failed attach spawned tasks");
    drop(taken);
    drop(ex);
    assert_eq!(
        open_fds(),
        baseline,
        "the sockets bound before the failure leaked"
    );
}
