//! `Config`, `VhostConfig`, `Limits` and mounts: everything a context is built from.
//!
//! Builders take values by value and end in `build()`, which validates every
//! field and returns a [`ConfigError`] naming the key instead of panicking.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::CloseCode;
use crate::error::ConfigError;
use crate::proto::extension::ExtensionNegotiator;
use crate::proto::http::is_token_byte;

#[cfg(feature = "toml-config")]
mod file;
#[cfg(feature = "toml-config")]
pub use file::{ConfigFile, DEFAULT_TOML, ProtocolRegistry, load_toml, parse_duration};

/// The configuration of one context: its vhosts and context-wide limits.
pub struct Config {
    pub(crate) vhosts: Vec<VhostConfig>,
    pub(crate) max_connections: usize,
    pub(crate) pumps: usize,
    /// The topics' broker (see [`ConfigBuilder::broker`]); `None`: in-process.
    pub(crate) broker: Option<Binding>,
}

impl Config {
    /// Starts a builder.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            vhosts: Vec::new(),
            max_connections: 60_000,
            pumps: 1,
            broker: None,
        }
    }

    /// The vhosts, in configuration order.
    pub fn vhosts(&self) -> &[VhostConfig] {
        &self.vhosts
    }

    /// The context-wide connection limit.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("vhosts", &self.vhosts)
            .field("max_connections", &self.max_connections)
            .field("pumps", &self.pumps)
            .finish()
    }
}

/// Builds a [`Config`].
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ConfigBuilder {
    vhosts: Vec<VhostConfig>,
    max_connections: usize,
    pumps: usize,
    broker: Option<Binding>,
}

impl ConfigBuilder {
    /// Adds a vhost. Default: none (a context needs at least one).
    pub fn vhost(mut self, vhost: VhostConfig) -> Self {
        self.vhosts.push(vhost);
        self
    }

    /// Open TCP connections (HTTP and WebSocket, all vhosts) above which new
    /// connections are answered 503 and closed. Default: 60000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the topics' broker, bound by the layer that defines brokers
    /// ([`ConfigBuilder::broker`]).
    pub(crate) fn broker_binding(mut self, broker: Binding) -> Self {
        self.broker = Some(broker);
        self
    }

    /// How many pump tasks drive wsgate's tasks on the host executor; raise it
    /// when the host runs its executor on several threads. Default: 1.
    pub fn pumps(mut self, n: usize) -> Self {
        self.pumps = n;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// No vhost, duplicate vhost names, or a zero limit.
    pub fn build(self) -> Result<Config, ConfigError> {
        validate_vhosts(&self.vhosts)?;
        if self.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        if !(1..=64).contains(&self.pumps) {
            return Err(ConfigError::new("pumps", "must be between 1 and 64"));
        }
        Ok(Config {
            vhosts: self.vhosts,
            max_connections: self.max_connections,
            pumps: self.pumps,
            broker: self.broker,
        })
    }
}

/// What a session's outbound queue does when a non-waiting send finds it full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// The send fails with [`SendError::Full`](crate::SendError::Full); the
    /// session stays open.
    Reject,
    /// The send fails and the session is closed with this code (1008 policy
    /// violation, or 1013 try again later).
    Close(CloseCode),
    /// The new message is dropped (and counted); the send fails with
    /// [`SendError::Full`](crate::SendError::Full); the session stays open.
    DropNewest,
    /// The oldest queued messages are dropped (and counted) to make room; the
    /// send succeeds. Suits topic traffic where only the latest state matters.
    DropOldest,
}

/// Bounds on everything a peer can make a vhost spend.
///
/// Set fields with the by-value setters; [`VhostBuilder::build`] validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request head (request line plus headers) in bytes. Default: 8192.
    pub max_head_bytes: usize,
    /// Most request headers. Default: 64.
    pub max_headers: usize,
    /// Time from accept to a complete request head (and between keep-alive
    /// requests). Default: 10 s.
    pub handshake_timeout: Duration,
    /// Largest WebSocket frame payload. Default: 1 MiB.
    pub max_frame_size: usize,
    /// Largest reassembled WebSocket message. Default: 1 MiB.
    pub max_message_size: usize,
    /// Bytes of queued outbound messages per session. Default: 1 MiB.
    pub max_queue_bytes: usize,
    /// Queued outbound messages per session. Default: 4096.
    pub max_queue_messages: usize,
    /// Topics one session may subscribe to. Default: 64.
    pub max_subscriptions: usize,
    /// What a full queue does to a non-waiting send. Default: `Close(1008)`.
    pub overflow: OverflowPolicy,
    /// Open WebSocket sessions on this vhost; more are answered 503.
    /// Default: 50000.
    pub max_sessions: usize,
    /// Open WebSocket sessions on this vhost from one IP address; more are
    /// answered 429. The default leaves room for offices behind one NAT
    /// address and for local load tests, while one address still cannot take
    /// the whole vhost. Default: 16384.
    pub max_sessions_per_ip: usize,
    /// Silence from the peer after which the server sends a ping. Default: 30 s.
    pub ping_interval: Duration,
    /// Silence from the peer after which the session is closed (1001). Must
    /// exceed `ping_interval`. Default: 60 s.
    pub idle_timeout: Duration,
    /// Time the peer has to answer our Close before TCP is closed. Default: 5 s.
    pub close_timeout: Duration,
    /// The most one read call takes. Reads go into one buffer per thread
    /// (64 KiB, which also caps this); a session keeps only the bytes of an
    /// incomplete frame, and nothing between messages. Default: 64 KiB.
    pub read_buffer_size: usize,
    /// Outbound bytes a session gathers into one write. Default: 4096.
    pub write_buffer_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_headers: 64,
            handshake_timeout: Duration::from_secs(10),
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
            max_queue_bytes: 1 << 20,
            max_queue_messages: 4096,
            max_subscriptions: 64,
            overflow: OverflowPolicy::Close(CloseCode::Policy),
            max_sessions: 50_000,
            max_sessions_per_ip: 16_384,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            read_buffer_size: 64 * 1024,
            write_buffer_size: 4096,
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty;)*) => {
        impl Limits {
            $(
                $(#[$m])*
                #[must_use = "setters return the changed value"]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Limits::max_head_bytes`].
    max_head_bytes: usize;
    /// Sets [`Limits::max_headers`].
    max_headers: usize;
    /// Sets [`Limits::handshake_timeout`].
    handshake_timeout: Duration;
    /// Sets [`Limits::max_frame_size`].
    max_frame_size: usize;
    /// Sets [`Limits::max_message_size`].
    max_message_size: usize;
    /// Sets [`Limits::max_queue_bytes`].
    max_queue_bytes: usize;
    /// Sets [`Limits::max_queue_messages`].
    max_queue_messages: usize;
    /// Sets [`Limits::max_subscriptions`].
    max_subscriptions: usize;
    /// Sets [`Limits::overflow`].
    overflow: OverflowPolicy;
    /// Sets [`Limits::max_sessions`].
    max_sessions: usize;
    /// Sets [`Limits::max_sessions_per_ip`].
    max_sessions_per_ip: usize;
    /// Sets [`Limits::ping_interval`].
    ping_interval: Duration;
    /// Sets [`Limits::idle_timeout`].
    idle_timeout: Duration;
    /// Sets [`Limits::close_timeout`].
    close_timeout: Duration;
    /// Sets [`Limits::read_buffer_size`].
    read_buffer_size: usize;
    /// Sets [`Limits::write_buffer_size`].
    write_buffer_size: usize;
}

impl Limits {
    /// Checks every field; `prefix` names the table in errors.
    pub(crate) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let nonzero = [
            ("max_head_bytes", self.max_head_bytes),
            ("max_headers", self.max_headers),
            ("max_frame_size", self.max_frame_size),
            ("max_message_size", self.max_message_size),
            ("max_queue_bytes", self.max_queue_bytes),
            ("max_queue_messages", self.max_queue_messages),
            ("max_sessions", self.max_sessions),
            ("max_sessions_per_ip", self.max_sessions_per_ip),
            ("read_buffer_size", self.read_buffer_size),
        ];
        for (k, v) in nonzero {
            if v == 0 {
                return Err(ConfigError::new(key(k), "must be at least 1"));
            }
        }
        if self.max_head_bytes < 64 || self.max_head_bytes > 1 << 20 {
            return Err(ConfigError::new(
                key("max_head_bytes"),
                "must be between 64 and 1048576",
            ));
        }
        if self.max_headers > 1024 {
            return Err(ConfigError::new(key("max_headers"), "must be at most 1024"));
        }
        if self.max_frame_size > self.max_message_size {
            return Err(ConfigError::new(
                key("max_frame_size"),
                "must not exceed max_message_size",
            ));
        }
        if self.read_buffer_size > 1 << 20 || self.write_buffer_size > 1 << 24 {
            return Err(ConfigError::new(
                key("read_buffer_size"),
                "buffer sizes must stay below 1 MiB (read) and 16 MiB (write)",
            ));
        }
        let times = [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", self.close_timeout),
        ];
        for (k, v) in times {
            if v.is_zero() || v > Duration::from_secs(86_400) {
                return Err(ConfigError::new(key(k), "must be between 1 ms and 24 h"));
            }
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::new(
                key("idle_timeout"),
                "must be longer than ping_interval",
            ));
        }
        if let OverflowPolicy::Close(code) = self.overflow
            && !matches!(code, CloseCode::Policy | CloseCode::Again)
        {
            return Err(ConfigError::new(
                key("overflow"),
                "close code must be 1008 or 1013",
            ));
        }
        Ok(())
    }
}

/// Per-protocol options of one vhost: string keys and values, like
/// libwebsockets' per-vhost options.
pub type Options = std::collections::BTreeMap<String, String>;

/// An application object a configuration carries for the layers above it (a
/// protocol, an HTTP handler, a broker): config knows its name and kind only,
/// and hands the object on untouched. The context, which defines the traits
/// these objects implement, puts them in and takes them out.
#[derive(Clone)]
pub(crate) struct Binding {
    /// What it is, for `Debug` and for comparing configurations: the
    /// protocol's name, or the handler's type.
    pub(crate) name: String,
    pub(crate) object: Arc<dyn Any + Send + Sync>,
    /// Who the application's object is (its address), when two bindings of
    /// one object must compare equal.
    identity: usize,
}

impl Binding {
    pub(crate) fn new(name: impl Into<String>, object: impl Any + Send + Sync) -> Self {
        let object: Arc<dyn Any + Send + Sync> = Arc::new(object);
        Self {
            name: name.into(),
            identity: Arc::as_ptr(&object).cast::<()>() as usize,
            object,
        }
    }

    /// A binding of a shared application object, which is the same binding
    /// whenever it carries the same `identity` (the object's address).
    pub(crate) fn shared(
        name: impl Into<String>,
        object: impl Any + Send + Sync,
        identity: usize,
    ) -> Self {
        Self {
            name: name.into(),
            object: Arc::new(object),
            identity,
        }
    }

    /// The object, if it is a `T`.
    pub(crate) fn get<T: Any>(&self) -> Option<&T> {
        self.object.downcast_ref::<T>()
    }
}

/// Whether two optional bindings carry the same object.
pub(crate) fn same_binding(a: &Option<Binding>, b: &Option<Binding>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.identity == b.identity,
        _ => false,
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Checks what no single vhost can: at least one, unique names, and one
/// acceptor per shared listen address.
pub(crate) fn validate_vhosts(vhosts: &[VhostConfig]) -> Result<(), ConfigError> {
    if vhosts.is_empty() {
        return Err(ConfigError::new("vhost", "at least one vhost is required"));
    }
    for (i, v) in vhosts.iter().enumerate() {
        if vhosts[..i].iter().any(|w| w.name == v.name) {
            return Err(ConfigError::new(
                format!("vhost.{}", v.name),
                "duplicate vhost name",
            ));
        }
        for w in &vhosts[..i] {
            if v.listen.iter().any(|a| w.listen.contains(a))
                && !same_binding(&v.acceptor, &w.acceptor)
            {
                return Err(ConfigError::new(
                    format!("vhost.{}.acceptor", v.name),
                    format!(
                        "shares a listen address with vhost {:?}, which uses another acceptor",
                        w.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What a mount serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MountTarget {
    /// A WebSocket endpoint speaking one of these protocols (the first is the
    /// default when the client offers none).
    WebSocket(Vec<String>),
    /// An HTTP handler (see [`Mount::http`]).
    Http(HttpTarget),
}

/// The HTTP handler of a mount, as a configuration holds it.
#[derive(Debug, Clone)]
pub struct HttpTarget(pub(crate) Binding);

impl HttpTarget {
    /// The handler's type name, for listings and logs.
    pub fn handler_type(&self) -> &str {
        &self.0.name
    }
}

/// A path on a vhost, bound to a WebSocket protocol list or an HTTP handler.
#[derive(Debug, Clone)]
pub struct Mount {
    pub(crate) path: String,
    pub(crate) prefix: bool,
    pub(crate) target: MountTarget,
}

impl Mount {
    /// A WebSocket endpoint at `path` speaking `protocols` (names registered on
    /// the vhost; the first is used when the client offers no subprotocol).
    pub fn websocket<I, S>(path: impl Into<String>, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            path: path.into(),
            prefix: false,
            target: MountTarget::WebSocket(protocols.into_iter().map(Into::into).collect()),
        }
    }

    /// An HTTP mount at `path` for a handler bound by the layer that defines
    /// handlers ([`Mount::http`]).
    pub(crate) fn http_binding(path: impl Into<String>, handler: Binding) -> Self {
        Self {
            path: path.into(),
            prefix: false,
            target: MountTarget::Http(HttpTarget(handler)),
        }
    }

    /// Matches every path below this one too (`/static` matches
    /// `/static/a.css`). Default: exact match only.
    #[must_use = "the changed mount is returned"]
    pub fn prefix(mut self, prefix: bool) -> Self {
        self.prefix = prefix;
        self
    }

    /// The mount path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the mount serves.
    pub fn target(&self) -> &MountTarget {
        &self.target
    }
}

/// A protocol registered on a vhost: its object (named by the protocol's
/// `name()`) and its options.
#[derive(Clone)]
pub(crate) struct ProtocolEntry {
    pub(crate) protocol: Binding,
    pub(crate) options: Options,
}

/// The configuration of one virtual host.
pub struct VhostConfig {
    pub(crate) name: String,
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) hosts: Vec<String>,
    pub(crate) mounts: Vec<Mount>,
    pub(crate) protocols: Vec<ProtocolEntry>,
    pub(crate) extensions: Vec<Arc<dyn ExtensionNegotiator>>,
    /// What turns the listeners' accepted TCP streams into transports (see
    /// [`VhostBuilder::acceptor`]); `None`: plain TCP.
    pub(crate) acceptor: Option<Binding>,
    pub(crate) limits: Limits,
    pub(crate) origins: Vec<String>,
    pub(crate) user_data: Option<Box<dyn Any + Send + Sync>>,
}

impl VhostConfig {
    /// Starts a builder for a vhost called `name`.
    pub fn builder(name: impl Into<String>) -> VhostBuilder {
        VhostBuilder {
            cfg: Self {
                name: name.into(),
                listen: Vec::new(),
                hosts: Vec::new(),
                mounts: Vec::new(),
                protocols: Vec::new(),
                extensions: Vec::new(),
                acceptor: None,
                limits: Limits::default(),
                origins: Vec::new(),
                user_data: None,
            },
        }
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured listen addresses.
    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The mounts.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// What decides whether a reconfiguration keeps a running vhost: every
    /// setting, the protocols by name and options, the HTTP handlers by
    /// type, the extensions by their `Debug` form, the acceptor by identity.
    /// User data is not compared (a kept vhost keeps its own).
    pub(crate) fn fingerprint(&self) -> String {
        let protocols: Vec<(&str, &Options)> = self
            .protocols
            .iter()
            .map(|p| (p.protocol.name.as_str(), &p.options))
            .collect();
        let acceptor = self.acceptor.as_ref().map(|a| (&a.name, a.identity));
        format!(
            "{:?}",
            (
                &self.name,
                &self.listen,
                &self.hosts,
                &self.mounts,
                protocols,
                &self.extensions,
                acceptor,
                &self.limits,
                &self.origins,
            )
        )
    }
}

impl fmt::Debug for VhostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("hosts", &self.hosts)
            .field("mounts", &self.mounts)
            .field(
                "protocols",
                &self
                    .protocols
                    .iter()
                    .map(|p| p.protocol.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("extensions", &self.extensions)
            .field("acceptor", &self.acceptor)
            .field("limits", &self.limits)
            .field("origins", &self.origins)
            .field("user_data", &self.user_data.is_some())
            .finish()
    }
}

/// Builds a [`VhostConfig`].
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct VhostBuilder {
    cfg: VhostConfig,
}

impl VhostBuilder {
    /// Adds a listen address. Vhosts that name the same address (even port 0)
    /// share one listener and are told apart by the `Host` header. Default: none
    /// (at least one is required).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.cfg.listen.push(addr);
        self
    }

    /// Adds a `Host` name (without port) this vhost answers to. A vhost with
    /// no names, or the first vhost of a listener, is that listener's default.
    /// Default: none.
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.cfg.hosts.push(name.into().to_ascii_lowercase());
        self
    }

    /// Registers a protocol object bound by the layer that defines protocols
    /// ([`VhostBuilder::protocol`]).
    pub(crate) fn protocol_binding(mut self, protocol: Binding, options: Options) -> Self {
        self.cfg.protocols.push(ProtocolEntry { protocol, options });
        self
    }

    /// Sets the acceptor bound by the layer that defines acceptors
    /// ([`VhostBuilder::acceptor`]).
    pub(crate) fn acceptor_binding(mut self, acceptor: Binding) -> Self {
        self.cfg.acceptor = Some(acceptor);
        self
    }

    /// Offers a per-message extension (such as permessage-deflate) to the
    /// vhost's clients: at most one extension is negotiated per session, the
    /// first of the vhost's negotiators, in the order added, that accepts one
    /// of the client's offers. Default: none.
    pub fn extension(mut self, negotiator: impl ExtensionNegotiator) -> Self {
        self.cfg.extensions.push(Arc::new(negotiator));
        self
    }

    /// Adds a mount. Default: none.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.cfg.mounts.push(mount);
        self
    }

    /// Allows WebSocket handshakes whose `Origin` header is `origin` (scheme,
    /// host and port, as browsers send it: `https://app.example`). Once any
    /// origin is allowed, a handshake with another `Origin` is answered 403,
    /// which stops cross-site WebSocket hijacking; handshakes without an
    /// `Origin` (non-browser clients) are not affected. Default: any origin.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.cfg
            .origins
            .push(origin.into().trim_end_matches('/').to_ascii_lowercase());
        self
    }

    /// Replaces the limits. Default: [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = limits;
        self
    }

    /// Attaches opaque per-instance data, reachable with
    /// [`Vhost::user_data`](crate::Vhost::user_data) and dropped when the last
    /// handle to the vhost goes. Default: none.
    pub fn user_data<T: Any + Send + Sync>(mut self, data: T) -> Self {
        self.cfg.user_data = Some(Box::new(data));
        self
    }

    /// Validates and returns the vhost configuration.
    ///
    /// # Errors
    ///
    /// An empty name, no listen address, a mount path that does not start with
    /// `/` or appears twice, a mount naming an unregistered protocol, two
    /// protocols with one name, or a limit out of range.
    pub fn build(self) -> Result<VhostConfig, ConfigError> {
        let cfg = self.cfg;
        let prefix = format!("vhost.{}", cfg.name);
        if cfg.name.is_empty() {
            return Err(ConfigError::new("vhost.name", "must not be empty"));
        }
        if cfg.listen.is_empty() {
            return Err(ConfigError::new(
                format!("{prefix}.listen"),
                "at least one listen address is required",
            ));
        }
        for (i, p) in cfg.protocols.iter().enumerate() {
            let name = p.protocol.name.as_str();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ConfigError::new(
                    format!("{prefix}.protocol"),
                    format!("{name:?} is not a valid subprotocol token"),
                ));
            }
            if p.options.get("token").is_some_and(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{prefix}.options.{name}.token"),
                    "must not be empty",
                ));
            }
            if cfg.protocols[..i].iter().any(|q| q.protocol.name == name) {
                return Err(ConfigError::new(
                    format!("{prefix}.protocol.{name}"),
                    "registered twice",
                ));
            }
        }
        for (i, m) in cfg.mounts.iter().enumerate() {
            let key = format!("{prefix}.mount.{}", m.path);
            if !m.path.starts_with('/') {
                return Err(ConfigError::new(key, "a mount path must start with '/'"));
            }
            if cfg.mounts[..i].iter().any(|n| n.path == m.path) {
                return Err(ConfigError::new(key, "mounted twice"));
            }
            if let MountTarget::WebSocket(protocols) = &m.target {
                if protocols.is_empty() {
                    return Err(ConfigError::new(key, "names no protocol"));
                }
                for name in protocols {
                    if !cfg.protocols.iter().any(|p| p.protocol.name == *name) {
                        return Err(ConfigError::new(
                            key,
                            format!("protocol {name:?} is not registered on this vhost"),
                        ));
                    }
                }
            }
        }
        cfg.limits.validate(&format!("{prefix}.limits"))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Echo;

    fn base() -> VhostBuilder {
        VhostConfig::builder("v").listen("127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn mount_must_name_registered_protocol() {
        let err = base()
            .mount(Mount::websocket("/x", ["nope"]))
            .build()
            .unwrap_err();
        assert_eq!(err.key, "vhost.v.mount./x");
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let limits = Limits::default()
            .ping_interval(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(5));
        let err = base().limits(limits).build().unwrap_err();
        assert_eq!(err.key, "vhost.v.limits.idle_timeout");
    }

    #[test]
    fn good_vhost_builds() {
        base()
            .protocol(Echo)
            .mount(Mount::websocket("/echo", ["echo"]))
            .build()
            .unwrap();
    }
}
