//! The crate's error types, grouped by who is at fault.

use std::io;
use std::net::SocketAddr;

use crate::Message;

/// Everything that can go wrong in wsgate's public API.
///
/// Variants are grouped by who is at fault: the configuration, the caller
/// (misuse of the lifecycle), or the operating system (I/O).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was rejected (caller's fault).
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A listen address could not be bound (environment's fault).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// [`Context::attach_set`](crate::Context::attach_set) was given an empty
    /// slice of executors (caller's fault): a context needs at least one to
    /// run on.
    #[error("attach_set needs at least one executor")]
    NoExecutors,
    /// The context has been torn down (or is being torn down); handles are inert.
    #[error("the context has been torn down")]
    Closed,
    /// `add_vhost` was given a name that is already in use.
    #[error("a vhost named {0:?} already exists")]
    VhostExists(String),
    /// No vhost has this name.
    #[error("no vhost named {0:?}")]
    NoSuchVhost(String),
    /// The session is closing or closed.
    #[error("the session is closed")]
    SessionClosed,
    /// A session tried to subscribe to more topics than its vhost allows.
    #[error("too many subscriptions (at most {0})")]
    TooManySubscriptions(usize),
    /// Another I/O failure.
    #[error("i/o error")]
    Io(#[from] io::Error),
}

/// A configuration value was out of range or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The offending key, as a dotted path (`vhost.default.limits.max_message_size`).
    pub key: String,
    /// Why it was refused.
    pub reason: String,
    /// The 1-based line in the configuration file, when it came from one.
    pub line: Option<usize>,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
            line: None,
        }
    }

    #[cfg_attr(
        not(feature = "toml-config"),
        allow(dead_code, reason = "used by the TOML loader")
    )]
    pub(crate) fn at_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why a message could not be queued for a session; the message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closing or closed; nothing more can be sent.
    #[error("the session is closed")]
    Closed(Message),
    /// The session's outbound queue is at its byte bound.
    #[error("the session's outbound queue is full")]
    Full(Message),
}

impl SendError {
    /// The message that could not be sent.
    pub fn into_message(self) -> Message {
        match self {
            Self::Closed(m) | Self::Full(m) => m,
        }
    }

    /// Whether the session is gone (as opposed to merely busy).
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}
