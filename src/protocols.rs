//! Built-in protocols, mountable from code or from the TOML configuration.

mod echo;

pub use echo::Echo;
