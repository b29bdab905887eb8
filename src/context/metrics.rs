//! Counters and gauges of a context, as a [`Stats`] snapshot and as
//! Prometheus text (served by the `metrics` HTTP handler).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::lock;
use crate::proto::session::{ExtensionTally, Tally};

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
    /// Sessions closed cleanly, aborted and forced since teardown began.
    pub drain_clean: u64,
    /// See `drain_clean`.
    pub drain_aborted: u64,
    /// See `drain_clean`.
    pub drain_forced: u64,
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
            drain_clean: wide(drain.0),
            drain_aborted: wide(drain.1),
            drain_forced: wide(drain.2),
            compression: lock(&self.compression)
                .iter()
                .map(|(vhost, c)| (vhost.clone(), c.snapshot()))
                .collect(),
        }
    }
}

impl Stats {
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
