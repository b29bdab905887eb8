//! `examples/foreign_loop.rs`, run as a user runs it: `cargo run --example
//! foreign_loop` in a child process, with a real WebSocket client connected.
//! The client must receive the readings the host's worker thread pushes, then
//! Close 1001 when `--seconds` elapse; the example must exit 0 after draining
//! that session cleanly.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::example::{EXIT_LIMIT, Example};
use wsgate::{CloseCode, Message};

/// Time for the client's part: `--seconds 3` of readings, then the close.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn pushes_readings_then_closes_1001_and_drains_clean() {
    let mut example = Example::start(
        "foreign_loop",
        &["--listen", "127.0.0.1:0", "--seconds", "3"],
    );
    let addr = example.address();

    let (readings, close) = support::block_on_timeout(CLIENT_LIMIT, async {
        let mut ws = support::connect(addr, "/temperature").await;
        let mut readings = Vec::new();
        let close = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value = text
                        .strip_prefix("temperature ")
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or_else(|| panic!("not a reading: {text:?}"));
                    readings.push(value);
                }
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(other)) => panic!("unexpected message: {other:?}"),
                Some(Err(e)) => panic!("websocket error before the Close frame: {e}"),
                None => panic!("connection ended without a Close frame"),
            }
        };
        // Let the close handshake finish: the client's answer goes out on the
        // next poll, then the server closes TCP.
        while let Some(Ok(_)) = ws.next().await {}
        (readings, close)
    });
    assert!(
        readings.len() >= 2,
        "expected at least 2 readings in 3 s, got {readings:?}"
    );
    let close = close.expect("the Close frame carries a code");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");

    let status = example.wait(EXIT_LIMIT);
    let stdout = example.rest_of_stdout();
    assert!(status.success(), "the example exited with {status}");
    let drain = stdout
        .iter()
        .find_map(|l| l.strip_prefix("drain: "))
        .unwrap_or_else(|| panic!("no drain line in {stdout:#?}"));
    assert!(
        drain.starts_with("1 clean, 0 aborted, 0 forced"),
        "drain: {drain}"
    );
}
