//! `Context::reconfigure`: the library's reload. Unchanged vhosts keep their
//! sessions, changed ones are replaced (their sessions get 1001), new ones
//! are added on new ports, removed ones go, and a failure changes nothing.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{Server, connect, read_to_end, run};
use wsgate::{Config, Error, Limits, Message, Mount, VhostConfig, protocols::Echo};

fn vhost(name: &str, addr: &str, idle: u64) -> VhostConfig {
    let limits = Limits::default()
        .ping_interval(Duration::from_secs(idle / 2))
        .idle_timeout(Duration::from_secs(idle));
    VhostConfig::builder(name)
        .listen(addr.parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .limits(limits)
        .build()
        .unwrap()
}

#[test]
fn a_reload_keeps_unchanged_vhosts_replaces_changed_ones_and_adds_and_removes() {
    let config = Config::builder()
        .vhost(vhost("keep", "127.0.0.1:0", 60))
        .vhost(vhost("change", "127.0.0.2:0", 60))
        .vhost(vhost("drop", "127.0.0.3:0", 60))
        .build()
        .unwrap();
    let (server, control) = Server::start_controlled(config);
    let [keep, change, gone]: [std::net::SocketAddr; 3] = server.addrs.clone().try_into().unwrap();

    run(async move {
        let mut kept = connect(keep, "/echo").await;
        let mut changed = connect(change, "/echo").await;
        let mut dropped = connect(gone, "/echo").await;

        let outcome = control
            .with(|ctx| {
                ctx.reconfigure(vec![
                    vhost("keep", "127.0.0.1:0", 60),
                    vhost("change", "127.0.0.2:0", 90),
                    vhost("new", "127.0.0.4:0", 60),
                ])
            })
            .expect("reconfigure");
        assert_eq!(outcome.unchanged, ["keep"]);
        assert_eq!(outcome.replaced, ["change"]);
        assert_eq!(outcome.added, ["new"]);
        assert_eq!(outcome.removed, ["drop"]);
        let line = outcome.to_string();
        assert!(line.starts_with("+vhost new on 127.0.0.4:"), "{line}");
        assert!(line.contains("~vhost change on 127.0.0.2:"), "{line}");
        assert!(line.ends_with("-vhost drop"), "{line}");

        // The unchanged vhost's session never noticed.
        kept.send(Message::text("still")).await.unwrap();
        assert_eq!(kept.next().await.unwrap().unwrap(), Message::text("still"));
        // The changed and removed ones were told to go.
        let e = read_to_end(&mut changed).await;
        e.assert_closed_with(1001);
        assert_eq!(e.close.unwrap().unwrap().reason.as_str(), "vhost replaced");
        let e = read_to_end(&mut dropped).await;
        e.assert_closed_with(1001);
        assert_eq!(e.close.unwrap().unwrap().reason.as_str(), "vhost removed");

        // The replaced vhost serves new connections on the same listener.
        let mut again = connect(change, "/echo").await;
        again.send(Message::text("new version")).await.unwrap();
        assert_eq!(
            again.next().await.unwrap().unwrap(),
            Message::text("new version")
        );
        // The new one listens; the removed one's listener stopped.
        let new_addr = outcome
            .listening
            .iter()
            .find(|(n, _)| n == "new")
            .unwrap()
            .1[0];
        let mut fresh = connect(new_addr, "/echo").await;
        fresh.send(Message::text("hi")).await.unwrap();
        assert_eq!(fresh.next().await.unwrap().unwrap(), Message::text("hi"));
        assert!(
            std::net::TcpStream::connect(gone).is_err(),
            "the removed listener still accepts"
        );

        // Reloading the same set again changes nothing.
        let again = control
            .with(|ctx| {
                ctx.reconfigure(vec![
                    vhost("keep", "127.0.0.1:0", 60),
                    vhost("change", "127.0.0.2:0", 90),
                    vhost("new", "127.0.0.4:0", 60),
                ])
            })
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(again.to_string(), "no changes");
    });
    drop(server);
}

#[test]
fn a_reload_that_cannot_bind_or_does_not_validate_changes_nothing() {
    let config = Config::builder()
        .vhost(vhost("a", "127.0.0.1:0", 60))
        .build()
        .unwrap();
    let (server, control) = Server::start_controlled(config);
    let addr = server.addr();
    // A port someone else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    run(async move {
        let mut ws = connect(addr, "/echo").await;
        let err = control
            .with(move |ctx| {
                ctx.reconfigure(vec![
                    vhost("a", "127.0.0.1:0", 90),
                    vhost("b", &taken_addr, 60),
                ])
            })
            .unwrap_err();
        assert!(matches!(err, Error::Bind { .. }), "{err:?}");
        let err = control
            .with(|ctx| {
                ctx.reconfigure(vec![
                    vhost("a", "127.0.0.1:0", 60),
                    vhost("a", "127.0.0.1:0", 60),
                ])
            })
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let err = control.with(|ctx| ctx.reconfigure(Vec::new())).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        // Nothing moved: the session lives, the vhost is the same.
        ws.send(Message::text("alive")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("alive"));
        assert!(control.with(|ctx| ctx.vhost("b").is_none()));
    });
    drop(taken);
    drop(server);
}
