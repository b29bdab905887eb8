//! The TOML loader: a configuration file's text to a [`Config`], with its
//! protocols and HTTP handlers built by name through a [`ProtocolRegistry`]
//! (feature `toml-config`).
//!
//! [`ConfigFile`] (in [`config`](crate::config)) parses the file and knows
//! its keys and lines; this module adds what needs the protocols and
//! handlers, which live above the configuration layer: the registry, and
//! [`ConfigFile::build`], [`ConfigFile::build_vhosts`] and
//! [`ConfigFile::build_vhost`]. [`load_toml`] is the short way from text to
//! a [`Config`]. An embedding application registers its own protocols and
//! handlers next to the built-in ones:
//!
//! ```
//! use wsgate::{ProtocolRegistry, Request, Response, Vhost, load_toml};
//!
//! # fn main() -> Result<(), wsgate::ConfigError> {
//! let mut registry = ProtocolRegistry::builtin();
//! registry.http("hello", |_: &Request, _: &Vhost| Response::text(200, "hello\n"));
//! let config = load_toml(
//!     r#"
//! [[vhost]]
//! name = "app"
//! listen = ["127.0.0.1:0"]
//!
//! [[vhost.mount]]
//! path = "/hello"
//! http = "hello"
//! "#,
//!     &registry,
//! )?;
//! assert_eq!(config.vhosts()[0].mounts()[0].path(), "/hello");
//! # Ok(())
//! # }
//! ```
//!
//! # Reloading
//!
//! A host reloads a file by building its vhosts
//! ([`ConfigFile::build_vhosts`]) and handing them to
//! [`Context::reconfigure`](crate::Context::reconfigure), which keeps the
//! vhosts that did not change, with their sessions. The `wsgate` binary does
//! exactly that on SIGHUP.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::HttpHandler;
use crate::config::file::{RawTls, RawVhost};
use crate::config::{
    BrokerKind, BrokerSettings, Compression, Config, ConfigBuilder, ConfigFile, Mount, Options,
    VhostConfig,
};
use crate::context::protocol::{ErasedProtocol, Protocol, bind_handler_arc, bind_protocol, erase};
use crate::error::ConfigError;
use crate::handlers::{Demo, Health, Index, MetricsHandler, Ready};
use crate::protocols::{Broadcast, Echo, Increment, Pubsub};
use crate::pubsub::{MAX_HISTORY_SIZE, MemoryBroker};

type ProtocolFactory = dyn Fn(&Options) -> Result<Arc<dyn ErasedProtocol>, String> + Send + Sync;

/// Builds protocols and HTTP handlers from the names used in a configuration file.
#[derive(Clone)]
pub struct ProtocolRegistry {
    protocols: BTreeMap<String, Arc<ProtocolFactory>>,
    handlers: BTreeMap<String, Arc<dyn HttpHandler>>,
}

impl ProtocolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            protocols: BTreeMap::new(),
            handlers: BTreeMap::new(),
        }
    }

    /// The built-in protocols ([`crate::protocols`]: `echo`, `broadcast`,
    /// `increment`, `pubsub`) and HTTP handlers ([`crate::handlers`]:
    /// `demo`, `health`, `ready`, `index`, `metrics`), under the names the
    /// configuration file knows them by.
    pub fn builtin() -> Self {
        let mut r = Self::new();
        r.protocol("echo", |_| Ok(Echo))
            .protocol("broadcast", Broadcast::from_options)
            .protocol("increment", Increment::from_options)
            .protocol("pubsub", Pubsub::from_options);
        r.http("demo", Demo)
            .http("health", Health)
            .http("ready", Ready)
            .http("index", Index)
            .http("metrics", MetricsHandler);
        r
    }

    /// Registers protocol `name`, built per vhost from that vhost's options
    /// (`[vhost.options.NAME]`); the factory's error becomes a configuration
    /// error. The built protocol's `name()` must equal `name`.
    pub fn protocol<P, F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        P: Protocol,
        F: Fn(&Options) -> Result<P, String> + Send + Sync + 'static,
    {
        let f = move |o: &Options| factory(o).map(erase);
        self.protocols.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers HTTP handler `name`.
    pub fn http(&mut self, name: &str, handler: impl HttpHandler) -> &mut Self {
        self.handlers.insert(name.to_owned(), Arc::new(handler));
        self
    }
}

impl Default for ProtocolRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl fmt::Debug for ProtocolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolRegistry")
            .field("protocols", &self.protocols.keys().collect::<Vec<_>>())
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Parses `text` and builds it with `registry`: the short way to a [`Config`].
///
/// # Errors
///
/// A [`ConfigError`] naming the key and the line.
pub fn load_toml(text: &str, registry: &ProtocolRegistry) -> Result<Config, ConfigError> {
    ConfigFile::parse(text)?.build(registry)
}

impl ConfigFile {
    /// Builds the configuration, instantiating protocols through `registry`.
    ///
    /// # Errors
    ///
    /// Unknown protocol or handler names, a mount with no or several targets,
    /// options for an unused protocol, and every check of the builders.
    pub fn build(&self, registry: &ProtocolRegistry) -> Result<Config, ConfigError> {
        let mut builder = Config::builder();
        if let Some(n) = self.raw.max_connections {
            builder = builder.max_connections(n);
        }
        if let Some(n) = self.raw.pumps {
            builder = builder.pumps(n);
        }
        if let Some(budget) = self.raw.memory_budget {
            builder = builder.memory_budget(budget);
        }
        for v in &self.raw.vhost {
            builder = builder.vhost(self.build_raw_vhost(v, registry)?);
        }
        if let Some(b) = self.broker() {
            builder = with_broker(builder, &b).map_err(|e| e.at_line(b.line))?;
        }
        builder.build().map_err(|e| {
            let leaf = e.key.rsplit('.').next().unwrap_or_default().to_owned();
            // A key of one vhost (`vhost.NAME.listen`) is looked for from
            // that vhost's table on.
            let from = e
                .key
                .strip_prefix("vhost.")
                .and_then(|rest| {
                    self.raw
                        .vhost
                        .iter()
                        .find(|v| rest.starts_with(&format!("{}.", v.name.get_ref())))
                })
                .map_or(0, |v| v.name.span().start);
            let line = self
                .find_key_line(&leaf, from)
                .or_else(|| self.find_key_line(&leaf, 0))
                .unwrap_or(1);
            e.at_line(line)
        })
    }

    /// Builds every vhost of the file, with every check of
    /// [`build`](Self::build) (the file-wide ones too: at least one vhost,
    /// unique names, valid context-wide values): what a reload hands to
    /// [`Context::reconfigure`](crate::Context::reconfigure). A running
    /// context keeps its own context-wide values (`max_connections`,
    /// `pumps`); only a restart applies the file's.
    ///
    /// # Errors
    ///
    /// The same as [`build`](Self::build).
    pub fn build_vhosts(
        &self,
        registry: &ProtocolRegistry,
    ) -> Result<Vec<VhostConfig>, ConfigError> {
        Ok(self.build(registry)?.vhosts)
    }

    /// Builds vhost `name` alone, instantiating its protocols through
    /// `registry`: what a reload adds to a running context with
    /// [`Context::add_vhost`](crate::Context::add_vhost). Checks that involve
    /// the whole file (duplicate names, context-wide values) are
    /// [`build`](Self::build)'s.
    ///
    /// # Errors
    ///
    /// `vhost.NAME` "no such vhost" if the file has none called `name`, else
    /// the same errors as [`build`](Self::build) for that vhost.
    pub fn build_vhost(
        &self,
        name: &str,
        registry: &ProtocolRegistry,
    ) -> Result<VhostConfig, ConfigError> {
        let v = self
            .vhost_index(name)
            .and_then(|i| self.raw.vhost.get(i))
            .ok_or_else(|| ConfigError::new(format!("vhost.{name}"), "no such vhost"))?;
        self.build_raw_vhost(v, registry)
    }

    fn build_raw_vhost(
        &self,
        v: &RawVhost,
        registry: &ProtocolRegistry,
    ) -> Result<VhostConfig, ConfigError> {
        let name = v.name.get_ref();
        let err = |key: &str, reason: String, span: &Range<usize>| {
            ConfigError::new(format!("vhost.{name}.{key}"), reason).at_line(self.line(span))
        };
        let mut b = VhostConfig::builder(name.clone());
        for a in &v.listen {
            b = b.listen(a.get_ref().0);
        }
        for h in &v.hosts {
            b = b.host(h.clone());
        }
        for o in &v.origins {
            b = b.origin(o.clone());
        }
        b = b.limits(v.limits.clone());
        if let Some(tls) = &v.tls {
            b = self.tls(b, tls, name)?;
        }
        if let Some(c) = &v.compression {
            let span = c.span();
            let raw = c.get_ref();
            let mut builder = Compression::builder(raw.mode.0);
            if let Some(w) = raw.window_bits {
                builder = builder.window_bits(w);
            }
            if let Some(m) = raw.mem_level {
                builder = builder.mem_level(m);
            }
            if let Some(l) = raw.level {
                builder = builder.level(l);
            }
            if let Some(t) = raw.threshold {
                builder = builder.threshold(t.0);
            }
            let compression = builder.build().map_err(|e| {
                let leaf = e.key.rsplit('.').next().unwrap_or_default();
                let line = self
                    .find_key_line(leaf, span.start)
                    .unwrap_or_else(|| self.line(&span));
                ConfigError::new(format!("vhost.{name}.{}", e.key), e.reason).at_line(line)
            })?;
            b = b.compression(compression);
        }
        // Protocols used by mounts, instantiated once per vhost with its options.
        let mut used: Vec<String> = Vec::new();
        for m in &v.mount {
            let span = m.span();
            let m = m.get_ref();
            let path = m.path.get_ref().clone();
            let targets = usize::from(m.protocol.is_some())
                + usize::from(m.protocols.is_some())
                + usize::from(m.http.is_some());
            if targets != 1 {
                return Err(err(
                    &format!("mount.{path}"),
                    "needs exactly one of protocol, protocols or http".to_owned(),
                    &span,
                ));
            }
            let mount = if let Some(h) = &m.http {
                let handler = registry.handlers.get(h.get_ref()).ok_or_else(|| {
                    err(
                        &format!("mount.{path}.http"),
                        format!(
                            "unknown HTTP handler {:?} (known: {})",
                            h.get_ref(),
                            names(registry.handlers.keys())
                        ),
                        &h.span(),
                    )
                })?;
                Mount::http_binding(path.clone(), bind_handler_arc(h.get_ref(), handler.clone()))
            } else {
                let (list, span) = match (&m.protocol, &m.protocols) {
                    (Some(p), _) => (vec![p.get_ref().clone()], p.span()),
                    (_, Some(ps)) => (ps.get_ref().clone(), ps.span()),
                    _ => (Vec::new(), span.clone()),
                };
                if list.is_empty() {
                    return Err(err(
                        &format!("mount.{path}.protocols"),
                        "names no protocol".to_owned(),
                        &span,
                    ));
                }
                for p in &list {
                    if !registry.protocols.contains_key(p) {
                        return Err(err(
                            &format!("mount.{path}.protocol"),
                            format!(
                                "unknown protocol {p:?} (known: {})",
                                names(registry.protocols.keys())
                            ),
                            &span,
                        ));
                    }
                    if !used.contains(p) {
                        used.push(p.clone());
                    }
                }
                Mount::websocket(path.clone(), list)
            };
            b = b.mount(mount.prefix(m.prefix));
        }
        if let Some(proto) = v.options.keys().find(|p| !used.contains(p)) {
            return Err(err(
                &format!("options.{proto}"),
                "options for a protocol that no mount of this vhost uses".to_owned(),
                &v.name.span(),
            ));
        }
        for p in &used {
            let options: Options = v
                .options
                .get(p)
                .map(|o| {
                    o.iter()
                        .map(|(k, val)| (k.clone(), val.0.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let factory = &registry.protocols[p];
            let protocol = factory(&options)
                .map_err(|reason| err(&format!("options.{p}"), reason, &v.name.span()))?;
            if protocol.name() != p {
                return Err(err(
                    &format!("protocol.{p}"),
                    format!("the factory built a protocol named {:?}", protocol.name()),
                    &v.name.span(),
                ));
            }
            b = b.protocol_binding(bind_protocol(protocol), options);
        }
        b.build().map_err(|e| {
            // Point at the line of the offending key inside this vhost when
            // it can be found, else at the vhost's name.
            let leaf = e.key.rsplit('.').next().unwrap_or_default().to_owned();
            let line = self
                .find_key_line(&leaf, v.name.span().start)
                .unwrap_or_else(|| self.line(&v.name.span()));
            e.at_line(line)
        })
    }
}

impl ConfigFile {
    /// `[vhost.tls]`: the files, relative to the base folder.
    #[cfg(feature = "tls")]
    fn tls(
        &self,
        b: crate::VhostBuilder,
        tls: &toml::Spanned<RawTls>,
        _name: &str,
    ) -> Result<crate::VhostBuilder, ConfigError> {
        use crate::config::file::ClientAuthValue;
        use crate::config::{ClientAuth, TlsConfig};
        let t = tls.get_ref();
        let mut config = TlsConfig::from_pem_files(t.cert.get_ref(), t.key.get_ref());
        if let Some(ca) = &t.client_ca {
            config = config.client_ca(ca.get_ref());
        }
        if let Some(auth) = &t.client_auth {
            config = config.client_auth(match auth.get_ref() {
                ClientAuthValue::Required => ClientAuth::Required,
                ClientAuthValue::Optional => ClientAuth::Optional,
            });
        }
        if let Some(dir) = self.base_dir() {
            config = config.relative_to(dir);
        }
        Ok(b.tls(config))
    }

    /// Without the `tls` feature a `[vhost.tls]` table is an error.
    #[cfg(not(feature = "tls"))]
    fn tls(
        &self,
        _b: crate::VhostBuilder,
        tls: &toml::Spanned<RawTls>,
        name: &str,
    ) -> Result<crate::VhostBuilder, ConfigError> {
        Err(ConfigError::new(
            format!("vhost.{name}.tls"),
            "this build of wsgate has no TLS (cargo feature \"tls\")",
        )
        .at_line(self.line(&tls.span())))
    }
}

/// The `[broker]` table, built: the in-process broker (with its history),
/// or the Redis broker (feature `redis`).
fn with_broker(builder: ConfigBuilder, b: &BrokerSettings) -> Result<ConfigBuilder, ConfigError> {
    if b.history_size > MAX_HISTORY_SIZE {
        return Err(ConfigError::new(
            "broker.history_size",
            format!("must be at most {MAX_HISTORY_SIZE}"),
        ));
    }
    match b.kind {
        BrokerKind::Redis => redis_broker(builder, b),
        _ => {
            let redis_only = [
                ("url", b.url.is_some()),
                ("node", b.node.is_some()),
                ("prefix", b.prefix.is_some()),
            ];
            if let Some((key, _)) = redis_only.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    format!("broker.{key}"),
                    "only for type = \"redis\"",
                ));
            }
            Ok(builder.broker(MemoryBroker::with_history(b.history_size, b.history_ttl)))
        }
    }
}

#[cfg(feature = "redis")]
fn redis_broker(builder: ConfigBuilder, b: &BrokerSettings) -> Result<ConfigBuilder, ConfigError> {
    let url = b
        .url
        .as_ref()
        .ok_or_else(|| ConfigError::new("broker.url", "required for type = \"redis\""))?;
    let mut redis = crate::cluster::RedisBroker::builder(url)
        .history(b.history_size, b.history_ttl)
        .heartbeat(b.heartbeat);
    if let Some(node) = &b.node {
        redis = redis.node(node);
    }
    if let Some(prefix) = &b.prefix {
        redis = redis.prefix(prefix);
    }
    Ok(builder.broker(redis.build()?))
}

#[cfg(not(feature = "redis"))]
fn redis_broker(_: ConfigBuilder, _: &BrokerSettings) -> Result<ConfigBuilder, ConfigError> {
    Err(ConfigError::new(
        "broker.type",
        "\"redis\" needs wsgate built with the `redis` feature",
    ))
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    it.map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::config::DEFAULT_TOML;
    use crate::{CloseCode, OverflowPolicy};

    const TWO: &str = r#"
[[vhost]]
name = "a"
listen = ["127.0.0.1:0"]
[vhost.limits]
idle_timeout = "2m"
[[vhost.mount]]
path = "/echo"
protocol = "echo"

[[vhost]]
name = "b"
listen = ["127.0.0.2:0"]
[[vhost.mount]]
path = "/echo"
protocol = "echo"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_toml(text, &ProtocolRegistry::builtin())
    }

    #[test]
    fn builtin_default_builds() {
        let cfg = ConfigFile::parse(DEFAULT_TOML)
            .unwrap()
            .build(&ProtocolRegistry::builtin())
            .unwrap();
        assert_eq!(cfg.vhosts().len(), 1);
        assert_eq!(
            cfg.vhosts()[0].listen(),
            &["127.0.0.1:7681".parse::<SocketAddr>().unwrap()]
        );
        let paths: Vec<&str> = cfg.vhosts()[0].mounts().iter().map(Mount::path).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/echo",
                "/broadcast",
                "/increment",
                "/pubsub",
                "/healthz",
                "/readyz",
                "/metrics"
            ]
        );
    }

    #[test]
    fn vhost_compression_builds_and_its_errors_name_key_and_line() {
        let base = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.compression]\n";
        let build = |rest: &str| {
            ConfigFile::parse(&format!("{base}{rest}"))
                .and_then(|f| f.build_vhost("a", &ProtocolRegistry::builtin()))
        };
        let v = build("mode = \"dedicated\"\nwindow_bits = 10\nmem_level = 4\nlevel = 1\nthreshold = \"1KiB\"\n")
            .unwrap();
        let debug = format!("{v:?}");
        assert!(
            debug.contains(
                "Compression { mode: Dedicated, window_bits: 10, mem_level: 4, level: 1, threshold: 1024 }"
            ),
            "{debug}"
        );
        // Off (also the default mode) offers nothing.
        let v = build("threshold = 10\n").unwrap();
        assert!(!format!("{v:?}").contains("PermessageDeflate"));
        let e = build("mode = \"shared\"\nwindow_bits = 8\n").unwrap_err();
        assert_eq!(e.key, "vhost.a.compression.window_bits", "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        let e = build("mode = \"fast\"\n").unwrap_err();
        assert!(e.reason.contains("unknown compression mode"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        let e = build("mode = \"shared\"\nwindow = 10\n").unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn build_vhost_builds_one_by_name() {
        let f = ConfigFile::parse(TWO).unwrap();
        let b = f.build_vhost("b", &ProtocolRegistry::builtin()).unwrap();
        assert_eq!(b.name(), "b");
        assert_eq!(b.listen(), &["127.0.0.2:0".parse::<SocketAddr>().unwrap()]);
        let a = f.build_vhost("a", &ProtocolRegistry::builtin()).unwrap();
        assert_eq!(a.limits().idle_timeout, Duration::from_secs(120));
        let e = f
            .build_vhost("c", &ProtocolRegistry::builtin())
            .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.reason.as_str()),
            ("vhost.c", "no such vhost")
        );
    }

    #[test]
    fn build_vhost_errors_name_the_key_and_line() {
        let text = TWO.replacen("protocol = \"echo\"", "protocol = \"nope\"", 2);
        let f = ConfigFile::parse(&text).unwrap();
        let e = f
            .build_vhost("b", &ProtocolRegistry::builtin())
            .unwrap_err();
        assert_eq!(e.key, "vhost.b.mount./echo.protocol", "{e}");
        assert_eq!(e.line, Some(16), "{e}");
    }

    #[test]
    fn option_lists_become_comma_separated_text() {
        let text = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.options.echo]\ntopics = [\"chat.*\", \"stats\"]\nn = [1, 2]\nnone = []\n[[vhost.mount]]\npath = \"/e\"\nprotocol = \"echo\"\n";
        let cfg = load(text).unwrap();
        let options = &cfg.vhosts()[0].protocols[0].options;
        assert_eq!(
            options.get("topics").map(String::as_str),
            Some("chat.*,stats")
        );
        assert_eq!(options.get("n").map(String::as_str), Some("1,2"));
        assert_eq!(options.get("none").map(String::as_str), Some(""));
        let e = load(&text.replace("\"stats\"", "\"a,b\"")).unwrap_err();
        assert_eq!(e.key, "vhost.options.echo.topics", "{e}");
        assert!(e.reason.contains("contains a comma"), "{e}");
        let e = load(&text.replace("[1, 2]", "[[1]]")).unwrap_err();
        assert!(e.reason.contains("or a list of them"), "{e}");
    }

    #[test]
    fn range_check_points_at_the_key_line() {
        let text = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.limits]\nping_interval = \"30s\"\nidle_timeout = \"10s\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.key, "vhost.a.limits.idle_timeout", "{e}");
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn unknown_protocol_is_named() {
        let text = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[[vhost.mount]]\npath = \"/x\"\nprotocol = \"nope\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.reason.contains("unknown protocol \"nope\""), "{e}");
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
max_connections = 100
drain_timeout = "3s"
[[vhost]]
name = "a"
listen = ["127.0.0.1:0"]
hosts = ["a.example"]
[vhost.limits]
max_message_size = "2MiB"
max_frame_size = 65536
overflow = "close-1013"
idle_timeout = "2m"
ping_interval = "500ms"
[vhost.options.echo]
greeting = "hi"
n = 3
[[vhost.mount]]
path = "/echo"
protocols = ["echo"]
[[vhost.mount]]
path = "/static"
http = "index"
prefix = true
"#;
        let f = ConfigFile::parse(text).unwrap();
        assert_eq!(f.drain_timeout(), Duration::from_secs(3));
        let cfg = f.build(&ProtocolRegistry::builtin()).unwrap();
        let v = &cfg.vhosts()[0];
        assert_eq!(v.limits().max_message_size, 2 << 20);
        assert_eq!(v.limits().ping_interval, Duration::from_millis(500));
        assert_eq!(v.limits().overflow, OverflowPolicy::Close(CloseCode::Again));
        assert_eq!(
            v.protocols[0].options.get("n").map(String::as_str),
            Some("3")
        );
    }

    #[test]
    fn listen_override_replaces_first_vhost_addresses() {
        let mut f = ConfigFile::builtin();
        f.override_listen(&[
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:10".parse().unwrap(),
        ]);
        let cfg = f.build(&ProtocolRegistry::builtin()).unwrap();
        assert_eq!(cfg.vhosts()[0].listen().len(), 2);
    }

    /// What `Context::reconfigure` compares to keep a vhost.
    fn fingerprint(file: &ConfigFile, name: &str) -> String {
        file.build_vhost(name, &ProtocolRegistry::builtin())
            .unwrap()
            .fingerprint()
    }

    #[test]
    fn a_vhost_written_differently_builds_the_same() {
        let f = ConfigFile::parse(TWO).unwrap();
        // The same vhosts, swapped, with comments, and keys in another order.
        let g = ConfigFile::parse(
            r#"
# b first now
[[vhost]]
listen = ["127.0.0.2:0"]   # same address
name = "b"
[[vhost.mount]]
protocol = "echo"
path = "/echo"

[[vhost]]
name = "a"
listen = ["127.0.0.1:0"]
[vhost.limits]
idle_timeout   =   "2m"
[[vhost.mount]]
path = "/echo"
protocol = "echo"
"#,
        )
        .unwrap();
        for name in ["a", "b"] {
            assert_eq!(fingerprint(&f, name), fingerprint(&g, name), "{name}");
        }
    }

    #[test]
    fn a_changed_value_changes_only_its_vhost() {
        let f = ConfigFile::parse(TWO).unwrap();
        let g = ConfigFile::parse(&TWO.replace("\"2m\"", "\"3m\"")).unwrap();
        assert_ne!(fingerprint(&f, "a"), fingerprint(&g, "a"));
        assert_eq!(fingerprint(&f, "b"), fingerprint(&g, "b"));
        let h = ConfigFile::parse(&TWO.replace("127.0.0.2:0", "127.0.0.3:0")).unwrap();
        assert_eq!(fingerprint(&f, "a"), fingerprint(&h, "a"));
        assert_ne!(fingerprint(&f, "b"), fingerprint(&h, "b"));
    }

    #[test]
    fn listen_override_changes_the_first_vhost() {
        let f = ConfigFile::parse(TWO).unwrap();
        let mut g = f.clone();
        g.override_listen(&["127.0.0.9:9".parse().unwrap()]);
        assert_ne!(fingerprint(&f, "a"), fingerprint(&g, "a"));
        assert_eq!(fingerprint(&f, "b"), fingerprint(&g, "b"));
        // Overriding a file with the addresses it already names changes nothing.
        let mut h = f.clone();
        h.override_listen(&["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(fingerprint(&f, "a"), fingerprint(&h, "a"));
    }

    #[test]
    fn build_vhosts_builds_every_vhost_with_the_file_wide_checks() {
        let f = ConfigFile::parse(TWO).unwrap();
        let vhosts = f.build_vhosts(&ProtocolRegistry::builtin()).unwrap();
        let names: Vec<&str> = vhosts.iter().map(VhostConfig::name).collect();
        assert_eq!(names, ["a", "b"]);
        // Each vhost builds alone, but the file names "a" twice.
        let twice = ConfigFile::parse(&TWO.replace("name = \"b\"", "name = \"a\"")).unwrap();
        let e = twice
            .build_vhosts(&ProtocolRegistry::builtin())
            .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.reason.as_str()),
            ("vhost.a", "duplicate vhost name")
        );
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn an_empty_token_is_refused_by_the_builder_at_its_line() {
        let text = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.options.echo]\ntoken = \"\"\n[[vhost.mount]]\npath = \"/e\"\nprotocol = \"echo\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.key, "vhost.a.options.echo.token", "{e}");
        assert_eq!(e.reason, "must not be empty", "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }

    const VHOST: &str = "\n[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n";

    #[test]
    fn the_broker_table_is_built_or_refused_at_its_line() {
        let ok = |broker: &str| load(&format!("{broker}{VHOST}")).map(|_| ());
        ok("[broker]\nhistory_size = 10\nhistory_ttl = \"30s\"\n").unwrap();
        ok("[broker]\ntype = \"memory\"\n").unwrap();
        let err = |broker: &str| load(&format!("{broker}{VHOST}")).unwrap_err();
        let e = err("\n[broker]\ntype = \"memory\"\nurl = \"redis://h\"\n");
        assert_eq!((e.key.as_str(), e.line), ("broker.url", Some(2)), "{e}");
        let e = err("[broker]\nhistory_size = 2000000\n");
        assert_eq!(e.key, "broker.history_size", "{e}");
        let e = err("[broker]\ntype = \"nats\"\n");
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let e = err("[broker]\nhistroy_size = 1\n");
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = err("[broker]\nhistory_ttl = \"soon\"\n");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_redis_broker_needs_a_usable_url() {
        let load_broker = |broker: &str| load(&format!("{broker}{VHOST}")).map(|_| ());
        load_broker("[broker]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\nnode = \"gw-1\"\nheartbeat = \"1s\"\n").unwrap();
        load_broker("[broker]\ntype = \"redis\"\nurl = \"unix:///run/redis.sock\"\n").unwrap();
        for (broker, key) in [
            ("[broker]\ntype = \"redis\"\n", "broker.url"),
            (
                "[broker]\ntype = \"redis\"\nurl = \"rediss://h:1\"\n",
                "broker.url",
            ),
            (
                "[broker]\ntype = \"redis\"\nurl = \"ftp://h\"\n",
                "broker.url",
            ),
            (
                "[broker]\ntype = \"redis\"\nurl = \"redis://h\"\nnode = \"a b\"\n",
                "broker.node",
            ),
            (
                "[broker]\ntype = \"redis\"\nurl = \"redis://h\"\nheartbeat = \"1ms\"\n",
                "broker.heartbeat",
            ),
        ] {
            let e = load_broker(broker).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), (key, Some(1)), "{broker}: {e}");
        }
    }
}
