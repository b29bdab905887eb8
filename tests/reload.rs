//! SIGHUP reloads the `wsgate` binary's configuration file vhost by vhost:
//! unchanged vhosts keep their sessions, changed ones are replaced (their
//! sessions get Close 1001, their listen addresses stay bound), new ones are
//! served and removed ones stop; a configuration that does not load, build or
//! bind changes nothing.
//!
//! The vhosts listen on different loopback addresses (127.0.0.1, .2, .3, ...)
//! with port 0, and the test reads the bound ports back from the binary's
//! `wsgate listening on ADDR` and `wsgate reloaded: ...` lines.

#![cfg(feature = "cli")]

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use support::gateway::Gateway;
use wsgate::Message;

/// Sends SIGHUP and returns what the reload printed: `Ok(summary)` for
/// `wsgate reloaded: SUMMARY`, `Err(error)` for `wsgate reload failed: ERROR`.
fn reload(gw: &Gateway) -> Result<String, String> {
    gw.signal("-HUP");
    let line = gw.line("wsgate reload");
    if let Some(summary) = line.strip_prefix("ed: ") {
        Ok(summary.to_owned())
    } else if let Some(error) = line.strip_prefix(" failed: ") {
        Err(error.to_owned())
    } else {
        panic!("unexpected reload line {line:?}");
    }
}

/// SIGINT, then the exit code (a watchdog kills the process after 20 s).
fn stop(mut gw: Gateway) -> i32 {
    gw.signal("-INT");
    gw.wait()
}

/// A configuration file in its own temporary directory, removed on drop.
struct ConfigPath(PathBuf);

impl ConfigPath {
    fn new(test: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsgate-reload-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Self(dir.join("wsgate.toml"));
        path.write(text);
        path
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigPath {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A vhost `name` on `listen` with echo at `/echo` and the extra TOML `extra`
/// (limits, more mounts) after its mounts.
fn vhost(name: &str, listen: &str, extra: &str) -> String {
    format!(
        "[[vhost]]\nname = \"{name}\"\nlisten = [\"{listen}\"]\n\n[[vhost.mount]]\npath = \"/echo\"\nprotocol = \"echo\"\n{extra}\n"
    )
}

/// A `wsgate reloaded:` summary by vhost name: the mark (`+`, `~`, `-`) and
/// the addresses.
fn parse_summary(summary: &str) -> BTreeMap<String, (char, Vec<SocketAddr>)> {
    if summary == "no changes" {
        return BTreeMap::new();
    }
    summary
        .split(", ")
        .map(|item| {
            let mark = item.chars().next().unwrap();
            let rest = item[1..].strip_prefix("vhost ").expect(item);
            let (name, addrs) = rest.split_once(" on ").unwrap_or((rest, ""));
            let addrs = addrs
                .split_whitespace()
                .map(|a| a.parse().expect(item))
                .collect();
            (name.to_owned(), (mark, addrs))
        })
        .collect()
}

/// Sends `text` on `ws` and expects it back.
async fn echoes(ws: &mut support::Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    match ws.next().await {
        Some(Ok(m)) => assert_eq!(m, Message::text(text)),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// Waits until nothing accepts connections on `addr` any more.
fn wait_refused(addr: SocketAddr) {
    support::wait_until(support::LIMIT, &format!("{addr} refuses"), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    });
}

#[test]
fn sighup_replaces_changed_vhosts_and_leaves_the_others_alone() {
    let v1 = [
        vhost("a", "127.0.0.1:0", ""),
        vhost(
            "b",
            "127.0.0.2:0",
            "[vhost.limits]\nmax_message_size = \"64KiB\"\nmax_frame_size = \"64KiB\"\n",
        ),
        vhost("d", "127.0.0.4:0", ""),
    ]
    .concat();
    let cfg = ConfigPath::new("diff", &v1);
    let (gw, addrs) = Gateway::start_listening(&["--config", cfg.as_str()], 3);
    let (a, b, d) = (addrs[0], addrs[1], addrs[2]);
    assert_eq!(
        [a.ip(), b.ip(), d.ip()].map(|ip| ip.to_string()),
        ["127.0.0.1", "127.0.0.2", "127.0.0.4"]
    );
    let (mut ws_a, mut ws_b, mut ws_d) = support::run(async move {
        let mut ws_a = support::connect(a, "/echo").await;
        let mut ws_b = support::connect(b, "/echo").await;
        let mut ws_d = support::connect(d, "/echo").await;
        echoes(&mut ws_a, "a before").await;
        echoes(&mut ws_b, "b before").await;
        echoes(&mut ws_d, "d before").await;
        (ws_a, ws_b, ws_d)
    });

    // a: the same configuration, written differently (comments, key order);
    // b: a smaller message limit and one more mount; c: new; d: gone.
    let a_again = "# unchanged\n[[vhost]]\nlisten = [\"127.0.0.1:0\"]  # same\nname = \"a\"\n\n[[vhost.mount]]\nprotocol = \"echo\"\npath = \"/echo\"\n";
    let v2 = [
        a_again.to_owned(),
        vhost(
            "b",
            "127.0.0.2:0",
            "[[vhost.mount]]\npath = \"/more\"\nprotocol = \"echo\"\n[vhost.limits]\nmax_message_size = \"1KiB\"\nmax_frame_size = \"1KiB\"\n",
        ),
        vhost("c", "127.0.0.3:0", ""),
    ]
    .concat();
    cfg.write(&v2);
    let summary = reload(&gw).expect("reload");
    let items = parse_summary(&summary);
    assert_eq!(
        items.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b", "c", "d"],
        "{summary}"
    );
    assert_eq!(items["b"], ('~', vec![b]), "b keeps its port: {summary}");
    assert_eq!(items["d"], ('-', vec![]), "{summary}");
    let (mark, c) = (items["c"].0, items["c"].1[0]);
    assert_eq!(
        (mark, c.ip().to_string().as_str()),
        ('+', "127.0.0.3"),
        "{summary}"
    );

    support::run(async move {
        // The unchanged vhost's session did not notice.
        echoes(&mut ws_a, "a after").await;
        // The changed and the removed vhosts' sessions were told to go away.
        support::read_to_end(&mut ws_b)
            .await
            .assert_closed_with(1001);
        support::read_to_end(&mut ws_d)
            .await
            .assert_closed_with(1001);

        // b's new configuration is in effect, on the same address.
        let mut more = support::connect(b, "/more").await;
        echoes(&mut more, "more").await;
        let mut ws_b = support::connect(b, "/echo").await;
        echoes(&mut ws_b, "b after").await;
        ws_b.send(Message::binary(vec![0u8; 2048])).await.unwrap();
        support::read_to_end(&mut ws_b)
            .await
            .assert_closed_with(1009);

        // The added vhost serves.
        let mut ws_c = support::connect(c, "/echo").await;
        echoes(&mut ws_c, "c").await;
        echoes(&mut ws_a, "a still").await;
    });
    // The removed vhost's listener is gone.
    wait_refused(d);

    // The same file again: nothing to do, and nothing is disturbed.
    assert_eq!(reload(&gw).as_deref(), Ok("no changes"));
    assert_eq!(stop(gw), 0);
}

#[test]
fn a_bad_configuration_on_reload_keeps_the_old_one_serving() {
    let v1 = [vhost("a", "127.0.0.1:0", ""), vhost("b", "127.0.0.2:0", "")].concat();
    let cfg = ConfigPath::new("bad", &v1);
    let (gw, addrs) = Gateway::start_listening(&["--config", cfg.as_str()], 2);
    let (a, b) = (addrs[0], addrs[1]);
    let (mut ws_a, mut ws_b) = support::run(async move {
        let mut ws_a = support::connect(a, "/echo").await;
        let mut ws_b = support::connect(b, "/echo").await;
        echoes(&mut ws_a, "a").await;
        echoes(&mut ws_b, "b").await;
        (ws_a, ws_b)
    });
    let b_changed = vhost(
        "b",
        "127.0.0.2:0",
        "[vhost.limits]\nidle_timeout = \"5m\"\n",
    );

    // Not TOML the loader accepts: the error names the key and the line.
    cfg.write(&[vhost("a", "127.0.0.1:0", "bogus = 1"), b_changed.clone()].concat());
    let e = reload(&gw).expect_err("an unknown key");
    assert!(e.contains("line 8") && e.contains("unknown field"), "{e}");

    // Valid TOML that does not build (an unknown protocol).
    cfg.write(
        &[
            vhost("a", "127.0.0.1:0", ""),
            b_changed.replace("\"echo\"", "\"nope\""),
        ]
        .concat(),
    );
    let e = reload(&gw).expect_err("an unknown protocol");
    assert!(e.contains("unknown protocol \"nope\""), "{e}");

    // A duplicate vhost name (only the whole file can tell).
    cfg.write(
        &[
            vhost("a", "127.0.0.1:0", ""),
            b_changed.clone(),
            vhost("a", "127.0.0.3:0", ""),
        ]
        .concat(),
    );
    let e = reload(&gw).expect_err("a duplicate name");
    assert!(e.contains("duplicate vhost name"), "{e}");

    // Builds, but a new vhost's address is taken: found before b is touched.
    let taken = TcpListener::bind("127.0.0.5:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    cfg.write(
        &[
            vhost("a", "127.0.0.1:0", ""),
            b_changed.clone(),
            vhost("e", &busy, ""),
        ]
        .concat(),
    );
    let e = reload(&gw).expect_err("an address in use");
    assert!(e.contains(&format!("cannot listen on {busy}")), "{e}");

    support::run(async move {
        // Every session survived every failed attempt, including b's, whose
        // vhost the bind failure would have replaced.
        echoes(&mut ws_a, "a after").await;
        echoes(&mut ws_b, "b after").await;
        let mut fresh = support::connect(b, "/echo").await;
        echoes(&mut fresh, "b fresh").await;
    });

    // Fixed: the reload goes through, with b replaced at last.
    drop(taken);
    cfg.write(&[vhost("a", "127.0.0.1:0", ""), b_changed].concat());
    let summary = reload(&gw).expect("reload");
    assert_eq!(summary, format!("~vhost b on {b}"));
    assert_eq!(stop(gw), 0);
}

#[test]
fn listen_override_keeps_applying_to_the_first_vhost() {
    let cfg = ConfigPath::new("listen", &vhost("a", "127.0.0.9:9", ""));
    let (gw, addrs) =
        Gateway::start_listening(&["--config", cfg.as_str(), "--listen", "127.0.0.1:0"], 1);
    let a = addrs[0];
    let mut ws = support::run(async move {
        let mut ws = support::connect(a, "/echo").await;
        echoes(&mut ws, "a").await;
        ws
    });
    // Only the file's address changed, and --listen replaces it anyway.
    cfg.write(&vhost("a", "127.0.0.8:8", ""));
    assert_eq!(reload(&gw).as_deref(), Ok("no changes"));
    // A real change: replaced, still on the --listen address (and port).
    cfg.write(&vhost(
        "a",
        "127.0.0.8:8",
        "[vhost.limits]\nidle_timeout = \"5m\"\n",
    ));
    assert_eq!(reload(&gw), Ok(format!("~vhost a on {a}")));
    support::run(async move {
        support::read_to_end(&mut ws).await.assert_closed_with(1001);
        let mut ws = support::connect(a, "/echo").await;
        echoes(&mut ws, "a again").await;
    });
    assert_eq!(stop(gw), 0);
}

#[test]
fn sighup_without_a_config_file_changes_nothing() {
    let (gw, addrs) = Gateway::start_listening(&["--listen", "127.0.0.1:0"], 1);
    let addr = addrs[0];
    let mut ws = support::run(async move {
        let mut ws = support::connect(addr, "/echo").await;
        echoes(&mut ws, "before").await;
        ws
    });
    // SIGHUP no longer terminates the process: it reloads, and the built-in
    // configuration cannot have changed.
    assert_eq!(reload(&gw).as_deref(), Ok("no changes"));
    support::run(async move { echoes(&mut ws, "after").await });
    assert_eq!(stop(gw), 0);
}
