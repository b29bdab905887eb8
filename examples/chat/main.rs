//! The multi-client chat room, complete: accounts, login, rooms, nicknames,
//! private messages, the online list and the chat history, with users and
//! history in SQLite; written against wsgate's public API only. It shows the
//! rule that matters most when a gateway lives on someone else's loop:
//! **blocking work never runs on the loop**.
//!
//! Every line a client sends is a command or a message for its room:
//!
//! ```text
//! /register NAME PASSWORD   create an account and log in (password 8 to 128 bytes)
//! /login NAME PASSWORD      log in; the session takes NAME as its nickname
//! /logout                   back to a guest
//! /nick NAME                take a nickname (letters, digits, - and _, at most 24)
//! /join ROOM                enter ROOM (and leave the one you were in)
//! /leave                    leave your room
//! /msg NICK TEXT            a private message
//! /who                      who is online
//! /who ROOM                 who is in ROOM
//! /rooms                    the rooms that have someone in them
//! /history [N]              the last N (default 20, at most 200) messages of your room
//! /history @NICK [N]        the last N private messages between you and NICK
//! /help                     this list
//! /quit                     goodbye (Close 1000)
//! anything else             a message to everyone in your room
//! ```
//!
//! The server answers with lines that start with `*` (notices), `!`
//! (mistakes), `#ROOM <NICK>` (room messages), `(private) <NICK>` and
//! `(to NICK)` (private messages received and sent), and `[TIME] <NICK>`
//! (history, times in UTC).
//!
//! Guests (`guestN`) may chat and pick a nickname, unless the example runs
//! with `--accounts-only`; a name that belongs to an account is taken only
//! by logging in. Logging in as an account that another session is logged in
//! as takes it over: the other session is told and closed (1000). Private
//! history needs a login and covers the time since the account exists.
//!
//! # Off the loop
//!
//! The protocol's callbacks run on the host's loop, which serves every
//! client: one callback that waits stalls them all. A password hash (argon2,
//! tens of milliseconds of CPU) and a database call (SQLite, a disk that may
//! be slow) both wait, so neither ever runs in a callback:
//!
//! - the `message` callback only parses the line and queues it for the
//!   session's *clerk*, a task spawned with [`SessionHandle::spawn`] that
//!   carries out the session's commands in order;
//! - the clerk hashes and verifies passwords on `blocking`'s thread pool
//!   (`blocking::unblock`; one fewer at a time than there are cores, so that
//!   the loop keeps one) and sends every SQL statement to the database
//!   thread, which owns the one SQLite connection; it awaits the answer while
//!   the loop serves everyone else, then answers through the session's
//!   [`SessionHandle`];
//! - one session's commands keep their order (its queue waits behind the
//!   command in flight); other sessions never wait for it. While twenty
//!   clients register at once, a `/who` is answered at once (tests/chat.rs
//!   checks the order);
//! - a room message is published first and recorded afterwards, by a queued
//!   write that nobody awaits.
//!
//! Rooms are topics: joining subscribes the session
//! ([`SessionHandle::subscribe`]), a room message is one
//! [`ContextHandle::publish`] whose payload every member's queue shares, and
//! `/who ROOM` is the topic's [`ContextHandle::presence`]. Every session is
//! also subscribed to an `online` topic, whose presence is the online list
//! and through which arrivals, departures and nickname changes are
//! announced. Private messages go straight to the recipient's
//! [`SessionHandle`], found in the directory that the protocol keeps.
//!
//! # Storage
//!
//! `--db PATH` keeps accounts and history in an SQLite file (created with
//! its schema on first start; `PRAGMA user_version` holds the schema
//! version for later migrations); without it the database is in memory and
//! forgotten at exit. Passwords are stored only as argon2id hashes (default
//! parameters, a random salt each) and never printed.
//!
//! # Teardown
//!
//! The host's, in the strict order of `examples/foreign_loop.rs`: on SIGINT
//! or SIGTERM (with the `signals` feature, on by default), or when
//! `--seconds` have elapsed, destroy the context (every client gets Close
//! 1001), stop running the loop, drain it, print the drain report; then stop
//! the database thread, which first writes everything still queued.
//!
//! ```text
//! cargo run --example chat -- [--seconds N] [--listen ADDR] [--db PATH] [--accounts-only]
//! ```
//!
//! `--listen` defaults to 127.0.0.1:7681 (`127.0.0.1:0` picks a free port; the
//! bound address is printed as `listening on ADDR`). Without `--seconds` the
//! example serves until Ctrl-C. Try it with two terminals running
//! `websocat ws://127.0.0.1:7681/chat`.

mod clerk;
mod command;
mod password;
mod protocol;
mod store;

use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZero;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_executor::Executor;
use async_io::Timer;
use futures_lite::future;
use wsgate::{Config, Context, Limits, Mount, VhostConfig};

use crate::password::Passwords;
use crate::protocol::{Chat, Directory, Shared};
use crate::store::{Database, SCHEMA_VERSION};

/// How long the drain may wait for the clients' answers to our Close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The vhost's bound on one message. Lines past the chat's own limit
/// ([`command::MAX_LINE`]) but within this one get a `!` answer; longer
/// messages close the session (1009), as with any wsgate vhost.
const MAX_MESSAGE: usize = 16 * 1024;

const USAGE: &str = "usage: chat [--seconds N] [--listen ADDR] [--db PATH] [--accounts-only]";

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
            eprintln!("chat: {}", chain(e.as_ref()));
            if let Some(wsgate::Error::Bind { .. }) = e.downcast_ref() {
                eprintln!("chat: try another address, or --listen 127.0.0.1:0 for a free port");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    // Start-up work that blocks runs before the loop does, and off this
    // thread too: the dummy password hash on the blocking pool while the
    // database thread opens the file.
    // Hashes run one fewer at a time than there are cores, so that the loop
    // keeps a core of its own during a burst of logins.
    let cores = std::thread::available_parallelism().map_or(2, NonZero::get);
    let passwords = blocking::unblock(move || Passwords::new(cores.saturating_sub(1)));
    let (database, opened) = Database::open(args.db.clone())?;
    let passwords = async_io::block_on(passwords)?;
    match &args.db {
        Some(path) => println!(
            "database {} (schema version {SCHEMA_VERSION}): {} accounts, {} messages",
            path.display(),
            opened.accounts.len(),
            opened.messages
        ),
        None => println!("database in memory (give --db PATH to keep it)"),
    }

    let ex = Executor::new();
    let context = Arc::new(OnceLock::new());
    let vhost = VhostConfig::builder("default")
        .listen(args.listen)
        .limits(
            Limits::default()
                .max_message_size(MAX_MESSAGE)
                .max_frame_size(MAX_MESSAGE),
        )
        .protocol(Chat::new(Shared {
            context: context.clone(),
            directory: Mutex::new(Directory::new(opened.accounts)),
            store: database.store(),
            passwords,
            accounts_only: args.accounts_only,
        }))
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
    // Every session has closed: what they recorded is queued, and the
    // database thread writes it before it stops.
    database.stop();
    std::io::stdout().flush()?;
    #[cfg(feature = "signals")]
    drop(signal_task);
    drop(ex);
    Ok(())
}

/// An error and its causes, `: `-separated (the OS's reason for a failed
/// bind, say).
fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The command line.
struct Args {
    listen: SocketAddr,
    seconds: Option<Duration>,
    db: Option<PathBuf>,
    accounts_only: bool,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut parsed = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7681)),
            seconds: None,
            db: None,
            accounts_only: false,
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
                "--db" => parsed.db = Some(PathBuf::from(value("--db")?)),
                "--accounts-only" => parsed.accounts_only = true,
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Some(parsed))
    }
}
