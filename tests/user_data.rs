//! Per-vhost user data: reachable from a protocol through the session's vhost,
//! and dropped only when the vhost has been removed and its last handle (the
//! last session, or one the application holds) is gone.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use async_io::Async;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use futures_util::StreamExt;
use support::{Server, Ws, run};
use wsgate::{
    Config, Limits, Message, Mount, Protocol, Reject, Request, SessionHandle, VhostConfig,
};

/// User data whose drop is observed through a channel.
struct Tracked {
    label: String,
    dropped: mpsc::Sender<String>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.dropped.send(self.label.clone());
    }
}

/// Greets every session with its vhost's user data as this protocol sees it.
struct Label;

impl Protocol for Label {
    type State = ();

    fn name(&self) -> &str {
        "label"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<(), Reject> {
        let vhost = session.vhost();
        let greeting = match (vhost.user_data::<Tracked>(), vhost.user_data::<String>()) {
            (Some(t), None) => format!("tracked {}", t.label),
            (None, Some(s)) => format!("string {s}"),
            (None, None) => "none".to_owned(),
            (Some(_), Some(_)) => "both?".to_owned(),
        };
        session
            .try_send(Message::text(greeting))
            .expect("greeting queued");
        Ok(())
    }

    fn message(&self, _state: &mut (), _session: &SessionHandle, _message: Message) {}
}

fn vhost(name: &str, host: Option<&str>) -> wsgate::VhostBuilder {
    let b = VhostConfig::builder(name)
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Label)
        .mount(Mount::websocket("/label", ["label"]))
        // Long enough that only the client's answer can end a closing session
        // within these tests.
        .limits(Limits::default().close_timeout(Duration::from_secs(60)));
    match host {
        Some(h) => b.host(h),
        None => b,
    }
}

/// A default vhost with no user data, and `data` (Host `data.example`) with a
/// `Tracked` labelled `label`; the receiver hears of its drop.
fn config() -> (Config, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let data = Tracked {
        label: "data's".to_owned(),
        dropped: tx,
    };
    let config = Config::builder()
        .vhost(vhost("main", None).build().unwrap())
        .vhost(
            vhost("data", Some("data.example"))
                .user_data(data)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    (config, rx)
}

async fn open(addr: SocketAddr, host: &str) -> (Ws, String) {
    let req = format!("ws://{host}/label").into_client_request().unwrap();
    let tcp = Async::<TcpStream>::connect(addr).await.unwrap();
    let (mut ws, _) = async_tungstenite::client_async(req, tcp).await.unwrap();
    let greeting = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a greeting, got {other:?}"),
    };
    (ws, greeting)
}

#[test]
fn protocol_reaches_its_vhosts_user_data() {
    let (config, _dropped) = config();
    let server = Server::start_with(config, |ctx| {
        let other = vhost("other", Some("other.example"))
            .user_data(String::from("plain"))
            .build()
            .unwrap();
        ctx.add_vhost(other).unwrap();
    });
    run(async {
        assert_eq!(
            open(server.addr(), "data.example").await.1,
            "tracked data's"
        );
        assert_eq!(open(server.addr(), "other.example").await.1, "string plain");
        assert_eq!(open(server.addr(), "main.example").await.1, "none");
    });
}

#[test]
fn user_data_outlives_removal_until_the_last_session_closes() {
    let (config, dropped) = config();
    let (server, control) = Server::start_controlled(config);
    run(async {
        let (mut session, greeting) = open(server.addr(), "data.example").await;
        assert_eq!(greeting, "tracked data's");

        // Removal sends Close 1001; the session lasts until the client, which
        // is not reading yet, answers it.
        control.with(|ctx| ctx.remove_vhost("data")).unwrap();
        assert_eq!(
            dropped.try_recv(),
            Err(mpsc::TryRecvError::Empty),
            "user data dropped while a session still holds the vhost"
        );
        // A turn of the server's loop later it is still there.
        let removed = control.with(|ctx| ctx.vhost("data").is_none());
        assert!(removed);
        assert_eq!(dropped.try_recv(), Err(mpsc::TryRecvError::Empty));

        match session.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected Close 1001, got {other:?}"),
        }
        // Reading on sends the answer to the Close and sees the stream end.
        while let Some(Ok(_)) = session.next().await {}
    });
    assert_eq!(
        dropped.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("data's"),
        "user data not dropped after the last session closed"
    );
    // `data.example` now falls back to `main`, which has no user data.
    run(async {
        assert_eq!(open(server.addr(), "data.example").await.1, "none");
    });
}

#[test]
fn user_data_is_dropped_at_removal_when_nothing_holds_the_vhost() {
    let (config, dropped) = config();
    let (_server, control) = Server::start_controlled(config);
    assert_eq!(dropped.try_recv(), Err(mpsc::TryRecvError::Empty));
    control.with(|ctx| ctx.remove_vhost("data")).unwrap();
    assert_eq!(
        dropped.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("data's")
    );
}

#[test]
fn a_vhost_handle_held_by_the_application_keeps_user_data_alive() {
    let (config, dropped) = config();
    let (_server, control) = Server::start_controlled(config);
    let handle = control.with(|ctx| {
        let v = ctx.vhost("data").expect("vhost data");
        ctx.remove_vhost("data").unwrap();
        v
    });
    assert!(!handle.is_serving());
    assert_eq!(
        handle.user_data::<Tracked>().map(|t| t.label.as_str()),
        Some("data's")
    );
    assert_eq!(dropped.try_recv(), Err(mpsc::TryRecvError::Empty));
    drop(handle);
    // The destroy hooks, which run on the loop after the removal, hold the
    // vhost until they have run; then nothing does.
    assert_eq!(
        dropped.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("data's")
    );
}

#[test]
fn user_data_is_dropped_with_the_context() {
    let (config, dropped) = config();
    let server = Server::start(config);
    run(async {
        let (_session, greeting) = open(server.addr(), "data.example").await;
        assert_eq!(greeting, "tracked data's");
    });
    assert_eq!(dropped.try_recv(), Err(mpsc::TryRecvError::Empty));
    let report = server.shutdown();
    assert_eq!(
        dropped.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("data's"),
        "user data leaked after teardown ({report:?})"
    );
}
