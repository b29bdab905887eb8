//! The examples as a new user meets them when the port is taken (they all
//! default to 127.0.0.1:7681, like the gateway): each must say why it cannot
//! listen, with the operating system's reason, and suggest
//! `--listen 127.0.0.1:0`, then exit non-zero.

mod support;

use std::net::TcpListener;

use support::example::{EXIT_LIMIT, Example, START_LIMIT};

#[test]
fn a_taken_port_gives_the_os_reason_and_the_free_port_hint() {
    // Held for the whole test: every example's bind must fail on it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for name in ["foreign_loop", "service_threads", "chat"] {
        let mut example = Example::start(name, &["--listen", &addr]);
        // The first run may build the example.
        let status = example.wait(START_LIMIT + EXIT_LIMIT);
        let stderr = example.stderr().join("\n");
        assert!(!status.success(), "{name} exited with {status}");
        assert!(
            stderr.contains(&format!("{name}: cannot listen on {addr}: "))
                && stderr.contains("in use"),
            "{name}: no OS reason in {stderr:?}"
        );
        assert!(
            stderr.contains("--listen 127.0.0.1:0"),
            "{name}: no hint in {stderr:?}"
        );
    }
}
