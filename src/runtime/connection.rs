//! One connection: read request heads within their limits, write the answers
//! the [`Service`] gives (HTTP with keep-alive, refusals with a bounded
//! linger), or write the `101` and run the session it opened.
//!
//! Generic over the [`Transport`], so TLS and host-provided streams plug in
//! without touching this code. What to answer is not decided here: the
//! service (the context, above) routes, admits and calls the application.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_io::Timer;
use event_listener::EventListener;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};

use super::budget::Budget;
use super::driver::{Driver, DriverConfig, SessionHooks, read_once, registered};
use super::reactor::{Sleep, Token};
use super::tasks::Spawner;
use super::transport::Transport;
use super::workers::ConnectionSlot;
use crate::proto::close::CloseReason;
use crate::proto::extension::Extension;
use crate::proto::http::{Head, Refused, Request, Response, parse_head};
use crate::proto::session::SessionConfig;

/// Requests served on one keep-alive connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// How long, and how many bytes, we read and discard after an error answer so
/// that the client sees the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// The bounds on reading a request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) max_head_bytes: usize,
    pub(crate) max_headers: usize,
    /// Time from accept (or the previous answer) to a complete head; also
    /// bounds each answer's write.
    pub(crate) handshake_timeout: Duration,
}

/// What a listener's connections ask of the layer above: limits, the answer
/// to each request head, and the sessions it opens. The context implements
/// it, one per listener (and one for host-provided streams).
pub(crate) trait Service: Send + Sync + 'static {
    /// The bounds on reading a head (before the vhost is known: the
    /// listener's default vhost's).
    fn head_limits(&self) -> HeadLimits;
    /// Whether the context still serves (teardown ends keep-alive).
    fn is_running(&self) -> bool;
    /// Resolves when teardown begins (a connection waiting for a head quits).
    fn teardown(&self) -> EventListener;
    /// Counts a request refused with `status`.
    fn refused(&self, status: u16);
    /// Answers a complete head. `worker` is where this connection runs (and
    /// where the session, if the answer is an upgrade, will run).
    fn answer(&self, request: Request, worker: &Spawner) -> Answer;
}

/// The service's answer to one request.
pub(crate) enum Answer {
    /// An HTTP response; the connection stays open if the request allows it.
    Http(Response),
    /// A refusal, followed by close.
    Refuse(Refused),
    /// The application refused the handshake with this response; close.
    Reject(Response),
    /// The handshake is accepted: write the `101`, then run the session.
    Upgrade(Box<Upgraded>),
}

/// An accepted handshake: the answer to write and the session it opened.
pub(crate) struct Upgraded {
    /// The `101 Switching Protocols` head.
    pub(crate) response: Vec<u8>,
    pub(crate) session: Arc<SessionConfig>,
    pub(crate) driver: DriverConfig,
    /// The context's memory budget, when accounted.
    pub(crate) budget: Option<Arc<Budget>>,
    pub(crate) extension: Option<Box<dyn Extension>>,
    /// The session's queue and callbacks.
    pub(crate) hooks: Box<dyn SessionHooks>,
    /// The session's tracing span.
    pub(crate) span: tracing::Span,
}

enum HeadOutcome {
    Request(Request, usize),
    Refused(Refused),
    /// EOF, an I/O error, or teardown: close without a word.
    Gone,
}

/// Serves one connection until it closes. `accepted`: when it was
/// accepted; the first head is due `handshake_timeout` after it (an
/// acceptor's handshake counts against the same time).
pub(crate) async fn serve<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    service: Arc<dyn Service>,
    slot: ConnectionSlot,
    accepted: Instant,
) {
    let limits = service.head_limits();
    // The TLS facts are the connection's: taken once, shared by its requests.
    let tls = stream.tls();
    let mut buf = Vec::new();
    for served in 0..MAX_REQUESTS_PER_CONNECTION {
        let teardown = service.teardown();
        if !service.is_running() {
            return;
        }
        let since = if served == 0 {
            accepted
        } else {
            Instant::now()
        };
        let outcome = read_head(
            &mut stream,
            &mut buf,
            &limits,
            peer,
            teardown,
            since,
            served == 0,
        )
        .await;
        let (mut req, head_len) = match outcome {
            HeadOutcome::Request(r, n) => (r, n),
            HeadOutcome::Refused(refused) => {
                return refuse(&mut stream, service.as_ref(), refused, &limits).await;
            }
            HeadOutcome::Gone => return,
        };
        req.set_tls(tls.clone());
        let keep_alive = req.keep_alive() && !req.has_body();
        let head_only = req.method() == "HEAD";
        match service.answer(req, slot.spawner()) {
            Answer::Http(response) => {
                let keep_alive = keep_alive && service.is_running();
                if !write_response(&mut stream, &response, keep_alive, head_only, &limits).await {
                    return;
                }
                if !keep_alive {
                    linger(&mut stream).await;
                    return;
                }
                buf.drain(..head_len);
            }
            Answer::Refuse(refused) => {
                return refuse(&mut stream, service.as_ref(), refused, &limits).await;
            }
            Answer::Reject(response) => {
                service.refused(response.status());
                if write_response(&mut stream, &response, false, false, &limits).await {
                    linger(&mut stream).await;
                }
                return;
            }
            Answer::Upgrade(up) => {
                let leftover = buf.split_off(head_len);
                drop(buf);
                return upgrade(stream, &leftover, *up, slot, limits.handshake_timeout).await;
            }
        }
    }
}

/// Writes the `101` and hands the stream to the session, which runs as a
/// task of its own on the same worker.
async fn upgrade<S: Transport>(
    mut stream: S,
    leftover: &[u8],
    up: Upgraded,
    conn: ConnectionSlot,
    limit: Duration,
) {
    let Upgraded {
        response,
        session,
        driver,
        budget,
        extension,
        hooks,
        span,
    } = up;
    let alarm = registered(&stream).map(Token::alarm);
    let written = future::or(
        async {
            stream
                .write_all(&response)
                .await
                .and(stream.flush().await)
                .is_ok()
        },
        async {
            Sleep::until(alarm, Instant::now() + limit).await;
            false
        },
    )
    .await;
    if !written {
        hooks.finish(CloseReason::abnormal("handshake write failed"));
        return;
    }
    let Some(reactor) = conn.spawner().reactor() else {
        // The worker's task set is gone: nothing would run the session.
        hooks.finish(CloseReason::abnormal("worker gone"));
        return;
    };
    span.in_scope(|| tracing::debug!("session open"));
    let mut driver = Driver::new(
        stream, leftover, session, extension, driver, budget, &reactor,
    );
    driver.set_span(span);
    // Sized for the session alone: the handshake's state (request, buffers,
    // timers) is freed with this task instead of living as long as the
    // connection.
    let spawner = conn.spawner().clone();
    let task = SessionTask {
        driver: Some(driver),
        hooks: Some(hooks),
        conn: Some(conn),
    };
    spawner.spawn(task);
}

/// An open session as a task: the driver, the session's hooks and the
/// connection's slot, nothing else. A hand-written future rather than an
/// `async fn`, whose arguments would be stored twice (as arguments and as
/// locals), doubling what every idle connection costs.
struct SessionTask<S> {
    driver: Option<Driver<S>>,
    hooks: Option<Box<dyn SessionHooks>>,
    conn: Option<ConnectionSlot>,
}

impl<S> SessionTask<S> {
    /// The session's span (kept in the driver's cold state, and only while
    /// a subscriber records it: `tracing::Instrumented` would keep it
    /// inline, 40 bytes on every connection even when nothing records it),
    /// as a handle of its own, to be entered while the task runs and while
    /// it is dropped: the driver may go first.
    fn span(&self) -> Option<tracing::Span> {
        self.driver.as_ref().and_then(Driver::span).cloned()
    }
}

impl<S> Drop for SessionTask<S> {
    fn drop(&mut self) {
        let span = self.span();
        let _entered = span.as_ref().map(tracing::Span::enter);
        // In this order, as when the session ends by itself.
        self.driver = None;
        self.hooks = None;
        self.conn = None;
    }
}

impl<S: Transport> Future for SessionTask<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = &mut *self;
        let span = this.span();
        let _entered = span.as_ref().map(tracing::Span::enter);
        let (Some(driver), Some(hooks)) = (this.driver.as_mut(), this.hooks.as_mut()) else {
            return Poll::Ready(());
        };
        let reason = futures_lite::ready!(driver.poll_run(cx, hooks.as_mut()));
        // In this order: the socket closes, then the session ends (its
        // `close` callback, its unregistration), then the connection stops
        // counting.
        this.driver = None;
        tracing::debug!(code = u16::from(reason.code), clean = reason.clean, by = ?reason.closed_by, "session closed");
        if let Some(hooks) = this.hooks.take() {
            hooks.finish(reason);
        }
        this.conn = None;
        Poll::Ready(())
    }
}

/// The most one read of a request head takes.
const HEAD_READ: usize = 2048;

async fn read_head<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &HeadLimits,
    peer: SocketAddr,
    teardown: EventListener,
    since: Instant,
    first: bool,
) -> HeadOutcome
where
    S: Transport,
{
    let deadline = since + limits.handshake_timeout;
    let alarm = registered(&*stream).map(Token::alarm);
    let read = async {
        loop {
            if !buf.is_empty() {
                match parse_head(buf, limits.max_head_bytes, limits.max_headers, peer) {
                    Ok(Head::Complete(req, n)) => return HeadOutcome::Request(req, n),
                    Ok(Head::Partial) => {}
                    Err(r) => return HeadOutcome::Refused(r),
                }
            }
            // Never hold more than the head limit plus one read's worth; the
            // parse above refuses anything longer. The read goes into the
            // thread's read buffer and what it brought is appended to `buf`
            // within the same poll, so `buf` stays whole if this future is
            // dropped mid-read, holds only what arrived (no zero-filled
            // room), and no buffer lives in the connection's task across the
            // wait.
            let read = future::poll_fn(|cx| {
                read_once(&mut *stream, cx, HEAD_READ, |read| {
                    buf.extend_from_slice(read);
                })
            })
            .await;
            match read {
                Ok(0) | Err(_) => return HeadOutcome::Gone,
                Ok(_) => {}
            }
        }
    };
    let timeout = async {
        Sleep::until(alarm, deadline).await;
        None
    };
    let torn_down = async {
        teardown.await;
        Some(HeadOutcome::Gone)
    };
    let outcome = future::or(async { Some(read.await) }, future::or(timeout, torn_down)).await;
    match outcome {
        Some(o) => o,
        // An idle keep-alive connection is closed quietly; a request that
        // started and stalled (slowloris) is told why.
        None if !first && buf.is_empty() => HeadOutcome::Gone,
        None => HeadOutcome::Refused(Refused::HeadTimeout),
    }
}

async fn write_response<S>(
    stream: &mut S,
    r: &Response,
    keep_alive: bool,
    head_only: bool,
    limits: &HeadLimits,
) -> bool
where
    S: AsyncWrite + Unpin,
{
    // Head and body leave in one write: with TCP_NODELAY, two writes become
    // two segments, and clients that read only the first (tungstenite keeps
    // what arrived with the head of an error answer) lose the body.
    let mut bytes = r.head_bytes(keep_alive, head_only);
    if !head_only {
        bytes.extend_from_slice(r.body_bytes());
    }
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    future::or(async { write.await.is_ok() }, async {
        Timer::after(limits.handshake_timeout).await;
        false
    })
    .await
}

/// Answers with a refusal and closes.
async fn refuse<S>(stream: &mut S, service: &dyn Service, refused: Refused, limits: &HeadLimits)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(
        status = refused.status(),
        reason = refused.reason(),
        "request refused"
    );
    service.refused(refused.status());
    if write_response(stream, &refused.response(), false, false, limits).await {
        linger(stream).await;
    }
}

/// Answers 503 to a connection over the context's limit, without reading it.
pub(crate) async fn refuse_busy<S>(mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = HeadLimits {
        max_head_bytes: 0,
        max_headers: 0,
        handshake_timeout: LINGER_TIME,
    };
    if write_response(
        &mut stream,
        &Refused::ServerBusy.response(),
        false,
        false,
        &limits,
    )
    .await
    {
        linger(&mut stream).await;
    }
}

/// Half-closes and reads what the client still sends, bounded in bytes and
/// time, so that closing with unread data does not reset the connection
/// before the client has read our answer.
async fn linger<S>(stream: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let drain = async {
        if stream.close().await.is_err() {
            return;
        }
        // On the heap: an array here would make every connection's task
        // (whose size is its largest state) 4 KiB bigger for its whole life.
        let mut scratch = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    future::or(drain, async {
        Timer::after(LINGER_TIME).await;
    })
    .await;
}
