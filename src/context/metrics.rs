//! Counters and gauges of a context, as a [`Stats`] snapshot and as
//! Prometheus text (served by the `metrics` HTTP handler).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::lock;
use crate::proto::session::Tally;

/// The live counters; updated with relaxed atomics on the hot path.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) sessions_total: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) published: AtomicU64,
    rejected: Mutex<BTreeMap<u16, u64>>,
    close_codes: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    pub(crate) fn rejected(&self, status: u16) {
        *lock(&self.rejected).entry(status).or_insert(0) += 1;
    }

    pub(crate) fn closed(&self, code: u16) {
        *lock(&self.close_codes).entry(code).or_insert(0) += 1;
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
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
    /// TCP connections open now.
    pub connections: u64,
    /// The connections each service thread serves now, indexed like the
    /// executors the context was attached to (see
    /// [`Counters::connections_per_thread`](crate::Counters::connections_per_thread)).
    pub connections_per_thread: Vec<u64>,
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
}

impl Stats {
    pub(crate) fn collect(ctx: &crate::context::ContextShared) -> Self {
        let m = &ctx.metrics;
        let c = ctx.counters();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Self {
            sessions_open: c.sessions_open as u64,
            sessions_total: load(&m.sessions_total),
            connections: c.connections as u64,
            connections_per_thread: c.connections_per_thread.iter().map(|&n| n as u64).collect(),
            rejected: lock(&m.rejected).clone(),
            messages_in: load(&m.messages_in),
            bytes_in: load(&m.bytes_in),
            messages_out: load(&m.messages_out),
            bytes_out: load(&m.bytes_out),
            dropped: load(&m.dropped),
            published: load(&m.published),
            topics: ctx.topics.broker().topics().len() as u64,
            close_codes: lock(&m.close_codes).clone(),
            drain_clean: ctx.drain_clean.load(Ordering::Relaxed) as u64,
            drain_aborted: ctx.drain_aborted.load(Ordering::Relaxed) as u64,
            drain_forced: ctx.drain_forced.load(Ordering::Relaxed) as u64,
        }
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
        out
    }
}
