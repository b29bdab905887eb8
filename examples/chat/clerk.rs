//! A session's clerk: the task that carries out its commands, one at a
//! time, in the order they came.
//!
//! The clerk runs on the loop (spawned with [`SessionHandle::spawn`], on the
//! session's service thread). Most commands are a few map lookups and a
//! publish, done right there. The blocking ones (a password hash, a
//! database query) go to the blocking pool or the database thread, and the
//! clerk *awaits* them: the loop serves every other session meanwhile, and
//! this session's later commands wait in its queue, so its answers keep
//! their order. Other sessions never wait for this one.
//!
//! A room message is published before it is recorded, and recording is a
//! queued write that nobody awaits: storing never delays delivery.

use std::sync::Arc;

use async_channel::Receiver;
use wsgate::{CloseCode, SessionHandle};

use crate::command::{Command, History, Name, Password};
use crate::protocol::{HELP, ONLINE, Shared, guest_name, room_topic, say};
use crate::store::{NewMessage, Stored, To, now_ms};

/// Serves one session's queue until the session closes it.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    session: SessionHandle,
    queue: Receiver<Result<Command, String>>,
) {
    let clerk = Clerk { shared, session };
    while let Ok(command) = queue.recv().await {
        // Commands still queued when the session closed are not carried out.
        if !clerk.session.is_open() {
            break;
        }
        match command {
            Ok(command) => clerk.run(command).await,
            Err(mistake) => clerk.say(mistake),
        }
    }
}

struct Clerk {
    shared: Arc<Shared>,
    session: SessionHandle,
}

/// A member's state as a command starts.
struct Me {
    nick: String,
    room: Option<String>,
    logged_in: bool,
}

impl Clerk {
    async fn run(&self, command: Command) {
        let Some(me) = self.me() else {
            return;
        };
        let allowed = matches!(
            command,
            Command::Register(..)
                | Command::Login(..)
                | Command::Help
                | Command::Quit
                | Command::Nothing
        );
        if self.shared.accounts_only && !me.logged_in && !allowed {
            return self.say(
                "! log in first: /login NAME PASSWORD, or /register NAME PASSWORD".to_owned(),
            );
        }
        match command {
            Command::Nothing => {}
            Command::Say(text) => self.say_in_room(me, text),
            Command::Nick(nick) => self.rename(&nick),
            Command::Join(room) => self.join(me, room.as_str()),
            Command::Leave => match me.room {
                Some(room) => {
                    self.set_room(None);
                    self.leave(&me.nick, &room);
                }
                None => self.say("! you are not in a room".to_owned()),
            },
            Command::Msg { to, text } => self.private(me, &to, &text),
            Command::Who(room) => self.who(room.as_ref()),
            Command::Rooms => self.rooms(),
            Command::Help => self.say(HELP.to_owned()),
            Command::Quit => {
                self.say("* bye".to_owned());
                let _ = self.session.close(CloseCode::Normal, "bye");
            }
            Command::Register(name, password) => self.register(me, name, password).await,
            Command::Login(name, password) => self.login(me, name, password).await,
            Command::Logout => self.logout(me),
            Command::History(history) => self.history(me, history).await,
        }
    }

    fn me(&self) -> Option<Me> {
        let directory = self.shared.directory();
        let member = directory.members.get(&self.session.id())?;
        Some(Me {
            nick: member.nick.clone(),
            room: member.room.clone(),
            logged_in: member.logged_in,
        })
    }

    fn say(&self, line: String) {
        say(&self.session, line);
    }

    fn say_in_room(&self, me: Me, text: String) {
        let Some(room) = me.room else {
            return self.say("! join a room first: /join ROOM".to_owned());
        };
        let ts = now_ms();
        self.shared
            .publish(&room_topic(&room), &format!("#{room} <{}> {text}", me.nick));
        let recorded = self.shared.store.record(NewMessage {
            ts,
            sender: me.nick,
            to: To::Room(room),
            body: text,
        });
        if let Err(e) = recorded {
            eprintln!("chat: a room message was not recorded: {e}");
        }
    }

    fn rename(&self, nick: &Name) {
        let id = self.session.id();
        let mut directory = self.shared.directory();
        let Some(member) = directory.members.get(&id) else {
            return;
        };
        let refusal = if member.logged_in {
            Some(format!(
                "! you are logged in as {}; /logout first",
                member.nick
            ))
        } else if directory.accounts.contains(nick.as_str()) {
            Some(format!(
                "! {nick} belongs to an account: /login {nick} PASSWORD"
            ))
        } else if !directory.is_free_for(nick.as_str(), id) {
            Some(format!("! {nick} is taken"))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(directory);
            return self.say(refusal);
        }
        let old = directory.rename(id, nick.as_str(), false);
        drop(directory);
        if let Some(old) = old {
            self.say(format!("* you are now {nick}"));
            self.shared.announce(&format!("* {old} is now {nick}"));
        }
    }

    fn join(&self, me: Me, room: &str) {
        if me.room.as_deref() == Some(room) {
            return self.say(format!("* you are in #{room} already"));
        }
        if let Err(e) = self.session.subscribe(&room_topic(room)) {
            return self.say(format!("! cannot join #{room}: {e}"));
        }
        self.set_room(Some(room.to_owned()));
        if let Some(old) = me.room {
            self.leave(&me.nick, &old);
        }
        self.shared
            .publish(&room_topic(room), &format!("* {} joined #{room}", me.nick));
    }

    fn set_room(&self, room: Option<String>) {
        if let Some(member) = self.shared.directory().members.get_mut(&self.session.id()) {
            member.room = room;
        }
    }

    fn leave(&self, nick: &str, room: &str) {
        self.session.unsubscribe(&room_topic(room));
        let line = format!("* {nick} left #{room}");
        self.shared.publish(&room_topic(room), &line);
        self.say(line);
    }

    fn private(&self, me: Me, to: &str, text: &str) {
        let directory = self.shared.directory();
        let target = directory
            .by_nick
            .get(to)
            .and_then(|id| directory.members.get(id))
            .map(|member| member.handle.clone());
        drop(directory);
        let Some(target) = target else {
            return self.say(format!("! no such nick: {to}"));
        };
        // The recipient's queue may be full (its vhost's overflow policy
        // handles that) or it may have just left.
        let line = wsgate::Message::text(format!("(private) <{}> {text}", me.nick));
        if target.try_send(line).is_err() {
            return self.say(format!("! {to} did not get it"));
        }
        self.say(format!("(to {to}) {text}"));
        let recorded = self.shared.store.record(NewMessage {
            ts: now_ms(),
            sender: me.nick,
            to: To::Nick(to.to_owned()),
            body: text.to_owned(),
        });
        if let Err(e) = recorded {
            eprintln!("chat: a private message was not recorded: {e}");
        }
    }

    fn who(&self, room: Option<&Name>) {
        let Some(context) = self.shared.context.get() else {
            return;
        };
        let (topic, label) = match room {
            None => (ONLINE.to_owned(), "online".to_owned()),
            Some(room) => (room_topic(room.as_str()), format!("#{room}")),
        };
        let Ok(presence) = context.presence(&topic) else {
            return;
        };
        let directory = self.shared.directory();
        let mut nicks: Vec<&str> = presence
            .sessions
            .iter()
            .filter_map(|id| directory.members.get(id))
            .map(|member| member.nick.as_str())
            .collect();
        nicks.sort_unstable();
        let line = format!("* {label}: {}", nicks.join(", "));
        drop(directory);
        self.say(line);
    }

    fn rooms(&self) {
        let Some(context) = self.shared.context.get() else {
            return;
        };
        let rooms: Vec<String> = context
            .topics()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.strip_prefix("room:"))
            .map(|room| {
                let n = context.presence(&room_topic(room)).map_or(0, |p| p.count);
                format!("#{room} ({n})")
            })
            .collect();
        if rooms.is_empty() {
            self.say("* no rooms yet: /join ROOM opens one".to_owned());
        } else {
            self.say(format!("* rooms: {}", rooms.join(", ")));
        }
    }

    /// Reserves the name on the loop, hashes on the blocking pool, inserts
    /// on the database thread, and logs the session in on the loop.
    async fn register(&self, me: Me, name: Name, password: Password) {
        let id = self.session.id();
        if me.logged_in {
            return self.say(format!("! you are logged in as {}; /logout first", me.nick));
        }
        {
            let mut directory = self.shared.directory();
            if !directory.is_free_for(name.as_str(), id) {
                drop(directory);
                return self.say(format!("! {name} is taken"));
            }
            directory.reserved.insert(name.to_string(), id);
        }

        let created = match self.shared.passwords.hash(password).await {
            Ok(hash) => {
                let name = name.to_string();
                self.shared
                    .store
                    .call(move |db| db.create_account(&name, &hash, now_ms()))
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("cannot hash the password: {e}")),
        };

        let mut directory = self.shared.directory();
        directory.reserved.remove(name.as_str());
        match created {
            Ok(true) => {
                directory.accounts.insert(name.to_string());
                let old = directory.rename(id, name.as_str(), true);
                drop(directory);
                self.say(format!("* registered {name}; you are logged in"));
                if let Some(old) = old.filter(|old| old != name.as_str()) {
                    self.shared.announce(&format!("* {old} is now {name}"));
                }
            }
            Ok(false) => {
                // The database had it although the copy did not: keep the
                // copy true.
                directory.accounts.insert(name.to_string());
                drop(directory);
                self.say(format!("! {name} is taken"));
            }
            Err(e) => {
                drop(directory);
                eprintln!("chat: /register {name}: {e}");
                self.say("! cannot register now; try again later".to_owned());
            }
        }
    }

    /// Looks the account up on the database thread and checks the password
    /// on the blocking pool: an unknown name is checked against a dummy
    /// hash, so both mistakes cost the same time and get the same answer.
    ///
    /// Logging in as an account that another session is logged in as takes
    /// the name over: the other session is told, becomes a guest again, and
    /// is closed (1000, "logged in elsewhere"). The password proved who it
    /// is, and a client whose old connection is half-dead must get back in.
    async fn login(&self, me: Me, name: Name, password: Password) {
        let id = self.session.id();
        if me.logged_in && me.nick == name.as_str() {
            return self.say(format!("* you are {name} already"));
        }
        let lookup = name.to_string();
        let account = self.shared.store.call(move |db| db.account(&lookup)).await;
        let hash = match account {
            Ok(account) => account.map(|a| a.hash),
            Err(e) => {
                eprintln!("chat: /login {name}: {e}");
                return self.say("! cannot log in now; try again later".to_owned());
            }
        };
        if !self.shared.passwords.verify(password, hash).await {
            return self.say("! wrong name or password".to_owned());
        }

        let mut directory = self.shared.directory();
        if !directory.members.contains_key(&id) {
            return;
        }
        directory.accounts.insert(name.to_string());
        let holder = directory
            .by_nick
            .get(name.as_str())
            .copied()
            .filter(|holder| *holder != id);
        let replaced = holder.and_then(|holder| {
            directory.rename(holder, &guest_name(holder), false)?;
            directory.members.get(&holder).map(|m| m.handle.clone())
        });
        let old = directory.rename(id, name.as_str(), true);
        drop(directory);
        if let Some(replaced) = replaced {
            say(
                &replaced,
                format!("* you logged in as {name} from another connection; closing this one"),
            );
            let _ = replaced.close(CloseCode::Normal, "logged in elsewhere");
        }
        self.say(format!("* logged in as {name}"));
        if let Some(old) = old.filter(|old| old != name.as_str()) {
            self.shared.announce(&format!("* {old} is now {name}"));
        }
    }

    fn logout(&self, me: Me) {
        if !me.logged_in {
            return self.say("! you are not logged in".to_owned());
        }
        let guest = guest_name(self.session.id());
        let old = self
            .shared
            .directory()
            .rename(self.session.id(), &guest, false);
        if let Some(old) = old {
            self.say(format!("* logged out; you are {guest}"));
            self.shared.announce(&format!("* {old} is now {guest}"));
        }
    }

    async fn history(&self, me: Me, history: History) {
        let (label, rows) = match history {
            History::Room { count } => {
                let Some(room) = me.room else {
                    return self.say("! join a room first: /join ROOM".to_owned());
                };
                let label = format!("#{room}");
                let rows = self
                    .shared
                    .store
                    .call(move |db| db.room_history(&room, count))
                    .await;
                (label, rows)
            }
            History::Private { with, count } => {
                if !me.logged_in {
                    return self.say("! log in to read your private history".to_owned());
                }
                let label = format!("you and {with}");
                let rows = self
                    .shared
                    .store
                    .call(move |db| db.private_history(&me.nick, with.as_str(), count))
                    .await;
                (label, rows)
            }
        };
        match rows {
            Ok(rows) if rows.is_empty() => self.say(format!("* history of {label}: none yet")),
            Ok(rows) => {
                let n = rows.len();
                let s = if n == 1 { "" } else { "s" };
                self.say(format!(
                    "* history of {label}, oldest first: {n} message{s}"
                ));
                for Stored { at, sender, body } in rows {
                    self.say(format!("[{at}] <{sender}> {body}"));
                }
                self.say("* end of history".to_owned());
            }
            Err(e) => {
                eprintln!("chat: /history: {e}");
                self.say("! cannot read the history now; try again later".to_owned());
            }
        }
    }
}
