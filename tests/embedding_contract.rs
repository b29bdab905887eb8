//! The embedding contract under misuse: `close` exactly once (also after a
//! panic in `message`), no live-looking handle after a refused handshake,
//! no callback on a thread that only asked for teardown, and a drain report
//! that owns up to a callback that blocked past the deadline.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::{Executor, LocalExecutor};
use async_io::Timer;
use event_listener::Event;
use futures_lite::future;
use futures_util::StreamExt;
use support::{LIMIT, Server, connect, raw_http, read_to_end, run, upgrade_request};
use wsgate::{
    CloseReason, ClosedBy, Config, Context, Message, Mount, Protocol, Reject, Request, SendError,
    SessionHandle, SessionId, Vhost, VhostConfig, Wake,
};

/// An application's session registry, as examples/foreign_loop.rs keeps one:
/// handles go in at `open` and come out at `close`.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<SessionId, SessionHandle>>,
    closes: Mutex<Vec<(SessionId, CloseReason)>>,
}

/// Registers every session; a message "boom" panics.
struct Registering(Arc<Registry>, mpsc::Sender<SessionId>);

impl Protocol for Registering {
    type State = ();

    fn name(&self) -> &str {
        "registering"
    }

    fn open(&self, _req: &Request, session: &SessionHandle) -> Result<(), Reject> {
        self.0
            .open
            .lock()
            .unwrap()
            .insert(session.id(), session.clone());
        Ok(())
    }

    fn message(&self, _: &mut (), session: &SessionHandle, message: Message) {
        assert!(message != Message::text("boom"), "message exploded");
        let _ = session.try_send(message);
    }

    fn close(&self, _: (), session: &SessionHandle, reason: &CloseReason) {
        self.0.open.lock().unwrap().remove(&session.id());
        self.0
            .closes
            .lock()
            .unwrap()
            .push((session.id(), reason.clone()));
        let _ = self.1.send(session.id());
    }
}

/// User data whose drop is observed.
struct Dropped(mpsc::Sender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_panic_in_message_still_calls_close_once_with_1011_and_the_registry_empties() {
    let registry = Arc::new(Registry::default());
    let (closed_tx, closed_rx) = mpsc::channel();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Registering(registry.clone(), closed_tx))
        .mount(Mount::websocket("/r", ["registering"]))
        .user_data(Dropped(dropped_tx))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();

    let ending = run(async move {
        let mut ws = connect(addr, "/r").await;
        ws.send(Message::text("fine")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("fine"));
        ws.send(Message::text("boom")).await.unwrap();
        read_to_end(&mut ws).await
    });
    ending.assert_closed_with(1011);

    let id = closed_rx
        .recv_timeout(LIMIT)
        .expect("close was never called");
    let closes = registry.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1, "{closes:?}");
    let (closed_id, reason) = &closes[0];
    assert_eq!(*closed_id, id);
    assert_eq!(u16::from(reason.code), 1011, "{reason:?}");
    assert_eq!(reason.closed_by, ClosedBy::Server, "{reason:?}");
    assert!(registry.open.lock().unwrap().is_empty());

    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
    // Nothing holds the vhost any more: its user data went with the context.
    dropped_rx
        .recv_timeout(LIMIT)
        .expect("the vhost's user data leaked");
    assert_eq!(registry.closes.lock().unwrap().len(), 1, "close ran twice");
}

/// What `Refusing::open` left behind, for the test to inspect.
#[derive(Default)]
struct Leftovers {
    handles: Mutex<Vec<SessionHandle>>,
    /// Tasks spawned by `open` that have ended (run out or cancelled).
    tasks_gone: AtomicUsize,
    gone: Event,
}

/// Subscribes the session, spawns a task that runs while the handle looks
/// open, then refuses (or panics, for `?panic`).
struct Refusing(Arc<Leftovers>);

/// Counts the task's end, however it ends.
struct TaskGuard(Arc<Leftovers>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks_gone.fetch_add(1, Ordering::SeqCst);
        self.0.gone.notify(usize::MAX);
    }
}

impl Protocol for Refusing {
    type State = ();

    fn name(&self) -> &str {
        "refusing"
    }

    fn open(&self, req: &Request, session: &SessionHandle) -> Result<(), Reject> {
        session.subscribe("news").expect("subscribe in open");
        let guard = TaskGuard(self.0.clone());
        let handle = session.clone();
        session
            .spawn(async move {
                let _guard = guard;
                while handle.is_open() {
                    Timer::after(Duration::from_millis(20)).await;
                }
            })
            .expect("spawn in open");
        self.0.handles.lock().unwrap().push(session.clone());
        assert!(req.query_param("panic").is_none(), "open exploded");
        Err(Reject::forbidden("no"))
    }

    fn message(&self, _: &mut (), _: &SessionHandle, _: Message) {}
}

#[test]
fn a_refused_or_panicking_open_leaves_no_live_handle_no_subscriber_and_no_task() {
    let leftovers = Arc::new(Leftovers::default());
    let limits = wsgate::Limits::default().max_sessions_per_ip(1);
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Refusing(leftovers.clone()))
        .protocol(wsgate::protocols::Echo)
        .mount(Mount::websocket("/refuse", ["refusing"]))
        .mount(Mount::websocket("/echo", ["echo"]))
        .limits(limits)
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();

    assert_eq!(
        raw_http(addr, &upgrade_request("/refuse", "")).status,
        403,
        "refused"
    );
    assert_eq!(
        raw_http(addr, &upgrade_request("/refuse?panic=1", "")).status,
        500,
        "panicked"
    );

    // Both spawned tasks are cancelled at once, long before any drain.
    run(async {
        loop {
            let l = leftovers.gone.listen();
            if leftovers.tasks_gone.load(Ordering::SeqCst) == 2 {
                break;
            }
            l.await;
        }
    });
    let handles = leftovers.handles.lock().unwrap().clone();
    assert_eq!(handles.len(), 2);
    for h in &handles {
        assert!(!h.is_open(), "{h:?} looks open");
        assert!(matches!(
            h.try_send(Message::text("x")),
            Err(SendError::Closed(_))
        ));
        assert!(h.subscriptions().is_empty());
        assert!(h.subscribe("late").is_err(), "a refused session subscribed");
    }
    assert_eq!(server.handle.presence("news").unwrap().count, 0);
    // The per-address place was given back: one more session is admitted.
    run(async move {
        let mut ws = connect(addr, "/echo").await;
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        let bye = tungstenite::protocol::CloseFrame {
            code: wsgate::CloseCode::Normal,
            reason: "".into(),
        };
        ws.close(Some(bye)).await.unwrap();
        read_to_end(&mut ws).await.assert_closed_with(1000);
    });

    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.tasks_forced, 0, "{report}");
    for h in &handles {
        assert!(matches!(
            h.try_send(Message::text("after")),
            Err(SendError::Closed(_))
        ));
    }
}

/// Every callback as (callback, vhost, thread).
type Calls = Arc<Mutex<Vec<(&'static str, String, String)>>>;

/// Records the vhost and thread of every callback.
struct Recording(Calls);

impl Recording {
    fn note(&self, callback: &'static str, vhost: &Vhost) {
        let thread = thread::current().name().unwrap_or("?").to_owned();
        self.0
            .lock()
            .unwrap()
            .push((callback, vhost.name().to_owned(), thread));
    }
}

impl Protocol for Recording {
    type State = ();

    fn name(&self) -> &str {
        "recording"
    }

    fn open(&self, _req: &Request, s: &SessionHandle) -> Result<(), Reject> {
        self.note("open", s.vhost());
        Ok(())
    }

    fn message(&self, _: &mut (), s: &SessionHandle, message: Message) {
        self.note("message", s.vhost());
        let _ = s.try_send(message);
    }

    fn close(&self, _: (), s: &SessionHandle, _r: &CloseReason) {
        self.note("close", s.vhost());
    }

    fn wake(&self, vhost: &Vhost, _payload: &Wake) {
        self.note("wake", vhost);
    }

    fn destroy(&self, vhost: &Vhost) {
        self.note("destroy", vhost);
    }
}

fn recording_vhost(name: &str, ip: &str, calls: &Calls) -> VhostConfig {
    VhostConfig::builder(name)
        .listen(format!("{ip}:0").parse().unwrap())
        .protocol(Recording(calls.clone()))
        .mount(Mount::websocket("/rec", ["recording"]))
        .build()
        .unwrap()
}

#[test]
fn remove_vhost_and_shutdown_from_a_foreign_thread_run_no_callback_there() {
    let calls = Calls::default();
    // Two vhosts on two listeners: one removed, the other torn down.
    let config = Config::builder()
        .vhost(recording_vhost("a", "127.0.0.1", &calls))
        .vhost(recording_vhost("b", "127.0.0.2", &calls))
        .build()
        .unwrap();

    let host = thread::Builder::new()
        .name("host-loop".into())
        .spawn(move || {
            let ex = Executor::new();
            let ctx = Context::attach(&ex, config).expect("attach");
            let addrs = ctx.local_addrs();
            let handle = ctx.handle();
            let (ready_tx, ready_rx) = mpsc::channel::<()>();
            // The clients: one session per vhost, a message each, then read
            // until the Close 1001 that teardown (or the removal) sends.
            let clients = thread::spawn(move || {
                run(async move {
                    let mut a = connect(addrs[0], "/rec").await;
                    let mut b = connect(addrs[1], "/rec").await;
                    for ws in [&mut a, &mut b] {
                        ws.send(Message::text("hi")).await.unwrap();
                        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
                    }
                    ready_tx.send(()).unwrap();
                    let (ea, eb) = future::zip(read_to_end(&mut a), read_to_end(&mut b)).await;
                    ea.assert_closed_with(1001);
                    eb.assert_closed_with(1001);
                });
            });
            // The foreign thread asks for everything; the loop does it.
            thread::scope(|s| {
                let (ctx, handle) = (&ctx, &handle);
                thread::Builder::new()
                    .name("foreign".into())
                    .spawn_scoped(s, move || {
                        ready_rx.recv_timeout(LIMIT).expect("clients never ready");
                        handle.wake(()).unwrap();
                        ctx.remove_vhost("b").unwrap();
                        handle.shutdown().unwrap();
                    })
                    .unwrap();
                support::block_on_timeout(LIMIT, ex.run(handle.shutdown_requested()));
            });
            let report = ctx.destroy().drain(&ex, Instant::now() + LIMIT);
            clients.join().unwrap();
            report
        })
        .unwrap();
    let report = host.join().unwrap();
    assert!(report.is_clean(), "{report}");

    let calls = calls.lock().unwrap().clone();
    for (callback, _, thread) in &calls {
        assert_eq!(thread, "host-loop", "{callback} ran on {thread}: {calls:?}");
    }
    let at = |callback: &str, vhost: &str| {
        let found: Vec<usize> = calls
            .iter()
            .enumerate()
            .filter(|(_, (c, v, _))| *c == callback && v == vhost)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found.len(), 1, "{callback} on {vhost}: {calls:?}");
        found[0]
    };
    // The wake reaches `a`; `b` may be removed before the wake task runs.
    at("wake", "a");
    for vhost in ["a", "b"] {
        at("open", vhost);
        // destroy runs once, after the close of the vhost's last session.
        assert!(at("destroy", vhost) > at("close", vhost), "{calls:?}");
    }
}

/// Echoes; its `close` blocks the thread for `BLOCK`.
struct SlowClose(Arc<Event>);

const BLOCK: Duration = Duration::from_millis(1500);

impl Protocol for SlowClose {
    type State = ();

    fn name(&self) -> &str {
        "slow-close"
    }

    fn open(&self, _req: &Request, _s: &SessionHandle) -> Result<(), Reject> {
        self.0.notify(usize::MAX);
        Ok(())
    }

    fn message(&self, _: &mut (), session: &SessionHandle, message: Message) {
        let _ = session.try_send(message);
    }

    fn close(&self, _: (), _s: &SessionHandle, _r: &CloseReason) {
        // The misuse under test: a blocking call in a callback.
        thread::sleep(BLOCK);
    }
}

#[test]
fn a_close_callback_that_blocks_shows_as_an_overrun_in_the_drain_report() {
    let opened = Arc::new(Event::new());
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(SlowClose(opened.clone()))
        .mount(Mount::websocket("/slow", ["slow-close"]))
        .build()
        .unwrap();
    let ex = Executor::new();
    let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build().unwrap()).unwrap();
    let addr = ctx.local_addrs()[0];
    let listening = opened.listen();
    let client = thread::spawn(move || {
        run(async move {
            let mut ws = connect(addr, "/slow").await;
            read_to_end(&mut ws).await.assert_closed_with(1001);
        })
    });
    // Run the loop until the session is open, then tear down at once: the
    // close handshake (and the blocking `close`) happen inside the drain.
    support::block_on_timeout(LIMIT, ex.run(listening));
    let deadline = Instant::now() + Duration::from_millis(300);
    let report = ctx.destroy().drain(&ex, deadline);
    client.join().unwrap();
    assert!(report.overrun > Duration::ZERO, "{report:?}");
    assert!(report.longest_stall >= BLOCK, "{report:?}");
    assert!(report.to_string().contains("past the deadline"), "{report}");
    // The final counters are in the report.
    assert_eq!(report.stats.sessions_total, 1, "{report:?}");
}

#[test]
fn a_local_executor_hosts_a_context_and_drains_it() {
    let ex = LocalExecutor::new();
    let vhost = VhostConfig::builder("local")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(wsgate::protocols::Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    let ctx = Context::attach_local(&ex, Config::builder().vhost(vhost).build().unwrap()).unwrap();
    let addr = ctx.local_addrs()[0];
    let handle = ctx.handle();
    // State the host keeps on its own thread (not Send), fed by the loop.
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    let counter = seen.clone();
    let client = thread::spawn(move || {
        run(async move {
            let mut ws = connect(addr, "/echo").await;
            ws.send(Message::text("local")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("local"));
            handle.shutdown().unwrap();
            read_to_end(&mut ws).await.assert_closed_with(1001);
        })
    });
    let handle = ctx.handle();
    support::block_on_timeout(
        LIMIT,
        ex.run(async {
            counter.set(counter.get() + 1);
            handle.shutdown_requested().await;
        }),
    );
    let report = ctx.destroy().drain(&ex, Instant::now() + LIMIT);
    client.join().unwrap();
    assert_eq!(seen.get(), 1);
    assert_eq!(report.clean, 1, "{report}");
    assert!(report.is_clean(), "{report}");
}
