//! Hostile peers: slowloris heads time out while normal clients are served;
//! a client that sends 200 MiB without reading cannot grow the server's
//! memory (the `wsgate` binary's RSS is measured); 1,000 abrupt resets in
//! every phase of a connection leave file descriptors at the baseline; a
//! half-open peer is reaped by the idle timeout.
//!
//! Every test holds `support::serial()`: one of them counts the process's
//! descriptors, which every other test here opens and closes.

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt, future};
use futures_util::future::join_all;
use support::{
    LIMIT, Server, TcpEnd, block_on_timeout, client_frame, connect, echo_config, fd_baseline,
    open_fds, raw_ws, read_until_closed, serial, server_frames, upgrade_request, wait_until,
};
use wsgate::{
    CloseReason, ClosedBy, Config, Limits, Message, Mount, Protocol, Reject, Request,
    SessionHandle, VhostConfig,
};

// ---------------------------------------------------------------------------
// Slowloris.

/// Trickles an upgrade request into `conn` a byte at a time, far slower than
/// the handshake timeout allows, while reading whatever the server answers
/// until it closes. Returns the answer and when the close came.
async fn slowloris(
    conn: Async<TcpStream>,
    started: Instant,
    pace: Duration,
) -> (Vec<u8>, Duration) {
    let head = upgrade_request("/echo", "");
    let trickle = async {
        for byte in &head {
            if (&conn).write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            Timer::after(pace).await;
        }
        future::pending().await
    };
    let answer = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match (&conn).read(&mut buf).await {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // Closing with our trickled bytes unread resets.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
                Err(e) => panic!("slowloris read: {e}"),
            }
        }
    };
    let out = future::or(answer, trickle).await;
    (out, started.elapsed())
}

#[test]
fn slowloris_heads_get_408_while_a_normal_client_is_served() {
    const CONNECTIONS: usize = 50;
    let timeout = Duration::from_secs(1);
    // The head is about 150 bytes: at this pace it would take 15 s.
    let pace = Duration::from_millis(100);
    // The server lingers up to 500 ms after its answer for the client to
    // close first; this one keeps trickling instead.
    let margin = Duration::from_secs(2);
    let _serial = serial();
    let server = Server::start(echo_config(
        "v",
        Limits::default().handshake_timeout(timeout),
    ));
    let addr = server.addr();
    let (slow, served_after) = block_on_timeout(LIMIT, async move {
        let started = Instant::now();
        let conns = join_all((0..CONNECTIONS).map(|_| Async::<TcpStream>::connect(addr))).await;
        let slow = join_all(
            conns
                .into_iter()
                .map(|c| slowloris(c.expect("connect"), started, pace)),
        );
        let normal = async {
            let mut ws = connect(addr, "/echo").await;
            ws.send(Message::text("not slow")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("not slow"));
            started.elapsed()
        };
        future::zip(slow, normal).await
    });
    let first_answer = slow.iter().map(|(_, at)| *at).min().unwrap();
    assert!(
        served_after < first_answer,
        "the normal client waited for the slowloris: served after {served_after:?}, first 408 after {first_answer:?}"
    );
    let mut answered = 0;
    for (i, (answer, at)) in slow.iter().enumerate() {
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408 "),
            "connection {i}: {:?}",
            String::from_utf8_lossy(answer)
        );
        answered += usize::from(!answer.is_empty());
        assert!(*at >= timeout, "connection {i} closed after {at:?}");
        assert!(*at < timeout + margin, "connection {i} closed after {at:?}");
    }
    let counters = server.handle.stats().unwrap();
    assert_eq!(counters.rejected_total, answered as u64, "{counters:?}");
    eprintln!(
        "slowloris: {answered}/{CONNECTIONS} answered 408, closes after {first_answer:?} to {:?}; normal client served after {served_after:?}",
        slow.iter().map(|(_, at)| *at).max().unwrap()
    );
}

// ---------------------------------------------------------------------------
// A client that sends without reading, against the real binary.

#[cfg(feature = "cli")]
mod non_reading {
    use std::io::{ErrorKind, Write};
    use std::time::{Duration, Instant};

    use futures_lite::StreamExt;
    use wsgate::Message;

    use super::support::gateway::Gateway;
    use super::support::{self, client_frame, connect, raw_ws, serial};

    const MIB: usize = 1 << 20;
    const FRAME: usize = 64 * 1024;
    const ATTEMPT: usize = 200 * MIB;
    /// A write that makes no progress for this long means the server has
    /// stopped reading and TCP pushes back.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
    /// What the server's peak RSS may grow by.
    const BOUND: usize = 64 * MIB;

    /// `VmHWM` (peak RSS) and `VmRSS` of the server, in bytes.
    fn memory(gw: &Gateway) -> (usize, usize) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/pid/status"))
                * 1024
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    fn mib(bytes: usize) -> f64 {
        bytes as f64 / MIB as f64
    }

    #[test]
    fn a_client_sending_200_mib_without_reading_cannot_grow_server_memory() {
        // Echo frames of 64 KiB, never reading the echoes.
        flood(&client_frame(0x82, &vec![0x5a; FRAME]), "echo");
    }

    /// Pongs do not go through the outbound queue, so they are bounded on
    /// their own: a peer that pings without reading the pongs is throttled
    /// by TCP too.
    #[test]
    fn a_client_pinging_200_mib_without_reading_the_pongs_cannot_grow_server_memory() {
        flood(&client_frame(0x89, &[0x5a; 125]), "ping");
    }

    fn flood(frame: &[u8], what: &str) {
        let _serial = serial();
        let dir = std::env::temp_dir().join(format!("wsgate-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.toml");
        // Default limits, spelled out: 1 MiB frames, messages and queue.
        std::fs::write(
            &config,
            r#"
[[vhost]]
name = "default"
listen = ["127.0.0.1:0"]

[vhost.limits]
max_frame_size = "1MiB"
max_message_size = "1MiB"
max_queue_bytes = "1MiB"

[[vhost.mount]]
path = "/echo"
protocol = "echo"
"#,
        )
        .unwrap();
        let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
        let (peak_before, rss_before) = memory(&gw);

        let mut s = raw_ws(gw.addr, "/echo");
        s.set_write_timeout(Some(WRITE_TIMEOUT)).unwrap();
        let started = Instant::now();
        let mut written = 0;
        let mut off = 0;
        let stopped_by = loop {
            if written >= ATTEMPT {
                break "nothing: all of it was written".to_owned();
            }
            match s.write(&frame[off..]) {
                Ok(n) => {
                    written += n;
                    off = (off + n) % frame.len();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break format!("TCP backpressure (no progress for {WRITE_TIMEOUT:?})");
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break format!("the server closed the connection ({e})"),
            }
        };
        let elapsed = started.elapsed();
        let (peak_after, rss_after) = memory(&gw);
        eprintln!(
            "non-reading {what} client: wrote {:.1} MiB of {:.0} MiB attempted in {elapsed:.2?}, stopped by {stopped_by}",
            mib(written),
            mib(ATTEMPT)
        );
        eprintln!(
            "server memory: RSS before {:.1} MiB, peak before {:.1} MiB, peak after {:.1} MiB (+{:.1} MiB), RSS after {:.1} MiB",
            mib(rss_before),
            mib(peak_before),
            mib(peak_after),
            mib(peak_after - peak_before),
            mib(rss_after)
        );
        assert!(
            written < ATTEMPT,
            "the server read all {} MiB",
            ATTEMPT / MIB
        );
        assert!(
            peak_after - peak_before < BOUND,
            "peak RSS grew by {:.1} MiB",
            mib(peak_after - peak_before)
        );

        // The server still serves others.
        let addr = gw.addr;
        support::run(async move {
            let mut ws = connect(addr, "/echo").await;
            ws.send(Message::text("still serving")).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text("still serving")
            );
        });
        drop(s);
        drop(gw);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Abrupt resets.

/// Closes `s` with a RST instead of a FIN (SO_LINGER with a zero timeout).
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

#[test]
fn a_thousand_abrupt_resets_leave_descriptors_at_the_baseline() {
    const PER_PHASE: usize = 250;
    let _serial = serial();
    let baseline = fd_baseline();
    // Sessions reset by the hundred before the server has seen every reset:
    // the per-address limit (256 by default) must not refuse the next ones.
    let server = Server::start(echo_config(
        "v",
        Limits::default().max_sessions_per_ip(4 * PER_PHASE),
    ));
    let addr = server.addr();

    // Mid-head: part of a request head, then a reset.
    let partial_head = &upgrade_request("/echo", "")[..40];
    for _ in 0..PER_PHASE {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(partial_head).unwrap();
        reset(s);
    }
    // Right after the 101.
    for _ in 0..PER_PHASE {
        reset(raw_ws(addr, "/echo"));
    }
    // Mid-frame: a header announcing 1000 bytes and 100 of them.
    let frame = client_frame(0x82, &[1u8; 1000]);
    for _ in 0..PER_PHASE {
        let mut s = raw_ws(addr, "/echo");
        s.write_all(&frame[..frame.len() - 900]).unwrap();
        reset(s);
    }
    // Mid-message: the first fragment of a message that never ends.
    let fragment = client_frame(0x02, &[2u8; 100]);
    for _ in 0..PER_PHASE {
        let mut s = raw_ws(addr, "/echo");
        s.write_all(&fragment).unwrap();
        reset(s);
    }

    // Nothing announces the last reset's processing but the counters.
    wait_until(Duration::from_secs(5), "connections gone", || {
        let c = server.handle.stats().unwrap();
        c.connections == 0 && c.sessions_open == 0
    });
    let counters = server.handle.stats().unwrap();
    assert_eq!(
        counters.sessions_total,
        3 * PER_PHASE as u64,
        "{counters:?}"
    );
    assert_eq!(
        counters.sessions_closed,
        3 * PER_PHASE as u64,
        "{counters:?}"
    );
    let report = server.shutdown();
    assert_eq!(report.forced, 0, "{report:?}");
    assert_eq!(report.tasks_forced, 0, "{report:?}");
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}

// ---------------------------------------------------------------------------
// A half-open peer.

/// Answers nothing and reports how each session ended.
struct Quiet(mpsc::Sender<CloseReason>);

impl Protocol for Quiet {
    type State = ();

    fn name(&self) -> &str {
        "quiet"
    }

    fn open(&self, _: &Request, _: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _: &mut (), _: &SessionHandle, _: Message) {}

    fn close(&self, _: (), _: &SessionHandle, reason: &CloseReason) {
        let _ = self.0.send(reason.clone());
    }
}

#[test]
fn a_half_open_peer_is_reaped_by_the_idle_timeout() {
    let (ping, idle, close) = (
        Duration::from_millis(100),
        Duration::from_millis(500),
        Duration::from_millis(300),
    );
    let margin = Duration::from_secs(2);
    let _serial = serial();
    let baseline = fd_baseline();
    let (tx, closed) = mpsc::channel();
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Quiet(tx))
        .mount(Mount::websocket("/q", ["quiet"]))
        .limits(
            Limits::default()
                .ping_interval(ping)
                .idle_timeout(idle)
                .close_timeout(close),
        )
        .build()
        .unwrap();
    let (server, control) =
        Server::start_controlled(Config::builder().vhost(vhost).build().unwrap());
    let vhost = control.with(|ctx| ctx.vhost("v").unwrap());

    // Timed from before the handshake: the server's clock starts later.
    let started = Instant::now();
    // The peer completes the handshake, then vanishes without a word: it
    // never reads, never writes, never closes.
    let mut peer = raw_ws(server.addr(), "/q");
    assert_eq!(vhost.session_count(), 1);
    // The close callback runs once the server has closed the socket.
    let reason = closed
        .recv_timeout(idle + close + margin)
        .expect("the half-open session was not reaped");
    let elapsed = started.elapsed();
    assert!(elapsed >= idle + close, "reaped after {elapsed:?}");
    assert_eq!(u16::from(reason.code), 1001, "{reason:?}");
    assert_eq!(reason.closed_by, ClosedBy::Server, "{reason:?}");
    assert!(!reason.clean, "{reason:?}");
    // Unregistered right after the callback, on the server's thread.
    wait_until(
        Duration::from_secs(1),
        "session and connection gone",
        || {
            let c = server.handle.stats().unwrap();
            vhost.session_count() == 0 && c.sessions_open == 0 && c.connections == 0
        },
    );

    // What the peer would have seen: pings, a Close 1001, then the FIN.
    let (bytes, end) = read_until_closed(&mut peer, Duration::from_secs(1));
    assert_eq!(end, TcpEnd::Eof);
    let frames = server_frames(&bytes);
    let (last, pings) = frames.split_last().unwrap();
    assert!(
        !pings.is_empty() && pings.iter().all(|f| f.first == 0x89),
        "{frames:?}"
    );
    assert_eq!(last.close_code(), Some(1001));

    drop((peer, vhost, control));
    let report = server.shutdown();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(open_fds(), baseline, "descriptors leaked");
}
