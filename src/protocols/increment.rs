//! `increment`: the server pushes a counter to each client at a fixed
//! interval, like libwebsockets' dumb-increment protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_io::Timer;
use event_listener::Event;
use futures_lite::{StreamExt, future};

use crate::Options;
use crate::{CloseReason, Message, Protocol, Reject, Request, SessionHandle};

/// Pushes a counter to each session as text (`"0"`, `"1"`, …): the first
/// value at once, then one every interval. A client that sends the text
/// `reset` sets its own counter back to 0; anything else it sends is ignored.
///
/// Each session has a task of its own ([`SessionHandle::spawn`]) that waits
/// for room in the session's queue before each value, so a slow client falls
/// behind in values instead of piling them up, and that ends as soon as the
/// session closes.
///
/// Options (`[vhost.options.increment]`):
///
/// - `interval_ms`: milliseconds between two values, from 10 to 60000.
///   Default: 100.
///
/// # Examples
///
/// ```
/// use wsgate::{Mount, Options, VhostConfig, protocols::Increment};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let options = Options::from([("interval_ms".to_owned(), "250".to_owned())]);
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:0".parse()?)
///     .protocol_with_options(Increment::from_options(&options)?, options)
///     .mount(Mount::websocket("/increment", ["increment"]))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Increment {
    interval: Duration,
}

/// The per-session state of [`Increment`]: the counter, shared with the
/// session's pushing task.
#[derive(Debug)]
pub struct IncrementState(Arc<Counter>);

#[derive(Debug, Default)]
struct Counter {
    /// The next value to push.
    value: AtomicU64,
    /// Set by the close callback: the pushing task stops.
    closed: AtomicBool,
    /// Notified when `closed` is set.
    on_close: Event,
}

/// The range of `interval_ms`.
const INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

impl Increment {
    /// Builds the protocol from its options (see the type's documentation).
    ///
    /// # Errors
    ///
    /// A message naming the option, for an unknown option or an
    /// `interval_ms` that is not a whole number from 10 to 60000.
    pub fn from_options(options: &Options) -> Result<Self, String> {
        super::check_known(options, &["interval_ms"])?;
        let ms = super::number_option(options, "interval_ms", 100, INTERVAL_MS)?;
        Ok(Self {
            interval: Duration::from_millis(ms),
        })
    }

    /// The time between two values.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl Default for Increment {
    /// An interval of 100 ms.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
        }
    }
}

impl Protocol for Increment {
    type State = IncrementState;

    fn name(&self) -> &str {
        "increment"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<IncrementState, Reject> {
        let counter = Arc::new(Counter::default());
        session
            .spawn(push(session.clone(), counter.clone(), self.interval))
            .map_err(|_| Reject::new(503, "shutting down"))?;
        Ok(IncrementState(counter))
    }

    fn message(&self, state: &mut IncrementState, _session: &SessionHandle, message: Message) {
        if let Message::Text(text) = &message
            && text.as_str().trim() == "reset"
        {
            state.0.value.store(0, Ordering::Relaxed);
        }
    }

    fn close(&self, state: IncrementState, _session: &SessionHandle, _reason: &CloseReason) {
        state.0.closed.store(true, Ordering::Release);
        state.0.on_close.notify(usize::MAX);
    }
}

/// The session's pushing task. It ends when a send finds the session closed,
/// or when the close callback runs, whichever comes first, so that a drain
/// never waits for a timer.
async fn push(session: SessionHandle, counter: Arc<Counter>, every: Duration) {
    let mut ticks = Timer::interval(every);
    loop {
        let value = counter.value.fetch_add(1, Ordering::Relaxed);
        let sent = future::or(
            async {
                // Waits for room: a slow client gets fewer values, not a
                // longer queue.
                session.send(Message::text(value.to_string())).await.is_ok()
            },
            async {
                counter.closed().await;
                false
            },
        )
        .await;
        if !sent {
            return;
        }
        let ticked = future::or(async { ticks.next().await.is_some() }, async {
            counter.closed().await;
            false
        })
        .await;
        if !ticked || !session.is_open() {
            return;
        }
    }
}

impl Counter {
    /// Resolves once the session's close callback has run.
    async fn closed(&self) {
        loop {
            let listener = self.on_close.listen();
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_option_is_checked() {
        let mut o = Options::new();
        assert_eq!(
            Increment::from_options(&o).unwrap().interval(),
            Duration::from_millis(100)
        );
        o.insert("interval_ms".into(), "10".into());
        assert_eq!(
            Increment::from_options(&o).unwrap().interval(),
            Duration::from_millis(10)
        );
        for bad in ["9", "60001", "-1", "1.5", "fast"] {
            o.insert("interval_ms".into(), bad.into());
            let err = Increment::from_options(&o).unwrap_err();
            assert!(err.starts_with("interval_ms: "), "{bad}: {err}");
        }
    }
}
