//! Service threads: one context attached to several executors, each run by a
//! named thread of the host. Connections go to the least loaded thread and
//! stay there; `attach_set` returns with every listener bound; one drain
//! drives every executor once the threads have stopped, forcing at its
//! deadline; dropping the context or the drain undrained ends every session
//! on every executor; the binary and the example serve on several threads.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::Async;
use async_tungstenite::tungstenite::Error as WsError;
use async_tungstenite::tungstenite::error::ProtocolError;
use futures_lite::future;
use futures_util::StreamExt;
use futures_util::future::join_all;
use support::{
    Ending, Flag, LIMIT, TcpEnd, Ws, connect, connect_echoing, echo_config, fd_baseline, open_fds,
    raw_ws, read_to_end, read_until_closed, run, serial, server_frames, wait_until,
};
use wsgate::{
    Config, Context, ContextHandle, DrainReport, Error, Limits, Message, Mount, Protocol, Reject,
    Request, SessionHandle, VhostConfig, protocols::Echo,
};

/// `n` executors for `attach_set`.
fn executors(n: usize) -> Vec<Executor<'static>> {
    (0..n).map(|_| Executor::new()).collect()
}

/// The name of the thread that runs executor `i`.
fn thread_name(i: usize) -> String {
    format!("service-{i}")
}

/// Runs every executor on a thread of its own, named [`thread_name`], until
/// shutdown is requested or `stop` is set; each is raced against [`LIMIT`].
fn service_threads<'scope>(
    s: &'scope Scope<'scope, '_>,
    executors: &'scope [Executor<'static>],
    handle: &'scope ContextHandle,
    stop: &'scope Flag,
) -> Vec<ScopedJoinHandle<'scope, ()>> {
    executors
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            thread::Builder::new()
                .name(thread_name(i))
                .spawn_scoped(s, move || {
                    let until = future::or(handle.shutdown_requested(), stop.wait());
                    support::block_on_timeout(LIMIT, ex.run(until));
                })
                .expect("spawn a service thread")
        })
        .collect()
}

/// Waits for every service thread to stop.
fn join(threads: Vec<ScopedJoinHandle<'_, ()>>) {
    for t in threads {
        t.join().expect("a service thread panicked");
    }
}

/// The connections each service thread serves now.
fn loads(handle: &ContextHandle) -> Vec<u64> {
    handle.stats().unwrap().connections_per_thread
}

fn current_thread() -> String {
    thread::current().name().unwrap_or("unnamed").to_owned()
}

/// Answers every message with the names of the threads that ran `open`, that
/// run `message`, and that run a task the session spawned:
/// `"OPENED SERVING SPAWNED"`.
struct Where;

impl Protocol for Where {
    type State = String;

    fn name(&self) -> &str {
        "where"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<String, Reject> {
        Ok(current_thread())
    }

    fn message(&self, opened_on: &mut String, session: &SessionHandle, _message: Message) {
        // Answered from a task the session spawns: it must run on the
        // session's thread too.
        let answer = format!("{opened_on} {}", current_thread());
        let s = session.clone();
        session
            .spawn(async move {
                let answer = format!("{answer} {}", current_thread());
                s.try_send(Message::text(answer)).unwrap();
            })
            .unwrap();
    }
}

fn where_config() -> Config {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Where)
        .mount(Mount::websocket("/where", ["where"]))
        .build()
        .unwrap();
    Config::builder().vhost(vhost).build().unwrap()
}

/// Opens a session on `/where` and returns it with the name of the thread
/// that serves it; the handshake and the session must have run on the same
/// thread.
async fn open_where(addr: SocketAddr) -> (Ws, String) {
    let mut ws = connect(addr, "/where").await;
    ws.send(Message::text("where?")).await.unwrap();
    let reply = ws.next().await.expect("an answer").expect("an answer");
    let reply = reply.into_text().unwrap().to_string();
    let names: Vec<&str> = reply.split(' ').collect();
    let [opened, serving, spawned] = names[..] else {
        panic!("three thread names: {reply}");
    };
    assert_eq!(opened, serving, "the connection changed threads");
    assert_eq!(
        spawned, serving,
        "SessionHandle::spawn ran on another thread"
    );
    (ws, serving.to_owned())
}

/// Reads every client to the end of its stream and checks that each got Close
/// 1001 (and nothing else) and completed the handshake.
async fn expect_going_away(clients: &mut [Ws]) {
    let endings = join_all(clients.iter_mut().map(read_to_end)).await;
    for (i, e) in endings.iter().enumerate() {
        assert!(e.messages.is_empty(), "client {i}: {e:?}");
        e.assert_closed_with(1001);
    }
}

fn assert_all_clean(report: &DrainReport, sessions: usize) {
    assert_eq!(report.clean, sessions, "{report:?}");
    assert_eq!((report.aborted, report.forced), (0, 0), "{report:?}");
    assert!(report.is_clean(), "{report:?}");
}

/// A forced end: no message, no Close frame, the TCP connection closed under
/// the session.
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

#[test]
fn each_connection_goes_to_the_least_loaded_thread_and_stays_there() {
    let _serial = serial();
    let executors = executors(2);
    let ctx = Context::attach_set(&executors, where_config()).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    let stop = Flag::default();
    let mut clients = thread::scope(|s| {
        let threads = service_threads(s, &executors, &handle, &stop);
        // One after another, all kept open: each goes to the thread serving
        // fewer, and a tie goes to thread 0.
        let (mut clients, names): (Vec<Ws>, Vec<String>) =
            (0..10).map(|_| run(open_where(addr))).unzip();
        let alternating: Vec<String> = (0..10).map(|i| thread_name(i % 2)).collect();
        assert_eq!(names, alternating);
        assert_eq!(loads(&handle), [5, 5]);

        // Four of thread 1's sessions close: it serves 1 against thread 0's 5.
        let mut closing: Vec<Ws> = [7, 5, 3, 1].map(|i| clients.remove(i)).into();
        run(async {
            for ws in &mut closing {
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
        wait_until(LIMIT, "thread 1's sessions ended", || {
            loads(&handle) == [5, 1]
        });
        // The next four go to thread 1 until the two are even again; the one
        // after that breaks the tie on thread 0.
        for expected in [1, 1, 1, 1, 0] {
            let (ws, name) = run(open_where(addr));
            assert_eq!(name, thread_name(expected));
            clients.push(ws);
        }
        assert_eq!(loads(&handle), [6, 5]);
        let counters = handle.stats().unwrap();
        assert_eq!(counters.connections, 11, "{counters:?}");
        assert_eq!(counters.sessions_open, 11, "{counters:?}");

        handle.shutdown().unwrap();
        join(threads);
        clients
    });
    let readers = thread::spawn(move || {
        run(expect_going_away(&mut clients));
        clients
    });
    let report = ctx
        .destroy()
        .drain(&executors, Instant::now() + Duration::from_secs(10));
    readers.join().expect("client thread panicked");
    assert_all_clean(&report, 11);
}

#[test]
fn attach_set_returns_with_every_listener_bound_before_anything_runs() {
    let _serial = serial();
    let executors = executors(2);
    let ctx = Context::attach_set(&executors, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    // No executor has run yet: the connection waits in the listen backlog.
    let early = TcpStream::connect(addr).expect("the listener is bound and listening");
    let stop = Flag::default();
    let mut clients = thread::scope(|s| {
        let threads = service_threads(s, &executors, &handle, &stop);
        let ws = run(async {
            let tcp = Async::new(early).unwrap();
            let (mut ws, _) = async_tungstenite::client_async(format!("ws://{addr}/echo"), tcp)
                .await
                .expect("the handshake completes once the executors run");
            ws.send(Message::text("early")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("early"));
            ws
        });
        handle.shutdown().unwrap();
        join(threads);
        vec![ws]
    });
    let readers = thread::spawn(move || run(expect_going_away(&mut clients)));
    let report = ctx
        .destroy()
        .drain(&executors, Instant::now() + Duration::from_secs(10));
    readers.join().expect("client thread panicked");
    assert_all_clean(&report, 1);
}

#[test]
fn a_port_already_taken_fails_attach_set_with_nothing_running() {
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
    let executors = executors(3);
    let err = Context::attach_set(&executors, Config::builder().vhost(vhost).build().unwrap())
        .unwrap_err();
    assert!(
        matches!(err, Error::Bind { addr, .. } if addr == taken_addr),
        "{err:?}"
    );
    assert!(
        executors.iter().all(Executor::is_empty),
        "a failed attach_set spawned tasks"
    );
    drop(taken);
    drop(executors);
    assert_eq!(
        open_fds(),
        baseline,
        "the sockets bound before the failure leaked"
    );
}

#[test]
fn attach_set_without_executors_is_an_error_and_binds_nothing() {
    let _serial = serial();
    let baseline = fd_baseline();
    let none: [Executor<'static>; 0] = [];
    let err = Context::attach_set(&none, echo_config("default", Limits::default())).unwrap_err();
    assert!(matches!(err, Error::NoExecutors), "{err:?}");
    assert_eq!(err.to_string(), "attach_set needs at least one executor");
    assert_eq!(open_fds(), baseline, "a socket was bound");
}

#[test]
fn one_drain_finishes_the_close_handshakes_on_every_executor() {
    const N: usize = 10;
    let _serial = serial();
    let baseline = fd_baseline();
    let executors = executors(2);
    let ctx = Context::attach_set(&executors, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    let stop = Flag::default();
    let mut clients = thread::scope(|s| {
        let threads = service_threads(s, &executors, &handle, &stop);
        let clients = run(connect_echoing(addr, N));
        assert_eq!(loads(&handle), [N as u64 / 2, N as u64 / 2]);
        handle.shutdown().unwrap();
        join(threads);
        clients
    });
    // The clients answer the Close frames only now, with every service
    // thread joined: only the drain can run the sessions that complete the
    // handshakes, on both executors.
    let readers = thread::spawn(move || {
        run(expect_going_away(&mut clients));
        clients
    });
    let report = ctx
        .destroy()
        .drain(&executors, Instant::now() + Duration::from_secs(10));
    let clients = readers.join().expect("client thread panicked");
    assert_all_clean(&report, N);
    assert!(report.iterations > 0, "{report:?}");
    assert!(
        executors.iter().all(Executor::is_empty),
        "the drain left tasks on a host executor"
    );
    drop(clients);
    drop(executors);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn a_silent_client_on_the_second_thread_is_forced_at_the_deadline() {
    let _serial = serial();
    let baseline = fd_baseline();
    // The session would wait 30 s for the peer's Close; the drain must not.
    let limits = Limits::default().close_timeout(Duration::from_secs(30));
    let executors = executors(2);
    let ctx = Context::attach_set(&executors, echo_config("default", limits)).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    let stop = Flag::default();
    let (mut answering, mut silent) = thread::scope(|s| {
        let threads = service_threads(s, &executors, &handle, &stop);
        let answering = run(connect_echoing(addr, 1));
        // Thread 0 serves the first client, so this one goes to thread 1.
        let silent = raw_ws(addr, "/echo");
        assert_eq!(loads(&handle), [1, 1]);
        handle.shutdown().unwrap();
        join(threads);
        (answering, silent)
    });
    let reader = thread::spawn(move || {
        run(expect_going_away(&mut answering));
        answering
    });
    let drain_for = Duration::from_millis(500);
    let started = Instant::now();
    let report = ctx.destroy().drain(&executors, started + drain_for);
    let took = started.elapsed();
    let answering = reader.join().expect("client thread panicked");
    assert_eq!(
        (report.clean, report.aborted, report.forced),
        (1, 0, 1),
        "{report:?}"
    );
    assert!(!report.is_clean());
    assert!(took >= drain_for, "returned before the deadline: {took:?}");
    assert!(
        took < drain_for + Duration::from_secs(1),
        "drain overran its deadline: {took:?}"
    );
    // The Close 1001 went out (run by the drain on executor 1), then the
    // deadline closed the socket.
    let (bytes, end) = read_until_closed(&mut silent, LIMIT);
    let frames = server_frames(&bytes);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(1001), "{frames:?}");
    assert_eq!(end, TcpEnd::Eof);
    assert!(executors.iter().all(Executor::is_empty));
    drop((answering, silent));
    drop(executors);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

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
    /// Ticks every executor until it has nothing left to run.
    RunsLoops,
    /// Drops its executors.
    DropsExecutors,
}

fn abandoned_teardown_ends_the_sessions_on_every_executor(abandon: Abandon, then: Then) {
    let _serial = serial();
    let baseline = fd_baseline();
    let executors = executors(2);
    let ctx = Context::attach_set(&executors, echo_config("default", Limits::default())).unwrap();
    let handle = ctx.handle();
    let addr = ctx.local_addrs()[0];
    let stop = Flag::default();
    let mut clients = thread::scope(|s| {
        let threads = service_threads(s, &executors, &handle, &stop);
        let clients = run(connect_echoing(addr, 4));
        assert_eq!(loads(&handle), [2, 2]);
        // The host stops its threads without asking for shutdown.
        stop.set();
        join(threads);
        clients
    });
    assert!(handle.is_running());

    // Neither drop blocks: no executor runs, and nothing waits for one.
    let started = Instant::now();
    match abandon {
        Abandon::Context => drop(ctx),
        Abandon::Drain => drop(ctx.destroy()),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "a drop blocked");
    assert!(!handle.is_running());
    assert!(matches!(handle.stats(), Err(Error::Closed)));

    match then {
        Then::RunsLoops => {
            for ex in &executors {
                while ex.try_tick() {}
            }
            assert!(
                executors.iter().all(Executor::is_empty),
                "wsgate tasks left on a host executor"
            );
            drop(executors);
        }
        Then::DropsExecutors => drop(executors),
    }
    let endings = run(join_all(clients.iter_mut().map(read_to_end)));
    for ending in &endings {
        assert_forced_end(ending);
    }
    drop(clients);
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

#[test]
fn context_dropped_with_sessions_on_two_threads_then_loops_run() {
    abandoned_teardown_ends_the_sessions_on_every_executor(Abandon::Context, Then::RunsLoops);
}

#[test]
fn context_dropped_with_sessions_on_two_threads_then_executors_dropped() {
    abandoned_teardown_ends_the_sessions_on_every_executor(Abandon::Context, Then::DropsExecutors);
}

#[test]
fn drain_dropped_with_sessions_on_two_threads_then_loops_run() {
    abandoned_teardown_ends_the_sessions_on_every_executor(Abandon::Drain, Then::RunsLoops);
}

#[test]
fn drain_dropped_with_sessions_on_two_threads_then_executors_dropped() {
    abandoned_teardown_ends_the_sessions_on_every_executor(Abandon::Drain, Then::DropsExecutors);
}

#[test]
fn drain_accepts_one_executor_a_slice_or_an_array() {
    let _serial = serial();
    // The same teardown, whichever form the host hands to drain(); the
    // drain runs the stopped accept loops to their end.
    let deadline = || Instant::now() + LIMIT;
    let array = [Executor::new(), Executor::new()];
    let ctx = Context::attach_set(&array, echo_config("a", Limits::default())).unwrap();
    assert!(ctx.destroy().drain(&array, deadline()).is_clean());
    let ctx = Context::attach_set(&array, echo_config("b", Limits::default())).unwrap();
    assert!(ctx.destroy().drain(&array[..], deadline()).is_clean());
    let one = Executor::new();
    let ctx = Context::attach(&one, echo_config("c", Limits::default())).unwrap();
    assert!(ctx.destroy().drain(&one, deadline()).is_clean());
    // Other executors than the attached ones: a warning, and the attached
    // ones are drained anyway.
    let ctx = Context::attach_set(&array, echo_config("d", Limits::default())).unwrap();
    let report = ctx.destroy().drain(&one, deadline());
    assert!(report.is_clean(), "{report:?}");
    assert!(array.iter().all(Executor::is_empty));
    assert!(one.is_empty());
}

/// The binary with `--threads 2`: two sessions land on the two threads (the
/// `/metrics` scrape shows it), and SIGINT drains both and exits 0.
#[cfg(feature = "cli")]
#[test]
fn the_binary_serves_on_two_threads_and_drains_on_sigint() {
    // Its pipes are descriptors of this process: not while others count them.
    let _serial = serial();
    let mut gw = support::gateway::Gateway::start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    let addr = gw.addr;
    let mut clients = run(connect_echoing(addr, 2));
    // The scrape's own connection is the third: a tie, so thread 0.
    let metrics = support::raw_http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(metrics.status, 200);
    for sample in [
        "wsgate_thread_connections_open{thread=\"0\"} 2\n",
        "wsgate_thread_connections_open{thread=\"1\"} 1\n",
    ] {
        assert!(metrics.body.contains(sample), "{sample}: {}", metrics.body);
    }

    gw.signal("-INT");
    run(expect_going_away(&mut clients));
    assert_eq!(gw.wait(), 0);
    let drained: Vec<String> = gw.rest();
    assert!(
        drained
            .iter()
            .any(|l| l.starts_with("wsgate drained: 2 clean, 0 aborted, 0 forced")),
        "{drained:?}"
    );
}

/// `examples/service_threads.rs`, run as a user runs it: two clients land on
/// its two threads, get Close 1001 when `--seconds` elapse, and the example
/// drains both and exits 0.
#[cfg(feature = "signals")]
#[test]
fn the_example_spreads_its_clients_over_its_threads() {
    use support::example::{EXIT_LIMIT, Example};

    let _serial = serial();
    let mut example = Example::start(
        "service_threads",
        &[
            "--threads",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--seconds",
            "3",
        ],
    );
    let addr = example.address();
    let mut clients = support::block_on_timeout(Duration::from_secs(30), async {
        let mut clients = connect_echoing(addr, 2).await;
        expect_going_away(&mut clients).await;
        clients
    });
    let status = example.wait(EXIT_LIMIT);
    clients.clear();
    let stdout = example.rest_of_stdout();
    assert!(status.success(), "the example exited with {status}");
    for line in [
        "serving on 2 thread(s)",
        "peak connections per thread: [1, 1]",
    ] {
        assert!(stdout.iter().any(|l| l == line), "{line}: {stdout:#?}");
    }
    assert!(
        stdout
            .iter()
            .any(|l| l.starts_with("drain: 2 clean, 0 aborted, 0 forced")),
        "{stdout:#?}"
    );
}
