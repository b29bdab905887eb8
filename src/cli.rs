//! What the `wsgate` binary needs besides glue: its argument parsers, its
//! log setup, the way it prints an error, and the `stats` topic
//! ([`stats`]). Part of the binary (declared by `src/main.rs`), not of the
//! library; it uses the library's public API only.

pub(crate) mod stats;

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// The most service threads `--threads` accepts (the file's `threads` has the
/// same bound).
pub(crate) const MAX_THREADS: usize = 1024;

/// Sends log lines to stderr, filtered by `RUST_LOG` (default `info`), in
/// colour only where [`log_colour`] says so.
pub(crate) fn init_logging() {
    let colour = log_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// Whether log lines carry ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn log_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The default number of service threads: the CPUs this process may run on
/// (`available_parallelism` respects its CPU affinity, e.g. `taskset`), 1 if
/// that cannot be known.
pub(crate) fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_THREADS)
}

/// An error and its sources, one line: `cannot listen on ADDR: Address in use`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What `--listen` takes: an IP:PORT, or a host name with a port, resolved
/// here (once, at start) to its first IPv4 address, else its first address.
/// The configuration file takes IP:PORT only, so that a reload never waits
/// on name resolution.
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str = "expected an IP:PORT such as 127.0.0.1:7681 (or a host name with a port, such as localhost:7681)";
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    // Only HOST:PORT is worth a name lookup; anything else gets the example.
    let has_port = s
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(EXPECTED.to_owned());
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s}: {e}; {EXPECTED}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s} resolves to no address; {EXPECTED}"))
}

/// What `--threads` takes: 1 to [`MAX_THREADS`].
pub(crate) fn parse_threads(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .ok_or_else(|| format!("invalid number of threads {s:?} (expected 1 to {MAX_THREADS})"))
}

/// What `--drain-timeout` and `--stats-interval` take: a number with a unit.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    wsgate::config::parse_duration(s)
        .ok_or_else(|| format!("invalid duration {s:?} (expected a number with ms, s, m or h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some(OsStr::new(""))));
        assert!(!log_colour(true, Some(OsStr::new("1"))));
        assert!(!log_colour(false, None));
        assert!(!log_colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn listen_takes_ip_port_or_a_host_name_with_a_port() {
        assert_eq!(
            parse_listen("127.0.0.1:7681"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 7681)))
        );
        assert_eq!(
            parse_listen("[::1]:0"),
            Ok("[::1]:0".parse::<SocketAddr>().unwrap())
        );
        // localhost is in /etc/hosts everywhere; its IPv4 address comes first.
        assert_eq!(
            parse_listen("localhost:7681"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 7681)))
        );
        for bad in [
            "localhost",
            "7681",
            "127.0.0.1",
            ":7681",
            "127.0.0.1:99999",
            "",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(
                e.contains("an IP:PORT such as 127.0.0.1:7681"),
                "{bad}: {e}"
            );
        }
        let e = parse_listen("no-such-host.invalid:7681").unwrap_err();
        assert!(
            e.starts_with("cannot resolve no-such-host.invalid:7681: "),
            "{e}"
        );
        assert!(e.contains("an IP:PORT such as 127.0.0.1:7681"), "{e}");
    }

    #[test]
    fn threads_are_between_1_and_1024() {
        assert_eq!(parse_threads("1"), Ok(1));
        assert_eq!(parse_threads("1024"), Ok(1024));
        for bad in ["0", "1025", "-1", "two", ""] {
            assert!(parse_threads(bad).is_err(), "{bad}");
        }
        assert!((1..=MAX_THREADS).contains(&available_threads()));
    }
}
