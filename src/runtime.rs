//! The runtime: the plumbing that drives the sans-IO core over sockets,
//! timers and the host's executors. Task sets and pumps, workers, listeners
//! and acceptors, connections, the session driver and its outbound queue.
//!
//! The runtime decides no protocol question and knows no application type:
//! what to answer a request with is the [`Service`](connection::Service) of
//! the layer above, and a session's messages go to its
//! [`SessionHooks`](driver::SessionHooks).

pub(crate) mod budget;
pub(crate) mod connection;
pub(crate) mod driver;
pub(crate) mod listener;
pub(crate) mod outbox;
pub(crate) mod reactor;
pub(crate) mod run;
pub(crate) mod tasks;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod workers;
