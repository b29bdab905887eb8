//! The `wsgate` binary as a child process: started with arguments, its
//! bound address read from its first line, signalled, and waited for.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `wsgate`; killed on drop if still running.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// The stdout lines after the listening ones.
    pub lines: mpsc::Receiver<String>,
}

impl Gateway {
    /// Starts the binary with `args` and waits for its address.
    pub fn start(args: &[&str]) -> Self {
        Self::start_listening(args, 1).0
    }

    /// Starts the binary with `args` and returns it with the addresses of its
    /// first `listeners` `wsgate listening on ADDR` lines.
    pub fn start_listening(args: &[&str], listeners: usize) -> (Self, Vec<SocketAddr>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("WSGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("WSGATE_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn wsgate");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gw = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
        };
        let addrs: Vec<SocketAddr> = (0..listeners.max(1))
            .map(|_| {
                gw.line("wsgate listening on ")
                    .parse()
                    .expect("listening address")
            })
            .collect();
        gw.addr = addrs[0];
        (gw, addrs)
    }

    /// The server's process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the next stdout line that starts with `prefix`, skipping
    /// others; panics after 20 s.
    pub fn line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Sends `sig` (`-INT`, `-TERM`, `-HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for exit and returns the exit code; a watchdog kills the
    /// process if it has not exited within 20 s (the code is then -1).
    pub fn wait(&mut self) -> i32 {
        let (done, watchdog) = mpsc::channel::<()>();
        let pid = self.child.id().to_string();
        let dog = std::thread::spawn(move || {
            if watchdog.recv_timeout(Duration::from_secs(20)).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let status = self.child.wait().unwrap();
        let _ = done.send(());
        dog.join().unwrap();
        status.code().unwrap_or(-1)
    }

    /// The lines not yet taken, up to the end of the output: after `wait`,
    /// the last ones may still be on their way from the reader thread.
    pub fn rest(&self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(20)) {
            rest.push(line);
        }
        rest
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
