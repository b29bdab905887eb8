//! The TOML configuration format used by the `wsgate` binary: parsing.
//!
//! Parsing is strict: unknown keys and bad values are errors that name the key
//! and the line. Protocols and HTTP handlers are named in the file; building
//! them (and so the [`Config`](super::Config)) is the loader's
//! ([`crate::loader`]), which knows the protocols and handlers that this
//! layer may not import.
//!
//! ```toml
//! max_connections = 20000
//! drain_timeout = "10s"
//! threads = 4
//!
//! [[vhost]]
//! name = "default"
//! listen = ["127.0.0.1:7681"]
//!
//! [vhost.limits]
//! max_message_size = "1MiB"
//! idle_timeout = "60s"
//!
//! [[vhost.mount]]
//! path = "/echo"
//! protocol = "echo"
//!
//! [[vhost.mount]]
//! path = "/healthz"
//! http = "health"
//! ```
//!
//! A vhost served over TLS (feature `tls`) names its files, relative to the
//! configuration file's folder ([`ConfigFile::with_base_dir`]):
//!
//! ```toml
//! [vhost.tls]
//! cert = "certs/a.pem"               # PEM chain, leaf first
//! key = "certs/a.key"                # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! client_ca = "certs/clients.pem"    # optional: mutual TLS
//! client_auth = "required"           # or "optional"; only with client_ca
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::Limits;
use crate::error::ConfigError;

/// The binary's built-in configuration (`src/config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// A parsed configuration file, not yet turned into a
/// [`Config`](super::Config): the loader ([`crate::loader`]) builds it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    text: String,
    pub(crate) raw: RawConfig,
    /// The top-level keys other than `vhost`, as plain TOML values: what
    /// [`context_fingerprint`](Self::context_fingerprint) is computed from.
    context_table: toml::Table,
    /// What relative file names (TLS certificates and keys) are relative to.
    base_dir: Option<PathBuf>,
}

impl ConfigFile {
    /// Parses TOML text.
    ///
    /// # Errors
    ///
    /// Syntax errors, unknown keys and bad values, naming the key and line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        // The typed parse above accepted the text, so this one cannot fail on
        // it; the plain values keep what the typed one normalises away (the
        // spelling of a value), which a fingerprint must not lose.
        let mut context_table: toml::Table =
            toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        context_table.remove("vhost");
        Ok(Self {
            text: text.to_owned(),
            raw,
            context_table,
            base_dir: None,
        })
    }

    /// The binary's built-in configuration ([`DEFAULT_TOML`]).
    pub fn builtin() -> Self {
        // The embedded text is a constant that a unit test parses and builds.
        Self::parse(DEFAULT_TOML).unwrap_or_else(|_| Self {
            text: String::new(),
            raw: RawConfig::default(),
            context_table: toml::Table::new(),
            base_dir: None,
        })
    }

    /// Resolves the file's relative file names (`[vhost.tls]` `cert`, `key`,
    /// `client_ca`) against `dir`: the binary passes the configuration
    /// file's folder. Default: the process's working directory.
    #[must_use = "the changed file is returned"]
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// What relative file names are relative to (see
    /// [`with_base_dir`](Self::with_base_dir)).
    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    /// Replaces the listen addresses of the first vhost (the binary's `--listen`).
    pub fn override_listen(&mut self, addrs: &[SocketAddr]) {
        if let Some(v) = self.raw.vhost.first_mut() {
            let span = v.listen.first().map_or(0..0, Spanned::span);
            v.listen = addrs
                .iter()
                .map(|a| Spanned::new(span.clone(), AddrValue(*a)))
                .collect();
        }
    }

    /// The names of the vhosts, in file order.
    pub fn vhost_names(&self) -> impl Iterator<Item = &str> {
        self.raw.vhost.iter().map(|v| v.name.get_ref().as_str())
    }

    /// The context-wide keys except `drain_timeout` (`max_connections`,
    /// `pumps`, `threads`) as canonical TOML text: a running context cannot change them,
    /// so a reload that sees this text change needs a restart to apply it.
    pub fn context_fingerprint(&self) -> String {
        let mut t = self.context_table.clone();
        t.remove("drain_timeout");
        canonical(&t)
    }

    /// How many service threads the binary runs (`threads`, between 1 and
    /// 1024), if the file says; the binary's `--threads` wins over it.
    /// Default: none (the binary then runs one per CPU available to it).
    pub fn threads(&self) -> Option<usize> {
        self.raw.threads.map(|t| t.0)
    }

    /// How long the binary waits for close handshakes after a signal.
    /// Default: 10 s.
    pub fn drain_timeout(&self) -> Duration {
        self.raw
            .drain_timeout
            .map_or(Duration::from_secs(10), |d| d.0)
    }

    /// The `[broker]` table, if the file has one (none: the in-process
    /// broker without history).
    pub fn broker(&self) -> Option<BrokerSettings> {
        let raw = self.raw.broker.as_ref()?;
        let b = raw.get_ref();
        Some(BrokerSettings {
            kind: b.kind,
            url: b.url.clone(),
            node: b.node.clone(),
            history_size: b.history_size,
            history_ttl: b.history_ttl.map_or(Duration::from_secs(300), |d| d.0),
            heartbeat: b.heartbeat.map_or(Duration::from_secs(5), |d| d.0),
            prefix: b.prefix.clone(),
            line: self.line(&raw.span()),
        })
    }

    /// The index of the first vhost called `name`.
    pub(crate) fn vhost_index(&self, name: &str) -> Option<usize> {
        self.raw.vhost.iter().position(|v| v.name.get_ref() == name)
    }

    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        line_of(&self.text, span.start)
    }

    /// The line of the first `leaf = ...` at or after byte `from`.
    pub(crate) fn find_key_line(&self, leaf: &str, from: usize) -> Option<usize> {
        if leaf.is_empty() {
            return None;
        }
        let mut offset = 0;
        for line in self.text.lines() {
            let start = offset;
            offset += line.len() + 1;
            if start < from {
                continue;
            }
            let t = line.trim_start();
            if t.strip_prefix(leaf)
                .is_some_and(|r| r.trim_start().starts_with('='))
            {
                return Some(line_of(&self.text, start));
            }
        }
        None
    }
}

/// A table as canonical TOML text (keys sorted: `toml::Table` is a
/// `BTreeMap`). Serialising plain values that came from TOML does not fail;
/// should it, the `Debug` form is just as deterministic.
fn canonical(table: &toml::Table) -> String {
    toml::to_string(table).unwrap_or_else(|_| format!("{table:?}"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns a TOML error into a `ConfigError` with the dotted key and the line.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = plain_message(e.message().trim());
    let Some(span) = e.span() else {
        return ConfigError::new("config", message);
    };
    let line_no = line_of(text, span.start);
    let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
    let header = |l: &str| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
    // The table the line belongs to: the last `[...]` header above it.
    let table = text
        .lines()
        .take(line_no)
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .map(header)
        .last();
    let key = if line.starts_with('[') {
        header(line)
    } else {
        let leaf = line
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches('"');
        match table {
            Some(t) if !leaf.is_empty() => format!("{t}.{leaf}"),
            Some(t) => t,
            None => leaf.to_owned(),
        }
    };
    let key = if key.is_empty() {
        "config".to_owned()
    } else {
        key
    };
    ConfigError::new(key, message).at_line(line_no)
}

/// Says serde's type errors in the file's words: `invalid type: string "x",
/// expected usize` becomes `expected a whole number, found "x"`; `a
/// sequence` is a list, a map or struct a table. Other messages pass as they
/// are.
fn plain_message(message: &str) -> String {
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected "))
    else {
        return message.to_owned();
    };
    let expected = match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number"
        }
        "a sequence" => "a list",
        "a boolean" => "true or false",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    // `string "x"` → `"x"`, ``floating point `1.5` `` → `1.5`, `sequence` → `a list`.
    let found = if let Some(value) = found.strip_prefix("string ") {
        value.to_owned()
    } else if let Some((_, value)) = found.split_once('`') {
        value.trim_end_matches('`').to_owned()
    } else {
        match found {
            "sequence" => "a list".to_owned(),
            "map" => "a table".to_owned(),
            other => other.to_owned(),
        }
    };
    format!("expected {expected}, found {found}")
}

/// `memory_budget`, present (a size or `"off"`) or absent.
fn memory_budget<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<usize>>, D::Error> {
    super::limits::de::budget(d).map(Some)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) max_connections: Option<usize>,
    pub(crate) pumps: Option<usize>,
    /// `Some(None)`: `"off"`.
    #[serde(default, deserialize_with = "memory_budget")]
    pub(crate) memory_budget: Option<Option<usize>>,
    pub(crate) drain_timeout: Option<DurationValue>,
    pub(crate) threads: Option<ThreadsValue>,
    pub(crate) broker: Option<Spanned<RawBroker>>,
    #[serde(default)]
    pub(crate) vhost: Vec<RawVhost>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVhost {
    pub(crate) name: Spanned<String>,
    pub(crate) listen: Vec<Spanned<AddrValue>>,
    #[serde(default)]
    pub(crate) hosts: Vec<String>,
    #[serde(default)]
    pub(crate) origins: Vec<String>,
    #[serde(default)]
    pub(crate) limits: Limits,
    /// `[vhost.compression]`: permessage-deflate (absent: off).
    pub(crate) compression: Option<Spanned<RawCompression>>,
    #[serde(default)]
    pub(crate) options: BTreeMap<String, BTreeMap<String, OptionValue>>,
    #[serde(default)]
    pub(crate) mount: Vec<Spanned<RawMount>>,
    pub(crate) tls: Option<Spanned<RawTls>>,
}

/// `[vhost.tls]`: the vhost's certificate files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
    pub(crate) client_ca: Option<Spanned<String>>,
    pub(crate) client_auth: Option<Spanned<ClientAuthValue>>,
}

/// `client_auth`: `"required"` or `"optional"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuthValue {
    Required,
    Optional,
}

impl<'de> Deserialize<'de> for ClientAuthValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "required" => Ok(Self::Required),
            "optional" => Ok(Self::Optional),
            other => Err(de::Error::custom(format!(
                "expected \"required\" or \"optional\", found {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMount {
    pub(crate) path: Spanned<String>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) protocols: Option<Spanned<Vec<String>>>,
    pub(crate) http: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) prefix: bool,
}

/// The `[broker]` table: where topics live.
///
/// ```toml
/// [broker]
/// type = "redis"                    # or "memory" (the default)
/// url = "redis://127.0.0.1:6379/0"  # or unix:///run/redis.sock (redis only)
/// node = "gw-1"                     # this node's name (redis only; default: host name + pid)
/// history_size = 100                # messages kept per topic for recovery (0 = no history)
/// history_ttl = "5m"                # how long after a topic's last publish
/// heartbeat = "5s"                  # a dead node leaves presence after 3 of these (redis only)
/// prefix = "wsgate"                 # of every Redis key and channel (redis only)
/// ```
///
/// The loader builds the broker ([`crate::loader`]); this layer only reads
/// the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerSettings {
    /// `type`. Default: `memory`.
    pub kind: BrokerKind,
    /// `url`: the Redis to use (required for `redis`). Default: none.
    pub url: Option<String>,
    /// `node`: this node's name. Default: the host name and the process id.
    pub node: Option<String>,
    /// `history_size`: messages each topic keeps for recovery, 0 for no
    /// history. Default: 0.
    pub history_size: usize,
    /// `history_ttl`: how long a topic's history lives after its last
    /// publish. Default: 5 minutes.
    pub history_ttl: Duration,
    /// `heartbeat`: how often a node tells Redis it is alive. Default: 5 s.
    pub heartbeat: Duration,
    /// `prefix` of the Redis keys. Default: `wsgate`.
    pub prefix: Option<String>,
    /// The line of the `[broker]` table, for errors.
    pub line: usize,
}

/// `type` of the `[broker]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BrokerKind {
    /// In-process topics ([`MemoryBroker`](crate::pubsub::MemoryBroker)).
    #[default]
    Memory,
    /// Topics shared by every node on the same Redis (feature `redis`).
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    #[serde(rename = "type", default)]
    kind: BrokerKind,
    url: Option<String>,
    node: Option<String>,
    #[serde(default)]
    history_size: usize,
    history_ttl: Option<DurationValue>,
    heartbeat: Option<DurationValue>,
    prefix: Option<String>,
}

/// `[vhost.compression]`, checked by [`Compression`](super::Compression)'s
/// builder when the loader builds the vhost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompression {
    #[serde(default)]
    pub(crate) mode: ModeValue,
    pub(crate) window_bits: Option<u8>,
    pub(crate) mem_level: Option<u8>,
    pub(crate) level: Option<u8>,
    pub(crate) threshold: Option<SizeValue>,
}

/// `"off"`, `"shared"` or `"dedicated"`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ModeValue(pub(crate) super::CompressionMode);

impl<'de> Deserialize<'de> for ModeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use super::CompressionMode as M;
        let s = String::deserialize(d)?;
        [M::Off, M::Shared, M::Dedicated]
            .into_iter()
            .find(|m| m.as_str() == s)
            .map(ModeValue)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown compression mode {s:?} (expected \"off\", \"shared\" or \"dedicated\")"
                ))
            })
    }
}

/// A byte count: a whole number, or a string with a unit (`"64B"`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeValue(pub(crate) usize);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::limits::de::size(d).map(SizeValue)
    }
}

/// A socket address written as a string.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddrValue(pub(crate) SocketAddr);

impl<'de> Deserialize<'de> for AddrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(AddrValue).map_err(|_| {
            de::Error::custom(format!(
                "invalid listen address {s:?}: expected an IP:PORT such as 127.0.0.1:7681 (host names are not resolved in the file)"
            ))
        })
    }
}

/// The binary's number of service threads: an integer from 1 to
/// [`MAX_THREADS`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadsValue(usize);

/// The most service threads a file may ask for; far more than any machine's
/// cores, few enough that a typo cannot exhaust the process.
const MAX_THREADS: usize = 1024;

impl<'de> Deserialize<'de> for ThreadsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d).map_err(|_: D::Error| {
            de::Error::custom(format!("expected a whole number from 1 to {MAX_THREADS}"))
        })?;
        usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_THREADS).contains(n))
            .map(ThreadsValue)
            .ok_or_else(|| de::Error::custom(format!("must be between 1 and {MAX_THREADS}")))
    }
}

/// A duration written with a unit: "250ms", "30s", "5m", "1h".
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::limits::de::duration(d).map(Self)
    }
}

/// A protocol option: strings, numbers and booleans are kept as text; a list
/// of them becomes its items joined with commas (`["a.*", "b"]` is `a.*,b`),
/// so an item must not contain a comma itself.
#[derive(Debug, Clone)]
pub(crate) struct OptionValue(pub(crate) String);

impl OptionValue {
    fn scalar(v: toml::Value) -> Option<String> {
        match v {
            toml::Value::String(s) => Some(s),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str =
            "an option value must be a string, number or boolean, or a list of them";
        match toml::Value::deserialize(d)? {
            toml::Value::Array(items) => {
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    let text = Self::scalar(item).ok_or_else(|| de::Error::custom(EXPECTED))?;
                    if text.contains(',') {
                        return Err(de::Error::custom(format!(
                            "list item {text:?} contains a comma (a list is passed to the protocol as comma-separated text)"
                        )));
                    }
                    list.push(text);
                }
                Ok(Self(list.join(",")))
            }
            v => Self::scalar(v)
                .map(Self)
                .ok_or_else(|| de::Error::custom(EXPECTED)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> ConfigError {
        ConfigFile::parse(text).unwrap_err()
    }

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

    #[test]
    fn vhost_names_in_file_order() {
        let f = ConfigFile::parse(TWO).unwrap();
        assert_eq!(f.vhost_names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn context_fingerprint_leaves_out_vhosts_and_drain_timeout() {
        let f = ConfigFile::parse(TWO).unwrap();
        let g = ConfigFile::parse(&format!(
            "drain_timeout = \"1s\"\n{}",
            TWO.replace("2m", "5m")
        ))
        .unwrap();
        assert_eq!(f.context_fingerprint(), g.context_fingerprint());
        let h = ConfigFile::parse(&format!("max_connections = 5\n{TWO}")).unwrap();
        assert_ne!(f.context_fingerprint(), h.context_fingerprint());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n";
        let e = parse_err(text);
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.key, "vhost.bogus", "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let text = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n[vhost.limits]\nmax_frame_size = \"12XB\"\n";
        let e = parse_err(text);
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.key, "vhost.limits.max_frame_size", "{e}");
    }

    #[test]
    fn bad_address_is_an_error() {
        for addr in ["localhost", "localhost:7681", "7681"] {
            let text = format!("[[vhost]]\nname = \"a\"\nlisten = [\"{addr}\"]\n");
            let e = parse_err(&text);
            assert_eq!(e.line, Some(3), "{e}");
            assert_eq!(e.key, "vhost.listen", "{e}");
            assert!(
                e.reason
                    .contains("expected an IP:PORT such as 127.0.0.1:7681"),
                "{e}"
            );
        }
    }

    /// serde's type names (usize, sequence, struct ...) become the file's
    /// words, and every message keeps its key and line.
    #[test]
    fn type_errors_are_in_plain_words() {
        let vhost = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n";
        for (text, key, line, reason) in [
            (
                format!("max_connections = \"x\"\n{vhost}"),
                "max_connections",
                1,
                "expected a whole number, found \"x\"",
            ),
            (
                format!("max_connections = -1\n{vhost}"),
                "max_connections",
                1,
                "expected a whole number, found -1",
            ),
            (
                format!("{vhost}[vhost.limits]\nmax_headers = 1.5\n"),
                "vhost.limits.max_headers",
                5,
                "expected a whole number, found 1.5",
            ),
            (
                "[[vhost]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n".to_owned(),
                "vhost.listen",
                3,
                "expected a list, found \"127.0.0.1:0\"",
            ),
            (
                format!("{vhost}hosts = \"example.com\"\n"),
                "vhost.hosts",
                4,
                "expected a list, found \"example.com\"",
            ),
            (
                format!("{vhost}limits = 3\n"),
                "vhost.limits",
                4,
                "expected a table, found 3",
            ),
            (
                format!(
                    "{vhost}[[vhost.mount]]\npath = \"/\"\nhttp = \"health\"\nprefix = \"yes\"\n"
                ),
                "vhost.mount.prefix",
                7,
                "expected true or false, found \"yes\"",
            ),
        ] {
            let e = parse_err(&text);
            assert_eq!((e.key.as_str(), e.line), (key, Some(line)), "{e}");
            assert_eq!(e.reason, reason, "{e}");
        }
    }

    #[test]
    fn threads_is_optional_and_checked_with_its_line() {
        let vhost = "[[vhost]]\nname = \"a\"\nlisten = [\"127.0.0.1:0\"]\n";
        assert_eq!(ConfigFile::parse(vhost).unwrap().threads(), None);
        let four = ConfigFile::parse(&format!("threads = 4\n{vhost}")).unwrap();
        assert_eq!(four.threads(), Some(4));
        assert_ne!(
            four.context_fingerprint(),
            ConfigFile::parse(vhost).unwrap().context_fingerprint(),
            "threads only changes on restart"
        );
        for bad in ["0", "-1", "1025", "\"4\"", "2.5"] {
            let e = ConfigFile::parse(&format!("max_connections = 10\nthreads = {bad}\n{vhost}"))
                .unwrap_err();
            assert_eq!(e.key, "threads", "{bad}: {e}");
            assert_eq!(e.line, Some(2), "{bad}: {e}");
            assert!(e.to_string().starts_with("line 2: threads: "), "{bad}: {e}");
        }
        let e = ConfigFile::parse(&format!("threads = 0\n{vhost}")).unwrap_err();
        assert!(e.reason.contains("between 1 and 1024"), "{e}");
    }
}
