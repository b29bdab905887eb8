//! `examples/foreign_loop.rs`, run as a user runs it: `cargo run --example
//! foreign_loop` in a child process, with a real WebSocket client connected.
//! The client must receive the readings the host's worker thread pushes, then
//! Close 1001 when `--seconds` elapse; the example must exit 0 after draining
//! that session cleanly.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wsgate::{CloseCode, Message};

/// Time for `cargo run` to build the example (a cold build of the crate on a
/// slow machine) and print its address.
const START_LIMIT: Duration = Duration::from_secs(600);

/// Time for the client's part: `--seconds 3` of readings, then the close.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// Time for the example to exit after it closed the session.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn pushes_readings_then_closes_1001_and_drains_clean() {
    let mut example = Example::start(&["--listen", "127.0.0.1:0", "--seconds", "3"]);
    let addr = example.address();

    let (readings, close) = support::block_on_timeout(CLIENT_LIMIT, async {
        let mut ws = support::connect(addr, "/temperature").await;
        let mut readings = Vec::new();
        let close = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value = text
                        .strip_prefix("temperature ")
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or_else(|| panic!("not a reading: {text:?}"));
                    readings.push(value);
                }
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(other)) => panic!("unexpected message: {other:?}"),
                Some(Err(e)) => panic!("websocket error before the Close frame: {e}"),
                None => panic!("connection ended without a Close frame"),
            }
        };
        // Let the close handshake finish: the client's answer goes out on the
        // next poll, then the server closes TCP.
        while let Some(Ok(_)) = ws.next().await {}
        (readings, close)
    });
    assert!(
        readings.len() >= 2,
        "expected at least 2 readings in 3 s, got {readings:?}"
    );
    let close = close.expect("the Close frame carries a code");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");

    let status = example.wait(EXIT_LIMIT);
    let stdout = example.rest_of_stdout();
    assert!(status.success(), "the example exited with {status}");
    let drain = stdout
        .iter()
        .find_map(|l| l.strip_prefix("drain: "))
        .unwrap_or_else(|| panic!("no drain line in {stdout:#?}"));
    assert!(
        drain.starts_with("1 clean, 0 aborted, 0 forced"),
        "drain: {drain}"
    );
}

/// The example as a child process; killed on drop if still running, so that a
/// failing test leaves nothing behind.
struct Example {
    child: Child,
    lines: Receiver<String>,
    stdout: Option<thread::JoinHandle<()>>,
    seen: Vec<String>,
}

impl Example {
    fn start(args: &[&str]) -> Self {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // `cargo run` replaces itself with the example on Unix, so `child` is
        // the example once it runs.
        let mut child = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", "--quiet", "--example", "foreign_loop"])
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start cargo");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        // The harness captures these threads' output too, and shows it if the
        // test fails.
        let stdout = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[example stdout] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[example stderr] {line}");
            }
        });
        Self {
            child,
            lines,
            stdout: Some(stdout),
            seen: Vec::new(),
        }
    }

    /// Waits for the `listening on ADDR` line.
    fn address(&mut self) -> SocketAddr {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let addr = line.strip_prefix("listening on ").map(str::parse);
                    self.seen.push(line);
                    if let Some(addr) = addr {
                        return addr.expect("listening on an address");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the example did not print its address within {START_LIMIT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(EXIT_LIMIT);
                    panic!("the example ended before listening ({status})")
                }
            }
        }
    }

    /// Waits for the process to exit; panics (and kills it) after `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stdout line, once the process has exited.
    fn rest_of_stdout(&mut self) -> Vec<String> {
        if let Some(t) = self.stdout.take() {
            t.join().expect("stdout reader");
        }
        self.seen.extend(self.lines.try_iter());
        self.seen.clone()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
