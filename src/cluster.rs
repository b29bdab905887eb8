//! Many gateways as one: topics, presence and history shared through Redis
//! (feature `redis`, on for the binary).
//!
//! A user who outgrows one machine runs several wsgate processes (nodes)
//! behind a load balancer and gives each a [`RedisBroker`] on the same
//! Redis: a client on node A gets what is published on node B, presence
//! counts every node's subscribers, and a client that reconnects to any
//! node recovers what it missed. Nothing else changes: the `pubsub`
//! protocol, [`ContextHandle::publish`](crate::ContextHandle::publish) and
//! [`SessionHandle::subscribe`](crate::SessionHandle::subscribe) work the
//! same with one node or twenty.
//!
//! # The client, and what it pulls in
//!
//! The broker talks to Redis with [redis-rs](https://docs.rs/redis) (the
//! `redis` crate, version 1), the maintained Rust client, on its smol
//! runtime (`smol-comp`): sockets and timers are async-io's, as the rest of
//! wsgate's. wsgate uses the multiplexed RESP3 connection whose driver
//! future it runs itself, on the context's task set, so no runtime and no
//! thread is started: not tokio's, not smol's global executor (which
//! redis-rs's own spawning would start; wsgate never calls it). What it
//! compiles in: `tokio` with its `sync` feature only and `tokio-util`'s
//! codec and compat modules (redis-rs frames through tokio's I/O *traits*;
//! no tokio runtime exists in the process), the `smol` crate (compiled, its
//! executor unused), `combine`, `url`. TLS to Redis (`rediss://`) is not
//! supported yet; Unix sockets are.
//!
//! One connection per node carries commands and subscriptions alike, so
//! the order in which Redis sent things is the order in which the node sees
//! them: that is what makes recovery exact (see [`RedisBroker`]).

mod redis;
mod wire;

pub use self::redis::{MAX_HISTORY_SIZE, RedisBroker, RedisBrokerBuilder};
