//! The `wsgate` binary as a child process: started with arguments, its
//! bound address read from its first line, signalled, and waited for.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `wsgate`; killed on drop if still running.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// The stdout lines after the first (`wsgate listening on ADDR`).
    pub lines: mpsc::Receiver<String>,
}

impl Gateway {
    /// Starts the binary with `args` and waits for its address.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("no listening line");
        let addr = first
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        Self { child, addr, lines }
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
