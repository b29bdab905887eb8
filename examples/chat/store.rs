//! Accounts and message history in SQLite, on a thread of their own.
//!
//! One connection, owned by one thread, fed by a bounded queue of jobs: the
//! loop never waits for SQLite. A single connection serialises writes anyway,
//! and one queue keeps them in the order they were made, so message ids
//! (which order the history) follow the order in which the loop delivered
//! the messages. A caller on the loop either queues a write and moves on
//! ([`Store::record`]) or awaits the answer ([`Store::call`]), which comes
//! back through a channel while the loop serves everyone else.
//!
//! The schema carries its version in `PRAGMA user_version`; [`Db::open`]
//! creates it on first start and refuses a database from a newer version of
//! this example.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

/// The schema this example writes; `PRAGMA user_version` holds it.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// Jobs that may wait for the database thread. Past that the store is busy:
/// a command is answered "try again" rather than queued without bound.
const QUEUE: usize = 1024;

/// Version 1: accounts, and every room and private message.
const SCHEMA_V1: &str = "
    CREATE TABLE users (
        name    TEXT PRIMARY KEY NOT NULL,
        hash    TEXT NOT NULL,    -- argon2id PHC string: parameters, salt and hash
        created INTEGER NOT NULL  -- unix time in milliseconds
    );
    CREATE TABLE messages (
        id        INTEGER PRIMARY KEY,  -- delivery order
        ts        INTEGER NOT NULL,     -- unix time in milliseconds
        sender    TEXT NOT NULL,
        room      TEXT,                 -- a room message, or
        recipient TEXT,                 -- a private one
        body      TEXT NOT NULL,
        CHECK ((room IS NULL) <> (recipient IS NULL))
    );
    CREATE INDEX messages_by_room ON messages (room, id);
    CREATE INDEX messages_by_pair ON messages (sender, recipient, id);
";

/// The last ?3 messages of room ?1, newest first (`messages_by_room`).
const ROOM_LAST: &str = "
    SELECT id, ts, sender, body FROM messages
    WHERE room = ?1
    ORDER BY id DESC LIMIT ?3";

/// The last ?3 private messages between ?1 and ?2, newest first, since ?1's
/// account was created (`messages_by_pair`, once per direction).
const PRIVATE_LAST: &str = "
    SELECT id, ts, sender, body FROM messages
    WHERE ((sender = ?1 AND recipient = ?2) OR (sender = ?2 AND recipient = ?1))
      AND ts >= (SELECT created FROM users WHERE name = ?1)
    ORDER BY id DESC LIMIT ?3";

/// A cloneable handle to the database thread; cheap to use from the loop.
#[derive(Clone)]
pub(crate) struct Store {
    jobs: SyncSender<Job>,
}

/// The database thread. [`stop`](Self::stop) finishes every job queued
/// before it, so nothing recorded is lost at exit.
pub(crate) struct Database {
    store: Store,
    thread: thread::JoinHandle<()>,
}

/// What the database held when it was opened.
pub(crate) struct Opened {
    pub(crate) accounts: Vec<String>,
    pub(crate) messages: i64,
}

/// The connection, as the jobs on the database thread see it.
pub(crate) struct Db {
    conn: Connection,
}

/// A message to record.
pub(crate) struct NewMessage {
    pub(crate) ts: i64,
    pub(crate) sender: String,
    pub(crate) to: To,
    pub(crate) body: String,
}

/// Where a message went.
pub(crate) enum To {
    Room(String),
    Nick(String),
}

/// A message read back for `/history`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// UTC, like `2026-01-31T12:00:00Z`.
    pub(crate) at: String,
    pub(crate) sender: String,
    pub(crate) body: String,
}

/// What the store knows of an account that login needs.
pub(crate) struct Account {
    pub(crate) hash: String,
}

/// Why the store could not do something.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// The job queue is full.
    Busy,
    /// The database thread has stopped (teardown, or it failed to open).
    Stopped,
    /// The database was written by a newer version of this example.
    NewerSchema(i64),
    Sql(rusqlite::Error),
    /// The database thread could not be started.
    Spawn(std::io::Error),
}

enum Job {
    Run(Box<dyn FnOnce(&mut Db) + Send>),
    Stop,
}

impl Database {
    /// Starts the database thread on `path` (in memory for `None`), which
    /// opens the file, creates or checks the schema, and reports back.
    pub(crate) fn open(path: Option<PathBuf>) -> Result<(Self, Opened), StoreError> {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let (opened_tx, opened) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("chat-db".to_owned())
            .spawn(move || {
                let db = Db::open(path.as_deref()).and_then(|db| {
                    let opened = Opened {
                        accounts: db.account_names()?,
                        messages: db.message_count()?,
                    };
                    Ok((db, opened))
                });
                match db {
                    Ok((db, o)) => {
                        let _ = opened_tx.send(Ok(o));
                        serve(db, &queue);
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            })
            .map_err(StoreError::Spawn)?;
        let opened = opened.recv().map_err(|_| StoreError::Stopped)??;
        let store = Store { jobs };
        Ok((Self { store, thread }, opened))
    }

    pub(crate) fn store(&self) -> Store {
        self.store.clone()
    }

    /// Lets the thread finish the queued jobs, then closes the database.
    pub(crate) fn stop(self) {
        // A blocking send: the host calls this after its loop has stopped.
        let _ = self.store.jobs.send(Job::Stop);
        if self.thread.join().is_err() {
            eprintln!("chat: the database thread panicked");
        }
    }
}

impl Store {
    /// Runs `job` on the database thread and awaits its answer. The loop is
    /// free meanwhile.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not cancel a job already queued: it runs,
    /// and its answer is dropped.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = async_channel::bounded(1);
        self.queue(Job::Run(Box::new(move |db| {
            let _ = tx.try_send(job(db));
        })))?;
        rx.recv()
            .await
            .map_err(|_| StoreError::Stopped)?
            .map_err(StoreError::Sql)
    }

    /// Queues `message` to be written, in the order of the calls, without
    /// waiting for it.
    pub(crate) fn record(&self, message: NewMessage) -> Result<(), StoreError> {
        self.queue(Job::Run(Box::new(move |db| {
            if let Err(e) = db.append(&message) {
                eprintln!("chat: a message was not recorded: {e}");
            }
        })))
    }

    fn queue(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::Busy,
            TrySendError::Disconnected(_) => StoreError::Stopped,
        })
    }
}

/// The database thread's loop: one job at a time, in queue order.
fn serve(mut db: Db, queue: &Receiver<Job>) {
    while let Ok(Job::Run(job)) = queue.recv() {
        job(&mut db);
    }
}

impl Db {
    /// Opens (or creates) the database and brings its schema up to
    /// [`SCHEMA_VERSION`].
    pub(crate) fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let conn = match path {
            Some(path) => {
                let conn = Connection::open(path)?;
                // Write-ahead logging: a commit appends to the log instead of
                // rewriting pages, and NORMAL syncs at checkpoints only. A
                // crash may lose the last messages, never corrupt the file.
                conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conn
            }
            None => Connection::open_in_memory()?,
        };
        let mut db = Self { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        match version {
            0 => {
                let tx = self.conn.transaction()?;
                tx.execute_batch(SCHEMA_V1)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
                Ok(())
            }
            SCHEMA_VERSION => Ok(()),
            // Later versions add their steps here: 1 => {...}, each in a
            // transaction that ends by setting the new user_version.
            newer => Err(StoreError::NewerSchema(newer)),
        }
    }

    pub(crate) fn account_names(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM users")?;
        stmt.query_map([], |row| row.get(0))?.collect()
    }

    fn message_count(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
    }

    /// Creates an account; `false` if the name is taken (the primary key
    /// decides, so two registrations of one name cannot both succeed).
    pub(crate) fn create_account(
        &self,
        name: &str,
        hash: &str,
        now: i64,
    ) -> rusqlite::Result<bool> {
        match self.conn.execute(
            "INSERT INTO users (name, hash, created) VALUES (?1, ?2, ?3)",
            params![name, hash, now],
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn account(&self, name: &str) -> rusqlite::Result<Option<Account>> {
        self.conn
            .query_row("SELECT hash FROM users WHERE name = ?1", [name], |row| {
                Ok(Account { hash: row.get(0)? })
            })
            .optional()
    }

    pub(crate) fn append(&self, m: &NewMessage) -> rusqlite::Result<()> {
        let (room, recipient) = match &m.to {
            To::Room(room) => (Some(room), None),
            To::Nick(nick) => (None, Some(nick)),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO messages (ts, sender, room, recipient, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![m.ts, m.sender, room, recipient, m.body])?;
        Ok(())
    }

    /// The last `count` messages of `room`, oldest first.
    pub(crate) fn room_history(&self, room: &str, count: usize) -> rusqlite::Result<Vec<Stored>> {
        self.history(ROOM_LAST, room, "", count)
    }

    /// The last `count` private messages between `me` and `other`, oldest
    /// first; only those since `me`'s account was created, so that nobody
    /// reads what a guest of the same name said before the account existed.
    pub(crate) fn private_history(
        &self,
        me: &str,
        other: &str,
        count: usize,
    ) -> rusqlite::Result<Vec<Stored>> {
        self.history(PRIVATE_LAST, me, other, count)
    }

    /// Runs a "last N" query (newest first, so that LIMIT keeps the right
    /// ones) and returns its rows oldest first.
    fn history(&self, last: &str, a: &str, b: &str, count: usize) -> rusqlite::Result<Vec<Stored>> {
        let sql = format!(
            "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ts / 1000, 'unixepoch'), sender, body
             FROM ({last}) ORDER BY id"
        );
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        stmt.query_map(params![a, b, count], |row| {
            Ok(Stored {
                at: row.get(0)?,
                sender: row.get(1)?,
                body: row.get(2)?,
            })
        })?
        .collect()
    }
}

/// Now, in unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy => f.write_str("the database queue is full"),
            Self::Stopped => f.write_str("the database thread has stopped"),
            Self::NewerSchema(v) => write!(
                f,
                "the database has schema version {v}, newer than this example's {SCHEMA_VERSION}"
            ),
            Self::Sql(e) => write!(f, "sqlite: {e}"),
            Self::Spawn(e) => write!(f, "cannot start the database thread: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        Db::open(None).expect("in-memory database")
    }

    fn say(db: &Db, ts: i64, sender: &str, to: To, body: &str) {
        db.append(&NewMessage {
            ts,
            sender: sender.into(),
            to,
            body: body.into(),
        })
        .unwrap();
    }

    fn bodies(stored: &[Stored]) -> Vec<&str> {
        stored.iter().map(|s| s.body.as_str()).collect()
    }

    #[test]
    fn a_new_database_gets_the_schema_and_its_version() {
        let db = db();
        let version: i64 = db
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert!(db.account_names().unwrap().is_empty());
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let mut db = db();
        db.conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(db.migrate(), Err(StoreError::NewerSchema(99))));
    }

    #[test]
    fn a_name_is_registered_once() {
        let db = db();
        assert!(db.create_account("alice", "h1", 1).unwrap());
        assert!(!db.create_account("alice", "h2", 2).unwrap());
        assert_eq!(db.account("alice").unwrap().unwrap().hash, "h1");
        assert!(db.account("bob").unwrap().is_none());
    }

    #[test]
    fn room_history_is_the_last_n_oldest_first() {
        let db = db();
        for (i, body) in ["one", "two", "three", "four"].into_iter().enumerate() {
            say(&db, i as i64, "alice", To::Room("lobby".into()), body);
        }
        say(&db, 9, "bob", To::Room("other".into()), "elsewhere");
        assert_eq!(
            bodies(&db.room_history("lobby", 3).unwrap()),
            ["two", "three", "four"]
        );
        assert_eq!(bodies(&db.room_history("lobby", 200).unwrap()).len(), 4);
        let first = &db.room_history("lobby", 4).unwrap()[0];
        assert_eq!(first.at, "1970-01-01T00:00:00Z");
        assert_eq!(first.sender, "alice");
    }

    #[test]
    fn private_history_is_both_directions_since_the_account_was_created() {
        let db = db();
        say(
            &db,
            5,
            "alice",
            To::Nick("bob".into()),
            "before alice's account",
        );
        db.create_account("alice", "h", 10).unwrap();
        say(&db, 11, "alice", To::Nick("bob".into()), "hi bob");
        say(&db, 12, "bob", To::Nick("alice".into()), "hi alice");
        say(&db, 13, "bob", To::Nick("carol".into()), "not for alice");
        say(&db, 14, "bob", To::Room("lobby".into()), "public");
        assert_eq!(
            bodies(&db.private_history("alice", "bob", 20).unwrap()),
            ["hi bob", "hi alice"]
        );
        // Without an account, no private history at all.
        assert!(db.private_history("bob", "alice", 20).unwrap().is_empty());
    }

    #[test]
    fn the_history_queries_use_their_indexes() {
        let db = db();
        for (query, index) in [
            (ROOM_LAST, "messages_by_room"),
            (PRIVATE_LAST, "messages_by_pair"),
        ] {
            let mut stmt = db
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
                .unwrap();
            let plan: Vec<String> = stmt
                .query_map(params!["alice", "bob", 5], |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(plan.iter().any(|l| l.contains(index)), "{plan:?}");
            assert!(
                !plan.iter().any(|l| l.starts_with("SCAN messages")),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn the_store_answers_from_its_thread_and_stop_keeps_what_was_recorded() {
        let dir = std::env::temp_dir().join(format!("wsgate-chat-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chat.db");
        let (database, opened) = Database::open(Some(path.clone())).unwrap();
        assert!(opened.accounts.is_empty());
        let store = database.store();
        for body in ["a", "b", "c"] {
            store
                .record(NewMessage {
                    ts: 1,
                    sender: "x".into(),
                    to: To::Room("r".into()),
                    body: body.into(),
                })
                .unwrap();
        }
        let made = async_io::block_on(store.call(|db| db.create_account("x", "h", 1)));
        assert!(made.unwrap());
        database.stop();
        assert!(matches!(
            async_io::block_on(store.call(|db| db.account_names())),
            Err(StoreError::Stopped)
        ));

        let (database, opened) = Database::open(Some(path)).unwrap();
        assert_eq!(opened.accounts, ["x"]);
        assert_eq!(opened.messages, 3);
        let history = async_io::block_on(database.store().call(|db| db.room_history("r", 20)));
        assert_eq!(bodies(&history.unwrap()), ["a", "b", "c"]);
        database.stop();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
