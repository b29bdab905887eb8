//! The `stats` topic: every `--stats-interval` the binary publishes a JSON
//! snapshot of its counters there (the demo page's status panel subscribes
//! to it through `/pubsub`). The task is the host's, not wsgate's.

use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::StreamExt;
use wsgate::metrics::Stats;
use wsgate::{ContextHandle, Message};

/// The topic the binary publishes its counters to.
const STATS_TOPIC: &str = "stats";

/// Publishes a snapshot of the counters to [`STATS_TOPIC`] every `every`,
/// until teardown begins. Nothing is published (and the `published` counter
/// does not move) while nobody subscribes.
///
/// The message is the `pubsub` protocol's envelope,
/// `{"op":"message","topic":"stats","data":SNAPSHOT}`, the same as a client's
/// publish, so that `/pubsub` clients need no special case (see
/// [`stats_snapshot`] for `SNAPSHOT`).
pub(crate) async fn publish_stats(handle: ContextHandle, every: Duration) {
    let Ok(mut last) = handle.stats() else { return };
    let mut last_at = Instant::now();
    let mut ticks = Timer::interval(every);
    while ticks.next().await.is_some() {
        let Ok(stats) = handle.stats() else { return };
        let now = Instant::now();
        let data = stats_snapshot(&stats, &last, now.saturating_duration_since(last_at));
        (last, last_at) = (stats, now);
        if !handle.presence(STATS_TOPIC).is_ok_and(|p| p.count > 0) {
            continue;
        }
        let envelope = serde_json::json!({"op": "message", "topic": STATS_TOPIC, "data": data});
        if handle
            .publish(STATS_TOPIC, Message::text(envelope.to_string()))
            .is_err()
        {
            return;
        }
    }
}

/// The `stats` snapshot: `sessions`, `messages_in`, `messages_out`,
/// `connections`, `published` and `dropped` from `now`, and
/// `messages_per_sec`, the data messages received and sent per second since
/// `before`, `elapsed` earlier (one decimal).
fn stats_snapshot(now: &Stats, before: &Stats, elapsed: Duration) -> serde_json::Value {
    let messages = |s: &Stats| s.messages_in + s.messages_out;
    let delta = messages(now).saturating_sub(messages(before));
    let per_sec = if elapsed.is_zero() {
        0.0
    } else {
        (delta as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0
    };
    serde_json::json!({
        "sessions": now.sessions_open,
        "messages_in": now.messages_in,
        "messages_out": now.messages_out,
        "messages_per_sec": per_sec,
        "connections": now.connections,
        "published": now.published,
        "dropped": now.dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_snapshot_has_every_field_and_the_rate() {
        let mut before = Stats::default();
        before.messages_in = 10;
        before.messages_out = 10;
        let mut now = Stats::default();
        now.sessions_open = 3;
        now.connections = 4;
        now.messages_in = 40;
        now.messages_out = 30;
        now.published = 7;
        now.dropped = 1;
        assert_eq!(
            stats_snapshot(&now, &before, Duration::from_secs(2)),
            serde_json::json!({
                "sessions": 3, "messages_in": 40, "messages_out": 30,
                "messages_per_sec": 25.0, "connections": 4, "published": 7, "dropped": 1,
            })
        );
        assert_eq!(
            stats_snapshot(&now, &now, Duration::ZERO)["messages_per_sec"],
            0.0
        );
    }
}
