//! An example as a child process (`cargo run --example NAME`): its address
//! read from its `listening on ADDR` line, its stdout kept, its exit awaited.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Time for `cargo run` to build the example (a cold build of the crate on a
/// slow machine) and print its address.
pub const START_LIMIT: Duration = Duration::from_secs(600);

/// Time for an example to exit once its work is done.
pub const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// The example as a child process; killed on drop if still running, so that a
/// failing test leaves nothing behind.
pub struct Example {
    child: Child,
    lines: Receiver<String>,
    stdout: Option<thread::JoinHandle<()>>,
    stderr: Option<thread::JoinHandle<()>>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    seen: Vec<String>,
}

impl Example {
    /// Starts `cargo run --example NAME -- ARGS`.
    pub fn start(name: &str, args: &[&str]) -> Self {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // `cargo run` replaces itself with the example on Unix, so `child` is
        // the example once it runs.
        let mut child = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", "--quiet", "--example", name])
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
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let kept = stderr_lines.clone();
        let stderr = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[example stderr] {line}");
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            stdout: Some(stdout),
            stderr: Some(stderr),
            stderr_lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the `listening on ADDR` line.
    pub fn address(&mut self) -> SocketAddr {
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

    /// Sends SIGINT, as Ctrl-C in a terminal would: the example begins its
    /// graceful teardown.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -INT failed: {status}");
    }

    /// Waits for the process to exit; panics (and kills it) after `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
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

    /// The stdout lines read so far: those up to `listening on ADDR` once
    /// [`address`](Self::address) has returned.
    pub fn stdout_so_far(&self) -> &[String] {
        &self.seen
    }

    /// Every stdout line, once the process has exited.
    pub fn rest_of_stdout(&mut self) -> Vec<String> {
        if let Some(t) = self.stdout.take() {
            t.join().expect("stdout reader");
        }
        self.seen.extend(self.lines.try_iter());
        self.seen.clone()
    }

    /// Every stderr line, once the process has exited.
    pub fn stderr(&mut self) -> Vec<String> {
        if let Some(t) = self.stderr.take() {
            t.join().expect("stderr reader");
        }
        self.stderr_lines.lock().unwrap().clone()
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
