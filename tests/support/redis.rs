//! A real `redis-server` for the cluster tests: started per test on a Unix
//! socket in a fresh directory (or a free TCP port), persistence off,
//! killed on drop. Without `redis-server` the tests fail when `CI` is set
//! (`.ci/run` installs it) and are skipped loudly elsewhere.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SERVER: &str = "redis-server";

/// A running `redis-server`.
pub struct Redis {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    port: Option<u16>,
}

impl Redis {
    /// Starts one on a Unix socket; `None` (after a loud message) when
    /// `redis-server` is missing and `CI` is not set.
    pub fn start() -> Option<Self> {
        Self::start_on(None)
    }

    /// Starts one on a free TCP port of 127.0.0.1 (and a Unix socket).
    pub fn start_tcp() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(Some(port))
    }

    fn start_on(port: Option<u16>) -> Option<Self> {
        if Command::new(SERVER).arg("--version").output().is_err() {
            let why = "redis-server is not installed (apt-get install redis-server)";
            assert!(
                std::env::var_os("CI").is_none(),
                "{why}: the cluster tests need it in CI"
            );
            // Straight to stderr: the test harness captures `eprintln!`
            // of a passing test, and this must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: {why}; the cluster tests did not run ***\n"
            );
            return None;
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let socket = dir.join("redis.sock");
        let mut r = Self {
            child: None,
            dir,
            socket,
            port,
        };
        r.restart();
        Some(r)
    }

    /// The URL the brokers use.
    pub fn url(&self) -> String {
        match self.port {
            Some(p) => format!("redis://127.0.0.1:{p}/0"),
            None => format!("unix://{}", self.socket.display()),
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts the server (again) on the same socket and port, empty, and
    /// waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.unwrap_or(0).to_string();
        let child = Command::new(SERVER)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::yield_now();
        }
    }

    /// Whether the server answers PING on its socket.
    fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Runs one command (inline form) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("redis socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
