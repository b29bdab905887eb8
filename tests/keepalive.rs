//! Keep-alive: a silent peer is pinged after `ping_interval`, a peer that
//! answers pings stays open, and one that answers nothing is closed with 1001
//! "idle timeout" after `idle_timeout`. Teardown calls the destroy hook once.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wsgate::{
    Config, Limits, Message, Mount, Protocol, Reject, Request, SessionHandle, Vhost, VhostConfig,
};

struct Quiet(Arc<AtomicUsize>);

impl Protocol for Quiet {
    type State = ();

    fn name(&self) -> &str {
        "quiet"
    }

    fn open(&self, _: &Request, _: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _: &mut (), _: &SessionHandle, _: Message) {}

    fn destroy(&self, _: &Vhost) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn config(destroyed: Arc<AtomicUsize>) -> Config {
    let limits = Limits::default()
        .ping_interval(Duration::from_millis(150))
        .idle_timeout(Duration::from_millis(600))
        .close_timeout(Duration::from_millis(300));
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Quiet(destroyed))
        .mount(Mount::websocket("/q", ["quiet"]))
        .limits(limits)
        .build()
        .unwrap();
    Config::builder().vhost(vhost).build().unwrap()
}

#[test]
fn silent_peer_is_pinged_and_a_responsive_one_stays_open() {
    let destroyed = Arc::new(AtomicUsize::new(0));
    let server = support::Server::start(config(destroyed.clone()));
    let addr = server.addr();
    let mut ws = support::run(async move {
        let mut ws = support::connect(addr, "/q").await;
        let started = Instant::now();
        // tungstenite answers each ping with a pong while we read; after more
        // than the idle timeout the session must still be open.
        let mut pings = 0;
        while started.elapsed() < Duration::from_millis(1000) {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("expected only pings, got {other:?}"),
            }
        }
        assert!(
            pings >= 3,
            "only {pings} pings in 1 s with a 150 ms interval"
        );
        ws
    });
    // Answer the server's Close from another thread while the server drains.
    let client = std::thread::spawn(move || {
        support::run(async move {
            let mut close_code = None;
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(Some(f)) = m {
                    close_code = Some(u16::from(f.code));
                }
            }
            close_code
        })
    });
    let report = server.shutdown();
    assert_eq!(client.join().unwrap(), Some(1001));
    assert_eq!(report.clean, 1, "{report:?}");
    assert_eq!(
        destroyed.load(Ordering::SeqCst),
        1,
        "destroy hook called once"
    );
}

#[test]
fn half_open_peer_is_closed_after_the_idle_timeout() {
    let server = support::Server::start(config(Arc::new(AtomicUsize::new(0))));
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&support::upgrade_request("/q", "")).unwrap();
    let started = Instant::now();
    // Read everything until the server closes TCP: the 101, pings, and finally
    // a Close frame with 1001 "idle timeout". We never answer anything.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed before the server closed: {e}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(600),
        "closed after {elapsed:?}"
    );
    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(seen.starts_with(b"HTTP/1.1 101"));
    let frames = &seen[head_end..];
    assert_eq!(frames[0], 0x89, "first frame is a ping");
    let close_at = frames
        .iter()
        .position(|&b| b == 0x88)
        .expect("a Close frame");
    let close = &frames[close_at..];
    let code = u16::from_be_bytes([close[2], close[3]]);
    assert_eq!(code, 1001);
    assert_eq!(&close[4..4 + usize::from(close[1]) - 2], b"idle timeout");
    drop(server);
}
