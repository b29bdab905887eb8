//! `broadcast`: every message from a client goes to every other client on the
//! same path, like a chat room or libwebsockets' mirror protocol.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::Options;
use crate::common::lock;
use crate::{CloseReason, Message, Protocol, Reject, Request, SessionHandle};

/// Sends every text or binary message to every other session connected to
/// the same path of the same vhost (and, with `echo_self`, back to the sender
/// too).
///
/// The members of each path are kept in a copy-on-write list that changes
/// only when a session opens or closes: a message takes a snapshot of it (one
/// reference count) and fans out without any lock held, and every recipient's
/// queue holds a clone of the same message, whose payload is shared. A
/// recipient with a full queue is handled by the vhost's
/// [`OverflowPolicy`](crate::OverflowPolicy) and never slows the others.
///
/// Options (`[vhost.options.broadcast]`):
///
/// - `echo_self`: `true` sends each message back to its sender as well.
///   Default: `false` (`true` with `cluster`).
/// - `cluster`: `true` makes each path's room a topic of the context's
///   broker (`broadcast:VHOST:PATH`), so that with a cluster broker
///   (`[broker] type = "redis"`) the room spans every node: a message
///   reaches the members on all of them, in order per sender. The sender
///   gets its own message too (a topic reaches every subscriber), so
///   `echo_self = false` is refused with it. Default: `false`.
///
/// # Examples
///
/// ```
/// use wsgate::{Mount, VhostConfig, protocols::Broadcast};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:0".parse()?)
///     .protocol(Broadcast::default())
///     .mount(Mount::websocket("/broadcast", ["broadcast"]))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct Broadcast {
    echo_self: bool,
    cluster: bool,
    /// The rooms, by path. Locked only when a session opens or closes.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

/// The sessions connected to one path.
#[derive(Default)]
struct Room {
    /// Replaced, never mutated in place, so a message's snapshot stays valid
    /// while it fans out.
    members: Mutex<Arc<Vec<SessionHandle>>>,
}

/// The per-session state of [`Broadcast`]: the room the session is in.
#[derive(Debug)]
pub struct BroadcastState(Arc<Room>);

impl Broadcast {
    /// Builds the protocol from its options (see the type's documentation).
    ///
    /// # Errors
    ///
    /// A message naming the option, for an unknown option or a value that is
    /// not `true` or `false`.
    pub fn from_options(options: &Options) -> Result<Self, String> {
        super::check_known(options, &["echo_self", "cluster"])?;
        let cluster = super::bool_option(options, "cluster", false)?;
        let echo_self = super::bool_option(options, "echo_self", cluster)?;
        if cluster && !echo_self {
            return Err(
                "echo_self: a cluster room sends every message to its sender too; remove echo_self = false or cluster = true"
                    .to_owned(),
            );
        }
        Ok(Self {
            echo_self,
            cluster,
            rooms: Mutex::new(HashMap::new()),
        })
    }

    /// A room that spans every node of the context's broker (see the
    /// `cluster` option).
    pub fn cluster() -> Self {
        Self {
            echo_self: true,
            cluster: true,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    /// Whether rooms are topics of the context's broker.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The topic of a session's room in cluster mode.
    fn topic(session: &SessionHandle) -> String {
        format!("broadcast:{}:{}", session.vhost().name(), session.path())
    }

    /// Whether each message goes back to its sender as well.
    pub fn is_echo_self(&self) -> bool {
        self.echo_self
    }
}

impl Protocol for Broadcast {
    type State = BroadcastState;

    fn name(&self) -> &str {
        "broadcast"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<BroadcastState, Reject> {
        if self.cluster {
            session
                .subscribe(&Self::topic(session))
                .map_err(|e| Reject::new(503, e.to_string()))?;
        }
        let mut rooms = lock(&self.rooms);
        let room = rooms.entry(session.path().to_owned()).or_default().clone();
        let mut members = lock(&room.members);
        let mut next = Vec::with_capacity(members.len() + 1);
        next.extend(members.iter().cloned());
        next.push(session.clone());
        *members = Arc::new(next);
        drop(members);
        Ok(BroadcastState(room))
    }

    fn message(&self, room: &mut BroadcastState, session: &SessionHandle, message: Message) {
        if self.cluster {
            // Through the broker: to the room's members on every node.
            if let Some(ctx) = session.vhost().context_handle() {
                let _ = ctx.publish(&Self::topic(session), message);
            }
            return;
        }
        let members = lock(&room.0.members).clone();
        let me = session.id();
        for member in members.iter() {
            if member.id() == me && !self.echo_self {
                continue;
            }
            // A refused send is the recipient's queue being full (its vhost's
            // overflow policy has decided what happens to it) or the
            // recipient closing; neither concerns the sender or the others.
            let _ = member.try_send_ref(&message);
        }
    }

    fn close(&self, room: BroadcastState, session: &SessionHandle, _reason: &CloseReason) {
        // The rooms lock is taken first, as in `open`, so that a room found
        // empty here cannot gain a member before it is removed.
        let mut rooms = lock(&self.rooms);
        let mut members = lock(&room.0.members);
        let next: Vec<SessionHandle> = members
            .iter()
            .filter(|m| m.id() != session.id())
            .cloned()
            .collect();
        let empty = next.is_empty();
        *members = Arc::new(next);
        drop(members);
        if empty
            && rooms
                .get(session.path())
                .is_some_and(|r| Arc::ptr_eq(r, &room.0))
        {
            rooms.remove(session.path());
        }
    }
}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rooms = lock(&self.rooms);
        f.debug_struct("Broadcast")
            .field("echo_self", &self.echo_self)
            .field("cluster", &self.cluster)
            .field(
                "rooms",
                &rooms
                    .iter()
                    .map(|(path, room)| (path.as_str(), lock(&room.members).len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Room")
            .field("members", &lock(&self.members).len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_self_option() {
        let mut o = Options::new();
        assert!(!Broadcast::from_options(&o).unwrap().is_echo_self());
        o.insert("echo_self".into(), "true".into());
        assert!(Broadcast::from_options(&o).unwrap().is_echo_self());
        o.insert("echo_self".into(), "maybe".into());
        let err = Broadcast::from_options(&o).unwrap_err();
        assert!(err.starts_with("echo_self: "), "{err}");
        let mut c = Options::new();
        c.insert("cluster".into(), "true".into());
        let b = Broadcast::from_options(&c).unwrap();
        assert!(b.is_cluster() && b.is_echo_self());
        c.insert("echo_self".into(), "false".into());
        let err = Broadcast::from_options(&c).unwrap_err();
        assert!(err.starts_with("echo_self: "), "{err}");
    }
}
