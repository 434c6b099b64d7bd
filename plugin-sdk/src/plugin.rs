//! What every plugin says about itself, and how its calls fail.

use std::fmt;

/// Who a plugin says it is. The export macros fill it from the plugin crate's
/// `Cargo.toml` (`name`, `version`, `description`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Stable plugin name, e.g. `json-source`.
    pub name: String,
    /// The plugin's own version (semver), e.g. `1.4.2`.
    pub version: String,
    /// One line saying what the plugin does.
    pub description: String,
}

/// Why a call failed, and whose move it is next.
///
/// ```
/// use sluice_plugin_sdk::PluginError;
/// let e = PluginError::InvalidConfig("columns[0] (id): missing key \"type\"".into());
/// assert_eq!(e.to_string(), "invalid configuration: columns[0] (id): missing key \"type\"");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginError {
    /// The plugin's configuration is wrong. The operator must fix it; retrying
    /// the same configuration fails again.
    InvalidConfig(String),
    /// A store or service is unavailable for now (connection lost, store
    /// restarting). The host retries later with backoff; nothing is lost.
    Retriable(String),
    /// Anything else. The host keeps the messages and retries with a longer
    /// backoff, logging an error for the operator.
    Fatal(String),
}

impl PluginError {
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidConfig(m) | PluginError::Retriable(m) | PluginError::Fatal(m) => m,
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            PluginError::Retriable(m) => write!(f, "retriable error: {m}"),
            PluginError::Fatal(m) => write!(f, "fatal error: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}
