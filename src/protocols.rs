//! Built-in protocols, mountable from code or from the TOML configuration.

mod echo;

pub use echo::Echo;

/// Registers the built-in protocols under their names.
#[cfg(feature = "toml-config")]
pub(crate) fn register_builtin(r: &mut crate::config::ProtocolRegistry) {
    r.protocol("echo", |_| Ok(Echo));
}
