//! Smoke test: echo one message, destroy, drain cleanly.
use std::time::{Duration, Instant};

use async_executor::Executor;
use futures_util::StreamExt;
use wsgate::{Config, Context, Message, Mount, VhostConfig, protocols::Echo};

#[test]
fn echo_and_drain() {
    let ex = Executor::new();
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build().unwrap()).unwrap();
    let addr = ctx.local_addrs()[0];
    let mut client = async_io::block_on(ex.run(async {
        let tcp = async_io::Async::<std::net::TcpStream>::connect(addr)
            .await
            .unwrap();
        let (mut ws, _) = async_tungstenite::client_async(format!("ws://{addr}/echo"), tcp)
            .await
            .unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m, Message::text("hi"));
        ws
    }));
    let drain = ctx.destroy();
    let t = std::thread::spawn(move || {
        async_io::block_on(async {
            let m = client.next().await.unwrap().unwrap();
            assert!(
                matches!(m, Message::Close(Some(ref f)) if u16::from(f.code) == 1001),
                "{m:?}"
            );
            while let Some(Ok(_)) = client.next().await {}
        })
    });
    let report = drain.drain(&ex, Instant::now() + Duration::from_secs(5));
    t.join().unwrap();
    assert_eq!(report.clean, 1, "{report:?}");
    assert!(report.is_clean());
}
