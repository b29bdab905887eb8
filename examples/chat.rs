//! A chat server with rooms, nicknames, private messages and the online list,
//! written against wsgate's public API only.
//!
//! Every line a client sends is a command or a message for its room:
//!
//! ```text
//! /nick NAME        take a nickname (letters, digits, - and _, at most 24)
//! /join ROOM        enter ROOM (and leave the one you were in)
//! /leave            leave your room
//! /msg NICK TEXT    a private message
//! /who              who is online
//! /who ROOM         who is in ROOM
//! /rooms            the rooms that have someone in them
//! /help             this list
//! anything else     a message to everyone in your room
//! ```
//!
//! The server answers with lines that start with `*` (notices), `!`
//! (mistakes), `#ROOM <NICK>` (room messages), `(private) <NICK>` and
//! `(to NICK)` (private messages received and sent).
//!
//! Rooms are topics: joining subscribes the session
//! ([`SessionHandle::subscribe`]), a room message is one
//! [`ContextHandle::publish`] whose payload every member's queue shares, and
//! `/who ROOM` is the topic's [`ContextHandle::presence`]. Every session is
//! also subscribed to an `online` topic, whose presence is the online list
//! and through which arrivals, departures and nickname changes are
//! announced. Private messages go straight to the recipient's
//! [`SessionHandle`], found in the nickname directory that the protocol's
//! `open` and `close` keep.
//!
//! The protocol publishes through the context's [`ContextHandle`], which
//! exists once the context is attached: the host hands it over (through a
//! `OnceLock`) before it starts running the loop, so no session can open
//! before it is there.
//!
//! Teardown is the host's, in the strict order of `examples/foreign_loop.rs`:
//! on SIGINT or SIGTERM (with the `signals` feature, on by default), or when
//! `--seconds` have elapsed, destroy the context (every client gets Close
//! 1001), stop running the loop, drain it, print the drain report.
//!
//! ```text
//! cargo run --example chat -- [--seconds N] [--listen ADDR]
//! ```
//!
//! `--listen` defaults to 127.0.0.1:7681 (`127.0.0.1:0` picks a free port; the
//! bound address is printed as `listening on ADDR`). Without `--seconds` the
//! example serves until Ctrl-C. Try it with two terminals running
//! `websocat ws://127.0.0.1:7681/chat`.

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::Timer;
use futures_lite::future;
use wsgate::{
    CloseReason, Config, Context, ContextHandle, Message, Mount, Protocol, Reject, Request,
    SessionHandle, SessionId, VhostConfig,
};

/// How long the drain may wait for the clients' answers to our Close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The topic every session is subscribed to: its presence is the online list.
const ONLINE: &str = "online";

/// Longest nickname or room name, in bytes.
const MAX_NAME: usize = 24;

const USAGE: &str = "usage: chat [--seconds N] [--listen ADDR]";

const HELP: &str = "* commands: /nick NAME, /join ROOM, /leave, /msg NICK TEXT, /who [ROOM], \
                    /rooms, /help; anything else goes to your room";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&*e);
            ExitCode::FAILURE
        }
    }
}

/// Prints `e` with its causes (the OS reason of a failed bind is the
/// source of `wsgate::Error::Bind`), and what to do when the port is taken.
fn report(e: &(dyn Error + 'static)) {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    eprintln!("chat: {text}");
    if let Some(wsgate::Error::Bind { .. }) = e.downcast_ref() {
        eprintln!("chat: is another server on that port? --listen 127.0.0.1:0 picks a free one");
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let ex = Executor::new();

    let context = Arc::new(OnceLock::new());
    let vhost = VhostConfig::builder("default")
        .listen(args.listen)
        .protocol(Chat {
            context: context.clone(),
            directory: Mutex::default(),
        })
        .mount(Mount::websocket("/chat", ["chat"]))
        .build()?;
    let ctx = Context::attach(&ex, Config::builder().vhost(vhost).build()?)?;
    let handle = ctx.handle();
    // Before the loop runs, so before any session opens.
    let _ = context.set(handle.clone());

    // SIGINT and SIGTERM begin the teardown through signal-hook's self-pipe.
    #[cfg(feature = "signals")]
    let signal_task = ex.spawn(wsgate::signals::shutdown_on_signals(&handle)?.run());

    for addr in ctx.local_addrs() {
        println!("listening on {addr}");
    }
    std::io::stdout().flush()?;

    let seconds = args.seconds;
    let drain = async_io::block_on(ex.run(async {
        future::or(handle.shutdown_requested(), async {
            match seconds {
                Some(d) => {
                    Timer::after(d).await;
                }
                None => future::pending().await,
            }
        })
        .await;
        // 1. Destroy, on the loop: stop accepting, Close 1001 to everyone.
        ctx.destroy()
    }));
    // 2. The loop has stopped. 3. Drain until every client has answered.
    let report = drain.drain(&ex, Instant::now() + DRAIN_TIMEOUT);
    println!("drain: {report}");
    std::io::stdout().flush()?;
    #[cfg(feature = "signals")]
    drop(signal_task);
    drop(ex);
    Ok(())
}

/// The `chat` protocol.
struct Chat {
    /// The context's handle, set by the host right after attaching.
    context: Arc<OnceLock<ContextHandle>>,
    directory: Mutex<Directory>,
}

/// Who is who: every open session's nickname, both ways.
#[derive(Default)]
struct Directory {
    by_id: HashMap<SessionId, (String, SessionHandle)>,
    by_nick: HashMap<String, SessionId>,
}

/// A session's state: the room it is in.
#[derive(Default)]
struct Seat {
    room: Option<String>,
}

impl Protocol for Chat {
    type State = Seat;

    fn name(&self) -> &str {
        "chat"
    }

    fn open(&self, _request: &Request, session: &SessionHandle) -> Result<Seat, Reject> {
        // Guest names end in the session id, unique in the context; chosen
        // nicknames may not look like them.
        let nick = format!("guest{}", session.id().get());
        self.announce(&format!("* {nick} is online"));
        session
            .subscribe(ONLINE)
            .map_err(|_| Reject::new(503, "shutting down"))?;
        let mut directory = lock(&self.directory);
        directory.by_nick.insert(nick.clone(), session.id());
        directory
            .by_id
            .insert(session.id(), (nick.clone(), session.clone()));
        drop(directory);
        say(session, format!("* welcome, you are {nick}"));
        say(session, HELP.to_owned());
        Ok(Seat::default())
    }

    fn message(&self, seat: &mut Seat, session: &SessionHandle, message: Message) {
        let Message::Text(text) = message else {
            return say(session, "! text only, please".to_owned());
        };
        let line = text.as_str().trim();
        let (command, rest) = match line.strip_prefix('/') {
            Some(command) => command.split_once(' ').unwrap_or((command, "")),
            None => return self.say_in_room(seat, session, line),
        };
        let rest = rest.trim();
        match command {
            "nick" => self.rename(session, rest),
            "join" => self.join(seat, session, rest),
            "leave" => match seat.room.take() {
                Some(room) => self.leave(session, &room),
                None => say(session, "! you are not in a room".to_owned()),
            },
            "msg" => self.private(session, rest),
            "who" => self.who(session, rest),
            "rooms" => self.rooms(session),
            "help" => say(session, HELP.to_owned()),
            other => say(session, format!("! unknown command /{other} (try /help)")),
        }
    }

    fn close(&self, seat: Seat, session: &SessionHandle, _reason: &CloseReason) {
        // Called exactly once per opened session, also when teardown forces
        // it down: the directory never keeps a session that is gone.
        let nick = self.nick(session);
        if let Some(room) = seat.room {
            self.leave(session, &room);
        }
        session.unsubscribe(ONLINE);
        let mut directory = lock(&self.directory);
        directory.by_id.remove(&session.id());
        directory.by_nick.remove(&nick);
        drop(directory);
        self.announce(&format!("* {nick} is offline"));
    }
}

impl Chat {
    fn nick(&self, session: &SessionHandle) -> String {
        lock(&self.directory)
            .by_id
            .get(&session.id())
            .map(|(nick, _)| nick.clone())
            .unwrap_or_default()
    }

    /// Publishes `line` to everyone online.
    fn announce(&self, line: &str) {
        self.publish(ONLINE, line);
    }

    fn publish(&self, topic: &str, line: &str) {
        if let Some(context) = self.context.get() {
            // After teardown began there is nobody left to tell.
            let _ = context.publish(topic, Message::text(line));
        }
    }

    fn say_in_room(&self, seat: &Seat, session: &SessionHandle, text: &str) {
        match &seat.room {
            _ if text.is_empty() => {}
            Some(room) => {
                let nick = self.nick(session);
                self.publish(&room_topic(room), &format!("#{room} <{nick}> {text}"));
            }
            None => say(session, "! join a room first: /join ROOM".to_owned()),
        }
    }

    fn rename(&self, session: &SessionHandle, new: &str) {
        if let Err(why) = check_name(new) {
            return say(session, format!("! a nickname {why}"));
        }
        if new.starts_with("guest") {
            return say(
                session,
                "! nicknames starting with guest are taken".to_owned(),
            );
        }
        let mut directory = lock(&self.directory);
        if directory.by_nick.contains_key(new) {
            drop(directory);
            return say(session, format!("! {new} is taken"));
        }
        let Some((nick, _)) = directory.by_id.get_mut(&session.id()) else {
            return;
        };
        let old = std::mem::replace(nick, new.to_owned());
        directory.by_nick.remove(&old);
        directory.by_nick.insert(new.to_owned(), session.id());
        drop(directory);
        say(session, format!("* you are now {new}"));
        self.announce(&format!("* {old} is now {new}"));
    }

    fn join(&self, seat: &mut Seat, session: &SessionHandle, room: &str) {
        if let Err(why) = check_name(room) {
            return say(session, format!("! a room name {why}"));
        }
        if seat.room.as_deref() == Some(room) {
            return say(session, format!("* you are in #{room} already"));
        }
        if let Err(e) = session.subscribe(&room_topic(room)) {
            return say(session, format!("! cannot join #{room}: {e}"));
        }
        if let Some(old) = seat.room.replace(room.to_owned()) {
            self.leave(session, &old);
        }
        let nick = self.nick(session);
        self.publish(&room_topic(room), &format!("* {nick} joined #{room}"));
    }

    fn leave(&self, session: &SessionHandle, room: &str) {
        session.unsubscribe(&room_topic(room));
        let nick = self.nick(session);
        let line = format!("* {nick} left #{room}");
        self.publish(&room_topic(room), &line);
        say(session, line);
    }

    fn private(&self, session: &SessionHandle, rest: &str) {
        let Some((to, text)) = rest.split_once(' ') else {
            return say(session, "! usage: /msg NICK TEXT".to_owned());
        };
        let directory = lock(&self.directory);
        let target = directory
            .by_nick
            .get(to)
            .and_then(|id| directory.by_id.get(id))
            .map(|(_, handle)| handle.clone());
        let from = directory
            .by_id
            .get(&session.id())
            .map(|(nick, _)| nick.clone())
            .unwrap_or_default();
        drop(directory);
        let text = text.trim();
        match target {
            Some(target) => {
                // The recipient's queue may be full (its vhost's overflow
                // policy handles that) or it may have just left.
                if target
                    .try_send(Message::text(format!("(private) <{from}> {text}")))
                    .is_ok()
                {
                    say(session, format!("(to {to}) {text}"));
                } else {
                    say(session, format!("! {to} did not get it"));
                }
            }
            None => say(session, format!("! no such nick: {to}")),
        }
    }

    fn who(&self, session: &SessionHandle, room: &str) {
        let Some(context) = self.context.get() else {
            return;
        };
        let (topic, label) = if room.is_empty() {
            (ONLINE.to_owned(), "online".to_owned())
        } else {
            (room_topic(room), format!("#{room}"))
        };
        let Ok(presence) = context.presence(&topic) else {
            return;
        };
        let directory = lock(&self.directory);
        let mut nicks: Vec<&str> = presence
            .sessions
            .iter()
            .filter_map(|id| directory.by_id.get(id))
            .map(|(nick, _)| nick.as_str())
            .collect();
        nicks.sort_unstable();
        let line = format!("* {label}: {}", nicks.join(", "));
        drop(directory);
        say(session, line);
    }

    fn rooms(&self, session: &SessionHandle) {
        let Some(context) = self.context.get() else {
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
            say(session, "* no rooms yet: /join ROOM opens one".to_owned());
        } else {
            say(session, format!("* rooms: {}", rooms.join(", ")));
        }
    }
}

fn room_topic(room: &str) -> String {
    format!("room:{room}")
}

/// Nicknames and room names: 1 to 24 letters, digits, `-` or `_`.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("is 1 to 24 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("has only letters, digits, - and _");
    }
    Ok(())
}

/// Sends a line to one session. A full queue is the vhost's overflow
/// policy's business, and a closing session needs no answer.
fn say(session: &SessionHandle, line: String) {
    let _ = session.try_send(Message::text(line));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations that leave the maps
    // consistent, so a panic elsewhere does not make them unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The command line.
struct Args {
    listen: SocketAddr,
    seconds: Option<Duration>,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut parsed = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7681)),
            seconds: None,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--listen" => {
                    let v = value("--listen")?;
                    parsed.listen = v.parse().map_err(|_| {
                        format!("--listen: {v:?} is not an address like 127.0.0.1:7681")
                    })?;
                }
                "--seconds" => {
                    let v = value("--seconds")?;
                    let secs = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9)
                        .ok_or(format!("--seconds: {v:?} is not a number of seconds"))?;
                    parsed.seconds = Some(Duration::from_secs_f64(secs));
                }
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Some(parsed))
    }
}
