//! `pubsub`: topics through JSON control messages (the formats are in
//! [`Pubsub`]'s documentation).

use std::fmt;

use futures_lite::future;
use serde::Serialize;
use serde_json::Value;

use crate::Options;
use crate::pubsub::{MAX_EPOCH_BYTES, Position, Recovery, Stamp, SubscribeRequest};
use crate::{Message, Protocol, Reject, Request, SessionHandle};

/// Topics for browsers and other clients, through JSON control messages:
///
/// ```text
/// client → server                                   server → client
/// {"op":"subscribe","topic":"t"}                    {"op":"subscribed","topic":"t"}
/// {"op":"unsubscribe","topic":"t"}                  {"op":"unsubscribed","topic":"t"}
/// {"op":"publish","topic":"t","data":<any JSON>}    to every subscriber of t:
///                                                   {"op":"message","topic":"t","data":<the same JSON>}
/// {"op":"presence","topic":"t"}                     {"op":"presence","topic":"t","count":2,"sessions":[4,9]}
/// anything wrong                                    {"op":"error","reason":"..."}
/// ```
///
/// Subscribing twice to a topic is acknowledged twice and counts once; the
/// `sessions` of a presence answer are [`SessionId`](crate::SessionId)
/// numbers, in subscription order, of this node's subscribers; `count`
/// counts every node's (a cluster broker), and `"partial":true` says that
/// the other nodes could not be asked.
///
/// # History and recovery
///
/// When the context's broker keeps history
/// ([`MemoryBroker::with_history`](crate::pubsub::MemoryBroker::with_history),
/// the Redis broker's `history_size`), every message carries its position
/// in the topic, and acknowledgements carry the topic's newest one:
///
/// ```text
/// {"op":"message","topic":"t","data":…,"offset":17,"epoch":"9f2c…"}
/// {"op":"subscribed","topic":"t","offset":17,"epoch":"9f2c…"}
/// ```
///
/// A client that reconnects names the last position it saw:
///
/// ```text
/// {"op":"subscribe","topic":"t","since":{"offset":17,"epoch":"9f2c…"}}
/// ```
///
/// and gets `{"op":"subscribed",…,"recovered":true}` followed by the
/// messages it missed, in order, then the live ones, with no gap and no
/// duplicate; or `"recovered":false` (and nothing replayed) when the
/// history no longer reaches back that far or the epoch changed: the
/// client must then resync from its source. The replayed messages go
/// through the session's queue like any others (at most the history's
/// size; the vhost's overflow policy applies).
///
/// A publish is serialized once, as `{"op":"message","topic":…,"data":…}`,
/// and fanned out through the context's topics: every subscriber's queue
/// holds the same payload, and a subscriber with a full queue is handled by
/// its vhost's [`OverflowPolicy`](crate::OverflowPolicy) without slowing the
/// publisher or the others. Topics are the context's, so they are shared with
/// [`ContextHandle::publish`](crate::ContextHandle::publish) and
/// [`SessionHandle::subscribe`]: a server-side publish reaches `pubsub`
/// clients too.
///
/// A topic name is 1 to 128 bytes without control characters. Mistakes
/// (bad JSON, an unknown op, a missing or refused topic, too many
/// subscriptions, a refused publish, a binary message) are answered with
/// `{"op":"error","reason":…}` and the session stays open.
///
/// Options (`[vhost.options.pubsub]`):
///
/// - `topics`: the topics clients may subscribe to, publish to and ask the
///   presence of, as comma-separated patterns: a name, or a prefix ending in
///   `*` (`chat.*`); `*` alone allows every topic. Default: `*`.
/// - `max_subscriptions`: topics one session may subscribe to, from 0 to
///   1000000; never more than the vhost's
///   [`Limits::max_subscriptions`](crate::Limits::max_subscriptions).
///   Default: the vhost's limit.
/// - `allow_publish`: whether clients may publish. Default: `true`.
///
/// # Examples
///
/// ```
/// use wsgate::{Mount, Options, VhostConfig, protocols::Pubsub};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let options = Options::from([
///     ("topics".to_owned(), "chat.*, news".to_owned()),
///     ("allow_publish".to_owned(), "false".to_owned()),
/// ]);
/// let pubsub = Pubsub::from_options(&options)?;
/// assert!(pubsub.allows("chat.lobby") && !pubsub.allows("admin"));
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:0".parse()?)
///     .protocol_with_options(pubsub, options)
///     .mount(Mount::websocket("/pubsub", ["pubsub"]))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Pubsub {
    patterns: Vec<Pattern>,
    max_subscriptions: Option<usize>,
    allow_publish: bool,
}

/// Longest topic name, in bytes.
const MAX_TOPIC_BYTES: usize = 128;

/// The range of `max_subscriptions`.
const MAX_SUBSCRIPTIONS: std::ops::RangeInclusive<usize> = 0..=1_000_000;

/// One allowed-topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every topic.
    Any,
    /// `prefix*`: topics starting with the prefix.
    Prefix(String),
    /// A topic name.
    Exact(String),
}

/// The `op` of a client's request.
#[derive(Debug, Clone, Copy)]
enum Op {
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
}

/// A valid request from a client.
#[derive(Debug, PartialEq)]
enum Command {
    Subscribe(String, Option<Position>),
    Unsubscribe(String),
    Publish(String, Value),
    Presence(String),
}

/// What the server sends, tagged with `op`.
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Reply<'a> {
    Subscribed {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Unsubscribed {
        topic: &'a str,
    },
    Message {
        topic: &'a str,
        data: &'a Value,
    },
    Presence {
        topic: &'a str,
        count: usize,
        sessions: Vec<u64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
    },
    Error {
        reason: &'a str,
    },
}

impl Pubsub {
    /// Builds the protocol from its options (see the type's documentation).
    ///
    /// # Errors
    ///
    /// A message naming the option, for an unknown option, a pattern with a
    /// `*` anywhere but at its end, an empty or otherwise invalid pattern,
    /// a `max_subscriptions` out of range, or an `allow_publish` that is
    /// not `true` or `false`.
    pub fn from_options(options: &Options) -> Result<Self, String> {
        super::check_known(options, &["topics", "max_subscriptions", "allow_publish"])?;
        let patterns = match options.get("topics") {
            Some(list) => parse_patterns(list).map_err(|e| format!("topics: {e}"))?,
            None => vec![Pattern::Any],
        };
        let max_subscriptions = match options.get("max_subscriptions") {
            Some(_) => Some(super::number_option(
                options,
                "max_subscriptions",
                0,
                MAX_SUBSCRIPTIONS,
            )?),
            None => None,
        };
        Ok(Self {
            patterns,
            max_subscriptions,
            allow_publish: super::bool_option(options, "allow_publish", true)?,
        })
    }

    /// Whether clients may use `topic` (a valid name that some pattern of
    /// the `topics` option matches).
    pub fn allows(&self, topic: &str) -> bool {
        check_topic(topic).is_ok() && self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Whether clients may publish.
    pub fn allows_publish(&self) -> bool {
        self.allow_publish
    }

    /// Turns a client's text into a command that may be carried out, or the
    /// reason to refuse it. Pure: no session, no context.
    fn parse(&self, text: &str) -> Result<Command, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let Value::Object(mut fields) = value else {
            return Err("expected a JSON object".to_owned());
        };
        let op = match fields.get("op") {
            Some(Value::String(op)) => match op.as_str() {
                "subscribe" => Op::Subscribe,
                "unsubscribe" => Op::Unsubscribe,
                "publish" => Op::Publish,
                "presence" => Op::Presence,
                _ => return Err(format!("unknown op {op:?}")),
            },
            Some(_) => return Err("op must be a string".to_owned()),
            None => return Err("missing op".to_owned()),
        };
        let topic = match fields.get_mut("topic").map(Value::take) {
            Some(Value::String(t)) => t,
            Some(_) => return Err("topic must be a string".to_owned()),
            None => return Err("missing topic".to_owned()),
        };
        check_topic(&topic)?;
        let allowed = || {
            if self.patterns.iter().any(|p| p.matches(&topic)) {
                Ok(())
            } else {
                Err(format!("topic {topic:?} is not allowed"))
            }
        };
        match op {
            Op::Subscribe => {
                allowed()?;
                let since = match fields.remove("since") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(parse_since(v)?),
                };
                Ok(Command::Subscribe(topic, since))
            }
            // Leaving is always allowed, also a topic that the server
            // subscribed the session to.
            Op::Unsubscribe => Ok(Command::Unsubscribe(topic)),
            Op::Presence => allowed().map(|()| Command::Presence(topic)),
            Op::Publish => {
                if !self.allow_publish {
                    return Err("publishing is not allowed".to_owned());
                }
                allowed()?;
                match fields.remove("data") {
                    Some(data) => Ok(Command::Publish(topic, data)),
                    None => Err("missing data".to_owned()),
                }
            }
        }
    }

    /// Carries out a valid command for `session`.
    fn run(&self, command: Command, session: &SessionHandle) {
        match command {
            Command::Subscribe(topic, since) => {
                let limit = session.vhost().limits().max_subscriptions;
                let max = self.max_subscriptions.map_or(limit, |m| m.min(limit));
                let mine = session.subscriptions();
                if !mine.contains(&topic) && mine.len() >= max {
                    return error(session, &format!("too many subscriptions (at most {max})"));
                }
                let asked = since.is_some();
                let name = topic.clone();
                // The broker queues the acknowledgement once the
                // subscription is in effect, before what it recovers.
                let mut request = SubscribeRequest::new().acknowledge(move |r: &Recovery| {
                    to_json(&Reply::Subscribed {
                        topic: &name,
                        recovered: asked.then_some(r.recovered),
                        offset: r.position.as_ref().map(|p| p.offset),
                        epoch: r.position.as_ref().map(|p| p.epoch.as_str()),
                    })
                    .map(Message::text)
                });
                if let Some(since) = since {
                    request = request.since(since);
                }
                if let Err(e) = session.subscribe_with(&topic, request) {
                    error(session, &e.to_string());
                }
            }
            Command::Unsubscribe(topic) => {
                if session.unsubscribe(&topic) {
                    reply(session, &Reply::Unsubscribed { topic: &topic });
                } else {
                    error(session, &format!("not subscribed to {topic:?}"));
                }
            }
            Command::Publish(topic, data) => {
                let Some(ctx) = session.vhost().context_handle() else {
                    return error(session, "shutting down");
                };
                let Some(text) = to_json(&Reply::Message {
                    topic: &topic,
                    data: &data,
                }) else {
                    return;
                };
                // Serialized once above, and shared by every subscriber's
                // queue; on a topic with history the broker writes the
                // position in.
                if ctx
                    .publish_stamped(&topic, Message::text(text), Stamp::Json)
                    .is_err()
                {
                    error(session, "shutting down");
                }
            }
            Command::Presence(topic) => {
                let Some(ctx) = session.vhost().context_handle() else {
                    return error(session, "shutting down");
                };
                let me = session.clone();
                let mut answer = Box::pin(async move {
                    let Ok(presence) = ctx.cluster_presence(&topic).await else {
                        return error(&me, "shutting down");
                    };
                    reply(
                        &me,
                        &Reply::Presence {
                            topic: &topic,
                            count: presence.count,
                            sessions: presence.sessions.iter().map(|s| s.get()).collect(),
                            partial: presence.partial,
                        },
                    );
                });
                // The in-process broker answers at once (in order with the
                // session's other replies); a cluster broker asks the other
                // nodes, and the answer comes from a task of the session's,
                // never blocking the loop. One poll does not block.
                if future::block_on(future::poll_once(&mut answer)).is_none()
                    && session.spawn(answer).is_err()
                {
                    error(session, "shutting down");
                }
            }
        }
    }
}

impl Default for Pubsub {
    /// Every topic allowed, the vhost's subscription limit, publishing allowed.
    fn default() -> Self {
        Self {
            patterns: vec![Pattern::Any],
            max_subscriptions: None,
            allow_publish: true,
        }
    }
}

impl Protocol for Pubsub {
    type State = ();

    fn name(&self) -> &str {
        "pubsub"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        let Message::Text(text) = &message else {
            return error(session, "binary messages are not supported; send JSON text");
        };
        match self.parse(text.as_str()) {
            Ok(command) => self.run(command, session),
            Err(reason) => error(session, &reason),
        }
    }
}

impl fmt::Debug for Pubsub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pubsub")
            .field("topics", &self.patterns)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("allow_publish", &self.allow_publish)
            .finish()
    }
}

impl Pattern {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => topic.starts_with(p.as_str()),
            Self::Exact(t) => topic == t,
        }
    }
}

/// A topic name is 1 to 128 bytes without control characters.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "invalid topic: must be 1 to {MAX_TOPIC_BYTES} bytes"
        ));
    }
    if topic.chars().any(char::is_control) {
        return Err("invalid topic: contains a control character".to_owned());
    }
    Ok(())
}

/// Parses the `topics` option: comma-separated names or `prefix*` patterns.
fn parse_patterns(list: &str) -> Result<Vec<Pattern>, String> {
    list.split(',').map(str::trim).map(parse_pattern).collect()
}

fn parse_pattern(p: &str) -> Result<Pattern, String> {
    if p.is_empty() {
        return Err("empty pattern (a stray comma?)".to_owned());
    }
    let (name, wildcard) = match p.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (p, false),
    };
    if name.contains('*') {
        return Err(format!("pattern {p:?}: `*` may only end a pattern"));
    }
    if wildcard && name.is_empty() {
        return Ok(Pattern::Any);
    }
    check_topic(name).map_err(|e| format!("pattern {p:?}: {e}"))?;
    Ok(if wildcard {
        Pattern::Prefix(name.to_owned())
    } else {
        Pattern::Exact(name.to_owned())
    })
}

/// A `since` position: `{"offset": <whole number>, "epoch": <string>}`.
fn parse_since(value: Value) -> Result<Position, String> {
    let bad = || "since must be {\"offset\": <whole number>, \"epoch\": <string>}".to_owned();
    let Value::Object(fields) = value else {
        return Err(bad());
    };
    let offset = fields
        .get("offset")
        .and_then(Value::as_u64)
        .ok_or_else(bad)?;
    let epoch = fields
        .get("epoch")
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    if epoch.len() > MAX_EPOCH_BYTES {
        return Err(format!("since: epoch longer than {MAX_EPOCH_BYTES} bytes"));
    }
    if fields.len() > 2 {
        return Err(bad());
    }
    Ok(Position::new(offset, epoch))
}

fn to_json(reply: &Reply<'_>) -> Option<String> {
    // Serializing these types cannot fail: every map key is a string and
    // nothing is written to I/O. Should it ever, the reply is skipped.
    serde_json::to_string(reply).ok()
}

fn reply(session: &SessionHandle, reply: &Reply<'_>) {
    if let Some(text) = to_json(reply) {
        // A full queue is the overflow policy's business; a closing session
        // needs no answer.
        let _ = session.try_send(Message::text(text));
    }
}

fn error(session: &SessionHandle, reason: &str) {
    reply(session, &Reply::Error { reason });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubsub(pairs: &[(&str, &str)]) -> Result<Pubsub, String> {
        let options: Options = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Pubsub::from_options(&options)
    }

    #[test]
    fn patterns_allow_exact_names_and_prefixes() {
        let p = pubsub(&[("topics", "chat.*, news ,x")]).unwrap();
        assert!(p.allows("chat.lobby"));
        assert!(p.allows("chat."));
        assert!(p.allows("news"));
        assert!(p.allows("x"));
        assert!(!p.allows("newsy"));
        assert!(!p.allows("chat"));
        assert!(!p.allows("admin"));
        let any = pubsub(&[]).unwrap();
        assert!(any.allows("anything at all"));
        assert!(!any.allows(""));
        assert!(!any.allows(&"t".repeat(129)));
        assert!(any.allows(&"t".repeat(128)));
        assert!(!any.allows("tab\there"));
    }

    #[test]
    fn bad_options_name_the_option() {
        for (key, value) in [
            ("topics", "a*b"),
            ("topics", "a,,b"),
            ("topics", "**"),
            ("topics", ""),
            ("max_subscriptions", "-1"),
            ("max_subscriptions", "lots"),
            ("allow_publish", "no"),
        ] {
            let err = pubsub(&[(key, value)]).unwrap_err();
            assert!(
                err.starts_with(&format!("{key}: ")),
                "{key}={value:?}: {err}"
            );
        }
        assert!(
            pubsub(&[("topic", "*")])
                .unwrap_err()
                .contains("unknown option")
        );
    }

    #[test]
    fn commands_are_parsed_and_checked() {
        let p = pubsub(&[("topics", "chat.*")]).unwrap();
        assert_eq!(
            p.parse(r#"{"op":"subscribe","topic":"chat.a"}"#),
            Ok(Command::Subscribe("chat.a".into(), None))
        );
        assert_eq!(
            p.parse(r#"{"op":"subscribe","topic":"chat.a","since":{"offset":17,"epoch":"e"}}"#),
            Ok(Command::Subscribe(
                "chat.a".into(),
                Some(Position::new(17, "e"))
            ))
        );
        for since in [
            r#"7"#,
            r#"{"offset":-1,"epoch":"e"}"#,
            r#"{"offset":1}"#,
            r#"{"offset":1,"epoch":2}"#,
            r#"{"offset":1,"epoch":"e","x":0}"#,
        ] {
            let text = format!(r#"{{"op":"subscribe","topic":"chat.a","since":{since}}}"#);
            assert!(p.parse(&text).unwrap_err().starts_with("since"), "{since}");
        }
        let long = format!(
            r#"{{"op":"subscribe","topic":"chat.a","since":{{"offset":1,"epoch":"{}"}}}}"#,
            "e".repeat(65)
        );
        assert!(p.parse(&long).unwrap_err().contains("longer than 64"));
        assert_eq!(
            p.parse(r#"{"op":"publish","topic":"chat.a","data":{"n":[1,null]}}"#),
            Ok(Command::Publish(
                "chat.a".into(),
                serde_json::json!({"n": [1, null]})
            ))
        );
        assert_eq!(
            p.parse(r#"{"op":"publish","topic":"chat.a","data":null}"#),
            Ok(Command::Publish("chat.a".into(), Value::Null))
        );
        assert_eq!(
            p.parse(r#"{"op":"unsubscribe","topic":"elsewhere"}"#),
            Ok(Command::Unsubscribe("elsewhere".into()))
        );
        let refused = |text: &str| p.parse(text).unwrap_err();
        assert!(refused("{").starts_with("invalid JSON"));
        assert_eq!(refused("[1]"), "expected a JSON object");
        assert_eq!(refused(r#"{"topic":"chat.a"}"#), "missing op");
        assert_eq!(
            refused(r#"{"op":"shout","topic":"chat.a"}"#),
            r#"unknown op "shout""#
        );
        assert_eq!(refused(r#"{"op":"shout"}"#), r#"unknown op "shout""#);
        assert_eq!(refused(r#"{"op":"subscribe"}"#), "missing topic");
        assert_eq!(
            refused(r#"{"op":"subscribe","topic":7}"#),
            "topic must be a string"
        );
        assert_eq!(
            refused(r#"{"op":"subscribe","topic":"admin"}"#),
            r#"topic "admin" is not allowed"#
        );
        assert!(refused(r#"{"op":"subscribe","topic":""}"#).starts_with("invalid topic"));
        assert!(refused(r#"{"op":"presence","topic":"chat.\u0007"}"#).starts_with("invalid topic"));
        assert_eq!(
            refused(r#"{"op":"publish","topic":"chat.a"}"#),
            "missing data"
        );
        let readonly = pubsub(&[("allow_publish", "false")]).unwrap();
        assert_eq!(
            readonly
                .parse(r#"{"op":"publish","topic":"t","data":1}"#)
                .unwrap_err(),
            "publishing is not allowed"
        );
    }

    #[test]
    fn replies_are_tagged_with_op() {
        let data = serde_json::json!({"a": 1});
        assert_eq!(
            to_json(&Reply::Message {
                topic: "t",
                data: &data
            })
            .unwrap(),
            r#"{"op":"message","topic":"t","data":{"a":1}}"#
        );
        assert_eq!(
            to_json(&Reply::Presence {
                topic: "t",
                count: 2,
                sessions: vec![4, 9],
                partial: false,
            })
            .unwrap(),
            r#"{"op":"presence","topic":"t","count":2,"sessions":[4,9]}"#
        );
        assert_eq!(
            to_json(&Reply::Subscribed {
                topic: "t",
                recovered: Some(true),
                offset: Some(17),
                epoch: Some("e"),
            })
            .unwrap(),
            r#"{"op":"subscribed","topic":"t","recovered":true,"offset":17,"epoch":"e"}"#
        );
        assert_eq!(
            to_json(&Reply::Subscribed {
                topic: "t",
                recovered: None,
                offset: None,
                epoch: None,
            })
            .unwrap(),
            r#"{"op":"subscribed","topic":"t"}"#
        );
        assert_eq!(
            to_json(&Reply::Error { reason: "no" }).unwrap(),
            r#"{"op":"error","reason":"no"}"#
        );
    }
}
