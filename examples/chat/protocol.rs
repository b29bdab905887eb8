//! The `chat` protocol's callbacks and the directory of who is who.
//!
//! The callbacks run on the host's loop and stay short: `open` seats the
//! session and starts its clerk, `message` parses the line and queues it for
//! the clerk, `close` takes the session out of the directory. The clerk
//! ([`crate::clerk`]) does the rest, one command at a time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_channel::{Sender, TrySendError};
use wsgate::{
    CloseReason, ContextHandle, Message, Protocol, Reject, Request, SessionHandle, SessionId,
};

use crate::clerk;
use crate::command::{Command, GUEST_PREFIX};
use crate::password::Passwords;
use crate::store::Store;

/// The topic every session is subscribed to: its presence is the online list.
pub(crate) const ONLINE: &str = "online";

/// Commands a session may have waiting behind one that is off the loop.
/// Beyond that a line is refused, so a client that floods while its login
/// is being checked cannot grow the queue.
const COMMAND_QUEUE: usize = 32;

pub(crate) const HELP: &str = "* commands: /register NAME PASSWORD, /login NAME PASSWORD, \
    /logout, /nick NAME, /join ROOM, /leave, /msg NICK TEXT, /who [ROOM], /rooms, \
    /history [N], /history @NICK [N], /help, /quit; anything else goes to your room";

/// The `chat` protocol.
pub(crate) struct Chat {
    shared: Arc<Shared>,
}

/// What the callbacks and every session's clerk share.
pub(crate) struct Shared {
    /// The context's handle, set by the host right after attaching.
    pub(crate) context: Arc<OnceLock<ContextHandle>>,
    pub(crate) directory: Mutex<Directory>,
    pub(crate) store: Store,
    pub(crate) passwords: Passwords,
    /// Anonymous sessions may only register, log in, ask for help or quit.
    pub(crate) accounts_only: bool,
}

/// Who is who: every open session's nickname, both ways, and the names
/// that belong to accounts.
pub(crate) struct Directory {
    pub(crate) members: HashMap<SessionId, Member>,
    pub(crate) by_nick: HashMap<String, SessionId>,
    /// Names being registered right now, and by which session: nobody else
    /// may take them while the hash is computed.
    pub(crate) reserved: HashMap<String, SessionId>,
    /// Every account name. The database is the authority (its primary key
    /// decides a registration); this copy, loaded at start and added to on
    /// every registration, lets `/nick` refuse an account's name on the loop.
    pub(crate) accounts: HashSet<String>,
}

/// One open session.
pub(crate) struct Member {
    pub(crate) nick: String,
    pub(crate) handle: SessionHandle,
    pub(crate) room: Option<String>,
    /// Whether `nick` is the account the session logged in as.
    pub(crate) logged_in: bool,
}

/// A session's state in the protocol: the queue to its clerk.
pub(crate) struct Seat {
    commands: Sender<Result<Command, String>>,
}

impl Chat {
    pub(crate) fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl Protocol for Chat {
    type State = Seat;

    fn name(&self) -> &str {
        "chat"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<Seat, Reject> {
        let shutting_down = |_| Reject::new(503, "shutting down");
        let (commands, queue) = async_channel::bounded(COMMAND_QUEUE);
        // The clerk ends when `close` closes its queue.
        session
            .spawn(clerk::serve(self.shared.clone(), session.clone(), queue))
            .map_err(shutting_down)?;
        let nick = guest_name(session.id());
        self.shared.announce(&format!("* {nick} is online"));
        session.subscribe(ONLINE).map_err(shutting_down)?;
        let mut directory = self.shared.directory();
        directory.by_nick.insert(nick.clone(), session.id());
        directory.members.insert(
            session.id(),
            Member {
                nick: nick.clone(),
                handle: session.clone(),
                room: None,
                logged_in: false,
            },
        );
        drop(directory);
        say(session, format!("* welcome, you are {nick}"));
        if self.shared.accounts_only {
            say(
                session,
                "* this server is for account holders: /register NAME PASSWORD \
                 or /login NAME PASSWORD"
                    .to_owned(),
            );
        }
        say(session, HELP.to_owned());
        Ok(Seat { commands })
    }

    fn message(&self, seat: &mut Seat, session: &SessionHandle, message: Message) {
        // Parsing is cheap and pure; everything else is the clerk's, in
        // order, mistakes included, so that answers come in the order of the
        // lines they answer.
        let command = match message {
            Message::Text(text) => Command::parse(text.as_str()),
            _ => Err("! text only, please".to_owned()),
        };
        if let Err(TrySendError::Full(_)) = seat.commands.try_send(command) {
            say(
                session,
                "! too many commands waiting; this one was dropped".to_owned(),
            );
        }
    }

    fn close(&self, seat: Seat, session: &SessionHandle, _reason: &CloseReason) {
        // Called exactly once per opened session, also when teardown forces
        // it down: the directory never keeps a session that is gone, and the
        // clerk stops (after the command it may be running).
        seat.commands.close();
        let mut directory = self.shared.directory();
        let member = directory.members.remove(&session.id());
        if let Some(member) = &member
            && directory.by_nick.get(&member.nick) == Some(&session.id())
        {
            directory.by_nick.remove(&member.nick);
        }
        drop(directory);
        let Some(member) = member else {
            return;
        };
        if let Some(room) = member.room {
            session.unsubscribe(&room_topic(&room));
            self.shared.publish(
                &room_topic(&room),
                &format!("* {} left #{room}", member.nick),
            );
        }
        session.unsubscribe(ONLINE);
        self.shared
            .announce(&format!("* {} is offline", member.nick));
    }
}

impl Shared {
    pub(crate) fn directory(&self) -> MutexGuard<'_, Directory> {
        // Every critical section is a few map operations that leave the maps
        // consistent, so a panic elsewhere does not make them unusable.
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `line` to everyone online.
    pub(crate) fn announce(&self, line: &str) {
        self.publish(ONLINE, line);
    }

    pub(crate) fn publish(&self, topic: &str, line: &str) {
        if let Some(context) = self.context.get() {
            // After teardown began there is nobody left to tell.
            let _ = context.publish(topic, Message::text(line));
        }
    }
}

impl Directory {
    pub(crate) fn new(accounts: impl IntoIterator<Item = String>) -> Self {
        Self {
            members: HashMap::new(),
            by_nick: HashMap::new(),
            reserved: HashMap::new(),
            accounts: accounts.into_iter().collect(),
        }
    }

    /// Whether `name` is free for session `id`: no account, no registration
    /// in progress, and no other session's nickname.
    pub(crate) fn is_free_for(&self, name: &str, id: SessionId) -> bool {
        !self.accounts.contains(name)
            && !self.reserved.contains_key(name)
            && self.by_nick.get(name).is_none_or(|holder| *holder == id)
    }

    /// Gives session `id` the nickname `nick`; returns the old one, or `None`
    /// if the session is gone.
    pub(crate) fn rename(&mut self, id: SessionId, nick: &str, logged_in: bool) -> Option<String> {
        let member = self.members.get_mut(&id)?;
        let old = std::mem::replace(&mut member.nick, nick.to_owned());
        member.logged_in = logged_in;
        if self.by_nick.get(&old) == Some(&id) {
            self.by_nick.remove(&old);
        }
        self.by_nick.insert(nick.to_owned(), id);
        Some(old)
    }
}

/// A guest's nickname: it ends in the session id, unique in the context,
/// and chosen names may not start with the prefix.
pub(crate) fn guest_name(id: SessionId) -> String {
    format!("{GUEST_PREFIX}{}", id.get())
}

pub(crate) fn room_topic(room: &str) -> String {
    format!("room:{room}")
}

/// Sends a line to one session. A full queue is the vhost's overflow
/// policy's business, and a closing session needs no answer.
pub(crate) fn say(session: &SessionHandle, line: String) {
    let _ = session.try_send(Message::text(line));
}
