//! Built-in protocols, mountable from code or from the TOML configuration.
//!
//! | name        | what it does                                                  |
//! |-------------|---------------------------------------------------------------|
//! | `echo`      | sends every message back to its sender                        |
//! | `broadcast` | sends every message to every other session on the same path  |
//! | `increment` | pushes a counter every few milliseconds; `reset` restarts it  |
//! | `pubsub`    | topics through JSON control messages                          |
//!
//! Each one with options parses them with `from_options`, the same function
//! the configuration file's `[vhost.options.NAME]` table goes through, so a
//! bad value is refused the same way from code and from a file: with an error
//! that names the option.

mod broadcast;
mod echo;
mod increment;
mod pubsub;

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

pub use broadcast::{Broadcast, BroadcastState};
pub use echo::Echo;
pub use increment::{Increment, IncrementState};
pub use pubsub::Pubsub;

use crate::Options;

/// Options that the configuration loader handles for every protocol (the
/// bearer `token`), which a protocol's own parser must let through.
const GENERAL_OPTIONS: &[&str] = &["token"];

/// Refuses an option that is neither in `known` nor a general one, so that a
/// misspelt key is an error instead of a silently ignored setting.
fn check_known(options: &Options, known: &[&str]) -> Result<(), String> {
    match options
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !GENERAL_OPTIONS.contains(&k.as_str()))
    {
        Some(key) => Err(format!(
            "unknown option {key:?} (known: {})",
            known
                .iter()
                .chain(GENERAL_OPTIONS)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

/// Option `key` as `true` or `false`, or `default` when absent.
fn bool_option(options: &Options, key: &str, default: bool) -> Result<bool, String> {
    match options.get(key).map(|v| v.trim()) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!("{key}: expected true or false, got {other:?}")),
    }
}

/// Option `key` as a number within `range`, or `default` when absent.
fn number_option<T>(
    options: &Options,
    key: &str,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display,
{
    let Some(text) = options.get(key) else {
        return Ok(default);
    };
    let outside = || {
        format!(
            "{key}: must be a whole number from {} to {}, got {text:?}",
            range.start(),
            range.end()
        )
    };
    let value: T = text.trim().parse().map_err(|_| outside())?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(outside())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Options {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn unknown_options_are_named_and_token_is_let_through() {
        let o = options(&[("token", "x"), ("echo_self", "true")]);
        assert!(check_known(&o, &["echo_self"]).is_ok());
        let err = check_known(&options(&[("echo_slef", "true")]), &["echo_self"]).unwrap_err();
        assert!(err.contains("\"echo_slef\""), "{err}");
        assert!(err.contains("echo_self, token"), "{err}");
    }

    #[test]
    fn booleans_and_numbers_name_the_option() {
        let o = options(&[("a", "yes"), ("n", "5"), ("m", "x")]);
        assert!(bool_option(&o, "a", false).unwrap_err().starts_with("a: "));
        assert!(bool_option(&o, "missing", true).unwrap());
        assert_eq!(number_option(&o, "n", 1u64, 1..=10).unwrap(), 5);
        assert!(
            number_option(&o, "n", 1u64, 10..=20)
                .unwrap_err()
                .starts_with("n: ")
        );
        assert!(
            number_option(&o, "m", 1u64, 1..=10)
                .unwrap_err()
                .starts_with("m: ")
        );
        assert_eq!(number_option(&o, "missing", 7u64, 1..=10).unwrap(), 7);
    }
}
