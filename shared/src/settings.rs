//! Per-function runtime settings from the environment (set by `template.yaml`).
//!
//! Read once at init, no network calls; every error names the variable.

use std::path::PathBuf;

use crate::config::{Config, ConfigErrors};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {var}: {message}")]
    Invalid { var: &'static str, message: String },
    #[error(transparent)]
    Config(#[from] ConfigErrors),
}

/// Reads a required variable.
pub fn required(var: &'static str) -> Result<String, SettingsError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(SettingsError::Missing(var)),
    }
}

pub fn optional(var: &'static str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The region this function runs in (`AWS_REGION`, set by Lambda).
pub fn region() -> Result<String, SettingsError> {
    required("AWS_REGION")
}

/// The configuration: the file compiled into the binary, or the local file named by
/// `TIDEMARK_CONFIG_PATH` (shipped next to the binary, or a test's own file).
pub fn config() -> Result<Config, SettingsError> {
    match optional("TIDEMARK_CONFIG_PATH") {
        Some(path) => Ok(Config::load(&PathBuf::from(path))?),
        None => Ok(Config::embedded()?),
    }
}

/// A boolean variable: `true`/`1` or `false`/`0`; absent means `default`.
pub fn flag(var: &'static str, default: bool) -> Result<bool, SettingsError> {
    match optional(var).as_deref() {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(SettingsError::Invalid {
            var,
            message: format!("expected true or false, found `{other}`"),
        }),
    }
}
