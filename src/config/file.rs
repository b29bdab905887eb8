//! The TOML configuration format (being written).

/// Protocol factories by name.
#[derive(Debug, Default)]
pub struct ProtocolRegistry;

/// Loads a TOML configuration.
pub fn load_toml(
    _text: &str,
    _registry: &ProtocolRegistry,
) -> Result<super::Config, crate::ConfigError> {
    Err(crate::ConfigError::new("config", "not yet supported"))
}
