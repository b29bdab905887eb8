//! What the Redis broker writes to Redis: key names, the header of a
//! cross-node message, and the Lua scripts that keep a topic's offsets,
//! history and presence consistent. Pure: no connection here.
//!
//! Keys, for prefix `P` and topic `T`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:ch:T` | pub/sub channel | every message of `T`, to the nodes that hold subscribers of `T` |
//! | `P:meta:T` | hash | `e`: the epoch, `o`: the last offset given out (topics with history) |
//! | `P:hist:T` | stream | the last `history_size` messages, entry id `offset-1` |
//! | `P:pres:T` | hash | node name → how many of its sessions subscribe to `T` |
//! | `P:node:N` | string | node `N` is alive (expires `3 × heartbeat` after its last beat) |
//!
//! A message on a channel is `v1|NODE|SEQ|KS|OFFSET|EPOCH|` followed by the
//! payload: `SEQ` numbers the node's publishes (so that a node knows which
//! of its own came back before a connection broke), `K` is `t` (text) or
//! `b` (binary), `S` is `j` (stamp the position into the JSON object) or
//! `-`; `OFFSET` is 0 and `EPOCH` empty without history. Node names have no
//! `|`.

use crate::Message;
use crate::pubsub::{Position, Stamp};

/// The version tag every header starts with.
const VERSION: &str = "v1";

/// Longest node name.
pub(crate) const MAX_NODE_BYTES: usize = 64;

/// Whether `node` may name a node: 1 to 64 bytes of letters, digits and
/// `._:-`.
pub(crate) fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= MAX_NODE_BYTES
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn channel(&self, topic: &str) -> String {
        format!("{}:ch:{topic}", self.prefix)
    }

    /// The topic a channel name stands for.
    pub(crate) fn topic_of<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?;
        let topic = rest.strip_prefix(b":ch:")?;
        std::str::from_utf8(topic).ok()
    }

    pub(crate) fn meta(&self, topic: &str) -> String {
        format!("{}:meta:{topic}", self.prefix)
    }

    pub(crate) fn history(&self, topic: &str) -> String {
        format!("{}:hist:{topic}", self.prefix)
    }

    pub(crate) fn presence(&self, topic: &str) -> String {
        format!("{}:pres:{topic}", self.prefix)
    }

    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The prefix of every node key (the presence script appends the name).
    pub(crate) fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
}

/// The header of publish `seq` from `node`, up to (not including) the
/// offset: the publish script appends `OFFSET|EPOCH|` itself.
pub(crate) fn head(node: &str, seq: u64, message: &Message, stamp: Stamp) -> String {
    let kind = if matches!(message, Message::Binary(_)) {
        'b'
    } else {
        't'
    };
    let stamp = if stamp == Stamp::Json { 'j' } else { '-' };
    format!("{VERSION}|{node}|{seq}|{kind}{stamp}|")
}

/// A whole message without history (offset 0, no epoch).
pub(crate) fn plain(node: &str, seq: u64, message: &Message) -> Vec<u8> {
    let head = head(node, seq, message, Stamp::None);
    let payload = payload(message);
    let mut out = Vec::with_capacity(head.len() + 3 + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(b"0||");
    out.extend_from_slice(payload);
    out
}

/// The bytes of a text or binary message (others carry none).
pub(crate) fn payload(message: &Message) -> &[u8] {
    match message {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => &[],
    }
}

/// A message read back from a channel or a history entry.
#[derive(Debug, PartialEq)]
pub(crate) struct Received<'a> {
    pub(crate) node: &'a str,
    pub(crate) seq: u64,
    /// The message as delivered: stamped when it asked to be and has a
    /// position.
    pub(crate) message: Message,
    pub(crate) position: Option<Position>,
}

/// Parses a whole channel message. `None` for anything not written by a
/// wsgate of this version (or not valid UTF-8 where text is promised).
pub(crate) fn parse(bytes: &[u8]) -> Option<Received<'_>> {
    let mut parts = bytes.splitn(7, |&b| b == b'|');
    let version = parts.next()?;
    let node = std::str::from_utf8(parts.next()?).ok()?;
    let seq = std::str::from_utf8(parts.next()?)
        .ok()?
        .parse::<u64>()
        .ok()?;
    let ks = parts.next()?;
    let offset = std::str::from_utf8(parts.next()?)
        .ok()?
        .parse::<u64>()
        .ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let payload = parts.next()?;
    if version != VERSION.as_bytes() || ks.len() != 2 {
        return None;
    }
    let message = match ks[0] {
        b't' => Message::text(std::str::from_utf8(payload).ok()?.to_owned()),
        b'b' => Message::binary(payload.to_vec()),
        _ => return None,
    };
    let position = (offset > 0).then(|| Position::new(offset, epoch));
    let message = match (&position, ks[1]) {
        (Some(p), b'j') => p.stamp(&message).unwrap_or(message),
        _ => message,
    };
    Some(Received {
        node,
        seq,
        message,
        position,
    })
}

/// Publishes a message of a topic with history, atomically: the next offset
/// (a new epoch, and an emptied stream, if the topic's history had
/// expired), the stream entry, the expiries, the channel message. Returns
/// `{offset, epoch}`.
///
/// KEYS: meta, stream. ARGV: channel, head, payload, history size, ttl in
/// ms, a fresh epoch.
pub(crate) const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-1', 'h', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. offset .. '|' .. epoch .. '|' .. ARGV[3])
return {offset, epoch}
";

/// Reads a topic's position and the entries after an offset, atomically.
/// Returns `{epoch or '', last offset, entries}`; entries are empty when
/// the epoch differs from the one asked for.
///
/// KEYS: meta, stream. ARGV: since offset, since epoch (may be empty: no
/// entries wanted), most entries.
pub(crate) const RECOVER: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  return {'', 0, {}}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local since = tonumber(ARGV[1])
if ARGV[2] ~= epoch or since >= last then
  return {epoch, last, {}}
end
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-1', '+', 'COUNT', ARGV[3])
return {epoch, last, entries}
";

/// Counts a topic's subscribers over the live nodes, forgetting the fields
/// of nodes whose heartbeat key expired. Returns `{count, nodes, mine}`,
/// `mine` being what the asking node's field says.
///
/// KEYS: presence hash. ARGV: node key prefix, the asking node's name.
pub(crate) const PRESENCE: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local count, nodes, mine = 0, 0, 0
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[1] .. all[i]) == 1 then
    count = count + tonumber(all[i + 1])
    nodes = nodes + 1
    if all[i] == ARGV[2] then
      mine = tonumber(all[i + 1])
    end
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return {count, nodes, mine}
";

/// Whether the recovered `entries` (offsets, ascending) cover everything
/// after `since` up to `last`: the first one follows `since` directly (or
/// nothing was missed).
pub(crate) fn covers(since: u64, last: u64, first_entry: Option<u64>) -> bool {
    since == last || first_entry == Some(since + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(valid_node("gw-1.eu:7"));
        assert!(!valid_node(""));
        assert!(!valid_node("a|b"));
        assert!(!valid_node("a b"));
        assert!(!valid_node(&"n".repeat(65)));
    }

    #[test]
    fn channel_names_round_trip() {
        let k = Keys::new("wsgate");
        let ch = k.channel("chat:lobby|x");
        assert_eq!(ch, "wsgate:ch:chat:lobby|x");
        assert_eq!(k.topic_of(ch.as_bytes()), Some("chat:lobby|x"));
        assert_eq!(k.topic_of(b"other:ch:t"), None);
        assert_eq!(k.topic_of(b"wsgate:meta:t"), None);
    }

    #[test]
    fn messages_round_trip() {
        let m = Message::text("a|b");
        let wire = plain("gw-1", 7, &m);
        assert_eq!(wire, b"v1|gw-1|7|t-|0||a|b");
        assert_eq!(
            parse(&wire),
            Some(Received {
                node: "gw-1",
                seq: 7,
                message: m,
                position: None
            })
        );
        let b = Message::binary(vec![0, b'|', 255]);
        assert_eq!(parse(&plain("n", 1, &b)).unwrap().message, b);
        // As the publish script writes it.
        let obj = Message::text(r#"{"op":"message"}"#);
        let mut wire = head("n", 2, &obj, Stamp::Json).into_bytes();
        wire.extend_from_slice(b"17|e1|");
        wire.extend_from_slice(payload(&obj));
        let r = parse(&wire).unwrap();
        assert_eq!(r.position, Some(Position::new(17, "e1")));
        assert_eq!(
            r.message,
            Message::text(r#"{"op":"message","offset":17,"epoch":"e1"}"#)
        );
    }

    #[test]
    fn foreign_messages_are_refused() {
        for bad in [
            &b""[..],
            b"v2|n|1|t-|0||x",
            b"v1|n|1|x-|0||x",
            b"v1|n|1|t|0||x",
            b"v1|n|1|t-|z||x",
            b"v1|n|z|t-|0||x",
            b"v1|n|1|t-|0|",
            b"v1|n|1|t-|0||\xff",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn coverage() {
        assert!(covers(5, 5, None));
        assert!(covers(5, 9, Some(6)));
        assert!(!covers(5, 9, Some(7)));
        assert!(!covers(5, 9, None));
    }
}
