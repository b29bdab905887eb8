//! [`Limits`], declared once: each bound's name, type, default, doc and
//! range is one entry of the table below, from which the struct, its
//! `Default`, its setters, its validation and (feature `toml-config`) its
//! TOML form are all generated. The rules that tie two limits together are
//! [`cross_field`], beside it.

use std::time::Duration;

use crate::CloseCode;
use crate::error::ConfigError;

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

/// A default as an entry of the table writes it: a number, a number of
/// KiB or MiB, a number of seconds, or any expression with the text its doc
/// shows.
macro_rules! default_value {
    ($n:literal KiB) => {
        $n * 1024
    };
    ($n:literal MiB) => {
        $n << 20
    };
    ($n:literal s) => {
        Duration::from_secs($n)
    };
    ($n:literal) => {
        $n
    };
    ($e:expr, $shown:literal) => {
        $e
    };
}

/// The last line of a field's doc: the same default, in words.
macro_rules! default_doc {
    ($n:literal $unit:ident) => {
        concat!(" Default: ", $n, " ", stringify!($unit), ".")
    };
    ($n:literal) => {
        concat!(" Default: ", $n, ".")
    };
    ($e:expr, $shown:literal) => {
        concat!(" Default: ", $shown, ".")
    };
}

/// One entry per limit:
///
/// ```text
/// /// Doc (the "Default: ..." line is added from the default).
/// name: type = [default], toml "deserializer", check [rule, ...];
/// ```
///
/// The deserializer is a function of the `de` module (the TOML form of the
/// value); each rule is a `Fn(&type) -> Result<(), String>` whose error is
/// the reason given for key `...limits.name`, checked in order.
macro_rules! limits {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $ty:ty = [$($default:tt)+], toml $de:literal, check [$($rule:expr),* $(,)?];
    )*) => {
        /// Bounds on everything a peer can make a vhost spend.
        ///
        /// Set fields with the by-value setters;
        /// [`VhostBuilder::build`](crate::VhostBuilder::build) validates them.
        /// In a configuration file they are the `[vhost.limits]` table, with
        /// sizes as a number of bytes or a string with a unit (`"64KiB"`),
        /// durations as a string with a unit (`"30s"`), and the overflow
        /// policy as `"reject"`, `"close-1008"`, `"close-1013"`,
        /// `"drop-newest"` or `"drop-oldest"`.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(
            feature = "toml-config",
            derive(serde::Deserialize),
            serde(default, deny_unknown_fields)
        )]
        #[non_exhaustive]
        pub struct Limits {
            $(
                $(#[doc = $doc])*
                #[doc = default_doc!($($default)+)]
                #[cfg_attr(feature = "toml-config", serde(deserialize_with = $de))]
                pub $name: $ty,
            )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Self {
                    $($name: default_value!($($default)+),)*
                }
            }
        }

        impl Limits {
            $(
                #[doc = concat!("Sets [`Limits::", stringify!($name), "`].")]
                #[must_use = "setters return the changed value"]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*

            /// Checks every field, then the rules between fields; `prefix`
            /// names the table in errors.
            pub(crate) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
                $($(
                    ($rule)(&self.$name).map_err(|reason| {
                        ConfigError::new(format!("{prefix}.{}", stringify!($name)), reason)
                    })?;
                )*)*
                cross_field(self, prefix)
            }
        }
    };
}

limits! {
    /// Largest request head (request line plus headers) in bytes.
    max_head_bytes: usize = [8192], toml "de::size", check [at_least(1), between(64, 1 << 20)];
    /// Most request headers.
    max_headers: usize = [64], toml "de::count", check [at_least(1), at_most(1024)];
    /// Time from accept to a complete request head (and between keep-alive
    /// requests).
    handshake_timeout: Duration = [10 s], toml "de::duration", check [up_to_a_day];
    /// Largest WebSocket frame payload. At most `max_message_size`.
    max_frame_size: usize = [1 MiB], toml "de::size", check [at_least(1)];
    /// Largest reassembled WebSocket message.
    max_message_size: usize = [1 MiB], toml "de::size", check [at_least(1)];
    /// Bytes of queued outbound messages per session.
    max_queue_bytes: usize = [1 MiB], toml "de::size", check [at_least(1)];
    /// Queued outbound messages per session.
    max_queue_messages: usize = [4096], toml "de::count", check [at_least(1)];
    /// Topics one session may subscribe to.
    max_subscriptions: usize = [64], toml "de::count", check [];
    /// What a full queue does to a non-waiting send.
    overflow: OverflowPolicy = [OverflowPolicy::Close(CloseCode::Policy), "`Close(1008)`"],
        toml "de::overflow", check [close_code_1008_or_1013];
    /// Open WebSocket sessions on this vhost; more are answered 503.
    max_sessions: usize = [50000], toml "de::count", check [at_least(1)];
    /// Open WebSocket sessions on this vhost from one IP address; more are
    /// answered 429. The default leaves room for offices behind one NAT
    /// address and for local load tests, while one address still cannot take
    /// the whole vhost.
    max_sessions_per_ip: usize = [16384], toml "de::count", check [at_least(1)];
    /// Silence from the peer after which the server sends a ping.
    ping_interval: Duration = [30 s], toml "de::duration", check [up_to_a_day];
    /// Silence from the peer after which the session is closed (1001). Must
    /// exceed `ping_interval`.
    idle_timeout: Duration = [60 s], toml "de::duration", check [up_to_a_day];
    /// Time the peer has to answer our Close before TCP is closed.
    close_timeout: Duration = [5 s], toml "de::duration", check [up_to_a_day];
    /// The most one read call takes. Reads go into one buffer per thread
    /// (64 KiB, which also caps this); a session keeps only the bytes of an
    /// incomplete frame, and nothing between messages.
    read_buffer_size: usize = [64 KiB], toml "de::size", check [at_least(1), at_most(1 << 20)];
    /// Outbound bytes a session gathers into one write.
    write_buffer_size: usize = [4096], toml "de::size", check [at_most(1 << 24)];
}

/// The rules that tie two limits together.
fn cross_field(limits: &Limits, prefix: &str) -> Result<(), ConfigError> {
    if limits.max_frame_size > limits.max_message_size {
        return Err(ConfigError::new(
            format!("{prefix}.max_frame_size"),
            "must not exceed max_message_size",
        ));
    }
    if limits.idle_timeout <= limits.ping_interval {
        return Err(ConfigError::new(
            format!("{prefix}.idle_timeout"),
            "must be longer than ping_interval",
        ));
    }
    Ok(())
}

// The rules of the table.

fn at_least(min: usize) -> impl Fn(&usize) -> Result<(), String> {
    move |&n| {
        (n >= min)
            .then_some(())
            .ok_or_else(|| format!("must be at least {min}"))
    }
}

fn at_most(max: usize) -> impl Fn(&usize) -> Result<(), String> {
    move |&n| {
        (n <= max)
            .then_some(())
            .ok_or_else(|| format!("must be at most {max}"))
    }
}

fn between(min: usize, max: usize) -> impl Fn(&usize) -> Result<(), String> {
    move |n| {
        (min..=max)
            .contains(n)
            .then_some(())
            .ok_or_else(|| format!("must be between {min} and {max}"))
    }
}

fn up_to_a_day(d: &Duration) -> Result<(), String> {
    if d.is_zero() || *d > Duration::from_secs(86_400) {
        return Err("must be between 1 ms and 24 h".to_owned());
    }
    Ok(())
}

fn close_code_1008_or_1013(policy: &OverflowPolicy) -> Result<(), String> {
    match policy {
        OverflowPolicy::Close(code) if !matches!(code, CloseCode::Policy | CloseCode::Again) => {
            Err("close code must be 1008 or 1013".to_owned())
        }
        _ => Ok(()),
    }
}

/// The overflow policies by their names in a configuration file.
#[cfg(feature = "toml-config")]
const OVERFLOW_NAMES: [(&str, OverflowPolicy); 5] = [
    ("reject", OverflowPolicy::Reject),
    ("close-1008", OverflowPolicy::Close(CloseCode::Policy)),
    ("close-1013", OverflowPolicy::Close(CloseCode::Again)),
    ("drop-newest", OverflowPolicy::DropNewest),
    ("drop-oldest", OverflowPolicy::DropOldest),
];

/// Parses a byte count: digits with an optional unit (B, KiB, MiB, GiB; K,
/// KB, M, MB, G and GB mean the same).
#[cfg(feature = "toml-config")]
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses a duration with a unit: "250ms", "30s", "5m", "1h".
#[cfg(feature = "toml-config")]
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// The TOML forms of the values of the table, one deserializer per kind.
/// Their errors are in the file's words; serde's own ones (a count that is
/// not a whole number) are put in the file's words by the loader.
#[cfg(feature = "toml-config")]
pub(crate) mod de {
    use std::time::Duration;

    use serde::de::{Deserialize, Deserializer, Error};

    use super::{OVERFLOW_NAMES, OverflowPolicy, parse_duration, parse_size};

    /// A count: a whole number.
    pub(crate) fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        usize::deserialize(d)
    }

    /// A byte count: a whole number, or a string with a unit (`"64KiB"`).
    pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => {
                usize::try_from(n).map_err(|_| D::Error::custom("a size must not be negative"))
            }
            Raw::Str(s) => parse_size(&s).ok_or_else(|| {
                D::Error::custom(format!(
                    "invalid size {s:?} (expected bytes, or a number with B, KiB, MiB or GiB)"
                ))
            }),
        }
    }

    /// A memory budget: a size, or `"off"` (`None`).
    pub(crate) fn budget<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Str(s) if s.trim() == "off" => Ok(None),
            Raw::Int(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom("a size must not be negative")),
            Raw::Str(s) => parse_size(&s).map(Some).ok_or_else(|| {
                D::Error::custom(format!(
                    "invalid memory budget {s:?} (expected bytes, a number with B, KiB, MiB or GiB, or \"off\")"
                ))
            }),
        }
    }

    /// A duration: a string with a unit (`"500ms"`, `"30s"`, `"5m"`, `"1h"`).
    pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d).map_err(|_: D::Error| {
            D::Error::custom(
                "a duration is a string with a unit, such as \"500ms\", \"30s\" or \"5m\"",
            )
        })?;
        parse_duration(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid duration {s:?} (expected a number with ms, s, m or h)"
            ))
        })
    }

    /// An overflow policy by name (`"close-1008"`).
    pub(crate) fn overflow<'de, D: Deserializer<'de>>(d: D) -> Result<OverflowPolicy, D::Error> {
        let s = String::deserialize(d)?;
        OVERFLOW_NAMES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, policy)| policy)
            .ok_or_else(|| {
                let mut expected = String::new();
                for (i, (name, _)) in OVERFLOW_NAMES.iter().enumerate() {
                    if i > 0 {
                        let last = i + 1 == OVERFLOW_NAMES.len();
                        expected.push_str(if last { " or " } else { ", " });
                    }
                    expected.push_str(&format!("{name:?}"));
                }
                D::Error::custom(format!(
                    "invalid overflow policy {s:?} (expected {expected})"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate("limits").unwrap();
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let l = Limits::default();
        assert_eq!(l.max_head_bytes, 8192);
        assert_eq!(l.max_frame_size, 1 << 20);
        assert_eq!(l.read_buffer_size, 64 * 1024);
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.overflow, OverflowPolicy::Close(CloseCode::Policy));
    }

    #[test]
    fn each_rule_names_its_field() {
        for (limits, key, reason) in [
            (
                Limits::default().max_head_bytes(0),
                "max_head_bytes",
                "must be at least 1",
            ),
            (
                Limits::default().max_head_bytes(63),
                "max_head_bytes",
                "must be between 64 and 1048576",
            ),
            (
                Limits::default().max_headers(1025),
                "max_headers",
                "must be at most 1024",
            ),
            (
                Limits::default().close_timeout(Duration::ZERO),
                "close_timeout",
                "must be between 1 ms and 24 h",
            ),
            (
                Limits::default().overflow(OverflowPolicy::Close(CloseCode::Normal)),
                "overflow",
                "close code must be 1008 or 1013",
            ),
            (
                Limits::default().write_buffer_size(1 << 25),
                "write_buffer_size",
                "must be at most 16777216",
            ),
            (
                Limits::default().max_frame_size(2 << 20),
                "max_frame_size",
                "must not exceed max_message_size",
            ),
            (
                Limits::default().ping_interval(Duration::from_secs(60)),
                "idle_timeout",
                "must be longer than ping_interval",
            ),
        ] {
            let e = limits.validate("l").unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.reason.as_str()),
                (format!("l.{key}").as_str(), reason)
            );
        }
    }

    #[cfg(feature = "toml-config")]
    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1XB"), None);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), None);
    }

    #[cfg(feature = "toml-config")]
    #[test]
    fn a_table_fills_in_what_it_leaves_out_from_the_defaults() {
        let l: Limits = toml::from_str(
            "max_frame_size = \"64KiB\"\nmax_headers = 10\nidle_timeout = \"2m\"\noverflow = \"drop-oldest\"\n",
        )
        .unwrap();
        assert_eq!(
            l,
            Limits::default()
                .max_frame_size(64 << 10)
                .max_headers(10)
                .idle_timeout(Duration::from_secs(120))
                .overflow(OverflowPolicy::DropOldest)
        );
        let e = toml::from_str::<Limits>("overflow = \"close\"\n").unwrap_err();
        assert!(
            e.message().contains(
                "(expected \"reject\", \"close-1008\", \"close-1013\", \"drop-newest\" or \"drop-oldest\")"
            ),
            "{e}"
        );
        assert!(toml::from_str::<Limits>("bogus = 1\n").is_err());
    }
}
