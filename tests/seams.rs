//! The public seams, each with an implementation from outside the crate:
//! a host-provided stream (`ContextHandle::serve_stream`, over a Unix
//! socket), an `Acceptor` per listener, a per-message `Extension`, and a
//! `Broker` behind topics.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_io::Async;
use bytes::Bytes;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, io::BufReader};
use futures_util::StreamExt;
use support::{LIMIT, Server, connect, run};
use wsgate::extension::{Extension, ExtensionError, ExtensionNegotiator, ExtensionOffer};
use wsgate::pubsub::{Broker, MemoryBroker, Presence, Published};
use wsgate::transport::{Accepting, Acceptor, Transport};
use wsgate::{Config, Message, Mount, SessionHandle, SessionId, VhostConfig, protocols::Echo};

fn echo_vhost(name: &str) -> wsgate::VhostBuilder {
    VhostConfig::builder(name)
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
}

#[test]
fn a_unix_socket_the_host_accepts_is_served_like_a_tcp_connection() {
    let dir = std::env::temp_dir().join(format!("wsgate-seams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gate.sock");
    let _ = std::fs::remove_file(&path);
    let unix = UnixListener::bind(&path).unwrap();
    let config = Config::builder()
        .vhost(echo_vhost("unix").build().unwrap())
        .build()
        .unwrap();
    // The host's own accept loop, on its own loop, next to wsgate's tasks.
    let server = Server::start_with(config, move |ctx| {
        let handle = ctx.handle();
        let unix = Async::new(unix).unwrap();
        std::thread::spawn(move || {
            async_io::block_on(async move {
                while let Ok((stream, _)) = unix.accept().await {
                    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
                    if handle.serve_stream(stream, local).is_err() {
                        break;
                    }
                }
            });
        });
    });

    // Plain HTTP over the socket.
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok\n"), "{reply}");

    // A WebSocket session over the socket.
    run(async move {
        let stream = Async::<UnixStream>::connect(&path).await.unwrap();
        let (mut ws, _) = async_tungstenite::client_async("ws://localhost/echo", stream)
            .await
            .expect("handshake over the Unix socket");
        ws.send(Message::text("over unix")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("over unix")
        );
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    });
    assert_eq!(server.handle.stats().unwrap().sessions_total, 1);
    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PROXY-protocol-like acceptor: a connection must start with a line
/// `HELLO <name>\r\n` (counted), else it is dropped.
struct Preamble {
    greeted: Arc<AtomicUsize>,
}

impl Acceptor for Preamble {
    fn accept(&self, stream: Async<TcpStream>, _peer: SocketAddr) -> Accepting {
        let greeted = self.greeted.clone();
        Box::pin(async move {
            // Byte by byte, so that nothing past the line is read here.
            let mut stream = stream;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                if line.len() > 64 || stream.read(&mut byte).await? == 0 {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                line.push(byte[0]);
            }
            if !line.starts_with(b"HELLO ") {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            greeted.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(stream) as Box<dyn Transport>)
        })
    }
}

#[test]
fn an_acceptor_runs_before_http_and_can_refuse_a_connection() {
    let greeted = Arc::new(AtomicUsize::new(0));
    let acceptor: Arc<dyn Acceptor> = Arc::new(Preamble {
        greeted: greeted.clone(),
    });
    let vhost = echo_vhost("preamble").acceptor(acceptor).build().unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"HELLO test\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(greeted.load(Ordering::SeqCst), 1);

    // Without the preamble the acceptor refuses: closed without an answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(reply.is_empty(), "{:?}", String::from_utf8_lossy(&reply));
    assert_eq!(greeted.load(Ordering::SeqCst), 1);
    assert!(server.shutdown().is_clean());
}

#[test]
fn vhosts_sharing_a_listener_must_share_its_acceptor() {
    let acceptor: Arc<dyn Acceptor> = Arc::new(Preamble {
        greeted: Arc::default(),
    });
    let a = echo_vhost("a").acceptor(acceptor.clone()).build().unwrap();
    let b = echo_vhost("b").host("b.example").build().unwrap();
    let err = Config::builder().vhost(a).vhost(b).build().unwrap_err();
    assert_eq!(err.key, "vhost.b.acceptor", "{err}");
    let a = echo_vhost("a").acceptor(acceptor.clone()).build().unwrap();
    let b = echo_vhost("b")
        .host("b.example")
        .acceptor(acceptor)
        .build()
        .unwrap();
    Config::builder().vhost(a).vhost(b).build().unwrap();
}

/// XORs payloads with a key and marks them with RSV1.
struct Xor(u8);

impl Extension for Xor {
    fn rsv(&self) -> u8 {
        0x40
    }

    fn decode(&mut self, _rsv: u8, payload: Bytes, max: usize) -> Result<Bytes, ExtensionError> {
        if payload.len() > max {
            return Err(ExtensionError::TooBig);
        }
        Ok(payload.iter().map(|b| b ^ self.0).collect())
    }

    fn encode(&mut self, payload: &Bytes) -> Option<Bytes> {
        Some(payload.iter().map(|b| b ^ self.0).collect())
    }
}

/// Negotiates `x-xor; key=N`.
#[derive(Debug)]
struct XorNegotiator;

impl ExtensionNegotiator for XorNegotiator {
    fn name(&self) -> &str {
        "x-xor"
    }

    fn accept(&self, offers: &[ExtensionOffer]) -> Option<(Box<dyn Extension>, String)> {
        offers.iter().find_map(|o| {
            let key: u8 = o
                .params()
                .iter()
                .find(|(k, _)| k == "key")?
                .1
                .as_deref()?
                .parse()
                .ok()?;
            Some((
                Box::new(Xor(key)) as Box<dyn Extension>,
                format!("x-xor; key={key}"),
            ))
        })
    }
}

/// A masked client frame with RSV1 set.
fn rsv1_text(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | 0x40 | 0x1, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn a_negotiated_extension_transforms_messages_both_ways_over_a_real_socket() {
    let vhost = echo_vhost("ext").extension(XorNegotiator).build().unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();
    run(async move {
        let stream = Async::<TcpStream>::connect(addr).await.unwrap();
        let mut stream = BufReader::new(stream);
        let request = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: x-unknown, x-xor; key=7\r\n\r\n";
        futures_lite::AsyncWriteExt::write_all(stream.get_mut(), request.as_bytes())
            .await
            .unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("Sec-WebSocket-Extensions: x-xor; key=7\r\n"),
            "{head}"
        );
        let secret: Vec<u8> = b"hello".iter().map(|b| b ^ 7).collect();
        futures_lite::AsyncWriteExt::write_all(stream.get_mut(), &rsv1_text(&secret))
            .await
            .unwrap();
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[0], 0x80 | 0x40 | 0x1, "the echo carries RSV1");
        assert_eq!(reply[1], 5);
        assert_eq!(&reply[2..], secret.as_slice(), "encoded with the same key");
    });
    // A client that offers nothing gets a session without it.
    run(async move {
        let mut ws = connect(addr, "/echo").await;
        ws.send(Message::text("plain")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("plain"));
    });
    drop(server);
}

/// A broker that counts what goes through it, around the in-process one.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryBroker,
    published: Mutex<Vec<String>>,
}

#[derive(Debug, Default, Clone)]
struct Shared(Arc<Counting>);

impl Broker for Shared {
    fn subscribe(&self, topic: &str, session: &SessionHandle) {
        self.0.inner.subscribe(topic, session);
    }

    fn unsubscribe(&self, topic: &str, id: SessionId) {
        self.0.inner.unsubscribe(topic, id);
    }

    fn publish(&self, topic: &str, message: &Message) -> Published {
        self.0.published.lock().unwrap().push(topic.to_owned());
        self.0.inner.publish(topic, message)
    }

    fn presence(&self, topic: &str) -> Presence {
        self.0.inner.presence(topic)
    }

    fn topics(&self) -> Vec<String> {
        self.0.inner.topics()
    }
}

#[test]
fn publishes_from_the_host_and_from_pubsub_clients_go_through_the_configured_broker() {
    let broker = Shared::default();
    let vhost = VhostConfig::builder("b")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(wsgate::protocols::Pubsub::default())
        .mount(Mount::websocket("/pubsub", ["pubsub"]))
        .build()
        .unwrap();
    let config = Config::builder()
        .vhost(vhost)
        .broker(broker.clone())
        .build()
        .unwrap();
    let server = Server::start(config);
    let addr = server.addr();
    let handle = server.handle.clone();
    run(async move {
        let mut ws = connect(addr, "/pubsub").await;
        ws.send(Message::text(r#"{"op":"subscribe","topic":"t"}"#))
            .await
            .unwrap();
        assert!(
            ws.next()
                .await
                .unwrap()
                .unwrap()
                .to_text()
                .unwrap()
                .contains("subscribed")
        );
        assert_eq!(handle.presence("t").unwrap().count, 1);
        handle.publish("t", Message::text("from the host")).unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("from the host")
        );
        ws.send(Message::text(r#"{"op":"publish","topic":"t","data":1}"#))
            .await
            .unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert!(echo.to_text().unwrap().contains(r#""data":1"#), "{echo:?}");
    });
    assert_eq!(*broker.0.published.lock().unwrap(), ["t", "t"]);
    drop(server);
}

/// A transport that breaks the `AsyncRead` contract: after its first read
/// (the request head) it claims one byte more than the buffer it was given.
struct Overclaiming {
    inner: Async<TcpStream>,
    reads: usize,
}

impl futures_lite::AsyncRead for Overclaiming {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(n)) if n > 0 => {
                this.reads += 1;
                let n = if this.reads > 1 { buf.len() + 1 } else { n };
                std::task::Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
}

impl futures_lite::AsyncWrite for Overclaiming {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl Transport for Overclaiming {}

struct OverclaimingAcceptor;

impl Acceptor for OverclaimingAcceptor {
    fn accept(&self, stream: Async<TcpStream>, _peer: SocketAddr) -> Accepting {
        Box::pin(async move {
            Ok(Box::new(Overclaiming {
                inner: stream,
                reads: 0,
            }) as Box<dyn Transport>)
        })
    }
}

/// An application's transport that says it read more than it was given
/// ends its own connection (a transport error) instead of panicking a
/// session's task, and the gateway goes on serving.
#[test]
fn a_transport_claiming_more_than_it_read_ends_its_connection_without_a_panic() {
    let overreads = Arc::new(AtomicUsize::new(0));
    let counted = overreads.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains("out of range for slice") {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let vhost = echo_vhost("overclaiming")
        .acceptor(Arc::new(OverclaimingAcceptor))
        .build()
        .unwrap();
    let server = Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();
    run(async move {
        // The head is read honestly: the handshake succeeds.
        let mut ws = connect(addr, "/echo").await;
        futures_util::SinkExt::send(&mut ws, Message::text("then a lie"))
            .await
            .unwrap();
        // The session's read is the lie: the connection ends, no echo.
        while let Some(Ok(m)) = ws.next().await {
            assert!(m.is_close(), "no echo after the lie: {m:?}");
        }
        // The gateway still serves.
        let mut ws = connect(addr, "/echo").await;
        drop(ws.close(None).await);
    });
    std::panic::set_hook(previous);
    assert_eq!(overreads.load(Ordering::SeqCst), 0, "a slice panicked");
    let report = server.shutdown();
    assert_eq!(report.forced, 0, "{report:?}");
}
