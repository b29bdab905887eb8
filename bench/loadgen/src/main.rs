//! loadgen: wsgate's WebSocket load generator.
//!
//! One thread, edge-triggered epoll through mio, every connection a small
//! state machine (`engine.rs`). The client must cost less CPU per message
//! than any server it measures, so frames are built and masked once and
//! copied, one write carries every frame a connection has to send, the
//! server's frames are counted by a header-only parser (`wire.rs`), and the
//! clock is read once per readiness event. mio rather than async-io: its
//! registrations are edge-triggered and stay armed, where async-io re-arms a
//! one-shot registration (an `epoll_ctl`) after every wait, and the load
//! generator must not pay for what it measures in the server.
//!
//! Scenarios (the first argument); each prints one JSON line on stdout:
//!
//! - `echo`: C connections, each keeping K messages of S bytes in flight
//!   (K = 1 is ping-pong): messages/s, latency p50/p99/p99.9/max.
//! - `idle`: N connections opened at most `--conc` at a time, then left
//!   idle: handshakes/s and, with `--pid`, the server's RSS per connection.
//! - `broadcast`: one publisher and M subscribers on one URL (or the
//!   publisher on `--pub-url`: another node of a cluster); the server
//!   relays each message of the publisher to every subscriber; the publisher
//!   stays at most W messages ahead of the average subscriber:
//!   deliveries/s, and the latency from publish to each delivery
//!   (p50/p99). With `--pub-pid`, the publishing node's CPU per publish.
//!
//! With `--pid`, the server's CPU time over the measured window (all its
//! threads, from /proc) gives server CPU per message, the number that stays
//! meaningful when the client is the limit. `scripts/bench.sh` runs the
//! scenarios against wsgate and the anchor servers; `loadgen --help` lists
//! the flags.

#![forbid(unsafe_code)]

mod engine;
mod hist;
mod procfs;
mod report;
mod wire;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::Events;

use crate::engine::{Engine, Mode, Setup};
use crate::procfs::CoreTicks;
use crate::report::Report;

const HELP: &str = "\
usage: loadgen <echo|idle|broadcast> [flags]

common:
  --url ws://HOST:PORT/PATH  the endpoint; wss:// for TLS (SNI: HOST; the
                     server's certificate is not verified)          [ws://127.0.0.1:7681/echo]
  --tls12            wss:// with TLS 1.2 (default: TLS 1.3)
  --pid PID          the server's pid: its CPU time and RSS from /proc
  --label NAME       copied into the JSON line
  --text             text frames (default: binary)
  --conc N           handshakes in flight while connecting                 [128]
  --connect-timeout S  give up on connecting after S seconds               [30]
  --busy             never sleep in epoll_wait while running (client_idle_pct
                     shows the headroom the client had)
  --json             send 64 distinct JSON text messages of --size bytes in turn
                     (instead of one message of 'x' bytes)
  --deflate          --json, compressed: offer permessage-deflate as a browser
                     does (\"permessage-deflate; client_max_window_bits\"), send
                     each message compressed on its own (RSV1), and report the
                     agreed extension and the compression ratio of what the
                     server sent (payload bytes before / on the wire)
echo:
  -c, --conns C      connections                                           [100]
  -s, --size S       payload bytes                                         [32]
  -k, --inflight K   messages in flight per connection (1: ping-pong)      [1]
  -d, --duration D   measured seconds                                      [5]
  -w, --warmup W     seconds before the measurement                        [1]
idle:
  -n, --conns N      connections                                           [10000]
  --settle S         seconds between the last handshake and reading RSS    [2]
  --touch            one echo round trip per connection before idling
broadcast:
  -m, --subs M       subscribers                                           [100]
  -s, --size S       payload bytes                                         [32]
  --window W         messages the publisher keeps in flight                [16]
  -d, -w             as for echo
  --pub-url URL      the publisher's endpoint (default: --url), e.g. another
                     node of a cluster
  --pub-pid PID      the publisher's server: its CPU per publish
  --settle S         seconds between the last handshake and the first publish
                     (a cluster's subscriptions take effect)               [0]

wss:// makes every connection a full TLS handshake (no resumption).
";

struct Args {
    scenario: String,
    url: String,
    addr: SocketAddr,
    host: String,
    path: String,
    pid: Option<u32>,
    label: String,
    text: bool,
    conc: usize,
    connect_timeout: f64,
    busy: bool,
    conns: usize,
    size: usize,
    inflight: usize,
    window: usize,
    duration: f64,
    warmup: f64,
    settle: f64,
    touch: bool,
    tls: bool,
    tls12: bool,
    pub_url: Option<String>,
    pub_pid: Option<u32>,
    json: bool,
    deflate: bool,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let mut report = Report::new();
    report
        .str("scenario", &args.scenario)
        .str("label", &args.label)
        .str("url", &args.url);
    match run(&args, &mut report) {
        Ok(()) => {
            println!("{}", report.finish());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut failed = Report::new();
            failed
                .str("scenario", &args.scenario)
                .str("label", &args.label)
                .str("url", &args.url)
                .bool("ok", false)
                .str("error", &e);
            println!("{}", failed.finish());
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let scenario = it.next().ok_or("missing scenario")?;
    if scenario == "-h" || scenario == "--help" {
        return Ok(None);
    }
    if !["echo", "idle", "broadcast"].contains(&scenario.as_str()) {
        return Err(format!("unknown scenario {scenario}"));
    }
    let mut a = Args {
        conns: if scenario == "idle" { 10_000 } else { 100 },
        scenario,
        url: "ws://127.0.0.1:7681/echo".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], 7681)),
        host: String::new(),
        path: String::new(),
        pid: None,
        label: String::new(),
        text: false,
        conc: 128,
        connect_timeout: 30.0,
        busy: false,
        size: 32,
        inflight: 1,
        window: 16,
        duration: 5.0,
        warmup: 1.0,
        settle: 2.0,
        touch: false,
        tls: false,
        tls12: false,
        pub_url: None,
        pub_pid: None,
        json: false,
        deflate: false,
    };
    let mut settle_given = false;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        }
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--pid" => a.pid = Some(num(&flag, value()?)?),
            "--label" => a.label = value()?,
            "--text" => a.text = true,
            "--busy" => a.busy = true,
            "--touch" => a.touch = true,
            "--tls12" => a.tls12 = true,
            "--json" => a.json = true,
            "--deflate" => (a.json, a.deflate) = (true, true),
            "--conc" => a.conc = num(&flag, value()?)?,
            "--connect-timeout" => a.connect_timeout = num(&flag, value()?)?,
            "-c" | "--conns" | "-n" | "-m" | "--subs" => a.conns = num(&flag, value()?)?,
            "-s" | "--size" => a.size = num(&flag, value()?)?,
            "-k" | "--inflight" => a.inflight = num(&flag, value()?)?,
            "--window" => a.window = num(&flag, value()?)?,
            "-d" | "--duration" => a.duration = num(&flag, value()?)?,
            "-w" | "--warmup" => a.warmup = num(&flag, value()?)?,
            "--settle" => {
                a.settle = num(&flag, value()?)?;
                settle_given = true;
            }
            "--pub-url" => a.pub_url = Some(value()?),
            "--pub-pid" => a.pub_pid = Some(num(&flag, value()?)?),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.scenario == "broadcast" && !settle_given {
        a.settle = 0.0;
    }
    if a.inflight == 0 || a.window == 0 || a.conc == 0 {
        return Err("--inflight, --window and --conc must be at least 1".into());
    }
    (a.addr, a.host, a.path, a.tls) = parse_url(&a.url)?;
    Ok(Some(a))
}

/// `ws://HOST[:PORT][/PATH]` (or `wss://`) → the address (a name resolves
/// to its first address), the Host header, the path, and whether it is TLS.
fn parse_url(url: &str) -> Result<(SocketAddr, String, String, bool), String> {
    let (rest, tls) = match url.split_once("://") {
        Some(("ws", rest)) => (rest, false),
        Some(("wss", rest)) => (rest, true),
        _ => return Err(format!("not a ws:// or wss:// URL: {url}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(h, _)| !h.ends_with(':'))
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    Ok((addr, authority.to_owned(), path.to_owned(), tls))
}

fn run(a: &Args, report: &mut Report) -> Result<(), String> {
    let mode = match a.scenario.as_str() {
        "echo" => Mode::Echo {
            inflight: a.inflight,
        },
        "idle" => Mode::Idle { touch: a.touch },
        _ => Mode::Broadcast { window: a.window },
    };
    let need = a.conns as u64 + 64;
    if let Some(limit) = procfs::open_files_limit().filter(|&l| l < need) {
        return Err(format!(
            "{} connections need about {need} descriptors; ulimit -n is {limit} (raise it, e.g. ulimit -n $(ulimit -Hn))",
            a.conns
        ));
    }
    let opcode = if a.text || a.json {
        wire::OP_TEXT
    } else {
        wire::OP_BINARY
    };
    let tls = if a.tls {
        Some(wire::tls_client(a.tls12)?)
    } else {
        None
    };
    let frames: Vec<Vec<u8>> = if a.json {
        wire::json_messages(a.size, 64)
            .iter()
            .map(|m| {
                if a.deflate {
                    wire::deflated_frame(opcode, m)
                } else {
                    wire::client_frame(opcode, m)
                }
            })
            .collect()
    } else {
        vec![wire::client_frame(opcode, &vec![b'x'; a.size])]
    };
    // What one message costs on the wire from the client (header and mask
    // excluded): the compression ratio of the client's side.
    let sent_payload: usize = frames.iter().map(|f| f.len() - header_len(f)).sum();
    let out_ratio = (a.size * frames.len()) as f64 / sent_payload.max(1) as f64;
    let mut engine = Engine::new(Setup {
        addr: a.addr,
        tls,
        host: a.host.clone(),
        path: a.path.clone(),
        frames,
        offer: a
            .deflate
            .then(|| "permessage-deflate; client_max_window_bits".to_owned()),
        mode,
        conns: a.conns,
        max_connecting: a.conc,
        publisher: a
            .pub_url
            .as_deref()
            .map(|u| parse_url(u).map(|(addr, host, path, _tls)| (addr, host, path)))
            .transpose()?,
    })?;
    let mut events = Events::with_capacity(4096);
    let rss_before = a.pid.and_then(procfs::rss_kib);
    let connect_s = engine.connect_all(&mut events, Duration::from_secs_f64(a.connect_timeout))?;
    if a.deflate {
        report
            .str(
                "deflate_agreed",
                engine.extensions.as_deref().unwrap_or("(declined)"),
            )
            .num("ratio_client_to_server", Some(out_ratio), 2);
    }
    let result = match mode {
        Mode::Idle { touch } => idle(
            a,
            &mut engine,
            &mut events,
            touch,
            connect_s,
            rss_before,
            report,
        ),
        _ => {
            if engine.dead > 0 {
                Err(format!(
                    "{} connections failed; {}",
                    engine.dead,
                    engine.first_error.clone().unwrap_or_default()
                ))
            } else {
                measured(a, &mut engine, &mut events, mode, connect_s, report)
            }
        }
    };
    engine.reset_all();
    result
}

/// The length of a client frame's header (with its mask key).
fn header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 8,
        127 => 14,
        _ => 6,
    }
}

/// Echo and broadcast: warm up, then measure for the duration.
fn measured(
    a: &Args,
    engine: &mut Engine,
    events: &mut Events,
    mode: Mode,
    connect_s: f64,
    report: &mut Report,
) -> Result<(), String> {
    let (warmup, duration) = (
        Duration::from_secs_f64(a.warmup),
        Duration::from_secs_f64(a.duration),
    );
    if a.settle > 0.0 && matches!(mode, Mode::Broadcast { .. }) {
        engine.run_until(
            events,
            Instant::now() + Duration::from_secs_f64(a.settle),
            false,
        )?;
    }
    let start = Instant::now();
    engine.start_run(warmup, duration);
    engine.run_until(events, start + warmup, a.busy)?;

    let me = std::process::id();
    let cpu0 = (procfs::cpu_seconds(me), a.pid.and_then(procfs::cpu_seconds));
    let pub_cpu0 = a.pub_pid.and_then(procfs::cpu_seconds);
    let switches0 = (
        procfs::involuntary_switches(me),
        a.pid.and_then(procfs::involuntary_switches),
    );
    let cores0 = CoreTicks::now();
    engine.idle_ns = 0;
    engine.run_until(events, start + warmup + duration, a.busy)?;
    let cpu1 = (procfs::cpu_seconds(me), a.pid.and_then(procfs::cpu_seconds));
    let pub_cpu1 = a.pub_pid.and_then(procfs::cpu_seconds);
    let switches1 = (
        procfs::involuntary_switches(me),
        a.pid.and_then(procfs::involuntary_switches),
    );
    let (cores_busy, cores_steal) = cores0.percent_until(&CoreTicks::now(), a.duration);
    engine.stop_run();
    if engine.dead > 0 {
        return Err(format!(
            "{} connections died; {}",
            engine.dead,
            engine.first_error.clone().unwrap_or_default()
        ));
    }

    let d = a.duration;
    let pct = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / d * 100.0);
    let delta = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
    let rate = engine.counted as f64 / d;
    report.bool("ok", true);
    match mode {
        Mode::Echo { inflight } => {
            let us = |ns: u64| ns as f64 / 1000.0;
            let h = &engine.latency;
            report
                .int("conns", a.conns as u64)
                .int("size", a.size as u64)
                .int("inflight", inflight as u64)
                .bool("text", a.text)
                .num("duration_s", d, 1)
                .int("msgs", engine.counted)
                .num("msgs_per_s", rate, 0)
                .num("mbytes_per_s", rate * a.size as f64 / 1e6, 2)
                .num("lat_us_p50", us(h.percentile(50.0)), 1)
                .num("lat_us_p99", us(h.percentile(99.0)), 1)
                .num("lat_us_p999", us(h.percentile(99.9)), 1)
                .num("lat_us_max", us(h.max()), 1);
        }
        _ => {
            let us = |ns: u64| ns as f64 / 1000.0;
            let h = &engine.latency;
            let per_publish = match (pub_cpu0, pub_cpu1) {
                (Some(x), Some(y)) if engine.published_counted > 0 => {
                    Some((y - x) / engine.published_counted as f64 * 1e6)
                }
                _ => None,
            };
            report
                .int("subs", a.conns as u64)
                .int("size", a.size as u64)
                .int("window", a.window as u64)
                .bool("text", a.text)
                .num("duration_s", d, 1)
                .int("deliveries", engine.counted)
                .num("deliveries_per_s", rate, 0)
                .int("published", engine.published)
                .num("published_per_s", engine.published_counted as f64 / d, 0)
                .num("lat_us_p50", us(h.percentile(50.0)), 1)
                .num("lat_us_p99", us(h.percentile(99.0)), 1)
                .num("lat_us_max", us(h.max()), 1)
                .num("pub_server_cpu_pct", pct(pub_cpu0, pub_cpu1), 1)
                .num("pub_server_cpu_us_per_publish", per_publish, 2);
        }
    }
    report
        .num("client_cpu_pct", pct(cpu0.0, cpu1.0), 1)
        .num(
            "client_idle_pct",
            engine.idle_ns as f64 * 1e-9 / d * 100.0,
            1,
        )
        .bool("busy", a.busy)
        .num("server_cpu_pct", pct(cpu0.1, cpu1.1), 1)
        .int("client_invol_cs", delta(switches0.0, switches1.0))
        .int("server_invol_cs", delta(switches0.1, switches1.1))
        .nums("cores_busy_pct", &cores_busy)
        .nums("cores_steal_pct", &cores_steal)
        .int("server_rss_kb", a.pid.and_then(procfs::rss_kib))
        .num("connect_s", connect_s, 3)
        .bool("json", a.json)
        .bool("deflate", a.deflate)
        .int("wire_bytes", Some(engine.wire_bytes))
        .num(
            "ratio_server_to_client",
            Some(engine.counted as f64 * a.size as f64 / engine.wire_bytes.max(1) as f64),
            2,
        );
    Ok(())
}

/// Idle: (touch,) settle, then the server's RSS per open connection.
fn idle(
    a: &Args,
    engine: &mut Engine,
    events: &mut Events,
    touch: bool,
    connect_s: f64,
    rss_before: Option<u64>,
    report: &mut Report,
) -> Result<(), String> {
    if touch {
        let deadline = Instant::now() + Duration::from_secs_f64(a.connect_timeout);
        while engine.touched < engine.open && Instant::now() < deadline {
            engine.run_until(events, Instant::now() + Duration::from_millis(100), false)?;
        }
    }
    engine.run_until(
        events,
        Instant::now() + Duration::from_secs_f64(a.settle),
        false,
    )?;
    let rss_after = a.pid.and_then(procfs::rss_kib);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(x)) => Some((x as f64 - b as f64) * 1024.0 / engine.open.max(1) as f64),
        _ => None,
    };
    report
        .bool("ok", engine.dead == 0)
        .int("conns", a.conns as u64)
        .int("open", engine.open as u64)
        .int("failed", engine.dead as u64)
        .bool("touch", touch)
        .num("connect_s", connect_s, 3)
        .num(
            "handshakes_per_s",
            engine.open as f64 / connect_s.max(1e-9),
            0,
        )
        .int("server_rss_before_kb", rss_before)
        .int("server_rss_after_kb", rss_after)
        .num("server_bytes_per_conn", per_conn, 0);
    match &engine.first_error {
        Some(e) => report.str("first_error", e),
        None => report.int("first_error", None),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        let (addr, host, path, tls) = parse_url("ws://127.0.0.1:7681/echo").unwrap();
        assert!(!tls);
        assert_eq!(
            (addr.to_string(), host.as_str(), path.as_str()),
            ("127.0.0.1:7681".into(), "127.0.0.1:7681", "/echo")
        );
        let (addr, _, path, _) = parse_url("ws://[::1]:9/").unwrap();
        assert_eq!((addr.to_string(), path.as_str()), ("[::1]:9".into(), "/"));
        let (addr, _, path, _) = parse_url("ws://127.0.0.1").unwrap();
        assert_eq!((addr.port(), path.as_str()), (80, "/"));
        let (addr, host, _, tls) = parse_url("wss://localhost/echo").unwrap();
        assert_eq!((addr.port(), host.as_str(), tls), (443, "localhost", true));
        assert!(parse_url("http://x/").is_err());
    }
}
