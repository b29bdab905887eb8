//! The `wsgate` binary as a user runs it: it serves /echo and /healthz, SIGINT
//! drains cleanly and exits 0, a second signal forces exit 130,
//! configuration errors name the key and the line, `--listen` errors give an
//! example, a vhost without mounts is warned about, and logs carry no colour
//! codes when stderr is not a terminal.

#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::gateway::Gateway;
use wsgate::Message;

#[test]
fn echo_then_ctrl_c_drains_cleanly_and_exits_zero() {
    let mut gw = Gateway::start(&["--listen", "127.0.0.1:0"]);
    let addr = gw.addr;
    let mut ws = support::run(async move {
        let mut ws = support::connect(addr, "/echo").await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![1u8, 2, 3])
        );
        ws
    });
    let health = support::raw_http(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    gw.signal("-INT");
    support::run(async move {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected Close 1001, got {other:?}"),
        }
        while let Some(Ok(_)) = ws.next().await {}
    });
    assert_eq!(gw.wait(), 0);
    let drained: Vec<String> = gw.rest();
    assert!(
        drained
            .iter()
            .any(|l| l.starts_with("wsgate drained: 1 clean, 0 aborted, 0 forced")),
        "{drained:?}"
    );
}

#[test]
fn second_signal_forces_exit_130() {
    let mut gw = Gateway::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "60s"]);
    // A peer that completes the handshake and then never reads or answers:
    // the drain would wait for it until the deadline.
    let mut raw = TcpStream::connect(gw.addr).unwrap();
    raw.write_all(&support::upgrade_request("/echo", ""))
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");

    gw.signal("-TERM");
    // The first signal is being handled once the server's Close 1001 arrives
    // (it follows the rest of the 101 head; look for the 0x88 opcode).
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.contains(&0x88u8) {
        let n = raw.read(&mut buf).expect("close frame");
        assert!(n > 0, "connection closed before the Close frame");
        seen.extend_from_slice(&buf[..n]);
    }
    gw.signal("-INT");
    assert_eq!(gw.wait(), 130);
}

#[test]
fn config_errors_name_the_key_and_line() {
    let dir = std::env::temp_dir().join(format!("wsgate-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n\n[vhost.limits]\nmax_frame_sise = 10\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("vhost.limits.max_frame_sise"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_file_mounts_are_served() {
    let dir = std::env::temp_dir().join(format!("wsgate-cfg-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ok.toml");
    std::fs::write(
        &path,
        r#"
[[vhost]]
name = "main"
listen = ["127.0.0.1:0"]
[vhost.limits]
max_message_size = "64KiB"
max_frame_size = "64KiB"
[[vhost.mount]]
path = "/ws"
protocol = "echo"
"#,
    )
    .unwrap();
    let mut gw = Gateway::start(&["--config", path.to_str().unwrap()]);
    let addr = gw.addr;
    support::run(async move {
        let mut ws = support::connect(addr, "/ws").await;
        ws.send(Message::text("configured")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("configured")
        );
        // Over the configured message limit: the server fails the connection with 1009.
        ws.send(Message::binary(vec![0u8; 70 * 1024]))
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1009),
            other => panic!("expected Close 1009, got {other:?}"),
        }
    });
    let nope = support::raw_http(addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(nope.status, 404);
    gw.signal("-INT");
    assert_eq!(gw.wait(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_example_configs_load() {
    for file in ["examples/wsgate.toml", "examples/autobahn.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = wsgate::load_toml(&text, &wsgate::ProtocolRegistry::builtin());
        assert!(cfg.is_ok(), "{file}: {}", cfg.unwrap_err());
    }
}

#[test]
fn example_config_requires_the_token_and_an_allowed_origin() {
    let dir = std::env::temp_dir().join(format!("wsgate-cfg-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tok.toml");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wsgate.toml"),
    )
    .unwrap();
    std::fs::write(&path, text).unwrap();
    let mut gw = Gateway::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = gw.addr;
    let no_token = support::raw_http(addr, &support::upgrade_request("/echo", ""));
    assert_eq!(no_token.status, 401);
    assert_eq!(
        no_token.header("www-authenticate").as_deref(),
        Some("Bearer")
    );
    let wrong = support::raw_http(addr, &support::upgrade_request("/echo?token=nope", ""));
    assert_eq!(wrong.status, 403);
    let foreign = support::raw_http(
        addr,
        &support::upgrade_request("/echo?token=change-me", "Origin: https://evil.example\r\n"),
    );
    assert_eq!(
        (foreign.status, foreign.body.as_str()),
        (403, "origin not allowed\n")
    );
    support::run(async move {
        let mut ws = support::connect(addr, "/echo?token=change-me").await;
        ws.send(Message::text("authorized")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("authorized")
        );
        let bearer = tungstenite::http::Request::builder()
            .uri(format!("ws://{addr}/echo"))
            .header("Host", addr.to_string())
            .header("Origin", "http://localhost:7681")
            .header("Authorization", "Bearer change-me")
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        support::try_connect(addr, bearer)
            .await
            .expect("bearer token accepted");
    });
    gw.signal("-INT");
    assert_eq!(gw.wait(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs the binary with `args` and `env`, stderr piped (not a terminal),
/// until a stderr line contains `until` (or 20 s pass); kills it and returns
/// its stderr so far.
fn stderr_until(args: &[&str], env: &[(&str, &str)], until: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args(args)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn wsgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.push_str(&line);
        text.push('\n');
        if line.contains(until) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let logs = stderr_until(&["--listen", "127.0.0.1:0"], &[], "serving");
    assert!(logs.contains("serving"), "{logs}");
    assert!(!logs.contains("\x1b["), "ANSI escape codes in {logs:?}");
}

#[test]
fn listen_errors_show_an_example_and_host_names_resolve() {
    for bad in ["localhost", "7681", "127.0.0.1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("an IP:PORT such as 127.0.0.1:7681"),
            "{bad}: {err}"
        );
        assert!(!err.contains("invalid socket address syntax"), "{err}");
    }
    let mut gw = Gateway::start(&["--listen", "localhost:0"]);
    assert!(gw.addr.ip().is_loopback(), "{}", gw.addr);
    gw.signal("-INT");
    assert_eq!(gw.wait(), 0);
}

#[test]
fn a_vhost_without_mounts_is_warned_about() {
    let dir = std::env::temp_dir().join(format!("wsgate-cfg-nomount-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nomount.toml");
    std::fs::write(
        &path,
        "[[vhost]]\nname = \"served\"\nlisten = [\"127.0.0.1:0\"]\n\n[[vhost.mount]]\npath = \"/echo\"\nprotocol = \"echo\"\n\n\
         [[vhost]]\nname = \"empty\"\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let logs = stderr_until(
        &["--config", path.to_str().unwrap()],
        &[],
        "vhost has no mounts",
    );
    let warning = logs
        .lines()
        .find(|l| l.contains("vhost has no mounts"))
        .unwrap_or_else(|| panic!("no warning in {logs}"));
    assert!(
        warning.contains("WARN") && warning.contains("empty"),
        "{warning}"
    );
    assert!(!logs.contains("vhost=served"), "{logs}");
    std::fs::remove_dir_all(&dir).unwrap();
}
