//! An embeddable async WebSocket gateway that attaches to the host's event loop.
//!
//! wsgate serves WebSocket and plain HTTP on the same ports, from inside an
//! application that already owns an [`async_executor::Executor`]. The host
//! keeps its loop; wsgate attaches to it, spawns its tasks there, and tears
//! down in an order that the type system enforces.
//!
//! # What wsgate never does
//!
//! - Start a thread, a runtime or a global executor. Its tasks run only when
//!   the host runs its loop, and only on the host's threads (see
//!   *Threads* below for the one thread async-io starts).
//! - Install a signal handler, unless the host calls [`signals`] (feature
//!   `signals`).
//! - Keep state in statics: any number of contexts live side by side.
//! - Let a peer grow its memory without bound: every head, frame, message and
//!   queue is limited (see [`Limits`]).
//!
//! # Data path
//!
//! ```text
//! TCP accept ─► Acceptor (plain | TLS) ─► request head (httparse; size, count and time limits)
//!    ─► admission (pure): Host → vhost, path → mount, method, upgrade, Origin, subprotocol, token
//!    ├─ HTTP mount: /healthz, index, handlers → response, keep-alive or close
//!    └─ WebSocket mount: session places, extension, Protocol::open → 101 → session task
//!          driver: socket ⇄ sans-IO session (frames, limits, timers) ⇄ Protocol::message
//!                  bounded queue → encoded frames, one write per batch
//! ```
//!
//! The layers (docs/ARCHITECTURE.md): a sans-IO core (frames, HTTP heads,
//! admission, the session state machine) under the configuration, a runtime
//! that drives the core over sockets and the host's executors, and the
//! context that applications see. The seams are public: [`transport`]
//! (streams and acceptors), [`extension`] (per-message extensions) and
//! [`pubsub::Broker`] (where topics live: in this process, with an optional
//! history for recovery, or across gateways through Redis with the `redis`
//! feature).
//!
//! # Lifecycle
//!
//! ```text
//! let ex = Executor::new();                   // the host's loop
//! let ctx = Context::attach(&ex, config)?;    // listeners bound, tasks spawned on ex
//! let handle = ctx.handle();                  // for worker threads, signal handlers, GUIs
//! ... the host runs ex (run / tick / try_tick / N threads) ...
//! let drain = ctx.destroy();                  // 1. stop accepting, Close 1001 to every session
//!                                             // 2. the host stops running ex
//! let report = drain.drain(&ex, deadline);    // 3. extra iterations until the closes finish
//! drop(ex);
//! ```
//!
//! [`Context`] and [`Drain`] borrow the executor, so it cannot be dropped
//! first; `destroy` consumes the context, so it cannot be used afterwards.
//! Dropping a `Context` or a `Drain` early is safe: the remaining sessions are
//! closed at the TCP level, logged, without blocking or panicking.
//!
//! # Service threads
//!
//! A host that runs one executor per thread attaches one context to all of
//! them with [`Context::attach_set`]: executor 0 accepts, and each connection
//! is handed to the thread serving the fewest connections
//! ([`Stats::connections_per_thread`](metrics::Stats::connections_per_thread)). Teardown is the same order over the
//! set: `destroy`, the host joins its threads, then
//! `drain(&executors, deadline)` drives every executor from the calling
//! thread. The threads are the host's; wsgate still starts none.
//!
//! # Threads
//!
//! wsgate starts no thread. Its callbacks run on the threads that run the
//! host's executors, or inside the host's own [`Drain::drain`]; calls that
//! may come from any thread ([`ContextHandle::shutdown`], sends, publishes)
//! only queue work for the loop. See [`Protocol`] for the full contract.
//!
//! The one other thread in a wsgate process is async-io's: the reactor that
//! wsgate shares with every smol-stack library starts a thread named
//! `async-io` the first time anything registers with it in the process (for
//! wsgate, [`Context::attach`], which registers the listening sockets). It
//! stays until the process exits, also after the drain, and drives the
//! reactor while no thread is inside `async_io::block_on`; [`run`] keeps the
//! reactor on the host's thread.
//!
//! Per-thread memory: each thread that reads for a session holds one 64 KiB
//! read buffer (thread-local, allocated on its first read, freed when the
//! thread exits); a session itself keeps no read buffer between messages.
//! With permessage-deflate ([`Compression`]), each thread that compresses or
//! inflates a message without context takeover also holds one compressor
//! (about 330 KiB at window 15) and one decompressor (about 40 KiB), made on
//! first use, so that sessions in shared mode hold none of their own.
//!
//! A single-threaded host whose loop is an `async_executor::LocalExecutor`
//! attaches with [`Context::attach_local`].
//!
//! # Driving the loop
//!
//! Any way of running the executor works. [`run`] is a drop-in for
//! `async_io::block_on(ex.run(future))` that polls the reactor every few
//! tasks instead of every 200, which keeps async-io's helper thread from
//! taking the reactor over on a loaded server; the binary uses it.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use async_executor::Executor;
//! use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ex = Executor::new();
//! let vhost = VhostConfig::builder("default")
//!     .listen("127.0.0.1:7681".parse()?)
//!     .protocol(Echo)
//!     .mount(Mount::websocket("/echo", ["echo"]))
//!     .build()?;
//! let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build()?)?;
//! let handle = ctx.handle();
//! // Something must ask for the end: here a timer task of the host's; a signal
//! // (`signals::shutdown_on_signals`), a worker thread or a GUI would call the
//! // same `shutdown()`.
//! let stop = handle.clone();
//! ex.spawn(async move {
//!     async_io::Timer::after(Duration::from_secs(60)).await;
//!     let _ = stop.shutdown();
//! })
//! .detach();
//! // Run the loop until shutdown is requested.
//! async_io::block_on(ex.run(handle.shutdown_requested()));
//! let report = ctx.destroy().drain(&ex, Instant::now() + Duration::from_secs(5));
//! assert!(report.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! A library user turns the default `cli` feature off
//! (`default-features = false`): no clap, no tracing-subscriber.
//!
//! - `toml-config`: [`load_toml`] reads the TOML configuration format the
//!   binary uses, naming the key and line of every error. The file is parsed
//!   by [`config::ConfigFile`] and built by the [`loader`], whose
//!   [`ProtocolRegistry`] names the protocols and HTTP handlers (the built-in
//!   ones and the host's own); both are also at the crate root
//!   (`wsgate::load_toml`, `wsgate::ProtocolRegistry`).
//! - `signals`: [`signals`] turns SIGINT/SIGTERM into a graceful shutdown
//!   through signal-hook's self-pipe, on the host's request only.
//! - `tls`: `wss://` and `https://` with rustls (the *ring* provider, which
//!   builds with a C compiler alone): [`VhostBuilder::tls`] with a
//!   [`config::TlsConfig`] (PEM files or a ready `rustls::ServerConfig`).
//!   Vhosts sharing a port are chosen by SNI, each with its certificate and
//!   its client-certificate check; a `Host` that disagrees with SNI gets 421;
//!   [`Request::peer_certificates`] shows `Protocol::open` the verified
//!   client chain; [`Context::reconfigure`] swaps certificates without
//!   dropping sessions. The TLS handshake runs in the listener's acceptor
//!   (see [`transport`]); the session layer never knows.
//! - `redis`: `cluster::RedisBroker`, topics, presence and history shared by
//!   every gateway on the same Redis (several wsgate processes behind a load
//!   balancer act as one). It runs on the context's own task set: no
//!   thread, no runtime; it compiles in redis-rs, `smol` (its executor
//!   unused) and tokio's `sync` types (no tokio runtime). See the `cluster`
//!   module.
//! - `cli` (default): the `wsgate` binary (enables all of the above).

#[cfg(feature = "redis")]
pub mod cluster;
mod common;
pub mod config;
mod context;
mod error;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
pub mod handlers;
#[cfg(feature = "toml-config")]
pub mod loader;
mod proto;
pub mod protocols;
mod runtime;
#[cfg(feature = "signals")]
pub mod signals;

/// Request heads, responses and HTTP handlers (HTTP beside WebSocket on the
/// same ports).
pub mod http {
    pub use crate::context::protocol::HttpHandler;
    pub use crate::handlers::{Health, Index, Ready};
    pub use crate::proto::http::{Request, Response, check_bearer};
    pub use crate::proto::tls::{Certificate, TlsInfo};
}

/// Counters and gauges: [`Stats`](crate::metrics::Stats), as a snapshot and as Prometheus text.
pub mod metrics {
    pub use crate::context::metrics::{CompressionStats, Stats};
    pub use crate::handlers::MetricsHandler;
}

/// Topics: publish from any thread, fan out to every subscriber's queue,
/// through a [`Broker`](crate::pubsub::Broker); history and recovery
/// ([`Position`](crate::pubsub::Position),
/// [`SubscribeRequest`](crate::pubsub::SubscribeRequest)).
pub mod pubsub {
    pub use crate::context::broker::{
        Acknowledge, Broker, BrokerContext, BrokerFuture, BrokerStats, MAX_EPOCH_BYTES,
        MAX_HISTORY_SIZE, MAX_HISTORY_TOPICS, MemoryBroker, Position, Presence, Published,
        Recovery, Remote, Stamp, SubscribeRequest, new_epoch,
    };
}

/// The per-message extension point (permessage-deflate and its kin): what a
/// vhost offers with [`VhostBuilder::extension`](crate::VhostBuilder::extension).
pub mod extension {
    pub use crate::proto::deflate::PermessageDeflate;
    pub use crate::proto::extension::{
        Extension, ExtensionError, ExtensionNegotiator, ExtensionOffer,
    };
}

/// Streams a connection can run on, and what turns an accepted TCP stream
/// into one.
pub mod transport {
    pub use crate::runtime::transport::{Accepting, Acceptor, Transport};
}

pub use config::{
    Compression, CompressionBuilder, CompressionMode, Config, ConfigBuilder, HttpTarget, Limits,
    Mount, MountTarget, Options, OverflowPolicy, VhostBuilder, VhostConfig,
};
pub use context::lifecycle::{Drain, DrainReport, Executors};
pub use context::protocol::{HttpHandler, Protocol, Wake};
pub use context::session::{SessionHandle, SessionId};
pub use context::vhost::Vhost;
pub use context::{Context, ContextHandle, LocalLoop, LoopKind, Reconfigured, SharedLoop};
pub use error::{ConfigError, Error, SendError};
#[cfg(feature = "toml-config")]
pub use loader::{ProtocolRegistry, load_toml};
pub use proto::close::{CloseReason, ClosedBy};
pub use proto::http::{Reject, Request, Response};
pub use runtime::run::run;
pub use tungstenite::Message;
pub use tungstenite::protocol::frame::coding::CloseCode;

/// Test support that reads the real clock once, so that the sans-IO core's
/// tests (which may not) run on a virtual clock.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::{Duration, Instant};

    /// A virtual clock: one real instant as the origin, then only arithmetic.
    pub(crate) struct Clock {
        now: Instant,
    }

    impl Clock {
        pub(crate) fn start() -> Self {
            Self {
                now: Instant::now(),
            }
        }

        pub(crate) fn now(&self) -> Instant {
            self.now
        }

        /// Moves the clock `by` forward and returns the new time.
        pub(crate) fn advance(&mut self, by: Duration) -> Instant {
            self.now += by;
            self.now
        }
    }
}
