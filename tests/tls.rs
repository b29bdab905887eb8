//! TLS (`wss://`): per-vhost certificates chosen by SNI on one port, 421
//! when `Host` and SNI disagree, hostile peers closed within the handshake
//! timeout without delaying anyone, mutual TLS seen by `open`, and a
//! certificate reload that keeps open sessions. Certificates are made with
//! rcgen at test time; every client talks over a real loopback socket.

#![cfg(feature = "tls")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_util::StreamExt;
use support::tls::{Ca, client_config, serial_bytes, server_serial, temp_dir, tls_connect, wss};
use support::{Server, run};
use wsgate::config::{ClientAuth, TlsConfig};
use wsgate::{
    Config, Limits, Message, Mount, Protocol, Reject, Request, Response, SessionHandle, Vhost,
    VhostConfig, protocols::Echo,
};

/// A TLS vhost on `addr` with its certificate in `dir/NAME.{pem,key}`,
/// answering `/who` with its name and echoing on `/echo`.
fn tls_vhost(name: &str, addr: &str, hosts: &[&str], dir: &Path) -> wsgate::VhostBuilder {
    let mut b = VhostConfig::builder(name)
        .listen(addr.parse().unwrap())
        .tls(TlsConfig::from_pem_files(
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        ))
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .mount(Mount::http("/who", |_: &Request, v: &Vhost| {
            Response::text(200, v.name().to_owned())
        }));
    for h in hosts {
        b = b.host(*h);
    }
    b
}

/// One HTTP/1.1 GET over TLS (SNI `sni`, `Host: host`): status and body.
async fn https_get(addr: SocketAddr, sni: &str, host: &str, path: &str, ca: &Ca) -> (u16, String) {
    let mut tls = tls_connect(addr, sni, &client_config(ca, None))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn sni_chooses_the_vhost_and_its_certificate_and_host_must_agree() {
    let dir = temp_dir("tls-sni");
    let ca = Ca::new("test ca");
    ca.server(&["a.test"], 1).write(&dir, "a");
    ca.server(&["b.test", "*.b.test"], 2).write(&dir, "b");
    // The default vhost's certificate also names c.test, so that a client
    // asking for a name no vhost has can verify what it gets.
    ca.server(&["default.test", "c.test"], 3)
        .write(&dir, "default");
    // Three vhosts on 127.0.0.1:0 share one listener.
    let config = Config::builder()
        .vhost(
            tls_vhost("a", "127.0.0.1:0", &["a.test"], &dir)
                .build()
                .unwrap(),
        )
        .vhost(
            tls_vhost("b", "127.0.0.1:0", &["b.test", "*.b.test"], &dir)
                .build()
                .unwrap(),
        )
        .vhost(
            tls_vhost("default", "127.0.0.1:0", &[], &dir)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let server = Server::start(config);
    let addr = server.addr();

    run(async {
        for (sni, serial, name) in [
            ("a.test", 1, "a"),
            ("b.test", 2, "b"),
            ("x.b.test", 2, "b"),
            ("c.test", 3, "default"),
        ] {
            let tls = tls_connect(addr, sni, &client_config(&ca, None))
                .await
                .unwrap();
            assert_eq!(server_serial(&tls), serial_bytes(serial), "{sni}");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            drop(tls);
            assert_eq!(
                https_get(addr, sni, sni, "/who", &ca).await,
                (200, name.to_owned()),
                "{sni}"
            );
        }
        // SNI chose a (the client verified a's certificate), Host asks for
        // b: 421, for plain HTTP and for a WebSocket handshake alike.
        let (status, body) = https_get(addr, "a.test", "b.test", "/who", &ca).await;
        assert_eq!(status, 421);
        assert!(body.contains("misdirected"), "{body}");
        let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
            .await
            .unwrap();
        match wss(tls, "b.test", "/echo").await {
            Err(tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 421);
            }
            other => panic!("expected 421, got {:?}", other.map(|_| ())),
        }
        // A wss session on a.
        let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
            .await
            .unwrap();
        let mut ws = wss(tls, "a.test", "/echo").await.unwrap();
        ws.send(Message::text("over tls")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
        let big = "x".repeat(100_000);
        ws.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(big));
        ws.close(None).await.unwrap();
    });
    let stats = server.handle.stats().unwrap();
    assert_eq!(stats.rejected.get(&421), Some(&2));
    server.shutdown();
}

/// Reads until EOF or reset; how long that took.
fn closed_after(mut s: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("still open after {limit:?}")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

#[test]
fn hostile_peers_are_closed_within_the_handshake_timeout_and_delay_no_one() {
    let dir = temp_dir("tls-hostile");
    let ca = Ca::new("test ca");
    ca.server(&["a.test"], 1).write(&dir, "a");
    let timeout = Duration::from_millis(1500);
    let limits = Limits::default().handshake_timeout(timeout);
    let vhost = tls_vhost("a", "127.0.0.1:0", &["a.test"], &dir)
        .limits(limits)
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();

    let started = Instant::now();
    // Silent: TCP open, nothing sent.
    let silent = TcpStream::connect(addr).unwrap();
    // Plain HTTP to the TLS port.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .write_all(b"GET /who HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    // Garbage.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(&[0xff; 64]).unwrap();
    // A TLS record header announcing a ClientHello that never comes whole.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .unwrap();

    // Meanwhile a real client is served at once.
    run(async {
        let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
            .await
            .unwrap();
        let mut ws = wss(tls, "a.test", "/echo").await.unwrap();
        ws.send(Message::text("unbothered")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("unbothered")
        );
    });
    let served = started.elapsed();
    assert!(
        served < timeout,
        "the good client waited {served:?}, as long as the handshake timeout"
    );

    // Plain HTTP is told, in HTTP, to use TLS.
    let mut answer = String::new();
    plain.set_read_timeout(Some(timeout * 4)).unwrap();
    let _ = plain.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && answer.ends_with("\r\n\r\nthis port speaks TLS: use https:// or wss://\n"),
        "{answer:?}"
    );
    let limit = timeout * 4;
    for (what, s) in [
        ("garbage", garbage),
        ("silent", silent),
        ("stalled", stalled),
    ] {
        let closed = closed_after(s, limit);
        eprintln!("{what}: closed after {:?}", started.elapsed());
        let _ = closed;
    }
    // Nothing stayed open past the timeout (and some margin for the loop).
    assert!(started.elapsed() < timeout + Duration::from_secs(2));

    let failures = server.handle.stats().unwrap().tls_handshake_failures;
    assert_eq!(failures.get("not_tls"), Some(&2), "{failures:?}");
    assert_eq!(failures.get("timeout"), Some(&2), "{failures:?}");
    let text = server.handle.stats().unwrap().prometheus();
    assert!(
        text.contains("wsgate_tls_handshake_failures_total{reason=\"timeout\"} 2"),
        "{text}"
    );
    server.shutdown();
}

/// A protocol that admits clients by their certificate's common name and
/// answers every message with it.
struct Whoami {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Protocol for Whoami {
    type State = String;

    fn name(&self) -> &str {
        "whoami"
    }

    fn open(&self, request: &Request, _session: &SessionHandle) -> Result<String, Reject> {
        let cn = request
            .peer_certificates()
            .first()
            .and_then(|c| c.subject_common_name())
            .map(str::to_owned);
        let tls = request.tls().expect("a TLS request");
        assert_eq!(tls.sni(), Some("a.test"));
        assert_eq!(tls.alpn(), Some(&b"http/1.1"[..]));
        match cn {
            Some(cn) => {
                self.seen.lock().unwrap().push(cn.clone());
                Ok(cn)
            }
            None => Err(Reject::forbidden("a client certificate is required")),
        }
    }

    fn message(&self, state: &mut String, session: &SessionHandle, _message: Message) {
        let _ = session.try_send(Message::text(state.clone()));
    }
}

fn mtls_server(dir: &Path, ca: &Ca, auth: ClientAuth) -> (Server, Arc<Mutex<Vec<String>>>) {
    std::fs::write(dir.join("clients.pem"), ca.pem()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let vhost = VhostConfig::builder("a")
        .listen("127.0.0.1:0".parse().unwrap())
        .host("a.test")
        .tls(
            TlsConfig::from_pem_files(dir.join("a.pem"), dir.join("a.key"))
                .client_ca(dir.join("clients.pem"))
                .client_auth(auth),
        )
        .protocol(Whoami { seen: seen.clone() })
        .mount(Mount::websocket("/who", ["whoami"]))
        .build()
        .unwrap();
    (
        Server::start(Config::builder().vhost(vhost).build().unwrap()),
        seen,
    )
}

#[test]
fn mutual_tls_required_refuses_clients_without_a_certificate_and_open_sees_the_subject() {
    let dir = temp_dir("tls-mtls");
    let ca = Ca::new("test ca");
    ca.server(&["a.test"], 1).write(&dir, "a");
    let (server, seen) = mtls_server(&dir, &ca, ClientAuth::Required);
    let addr = server.addr();
    let alice = ca.client("alice.clients.test");
    let stranger = Ca::new("another ca").client("mallory");

    run(async {
        // No certificate: the TLS layer refuses (with TLS 1.3 the client
        // learns it at its first read, so the WebSocket handshake fails).
        let refused = match tls_connect(addr, "a.test", &client_config(&ca, None)).await {
            Err(_) => true,
            Ok(tls) => wss(tls, "a.test", "/who").await.is_err(),
        };
        assert!(refused);
        // A certificate from another CA: refused too.
        let refused = match tls_connect(addr, "a.test", &client_config(&ca, Some(&stranger))).await
        {
            Err(_) => true,
            Ok(tls) => wss(tls, "a.test", "/who").await.is_err(),
        };
        assert!(refused);
        // Alice's: `open` sees her subject.
        let tls = tls_connect(addr, "a.test", &client_config(&ca, Some(&alice)))
            .await
            .unwrap();
        let mut ws = wss(tls, "a.test", "/who").await.unwrap();
        ws.send(Message::text("who am I?")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("alice.clients.test")
        );
    });
    assert_eq!(*seen.lock().unwrap(), ["alice.clients.test"]);
    let failures = server.handle.stats().unwrap().tls_handshake_failures;
    assert_eq!(failures.get("client_certificate"), Some(&2), "{failures:?}");
    server.shutdown();
}

#[test]
fn mutual_tls_optional_lets_clients_without_a_certificate_reach_open() {
    let dir = temp_dir("tls-mtls-optional");
    let ca = Ca::new("test ca");
    ca.server(&["a.test"], 1).write(&dir, "a");
    let (server, _seen) = mtls_server(&dir, &ca, ClientAuth::Optional);
    let addr = server.addr();
    run(async {
        // `open` refuses it (Whoami wants a name), but it got that far.
        let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
            .await
            .unwrap();
        match wss(tls, "a.test", "/who").await {
            Err(tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 403);
            }
            other => panic!("expected 403 from open, got {:?}", other.map(|_| ())),
        }
    });
    server.shutdown();
}

#[test]
fn a_certificate_reload_keeps_open_sessions_and_new_handshakes_see_the_new_one() {
    let dir = temp_dir("tls-reload");
    let ca = Ca::new("test ca");
    ca.server(&["a.test"], 1).write(&dir, "a");
    let build = |dir: &Path| tls_vhost("a", "127.0.0.1:0", &["a.test"], dir).build();
    let (server, control) = Server::start_controlled(
        Config::builder()
            .vhost(build(&dir).unwrap())
            .build()
            .unwrap(),
    );
    let addr = server.addr();

    run(async {
        let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
            .await
            .unwrap();
        assert_eq!(server_serial(&tls), serial_bytes(1));
        let mut before = wss(tls, "a.test", "/echo").await.unwrap();
        before.send(Message::text("one")).await.unwrap();
        assert_eq!(before.next().await.unwrap().unwrap(), Message::text("one"));

        // Unchanged files: nothing to do.
        let same = build(&dir).unwrap();
        let outcome = control.with(move |ctx| ctx.reconfigure(vec![same]).unwrap());
        assert!(outcome.is_empty(), "{outcome}");

        // A bad key is refused when the vhost is built, naming the file:
        // nothing reaches the running context.
        std::fs::write(dir.join("a.key"), "not a key\n").unwrap();
        let e = build(&dir).unwrap_err();
        assert_eq!(e.key, "vhost.a.tls.key");
        assert!(e.reason.contains("a.key"), "{e}");

        // The certificate rotated under the same paths.
        ca.server(&["a.test"], 2).write(&dir, "a");
        let next = build(&dir).unwrap();
        let outcome = control.with(move |ctx| ctx.reconfigure(vec![next]).unwrap());
        assert_eq!(outcome.certificates, ["a"], "{outcome}");
        assert!(outcome.replaced.is_empty() && outcome.unchanged.is_empty());
        assert_eq!(outcome.to_string(), "*vhost a certificates");

        // The session opened before still echoes...
        before.send(Message::text("two")).await.unwrap();
        assert_eq!(before.next().await.unwrap().unwrap(), Message::text("two"));
        // ...and a new handshake sees the new certificate.
        let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
            .await
            .unwrap();
        assert_eq!(server_serial(&tls), serial_bytes(2));
        let mut after = wss(tls, "a.test", "/echo").await.unwrap();
        after.send(Message::text("three")).await.unwrap();
        assert_eq!(after.next().await.unwrap().unwrap(), Message::text("three"));
    });
    server.shutdown();
}

#[test]
fn bad_files_are_refused_at_build_naming_the_vhost_the_file_and_the_problem() {
    let dir = temp_dir("tls-bad");
    let ca = Ca::new("test ca");
    let a = ca.server(&["a.test"], 1);
    let b = ca.server(&["b.test"], 2);
    a.write(&dir, "a");
    b.write(&dir, "b");
    std::fs::write(dir.join("text.pem"), "hello\n").unwrap();
    let build = |cert: &str, key: &str| {
        VhostConfig::builder("v")
            .listen("127.0.0.1:0".parse().unwrap())
            .tls(TlsConfig::from_pem_files(dir.join(cert), dir.join(key)))
            .build()
            .unwrap_err()
    };
    let e = build("missing.pem", "a.key");
    assert_eq!(e.key, "vhost.v.tls.cert");
    assert!(
        e.reason.ends_with("missing.pem: cannot read: no such file"),
        "{e}"
    );
    let e = build("text.pem", "a.key");
    assert_eq!(e.key, "vhost.v.tls.cert");
    assert!(
        e.reason.contains("text.pem: no certificate in the file"),
        "{e}"
    );
    let e = build("a.pem", "a.pem");
    assert_eq!(e.key, "vhost.v.tls.key");
    assert!(
        e.reason.contains("a.pem: no private key in the file"),
        "{e}"
    );
    let e = build("a.pem", "b.key");
    assert_eq!(e.key, "vhost.v.tls.key");
    assert!(
        e.reason
            .contains("b.key: does not match the certificate in"),
        "{e}"
    );
    // A directory is not a PEM file (and a device is never read).
    let e = build(".", "a.key");
    assert!(e.reason.ends_with(": not a regular file"), "{e}");
}

#[test]
fn a_listener_is_either_tls_or_plain() {
    let dir = temp_dir("tls-mixed");
    let ca = Ca::new("test ca");
    ca.server(&["a.test"], 1).write(&dir, "a");
    let tls = tls_vhost("a", "127.0.0.1:7", &["a.test"], &dir)
        .build()
        .unwrap();
    let plain = VhostConfig::builder("p")
        .listen("127.0.0.1:7".parse().unwrap())
        .build()
        .unwrap();
    let e = Config::builder()
        .vhost(tls)
        .vhost(plain)
        .build()
        .unwrap_err();
    assert_eq!(e.key, "vhost.p.listen");
    assert!(
        e.reason.contains("TLS vhost \"a\" and plain vhost \"p\""),
        "{e}"
    );
}

/// The binary: relative certificate paths are relative to the config
/// file's folder; a key that does not match its certificate stops it at
/// start with one line naming the vhost, the file and the problem; SIGHUP
/// with a rotated certificate keeps the session and serves the new one.
#[cfg(feature = "cli")]
mod binary {
    use std::process::Command;

    use super::*;
    use support::gateway::Gateway;

    const TOML: &str = r#"[[vhost]]
name = "a"
listen = ["127.0.0.1:0"]
hosts = ["a.test"]

[vhost.tls]
cert = "certs/a.pem"
key = "certs/KEY.key"

[[vhost.mount]]
path = "/echo"
protocol = "echo"
"#;

    fn setup(name: &str, key: &str) -> (std::path::PathBuf, Ca) {
        let dir = temp_dir(name);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let ca = Ca::new("test ca");
        ca.server(&["a.test"], 1).write(&dir.join("certs"), "a");
        ca.server(&["b.test"], 2).write(&dir.join("certs"), "b");
        std::fs::write(dir.join("wsgate.toml"), TOML.replace("KEY", key)).unwrap();
        (dir, ca)
    }

    #[test]
    fn a_bad_key_at_start_is_one_line_naming_vhost_file_and_problem() {
        let (dir, _ca) = setup("tls-bin-bad", "b");
        // Started from elsewhere: the paths are the file's folder's.
        let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--config")
            .arg(dir.join("wsgate.toml"))
            .current_dir(std::env::temp_dir())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("line 8: vhost.a.tls.key: "), "{err}");
        assert!(
            err.contains("certs/b.key: does not match the certificate in"),
            "{err}"
        );
    }

    #[test]
    fn an_expired_certificate_is_a_warning_naming_vhost_and_file() {
        let (dir, ca) = setup("tls-bin-expired", "a");
        ca.expired(&["a.test"]).write(&dir.join("certs"), "a");
        // A second vhost with a bad key stops the binary after the warning.
        let toml = format!(
            "{TOML}\n[[vhost]]\nname = \"z\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.tls]\ncert = \"certs/a.pem\"\nkey = \"certs/b.key\"\n"
        );
        std::fs::write(dir.join("wsgate.toml"), toml.replace("KEY", "a")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--config")
            .arg(dir.join("wsgate.toml"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let warning = err
            .lines()
            .find(|l| l.contains("WARN"))
            .unwrap_or_else(|| panic!("no warning in {err}"));
        assert!(warning.contains("certificate expired"), "{warning}");
        assert!(
            warning.contains("vhost=\"a\"") || warning.contains("vhost=a"),
            "{warning}"
        );
        assert!(warning.contains("certs/a.pem"), "{warning}");
        assert!(err.contains("vhost.z.tls.key"), "{err}");
    }

    #[test]
    fn toml_tls_keys_are_checked_with_key_and_line() {
        let registry = wsgate::ProtocolRegistry::builtin();
        let base = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n";
        let e = wsgate::load_toml(&format!("{base}client_auth = \"optional\"\n"), &registry)
            .unwrap_err();
        assert_eq!(e.key, "vhost.a.tls.client_auth");
        assert!(e.reason.contains("only with client_ca"), "{e}");
        let e = wsgate::load_toml(&format!("{base}client_auth = \"sometimes\"\n"), &registry)
            .unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("vhost.tls.client_auth", Some(7)));
        let e = wsgate::load_toml(&format!("{base}certs = \"x\"\n"), &registry).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn sighup_with_a_rotated_certificate_keeps_the_session() {
        let (dir, ca) = setup("tls-bin-hup", "a");
        let config = dir.join("wsgate.toml");
        let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
        let addr = gw.addr;
        run(async {
            let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
                .await
                .unwrap();
            assert_eq!(server_serial(&tls), serial_bytes(1));
            let mut ws = wss(tls, "a.test", "/echo").await.unwrap();

            // A broken key: the reload is refused, nothing changes.
            std::fs::write(dir.join("certs/a.key"), "garbage\n").unwrap();
            gw.signal("-HUP");
            let line = gw.line("wsgate reload failed: ");
            assert!(line.contains("vhost.a.tls.key"), "{line}");

            ca.server(&["a.test"], 7).write(&dir.join("certs"), "a");
            gw.signal("-HUP");
            assert_eq!(gw.line("wsgate reloaded: "), "*vhost a certificates");

            ws.send(Message::text("still here")).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text("still here")
            );
            let tls = tls_connect(addr, "a.test", &client_config(&ca, None))
                .await
                .unwrap();
            assert_eq!(server_serial(&tls), serial_bytes(7));
        });
    }
}
