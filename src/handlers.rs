//! The built-in HTTP handlers, by the names the configuration file uses.

#[cfg(feature = "toml-config")]
use crate::config::ProtocolRegistry;
#[cfg(feature = "toml-config")]
use crate::http::{Health, Index};
#[cfg(feature = "toml-config")]
use crate::metrics::MetricsHandler;

/// Registers `health`, `index` and `metrics`.
#[cfg(feature = "toml-config")]
pub(crate) fn register_builtin(r: &mut ProtocolRegistry) {
    r.http("health", Health);
    r.http("index", Index);
    r.http("metrics", MetricsHandler);
}
