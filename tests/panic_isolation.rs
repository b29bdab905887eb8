//! A panicking protocol callback is isolated: `open` answers 500, `message`
//! closes only that session with 1011, and the gateway keeps serving.

mod support;

use futures_util::StreamExt;
use wsgate::{Config, Message, Mount, Protocol, Reject, Request, SessionHandle, VhostConfig};

struct Fragile;

impl Protocol for Fragile {
    type State = ();

    fn name(&self) -> &str {
        "fragile"
    }

    fn open(&self, req: &Request, _s: &SessionHandle) -> Result<(), Reject> {
        assert!(req.query_param("explode").is_none(), "open exploded");
        Ok(())
    }

    fn message(&self, _: &mut (), session: &SessionHandle, message: Message) {
        assert!(message != Message::text("boom"), "message exploded");
        let _ = session.try_send(message);
    }
}

#[test]
fn panics_in_callbacks_stay_in_their_session() {
    let vhost = VhostConfig::builder("v")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Fragile)
        .mount(Mount::websocket("/f", ["fragile"]))
        .build()
        .unwrap();
    let server = support::Server::start(Config::builder().vhost(vhost).build().unwrap());
    let addr = server.addr();
    let refused = support::raw_http(addr, &support::upgrade_request("/f?explode=1", ""));
    assert_eq!(refused.status, 500);

    support::run(async move {
        let mut calm = support::connect(addr, "/f").await;
        let mut doomed = support::connect(addr, "/f").await;
        doomed.send(Message::text("boom")).await.unwrap();
        match doomed.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1011),
            other => panic!("expected Close 1011, got {other:?}"),
        }
        calm.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            calm.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
        let late = support::connect(addr, "/f").await;
        drop(late);
    });
    let report = server.shutdown();
    assert_eq!(report.forced, 0, "{report:?}");
}
