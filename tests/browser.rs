//! The demo page in a real browser: the `wsgate` binary with its built-in
//! configuration serves `/`, and `tests/browser/demo.mjs` drives Debian's
//! headless Chromium through Playwright to use every panel (increment and
//! Reset, echo, broadcast chat between two browser contexts, pub/sub, live
//! status, the endpoints panel) and the page's "server unreachable" state,
//! checks that Chromium negotiated permessage-deflate (a socket's
//! `extensions`, and the server's compression counters in `/metrics`: the
//! built-in configuration compresses in shared mode), and saves a full-page
//! screenshot to `target/demo-screenshot.png`. A second test serves the page
//! over https from `examples/wsgate-tls.toml` (a certificate for localhost
//! made with rcgen at test time) and uses its `wss://` panels
//! (`target/demo-https-screenshot.png`).
//!
//! Needs `/usr/bin/chromium`, `node`, and `tests/browser/node_modules`
//! (`.ci/browser.sh` installs all three), so it is `#[ignore]`d: a plain
//! `cargo test` lists it as ignored, with the reason, in its summary line.
//! Run it with
//!
//! ```text
//! .ci/browser.sh && cargo test --test browser -- --ignored
//! ```
//!
//! as `.ci/run` does; then a missing prerequisite is a failure, not a skip.

#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
/// demo.mjs bounds every step and its whole run (120 s); this is the
/// backstop should node itself hang.
const NODE_DEADLINE: Duration = Duration::from_secs(180);

#[test]
#[ignore = "needs Chromium and Playwright: run .ci/browser.sh, then cargo test --test browser -- --ignored"]
fn demo_page_works_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Err(missing) = browser_prerequisites(root) {
        panic!("{missing}; run .ci/browser.sh to install Chromium and Playwright");
    }

    let gateway = Gateway::start(&["--listen", "127.0.0.1:0"]);
    let url = format!("http://{}/", gateway.addr);
    run_demo(root, &url, "demo-screenshot.png", &[]);
}

/// The same page over https, from `examples/wsgate-tls.toml` (copied beside
/// a certificate for localhost made at test time): its panels speak wss://.
/// Chromium is told to accept the test certificate for this test only.
#[test]
#[ignore = "needs Chromium and Playwright: run .ci/browser.sh, then cargo test --test browser -- --ignored"]
fn demo_page_works_over_https_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Err(missing) = browser_prerequisites(root) {
        panic!("{missing}; run .ci/browser.sh to install Chromium and Playwright");
    }
    let dir = support::tls::temp_dir("browser-tls");
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let ca = support::tls::Ca::new("wsgate browser test CA");
    let leaf = ca.server(&["localhost", "127.0.0.1"], 1);
    std::fs::write(dir.join("certs/server.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("certs/server.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("certs/ca.pem"), ca.pem()).unwrap();
    let config = dir.join("wsgate-tls.toml");
    std::fs::copy(root.join("examples/wsgate-tls.toml"), &config).unwrap();

    let gateway = Gateway::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let url = format!("https://localhost:{}/", gateway.addr.port());
    let ca_file = dir.join("certs/ca.pem");
    run_demo(
        root,
        &url,
        "demo-https-screenshot.png",
        &[
            ("IGNORE_HTTPS_ERRORS", "1"),
            ("NODE_EXTRA_CA_CERTS", ca_file.to_str().unwrap()),
        ],
    );
}

/// Runs demo.mjs against `url` and checks its screenshot.
fn run_demo(root: &Path, url: &str, shot: &str, env: &[(&str, &str)]) {
    let screenshot = target_dir().join(shot);
    let _ = std::fs::remove_file(&screenshot);
    let out = run_with_deadline(
        Command::new("node")
            .current_dir(root)
            .arg("tests/browser/demo.mjs")
            .arg(url)
            .arg(&screenshot)
            .envs(env.iter().copied()),
        NODE_DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by the test harness with --nocapture or on failure.
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "demo.mjs failed ({}) against {url}:\n{stdout}{stderr}",
        out.status
    );

    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    let (width, height) =
        png_size(&png).unwrap_or_else(|| panic!("{} is not a PNG", screenshot.display()));
    assert!(
        png.len() > 20_000 && width >= 800 && height >= 600,
        "{} looks empty: {} bytes, {width}x{height}",
        screenshot.display(),
        png.len()
    );
    println!(
        "screenshot: {} ({width}x{height}, {} bytes)",
        screenshot.display(),
        png.len()
    );
}

/// What is missing for the browser test, if anything.
fn browser_prerequisites(root: &Path) -> Result<(), String> {
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("{CHROMIUM} is missing (Debian package chromium)"));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Err("node is not on PATH".to_owned());
    }
    let playwright = root.join("tests/browser/node_modules/playwright-core");
    if !playwright.exists() {
        return Err(format!(
            "{} is missing (npm ci in tests/browser)",
            playwright.display()
        ));
    }
    Ok(())
}

/// The cargo target directory (`target/`, or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// Runs `cmd` to completion, collecting its output; a watchdog kills it if
/// it is still running after `deadline`.
fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let pid = child.id().to_string();
    let (done, watchdog) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if watchdog.recv_timeout(deadline).is_err() {
            eprintln!("demo.mjs still running after {deadline:?}; killing it");
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let out = child.wait_with_output().expect("wait for node");
    let _ = done.send(());
    dog.join().unwrap();
    out
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || !png.starts_with(SIGNATURE) || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

/// The `wsgate` binary started with `args` (an ephemeral port), killed when
/// dropped.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wsgate");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Keeps reading so that the gateway never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first: String = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("wsgate printed no listening line");
        let addr = first
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
