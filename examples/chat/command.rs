//! A client's line, parsed into a [`Command`] whose parts are already valid:
//! names follow the nickname rules, passwords have their length, history
//! counts their range. Pure code, tested below without sockets.

use std::fmt;

/// Longest line a client may send, in bytes. The vhost's message limit is
/// larger, so a longer line gets a `!` answer; the vhost closes the session
/// (1009) only for messages past its own limit.
pub(crate) const MAX_LINE: usize = 1000;

/// Longest nickname, account or room name, in bytes.
const MAX_NAME: usize = 24;

/// Password length in bytes: at least 8, and at most 128 so that nobody
/// makes us hash a megabyte.
const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 8..=128;

/// History lines when the client names no count, and the most it may ask for.
const HISTORY_DEFAULT: usize = 20;
const HISTORY_MAX: usize = 200;

/// Nicknames that guests get; chosen names may not look like them.
pub(crate) const GUEST_PREFIX: &str = "guest";

/// One line from a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// A message for the client's room.
    Say(String),
    Nick(Name),
    Join(Name),
    Leave,
    /// A private message. The recipient is any word: an unknown one is
    /// answered "no such nick", as before.
    Msg {
        to: String,
        text: String,
    },
    /// The online list, or a room's members.
    Who(Option<Name>),
    Rooms,
    Help,
    Quit,
    Register(Name, Password),
    Login(Name, Password),
    Logout,
    History(History),
    /// A blank line: nothing to do.
    Nothing,
}

/// What `/history` asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum History {
    /// The last `count` messages of the client's room.
    Room { count: usize },
    /// The last `count` private messages between the client and `with`.
    Private { with: Name, count: usize },
}

/// A nickname, account or room name: 1 to 24 letters, digits, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Name(String);

/// A password of 8 to 128 bytes. Its `Debug` never shows it, so that no log
/// line of a command can.
#[derive(PartialEq, Eq)]
pub(crate) struct Password(String);

impl Command {
    /// Parses one line; `Err` holds the `!` line that answers it.
    pub(crate) fn parse(line: &str) -> Result<Self, String> {
        if line.len() > MAX_LINE {
            return Err(format!("! a line is at most {MAX_LINE} bytes"));
        }
        let line = line.trim();
        let Some(command) = line.strip_prefix('/') else {
            return Ok(if line.is_empty() {
                Self::Nothing
            } else {
                Self::Say(line.to_owned())
            });
        };
        let (command, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = rest.trim();
        Ok(match command {
            "nick" => Self::Nick(Name::chosen(rest, "a nickname")?),
            "join" => Self::Join(Name::parse(rest, "a room name")?),
            "leave" => Self::Leave,
            "msg" => {
                let (to, text) = rest
                    .split_once(' ')
                    .ok_or("! usage: /msg NICK TEXT".to_owned())?;
                Self::Msg {
                    to: to.to_owned(),
                    text: text.trim().to_owned(),
                }
            }
            "who" if rest.is_empty() => Self::Who(None),
            "who" => Self::Who(Some(Name::parse(rest, "a room name")?)),
            "rooms" => Self::Rooms,
            "help" => Self::Help,
            "quit" => Self::Quit,
            "register" => {
                let (name, password) = credentials(rest, "/register")?;
                Self::Register(Name::chosen(name, "an account name")?, password)
            }
            "login" => {
                let (name, password) = credentials(rest, "/login")?;
                // Any name: an impossible one is simply not an account, and
                // gets the same answer as a wrong password.
                Self::Login(Name(name.to_owned()), password)
            }
            "logout" => Self::Logout,
            "history" => Self::History(History::parse(rest)?),
            other => return Err(format!("! unknown command /{other} (try /help)")),
        })
    }
}

impl History {
    fn parse(rest: &str) -> Result<Self, String> {
        let mut words = rest.split_whitespace();
        let first = words.next();
        let (with, count) = match first.and_then(|w| w.strip_prefix('@')) {
            Some(nick) => (Some(Name::parse(nick, "a nickname")?), words.next()),
            None => (None, first),
        };
        if words.next().is_some() {
            return Err("! usage: /history [N] or /history @NICK [N]".to_owned());
        }
        let count = match count {
            None => HISTORY_DEFAULT,
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| (1..=HISTORY_MAX).contains(n))
                .ok_or(format!("! /history: N is a number from 1 to {HISTORY_MAX}"))?,
        };
        Ok(match with {
            Some(with) => Self::Private { with, count },
            None => Self::Room { count },
        })
    }
}

impl Name {
    /// Any valid name; `what` names it in the `!` line.
    fn parse(name: &str, what: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!("! {what} is 1 to {MAX_NAME} characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("! {what} has only letters, digits, - and _"));
        }
        Ok(Self(name.to_owned()))
    }

    /// A name someone picks for themselves: valid, and not a guest's.
    fn chosen(name: &str, what: &str) -> Result<Self, String> {
        let name = Self::parse(name, what)?;
        if name.0.starts_with(GUEST_PREFIX) {
            return Err(format!("! names starting with {GUEST_PREFIX} are taken"));
        }
        Ok(name)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Password {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// `NAME PASSWORD`: the password is the rest of the line, spaces and all.
fn credentials<'a>(rest: &'a str, command: &str) -> Result<(&'a str, Password), String> {
    let (name, password) = rest
        .split_once(' ')
        .ok_or(format!("! usage: {command} NAME PASSWORD"))?;
    let password = password.trim_start();
    if !PASSWORD_BYTES.contains(&password.len()) {
        return Err(format!(
            "! a password is {} to {} bytes",
            PASSWORD_BYTES.start(),
            PASSWORD_BYTES.end()
        ));
    }
    Ok((name, Password(password.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name(s.to_owned())
    }

    #[test]
    fn plain_lines_are_room_messages_and_blank_ones_nothing() {
        assert_eq!(
            Command::parse("  hi there "),
            Ok(Command::Say("hi there".into()))
        );
        assert_eq!(Command::parse("   "), Ok(Command::Nothing));
    }

    #[test]
    fn register_and_login_take_the_rest_of_the_line_as_the_password() {
        assert_eq!(
            Command::parse("/register alice correct horse"),
            Ok(Command::Register(
                name("alice"),
                Password("correct horse".into())
            ))
        );
        assert_eq!(
            Command::parse("/login alice  correct horse"),
            Ok(Command::Login(
                name("alice"),
                Password("correct horse".into())
            ))
        );
    }

    #[test]
    fn passwords_are_8_to_128_bytes_and_never_shown() {
        let short = Command::parse("/register alice 1234567").unwrap_err();
        assert_eq!(short, "! a password is 8 to 128 bytes");
        let long = format!("/login alice {}", "x".repeat(129));
        assert_eq!(Command::parse(&long).unwrap_err(), short);
        assert!(Command::parse(&format!("/login alice {}", "x".repeat(128))).is_ok());
        assert_eq!(
            Command::parse("/register alice").unwrap_err(),
            "! usage: /register NAME PASSWORD"
        );
        let debug = format!("{:?}", Command::parse("/login bob hunter2hunter2"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn account_names_follow_the_nickname_rules() {
        assert_eq!(
            Command::parse("/register guest7 password1").unwrap_err(),
            "! names starting with guest are taken"
        );
        assert_eq!(
            Command::parse("/register a.b password1").unwrap_err(),
            "! an account name has only letters, digits, - and _"
        );
        assert_eq!(
            Command::parse(&format!("/nick {}", "n".repeat(25))).unwrap_err(),
            "! a nickname is 1 to 24 characters"
        );
    }

    #[test]
    fn history_counts_default_to_20_and_stay_within_1_to_200() {
        let room = |count| Ok(Command::History(History::Room { count }));
        assert_eq!(Command::parse("/history"), room(20));
        assert_eq!(Command::parse("/history 200"), room(200));
        assert_eq!(
            Command::parse("/history @bob 5"),
            Ok(Command::History(History::Private {
                with: name("bob"),
                count: 5
            }))
        );
        for bad in [
            "/history 0",
            "/history 201",
            "/history x",
            "/history @bob -1",
        ] {
            assert_eq!(
                Command::parse(bad).unwrap_err(),
                "! /history: N is a number from 1 to 200",
                "{bad}"
            );
        }
        assert!(Command::parse("/history 5 6").is_err());
        assert!(Command::parse("/history @ 5").is_err());
    }

    #[test]
    fn over_long_lines_and_unknown_commands_get_a_mistake_line() {
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(
            Command::parse(&long).unwrap_err(),
            "! a line is at most 1000 bytes"
        );
        assert_eq!(
            Command::parse("/dance").unwrap_err(),
            "! unknown command /dance (try /help)"
        );
    }
}
