//! Anchor server: fastwebsockets on a current-thread tokio runtime, on the
//! crate's documented path (a hyper 1 HTTP/1 server, `upgrade::upgrade`,
//! `FragmentCollector`, as in its `examples/echo_server.rs`). Echoes on every
//! path; no broadcast.
//!
//! Usage: `fws-echo PORT` (listens on 127.0.0.1).

use fastwebsockets::{FragmentCollector, OpCode, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: fws-echo PORT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        // Backlog 1024, as every anchor (tokio's bind would give 128).
        let listener = TcpListener::from_std(listener(port)).expect("listener");
        eprintln!("fws-echo listening on 127.0.0.1:{port}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = http1::Builder::new()
                    .serve_connection(io, service_fn(upgrade_to_echo))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}

async fn upgrade_to_echo(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, upgraded) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Ok(ws) = upgraded.await {
            let _ = echo(FragmentCollector::new(ws)).await;
        }
    });
    Ok(response)
}

async fn echo<S>(mut ws: FragmentCollector<S>) -> Result<(), WebSocketError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
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
