//! Anchor server: the naive baseline on wsgate's own stack, async-tungstenite
//! on a single-threaded async-executor `LocalExecutor` driven by async-io. One
//! task per connection: `while let Some(msg) = ws.next().await {
//! ws.send(msg).await }`.
//!
//! Every path echoes, except `/bcast`: there each data message is relayed to
//! every `/bcast` connection (one unbounded channel and writer task per
//! connection).
//!
//! `--rbuf N` sets `WebSocketConfig::read_buffer_size(N)` instead of the 128
//! KiB default: tungstenite zero-fills the spare read buffer before every
//! read, so the default costs a large memset per message.
//!
//! Usage: `smol-echo PORT [--rbuf N]` (listens on 127.0.0.1).
use async_executor::LocalExecutor;
use async_io::Async;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::server::{Request, Response};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_lite::StreamExt;
use futures_util::SinkExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;

type Subs = Rc<RefCell<HashMap<u64, async_channel::Sender<Message>>>>;

fn listener(port: u16) -> TcpListener {
    // same backlog (1024) as tokio's TcpListener::bind, so handshake-rate runs compare servers, not backlogs
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.listen(1024).unwrap();
    s.into()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args
        .get(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: smol-echo PORT [--rbuf N]");
    let config: Option<WebSocketConfig> = args
        .iter()
        .position(|a| a == "--rbuf")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| WebSocketConfig::default().read_buffer_size(n));
    let ex = LocalExecutor::new();
    let subs: Subs = Rc::new(RefCell::new(HashMap::new()));
    async_io::block_on(ex.run(async {
        let l = Async::new(listener(port)).unwrap();
        eprintln!("smol-echo listening on 127.0.0.1:{port}");
        let mut next_id = 0u64;
        loop {
            let (stream, _) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("accept: {e}");
                    async_io::Timer::after(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.get_ref().set_nodelay(true);
            next_id += 1;
            let id = next_id;
            let subs = subs.clone();
            ex.spawn(async move {
                let mut path = String::new();
                // The callback's type is tungstenite's, large error and all.
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, resp: Response| {
                    path = req.uri().path().to_string();
                    Ok(resp)
                };
                let ws = match async_tungstenite::accept_hdr_async_with_config(stream, cb, config)
                    .await
                {
                    Ok(ws) => ws,
                    Err(_) => return,
                };
                if path == "/bcast" {
                    broadcast_conn(ws, id, subs).await;
                } else {
                    let mut ws = ws;
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            })
            .detach();
        }
    }));
}

async fn broadcast_conn(
    ws: async_tungstenite::WebSocketStream<Async<std::net::TcpStream>>,
    id: u64,
    subs: Subs,
) {
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    let (tx, rx) = async_channel::unbounded::<Message>();
    subs.borrow_mut().insert(id, tx);
    let writer = async move {
        while let Ok(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_binary() || msg.is_text() {
                for tx in subs.borrow().values() {
                    let _ = tx.try_send(msg.clone());
                }
            }
        }
    };
    futures_lite::future::or(writer, reader).await;
    subs.borrow_mut().remove(&id);
}
