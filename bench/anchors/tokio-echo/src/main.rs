//! Anchor server: tokio-tungstenite on a current-thread tokio runtime, the
//! way its README writes an echo server (`while let Some(msg) = ws.next()`,
//! `ws.send(msg)`).
//!
//! Every path echoes, except `/bcast`: there each data message is relayed to
//! every `/bcast` connection (one unbounded channel and writer task per
//! connection), for the broadcast scenarios.
//!
//! Usage: `tokio-echo PORT` (listens on 127.0.0.1).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Subscribers = Rc<RefCell<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: tokio-echo PORT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // tokio's TcpListener::bind has a backlog of 128, which the idle
        // scenario's concurrent handshakes overflow: 1024, as every anchor.
        let listener = TcpListener::from_std(listener(port)).expect("listener");
        eprintln!("tokio-echo listening on 127.0.0.1:{port}");
        let subscribers = Subscribers::default();
        let mut next_id = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            next_id += 1;
            tokio::task::spawn_local(serve(stream, next_id, subscribers.clone()));
        }
    });
}

async fn serve(stream: TcpStream, id: u64, subscribers: Subscribers) {
    let mut path = String::new();
    // The callback's type is tungstenite's, large error and all.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    if path == "/bcast" {
        relay(ws, id, subscribers).await;
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn relay(ws: WebSocketStream<TcpStream>, id: u64, subscribers: Subscribers) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    subscribers.borrow_mut().insert(id, tx);
    let writer = tokio::task::spawn_local(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if msg.is_binary() || msg.is_text() {
            for tx in subscribers.borrow().values() {
                let _ = tx.send(msg.clone());
            }
        }
    }
    subscribers.borrow_mut().remove(&id);
    writer.abort();
}

fn listener(port: u16) -> std::net::TcpListener {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("bind");
    s.listen(1024).expect("listen");
    s.set_nonblocking(true).expect("nonblocking");
    s.into()
}
