//! One accepted connection: read request heads within their limits, answer
//! HTTP (with keep-alive), or upgrade to a WebSocket session.
//!
//! Generic over the byte stream (`AsyncRead + AsyncWrite`), so TLS and
//! in-memory streams plug in without touching this code.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use tracing::Instrument;

use crate::config::{Limits, MountTarget};
use crate::context::{ConnectionSlot, ContextShared};
use crate::http::{
    Head, Health, HttpHandler, Refusal, Request, Response, check_upgrade, negotiate, parse_head,
    switching_protocols,
};
use crate::listener::Listener;
use crate::protocol::{CloseReason, SessionCallbacks};
use crate::session::{Driver, SessionHandle, SessionId};
use crate::vhost::{SessionSlot, SlotRefused, Vhost, route};

/// Requests served on one keep-alive connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// How long, and how many bytes, we read and discard after an error answer so
/// that the client sees the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

enum HeadOutcome {
    Request(Request, usize),
    Refused(Refusal),
    /// EOF, an I/O error, or teardown: close without a word.
    Gone,
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    listener: Arc<Listener>,
    slot: ConnectionSlot,
) where
    S: crate::session::Transport + Send + 'static,
{
    let ctx = slot.ctx().clone();
    // The head is read before the vhost is known, so the listener's default
    // vhost's limits apply to it.
    let limits = listener
        .vhosts()
        .first()
        .map(|v| v.limits().clone())
        .unwrap_or_default();
    let mut buf = Vec::new();
    for served in 0..MAX_REQUESTS_PER_CONNECTION {
        let (req, head_len) =
            match read_head(&mut stream, &mut buf, &limits, peer, &ctx, served == 0).await {
                HeadOutcome::Request(r, n) => (r, n),
                HeadOutcome::Refused(refusal) => {
                    refuse(&mut stream, &ctx, &refusal, &limits).await;
                    return;
                }
                HeadOutcome::Gone => return,
            };
        let vhosts = listener.vhosts();
        let Some(vhost) = route(&vhosts, &req).cloned() else {
            refuse(
                &mut stream,
                &ctx,
                &Refusal::new(503, "no vhost serves this address"),
                &limits,
            )
            .await;
            return;
        };
        drop(vhosts);
        let target = vhost.find_mount(req.path()).map(|m| m.target().clone());
        let response = match target {
            Some(MountTarget::WebSocket(protocols)) => {
                upgrade(stream, buf, head_len, req, vhost, &protocols, slot).await;
                return;
            }
            Some(MountTarget::Http(handler)) => http_answer(&req, &vhost, handler.as_ref()),
            None if req.path() == "/healthz" => http_answer(&req, &vhost, &Health),
            None => Err(Refusal::new(404, "not found")),
        };
        let response = match response {
            Ok(r) => r,
            Err(refusal) => {
                refuse(&mut stream, &ctx, &refusal, &limits).await;
                return;
            }
        };
        let keep_alive = req.keep_alive() && !req.has_body() && ctx.is_running();
        let head_only = req.method() == "HEAD";
        if !write_response(&mut stream, &response, keep_alive, head_only, &limits).await {
            return;
        }
        if !keep_alive {
            linger_close(stream).await;
            return;
        }
        buf.drain(..head_len);
    }
}

fn http_answer(
    req: &Request,
    vhost: &Vhost,
    handler: &dyn HttpHandler,
) -> Result<Response, Refusal> {
    if req.method() != "GET" && req.method() != "HEAD" {
        return Err(Refusal {
            extra: Some(("Allow", "GET, HEAD")),
            ..Refusal::new(405, "method not allowed")
        });
    }
    crate::protocol::isolate(req.path(), "http", || handler.handle(req, vhost))
        .ok_or(Refusal::new(500, "internal error"))
}

async fn upgrade<S>(
    mut stream: S,
    mut buf: Vec<u8>,
    head_len: usize,
    req: Request,
    vhost: Vhost,
    protocols: &[String],
    conn: ConnectionSlot,
) where
    S: crate::session::Transport + Send + 'static,
{
    let ctx = conn.ctx().clone();
    let limits = vhost.limits().clone();
    let up = match check_upgrade(&req) {
        Ok(up) => up,
        Err(refusal) => return refuse(&mut stream, &ctx, &refusal, &limits).await,
    };
    if !ctx.is_running() || !vhost.is_serving() {
        return refuse(
            &mut stream,
            &ctx,
            &Refusal::new(503, "shutting down"),
            &limits,
        )
        .await;
    }
    if !vhost.allows_origin(req.origin()) {
        return refuse(
            &mut stream,
            &ctx,
            &Refusal::new(403, "origin not allowed"),
            &limits,
        )
        .await;
    }
    // Reserved before `open` and held until the session ends, so that
    // concurrent handshakes on several pumps cannot overshoot the limits.
    let slot = match vhost.reserve_session(req.peer().ip()) {
        Ok(slot) => slot,
        Err(SlotRefused::Vhost) => {
            let refusal = Refusal::new(503, "too many sessions");
            return refuse(&mut stream, &ctx, &refusal, &limits).await;
        }
        Err(SlotRefused::Address) => {
            let refusal = Refusal::new(429, "too many sessions from this address");
            return refuse(&mut stream, &ctx, &refusal, &limits).await;
        }
        Err(SlotRefused::Retired) => {
            let refusal = Refusal::new(503, "shutting down");
            return refuse(&mut stream, &ctx, &refusal, &limits).await;
        }
    };
    let (name, echo) = negotiate(&up.offered, protocols);
    let Some(protocol) = vhost.protocol(name) else {
        // Configuration validation makes this unreachable; answer sanely anyway.
        return refuse(
            &mut stream,
            &ctx,
            &Refusal::new(500, "protocol not registered"),
            &limits,
        )
        .await;
    };
    let handle = SessionHandle::new(
        SessionId(ctx.next_id()),
        req.peer(),
        vhost.clone(),
        req.path().to_owned(),
        name.to_owned(),
        Some(conn.spawner()),
    );
    let callbacks = match protocol.open(&req, &handle) {
        Ok(cb) => cb,
        Err(reject) => {
            // The handle `open` saw must not outlive the refusal as a live
            // session: closed, out of every topic, its tasks cancelled now
            // (the slot is given back when this function returns).
            ctx.discard(&handle);
            let mut r = Response::text(reject.status(), format!("{}\n", reject.reason()));
            for (n, v) in reject.headers() {
                r = r.header(n.clone(), v.clone());
            }
            ctx.rejected(reject.status());
            if write_response(&mut stream, &r, false, false, &limits).await {
                linger_close(stream).await;
            }
            return;
        }
    };
    let span = tracing::debug_span!("session", id = %handle.id(), peer = %req.peer());
    let mut session = OpenSession {
        _slot: slot,
        ctx: ctx.clone(),
        handle: handle.clone(),
        callbacks: Some(callbacks),
        outcome: None,
    };
    ctx.register(&handle);
    let answer = switching_protocols(&up.accept, echo.then_some(name));
    let written = future::or(
        async {
            stream
                .write_all(&answer)
                .await
                .and(stream.flush().await)
                .is_ok()
        },
        async {
            Timer::after(limits.handshake_timeout).await;
            false
        },
    )
    .await;
    if !written {
        session.finish(CloseReason::abnormal("handshake write failed"));
        return;
    }
    span.in_scope(|| tracing::debug!(protocol = name, "session open"));
    let leftover = buf.split_off(head_len);
    drop(buf);
    let driver = Driver::new(stream, &leftover, handle, &limits);
    drop(leftover);
    // The session runs as a task of its own, on the same worker, sized for
    // the session alone: the handshake's state (request, buffers, timers)
    // is freed with this task instead of living as long as the connection.
    let spawner = conn.spawner();
    let task = SessionTask {
        driver: Some(driver),
        session: Some(session),
        conn: Some(conn),
    };
    spawner.spawn(task.instrument(span));
}

/// An open session as a task: the driver, the session's bookkeeping and the
/// connection's slot, nothing else. A hand-written future rather than an
/// `async fn`, whose arguments would be stored twice (as arguments and as
/// locals), doubling what every idle connection costs.
struct SessionTask<S> {
    driver: Option<Driver<S>>,
    session: Option<OpenSession>,
    conn: Option<ConnectionSlot>,
}

impl<S: crate::session::Transport> Future for SessionTask<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = &mut *self;
        let (Some(driver), Some(session)) = (this.driver.as_mut(), this.session.as_mut()) else {
            return std::task::Poll::Ready(());
        };
        let Some(callbacks) = session.callbacks.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let reason = futures_lite::ready!(driver.poll_run(cx, callbacks.as_mut()));
        // In this order: the socket closes, then the session ends (and is
        // unregistered), then the connection stops counting.
        this.driver = None;
        tracing::debug!(code = u16::from(reason.code), clean = reason.clean, by = ?reason.closed_by, "session closed");
        session.finish(reason);
        this.session = None;
        this.conn = None;
        std::task::Poll::Ready(())
    }
}

/// A session between registration and its end; unregisters it when dropped,
/// also when the task is dropped by a forced teardown.
struct OpenSession {
    _slot: SessionSlot,
    ctx: Arc<ContextShared>,
    handle: SessionHandle,
    callbacks: Option<Box<dyn SessionCallbacks>>,
    outcome: Option<CloseReason>,
}

impl OpenSession {
    fn finish(&mut self, reason: CloseReason) {
        self.handle.shared.mark_closed();
        if let Some(cb) = self.callbacks.take() {
            cb.close(&self.handle, &reason);
        }
        self.outcome = Some(reason);
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.handle.shared.mark_closed();
        if let Some(cb) = self.callbacks.take() {
            cb.close(
                &self.handle,
                &CloseReason::abnormal("forced closed by teardown"),
            );
        }
        self.ctx.unregister(&self.handle, self.outcome.as_ref());
    }
}

async fn read_head<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
    peer: SocketAddr,
    ctx: &ContextShared,
    first: bool,
) -> HeadOutcome
where
    S: AsyncRead + Unpin,
{
    let deadline = Instant::now() + limits.handshake_timeout;
    let teardown = ctx.teardown_listener();
    if !ctx.is_running() {
        return HeadOutcome::Gone;
    }
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
            // parse above refuses anything longer. The read goes straight
            // into `buf`, which is trimmed back within the same poll, so it
            // stays whole if this future is dropped mid-read (and no buffer
            // lives in the connection's task across the wait).
            let read = future::poll_fn(|cx| {
                let start = buf.len();
                buf.resize(start + 2048, 0);
                let poll = Pin::new(&mut *stream).poll_read(cx, &mut buf[start..]);
                let n = match &poll {
                    std::task::Poll::Ready(Ok(n)) => *n,
                    _ => 0,
                };
                buf.truncate(start + n);
                poll
            })
            .await;
            match read {
                Ok(0) | Err(_) => return HeadOutcome::Gone,
                Ok(_) => {}
            }
        }
    };
    let timeout = async {
        Timer::at(deadline).await;
        None
    };
    let torn_down = async {
        teardown.await;
        HeadOutcome::Gone
    };
    let outcome = future::or(
        async { Some(read.await) },
        future::or(timeout, async { Some(torn_down.await) }),
    )
    .await;
    match outcome {
        Some(o) => o,
        // An idle keep-alive connection is closed quietly; a request that
        // started and stalled (slowloris) is told why.
        None if !first && buf.is_empty() => HeadOutcome::Gone,
        None => HeadOutcome::Refused(Refusal::new(408, "request head timed out")),
    }
}

async fn write_response<S>(
    stream: &mut S,
    r: &Response,
    keep_alive: bool,
    head_only: bool,
    limits: &Limits,
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

/// Answers with an error status and closes.
async fn refuse<S>(stream: &mut S, ctx: &ContextShared, refusal: &Refusal, limits: &Limits)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(
        status = refusal.status,
        reason = refusal.reason,
        "request refused"
    );
    ctx.rejected(refusal.status);
    if write_response(stream, &refusal.response(), false, false, limits).await {
        linger(stream).await;
    }
}

/// Answers 503 to a connection over the context's limit, without reading it.
pub(crate) async fn refuse_busy<S>(mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let r = Refusal::new(503, "server busy").response();
    let limits = Limits::default().handshake_timeout(LINGER_TIME);
    if write_response(&mut stream, &r, false, false, &limits).await {
        linger(&mut stream).await;
    }
}

async fn linger_close<S>(mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    linger(&mut stream).await;
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
