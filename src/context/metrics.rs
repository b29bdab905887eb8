//! Counters and gauges of a context, as a [`Stats`] snapshot and as
//! Prometheus text (served by the `metrics` HTTP handler).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::lock;
use crate::context::broker::BrokerStats;
use crate::proto::session::{ExtensionTally, Tally};
use crate::runtime::budget::Usage;

/// The live counters; updated with relaxed atomics on the hot path (traffic
/// once per session poll, not per message). Gauges (sessions and connections
/// open, topics) are read from their owners when a snapshot is taken.
#[derive(Default)]
pub(crate) struct Metrics {
    sessions_total: AtomicU64,
    sessions_closed: AtomicU64,
    rejected_total: AtomicU64,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    dropped: AtomicU64,
    published: AtomicU64,
    rejected: Mutex<BTreeMap<u16, u64>>,
    close_codes: Mutex<BTreeMap<u16, u64>>,
    tls_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// permessage-deflate, by vhost name.
    compression: Mutex<BTreeMap<String, Arc<CompressionCounters>>>,
}

/// One vhost's permessage-deflate counters, held by each of its sessions
/// that negotiated it (so a report is relaxed atomics, no lock).
#[derive(Debug, Default)]
pub(crate) struct CompressionCounters {
    sessions: AtomicU64,
    compressed_in: AtomicU64,
    uncompressed_in: AtomicU64,
    compressed_out: AtomicU64,
    uncompressed_out: AtomicU64,
}

impl CompressionCounters {
    /// A session's compressed traffic since its last report.
    pub(crate) fn add(&self, t: ExtensionTally) {
        Metrics::add(&self.compressed_in, t.wire_in.into());
        Metrics::add(&self.uncompressed_in, t.plain_in.into());
        Metrics::add(&self.compressed_out, t.wire_out.into());
        Metrics::add(&self.uncompressed_out, t.plain_out.into());
    }

    fn snapshot(&self) -> CompressionStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CompressionStats {
            sessions: load(&self.sessions),
            compressed_bytes_in: load(&self.compressed_in),
            uncompressed_bytes_in: load(&self.uncompressed_in),
            compressed_bytes_out: load(&self.compressed_out),
            uncompressed_bytes_out: load(&self.uncompressed_out),
        }
    }
}

impl Metrics {
    /// A request refused with `status`.
    pub(crate) fn rejected(&self, status: u16) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        *lock(&self.rejected).entry(status).or_insert(0) += 1;
    }

    /// A session ended with close code `code` (1006 without a handshake).
    pub(crate) fn closed(&self, code: u16) {
        self.sessions_closed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.close_codes).entry(code).or_insert(0) += 1;
    }

    /// A TLS handshake failed for `reason` (a metric label).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_failed(&self, reason: &'static str) {
        *lock(&self.tls_failures).entry(reason).or_insert(0) += 1;
    }

    /// A handshake accepted.
    pub(crate) fn count_session(&self) {
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A session of `vhost` negotiated permessage-deflate: counted, and the
    /// counters its traffic goes to.
    pub(crate) fn count_compressed_session(&self, vhost: &str) -> Arc<CompressionCounters> {
        let mut map = lock(&self.compression);
        let c = match map.get(vhost) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(CompressionCounters::default());
                map.insert(vhost.to_owned(), c.clone());
                c
            }
        };
        c.sessions.fetch_add(1, Ordering::Relaxed);
        c
    }

    /// A message published to a topic.
    pub(crate) fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A session's traffic since its last report.
    pub(crate) fn add_traffic(&self, t: Tally) {
        Self::add(&self.messages_in, t.messages_in.into());
        Self::add(&self.bytes_in, t.bytes_in.into());
        Self::add(&self.messages_out, t.messages_out.into());
        Self::add(&self.bytes_out, t.bytes_out.into());
    }

    /// Messages an overflow policy dropped.
    pub(crate) fn count_drops(&self, n: u64) {
        Self::add(&self.dropped, n);
    }
}

/// A snapshot of a context's counters and gauges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions open now.
    pub sessions_open: u64,
    /// Sessions opened since attach (handshakes accepted).
    pub sessions_total: u64,
    /// Sessions that have ended since attach.
    pub sessions_closed: u64,
    /// TCP connections open now.
    pub connections: u64,
    /// The connections each service thread serves now, indexed like the
    /// executors given to [`Context::attach_set`](crate::Context::attach_set)
    /// (one entry for [`Context::attach`](crate::Context::attach)). New
    /// connections go to the lowest of these. They add up to `connections`,
    /// but for a connection being accepted at that very moment.
    pub connections_per_thread: Vec<u64>,
    /// Requests refused with an HTTP error status, all statuses together.
    pub rejected_total: u64,
    /// Requests refused, by HTTP status.
    pub rejected: BTreeMap<u16, u64>,
    /// Data messages received from clients.
    pub messages_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// Data messages sent to clients.
    pub messages_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Messages dropped by overflow policies.
    pub dropped: u64,
    /// Messages published to topics.
    pub published: u64,
    /// Topics with at least one subscriber.
    pub topics: u64,
    /// Sessions ended, by close code (1006 for those that ended without a
    /// close handshake).
    pub close_codes: BTreeMap<u16, u64>,
    /// Bytes held for peers now: unfinished inbound messages and bytes read
    /// but not yet decoded (see [`ConfigBuilder::memory_budget`]).
    ///
    /// [`ConfigBuilder::memory_budget`]: crate::ConfigBuilder::memory_budget
    pub buffered_inbound: u64,
    /// Bytes queued for peers and encoded bytes waiting for their sockets.
    pub buffered_outbound: u64,
    /// Bytes negotiated extensions hold (compression state).
    pub buffered_compression: u64,
    /// The memory budget in bytes; 0 when not accounted.
    pub memory_budget: u64,
    /// Whether the budget is under pressure now: above its high-water mark
    /// (90 %) and not yet back under its low-water mark (75 %).
    pub memory_pressure: bool,
    /// Times a session stopped reading because the budget was under
    /// pressure.
    pub budget_paused: u64,
    /// Sessions closed (1013) to bring the budget back under its low-water
    /// mark.
    pub budget_shed: u64,
    /// WebSocket handshakes refused (503) while the budget was under
    /// pressure.
    pub budget_refused: u64,
    /// Sessions closed cleanly, aborted and forced since teardown began.
    pub drain_clean: u64,
    /// See `drain_clean`.
    pub drain_aborted: u64,
    /// See `drain_clean`.
    pub drain_forced: u64,
    /// TLS handshakes that failed, by reason: `timeout` (not done within
    /// `handshake_timeout`), `closed` (the peer hung up), `not_tls` (plain
    /// HTTP or garbage), `client_certificate` (mutual TLS refused),
    /// `protocol` (any other TLS error), `io`.
    pub tls_handshake_failures: BTreeMap<String, u64>,
    /// The broker's state and counters (cluster bus errors, reconnects,
    /// messages to and from other nodes).
    pub broker: BrokerStats,
    /// permessage-deflate, by vhost name (vhosts where some session
    /// negotiated it).
    pub compression: BTreeMap<String, CompressionStats>,
}

/// One vhost's permessage-deflate traffic since attach: the bytes of the
/// messages that went compressed, as on the wire and as the application
/// sees them (messages sent or received plain count in neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CompressionStats {
    /// Sessions that negotiated permessage-deflate.
    pub sessions: u64,
    /// Compressed payload bytes received.
    pub compressed_bytes_in: u64,
    /// What they inflated to.
    pub uncompressed_bytes_in: u64,
    /// Compressed payload bytes sent.
    pub compressed_bytes_out: u64,
    /// What they were before compression.
    pub uncompressed_bytes_out: u64,
}

impl Metrics {
    /// The counters with the gauges their owners report: open sessions and
    /// connections, each worker's connections, topics, and the teardown's
    /// (clean, aborted, forced).
    pub(crate) fn snapshot(
        &self,
        sessions_open: usize,
        connections: usize,
        per_thread: Vec<usize>,
        topics: usize,
        drain: (usize, usize, usize),
        broker: BrokerStats,
    ) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let wide = |n: usize| n as u64;
        Stats {
            sessions_open: wide(sessions_open),
            sessions_total: load(&self.sessions_total),
            sessions_closed: load(&self.sessions_closed),
            connections: wide(connections),
            connections_per_thread: per_thread.into_iter().map(wide).collect(),
            rejected_total: load(&self.rejected_total),
            rejected: lock(&self.rejected).clone(),
            messages_in: load(&self.messages_in),
            bytes_in: load(&self.bytes_in),
            messages_out: load(&self.messages_out),
            bytes_out: load(&self.bytes_out),
            dropped: load(&self.dropped),
            published: load(&self.published),
            topics: wide(topics),
            close_codes: lock(&self.close_codes).clone(),
            buffered_inbound: 0,
            buffered_outbound: 0,
            buffered_compression: 0,
            memory_budget: 0,
            memory_pressure: false,
            budget_paused: 0,
            budget_shed: 0,
            budget_refused: 0,
            drain_clean: wide(drain.0),
            drain_aborted: wide(drain.1),
            drain_forced: wide(drain.2),
            tls_handshake_failures: lock(&self.tls_failures)
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            broker,
            compression: lock(&self.compression)
                .iter()
                .map(|(vhost, c)| (vhost.clone(), c.snapshot()))
                .collect(),
        }
    }
}

impl Stats {
    /// Fills in the memory budget's numbers.
    pub(crate) fn set_budget(&mut self, u: Usage) {
        self.buffered_inbound = u.inbound;
        self.buffered_outbound = u.outbound;
        self.buffered_compression = u.compression;
        self.memory_budget = u.limit;
        self.memory_pressure = u.pressure;
        self.budget_paused = u.paused;
        self.budget_shed = u.shed;
        self.budget_refused = u.refused;
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP wsgate_{name} {help}");
            let _ = writeln!(out, "# TYPE wsgate_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "wsgate_{name}{labels} {v}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        metric(
            "sessions_open",
            "gauge",
            "WebSocket sessions open now.",
            &one(self.sessions_open),
        );
        metric(
            "sessions_total",
            "counter",
            "WebSocket handshakes accepted.",
            &one(self.sessions_total),
        );
        metric(
            "connections_open",
            "gauge",
            "TCP connections open now.",
            &one(self.connections),
        );
        let per_thread: Vec<(String, u64)> = self
            .connections_per_thread
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{{thread=\"{i}\"}}"), *n))
            .collect();
        metric(
            "thread_connections_open",
            "gauge",
            "TCP connections open now, by the service thread serving them.",
            &per_thread,
        );
        let rejected: Vec<(String, u64)> = self
            .rejected
            .iter()
            .map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n))
            .collect();
        metric(
            "handshakes_rejected_total",
            "counter",
            "Requests refused, by HTTP status.",
            &rejected,
        );
        metric(
            "messages_in_total",
            "counter",
            "Data messages received.",
            &one(self.messages_in),
        );
        metric(
            "bytes_in_total",
            "counter",
            "Payload bytes received.",
            &one(self.bytes_in),
        );
        metric(
            "messages_out_total",
            "counter",
            "Data messages sent.",
            &one(self.messages_out),
        );
        metric(
            "bytes_out_total",
            "counter",
            "Payload bytes sent.",
            &one(self.bytes_out),
        );
        metric(
            "dropped_total",
            "counter",
            "Messages dropped by overflow policies.",
            &one(self.dropped),
        );
        metric(
            "published_total",
            "counter",
            "Messages published to topics.",
            &one(self.published),
        );
        metric(
            "topics",
            "gauge",
            "Topics with subscribers.",
            &one(self.topics),
        );
        let codes: Vec<(String, u64)> = self
            .close_codes
            .iter()
            .map(|(c, n)| (format!("{{code=\"{c}\"}}"), *n))
            .collect();
        metric(
            "sessions_closed_total",
            "counter",
            "Sessions ended, by close code.",
            &codes,
        );
        let buffered = [
            ("{kind=\"inbound\"}".to_owned(), self.buffered_inbound),
            ("{kind=\"outbound\"}".to_owned(), self.buffered_outbound),
            (
                "{kind=\"compression\"}".to_owned(),
                self.buffered_compression,
            ),
        ];
        metric(
            "buffered_bytes",
            "gauge",
            "Bytes held for peers, by kind (counted against the memory budget).",
            &buffered,
        );
        metric(
            "memory_budget_bytes",
            "gauge",
            "The memory budget (0: not accounted).",
            &one(self.memory_budget),
        );
        metric(
            "memory_pressure",
            "gauge",
            "1 while the memory budget is above its high-water mark (until it is back under its low-water mark).",
            &one(u64::from(self.memory_pressure)),
        );
        metric(
            "budget_paused_total",
            "counter",
            "Times a session stopped reading because the memory budget was under pressure.",
            &one(self.budget_paused),
        );
        metric(
            "budget_shed_total",
            "counter",
            "Sessions closed with 1013 to bring the memory budget down.",
            &one(self.budget_shed),
        );
        metric(
            "budget_refused_total",
            "counter",
            "WebSocket handshakes refused with 503 while the memory budget was under pressure.",
            &one(self.budget_refused),
        );
        let drain = [
            ("{result=\"clean\"}".to_owned(), self.drain_clean),
            ("{result=\"aborted\"}".to_owned(), self.drain_aborted),
            ("{result=\"forced\"}".to_owned(), self.drain_forced),
        ];
        metric(
            "drain_sessions_total",
            "counter",
            "Sessions ended during teardown, by result.",
            &drain,
        );
        let tls: Vec<(String, u64)> = self
            .tls_handshake_failures
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n))
            .collect();
        metric(
            "tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason.",
            &tls,
        );
        metric(
            "broker_ready",
            "gauge",
            "1 while the broker can carry messages between nodes.",
            &one(u64::from(self.broker.ready)),
        );
        metric(
            "broker_errors_total",
            "counter",
            "Failed operations on the cluster bus.",
            &one(self.broker.errors),
        );
        metric(
            "broker_reconnects_total",
            "counter",
            "Connections to the cluster bus made again after one was lost.",
            &one(self.broker.reconnects),
        );
        let cross = [
            ("{direction=\"out\"}".to_owned(), self.broker.messages_out),
            ("{direction=\"in\"}".to_owned(), self.broker.messages_in),
        ];
        metric(
            "broker_messages_total",
            "counter",
            "Messages sent to and received from other nodes.",
            &cross,
        );
        self.compression_metrics(&mut out);
        out
    }

    /// The permessage-deflate families, per vhost.
    fn compression_metrics(&self, out: &mut String) {
        let vhost = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP wsgate_compression_sessions_total Sessions that negotiated permessage-deflate, by vhost.\n\
             # TYPE wsgate_compression_sessions_total counter"
        );
        for (name, c) in &self.compression {
            let _ = writeln!(
                out,
                "wsgate_compression_sessions_total{{vhost=\"{}\"}} {}",
                vhost(name),
                c.sessions
            );
        }
        let families = [
            (
                "compressed_bytes_total",
                "Payload bytes of compressed messages as sent on the wire, by vhost and direction.",
                [
                    |c: &CompressionStats| c.compressed_bytes_in,
                    |c: &CompressionStats| c.compressed_bytes_out,
                ],
            ),
            (
                "uncompressed_bytes_total",
                "Payload bytes of compressed messages before compression (out) or after inflation (in), by vhost and direction.",
                [
                    |c: &CompressionStats| c.uncompressed_bytes_in,
                    |c: &CompressionStats| c.uncompressed_bytes_out,
                ],
            ),
        ];
        for (family, help, [inbound, outbound]) in families {
            let _ = writeln!(out, "# HELP wsgate_{family} {help}");
            let _ = writeln!(out, "# TYPE wsgate_{family} counter");
            for (name, c) in &self.compression {
                for (direction, v) in [("in", inbound(c)), ("out", outbound(c))] {
                    let _ = writeln!(
                        out,
                        "wsgate_{family}{{vhost=\"{}\",direction=\"{direction}\"}} {v}",
                        vhost(name)
                    );
                }
            }
        }
    }
}
