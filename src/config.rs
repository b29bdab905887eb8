//! `Config`, `VhostConfig`, `Limits` and mounts: everything a context is built from.
//!
//! Builders take values by value and end in `build()`, which validates every
//! field and returns a [`ConfigError`] naming the key instead of panicking.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::proto::deflate::PermessageDeflate;
use crate::proto::extension::ExtensionNegotiator;
use crate::proto::http::is_token_byte;

#[cfg(feature = "toml-config")]
pub(crate) mod file;
mod limits;
#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "toml-config")]
pub use file::{BrokerKind, BrokerSettings, ConfigFile, DEFAULT_TOML};
#[cfg(feature = "toml-config")]
pub use limits::parse_duration;
pub use limits::{Limits, OverflowPolicy};
#[cfg(feature = "tls")]
pub(crate) use tls::LoadedTls;
#[cfg(feature = "tls")]
pub use tls::{ClientAuth, TlsConfig};

pub use crate::proto::deflate::{Compression, CompressionBuilder, CompressionMode};

/// The configuration of one context: its vhosts and context-wide limits.
pub struct Config {
    pub(crate) vhosts: Vec<VhostConfig>,
    pub(crate) max_connections: usize,
    pub(crate) pumps: usize,
    /// The topics' broker (see [`ConfigBuilder::broker`]); `None`: in-process.
    pub(crate) broker: Option<Binding>,
    /// The memory budget in bytes; `None`: not accounted.
    pub(crate) memory_budget: Option<usize>,
}

/// The default memory budget: 512 MiB. What it bounds is what peers make the
/// gateway hold (unfinished messages, queues, compression state), not the
/// sessions themselves; 50,000 sessions at the default per-session limits
/// (a 1 MiB message and a 1 MiB queue each) could hold about 100 GiB, far
/// past any machine, while 512 MiB leaves a 2 GiB container room for its
/// sessions' own state (about 1.6 KB each idle), the per-thread read buffers
/// and the application. A host that knows its memory sets its own.
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;

/// The smallest memory budget accepted: below it, a handful of default-size
/// messages would hold the budget.
pub const MIN_MEMORY_BUDGET: usize = 1 << 20;

impl Config {
    /// Starts a builder.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            vhosts: Vec::new(),
            max_connections: 60_000,
            pumps: 1,
            broker: None,
            memory_budget: Some(DEFAULT_MEMORY_BUDGET),
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

    /// The memory budget in bytes, `None` when not accounted.
    pub fn memory_budget(&self) -> Option<usize> {
        self.memory_budget
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("vhosts", &self.vhosts)
            .field("max_connections", &self.max_connections)
            .field("pumps", &self.pumps)
            .field("memory_budget", &self.memory_budget)
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
    memory_budget: Option<usize>,
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

    /// The memory budget: the most bytes the context holds for its peers,
    /// all sessions and service threads together (unfinished inbound
    /// messages, outbound queues and unsent bytes, compression state); `None`
    /// turns the accounting off (then only the per-session limits bound
    /// memory). Above 90 % of it, sessions with an unfinished message stop
    /// being read, the largest of them are closed with 1013 until the total
    /// is under 75 %, new WebSocket handshakes are answered 503, and a send
    /// that would pass the budget meets the session's overflow policy. See
    /// docs/CONFORMANCE.md, "Memory budget". Default: 512 MiB
    /// ([`DEFAULT_MEMORY_BUDGET`]).
    pub fn memory_budget(mut self, bytes: Option<usize>) -> Self {
        self.memory_budget = bytes;
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
        if self.memory_budget.is_some_and(|b| b < MIN_MEMORY_BUDGET) {
            return Err(ConfigError::new(
                "memory_budget",
                format!("must be at least {MIN_MEMORY_BUDGET} bytes (1MiB), or \"off\""),
            ));
        }
        Ok(Config {
            vhosts: self.vhosts,
            max_connections: self.max_connections,
            pumps: self.pumps,
            broker: self.broker,
            memory_budget: self.memory_budget,
        })
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
            if let Some(addr) = v.listen.iter().find(|a| w.listen.contains(a))
                && v.is_tls() != w.is_tls()
            {
                let (tls, plain) = if v.is_tls() { (v, w) } else { (w, v) };
                return Err(ConfigError::new(
                    format!("vhost.{}.listen", v.name),
                    format!(
                        "listener {addr} is shared by TLS vhost {:?} and plain vhost {:?}: a listener is either TLS or plain; give them different addresses",
                        tls.name, plain.name
                    ),
                ));
            }
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
    /// TLS settings, loaded by `build` (see [`VhostBuilder::tls`]).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsConfig>,
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
                #[cfg(feature = "tls")]
                tls: None,
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

    /// Whether the vhost serves TLS (set with [`VhostBuilder::tls`]).
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// The TLS settings as loaded (feature `tls`).
    #[cfg(feature = "tls")]
    pub(crate) fn loaded_tls(&self) -> Option<Arc<LoadedTls>> {
        self.tls.as_ref().and_then(|t| t.loaded.clone())
    }

    /// What a reconfiguration compares of the TLS settings, apart from
    /// [`fingerprint`](Self::fingerprint): the files' contents (hashed), so
    /// that a certificate rotated under the same path counts as a change,
    /// one that keeps the vhost and its sessions and swaps only the
    /// listeners' certificates.
    pub(crate) fn tls_fingerprint(&self) -> Option<String> {
        #[cfg(feature = "tls")]
        return self.loaded_tls().map(|t| t.fingerprint.clone());
        #[cfg(not(feature = "tls"))]
        None
    }

    /// What decides whether a reconfiguration keeps a running vhost: every
    /// setting, the protocols by name and options, the HTTP handlers by
    /// type, the extensions by their `Debug` form, the acceptor by identity,
    /// whether it serves TLS (its certificates are compared apart, by
    /// [`tls_fingerprint`](Self::tls_fingerprint)). User data is not
    /// compared (a kept vhost keeps its own).
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
                self.is_tls(),
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
            .field("tls", &self.tls_fingerprint())
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

    /// Serves this vhost over TLS (`wss://`, `https://`) with these
    /// certificates. Vhosts sharing a listen address are told apart by the
    /// client's SNI name against their `Host` names (exact, then `*.`
    /// wildcards; the vhost without names has the default certificate), and
    /// a request whose `Host` names another vhost than SNI chose gets 421
    /// Misdirected Request. A listener is either TLS or plain: every vhost
    /// on it has TLS settings, or none has. Default: plain TCP.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.cfg.tls = Some(tls);
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

    /// Compresses messages with permessage-deflate (RFC 7692) for the clients
    /// that offer it (every browser does): [`CompressionMode::Shared`] keeps
    /// nothing per session and compresses a broadcast once,
    /// [`CompressionMode::Dedicated`] keeps each session's context for a
    /// better ratio at [`Compression::dedicated_memory`] bytes per session.
    /// The same as `.extension(PermessageDeflate::new(compression))`
    /// ([`crate::extension::PermessageDeflate`]), in the order of the
    /// vhost's extensions. Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use wsgate::{Compression, CompressionMode, VhostConfig};
    ///
    /// let vhost = VhostConfig::builder("default")
    ///     .listen("127.0.0.1:0".parse()?)
    ///     .compression(Compression::builder(CompressionMode::Shared).build()?)
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compression(self, compression: Compression) -> Self {
        if compression.mode() == CompressionMode::Off {
            return self;
        }
        self.extension(PermessageDeflate::new(compression))
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
    /// protocols with one name, or a limit out of range. With TLS: a
    /// certificate or key file that cannot be read, is not PEM, or a key
    /// that does not match its certificate (each naming the file), TLS
    /// beside an [`acceptor`](Self::acceptor). A certificate outside its
    /// validity period is logged as a warning, not refused.
    pub fn build(self) -> Result<VhostConfig, ConfigError> {
        #[cfg_attr(
            not(feature = "tls"),
            allow(unused_mut, reason = "loaded in place with tls")
        )]
        let mut cfg = self.cfg;
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
        #[cfg(feature = "tls")]
        if let Some(tls) = cfg.tls.as_mut() {
            if cfg.acceptor.is_some() {
                return Err(ConfigError::new(
                    format!("{prefix}.tls"),
                    "TLS and an acceptor of the host's cannot both run on a vhost's listeners",
                ));
            }
            tls.load(&prefix)?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
