//! Tidemark core library.
//!
//! Layers (see ARCHITECTURE.md): the decision core (`config`, `template`, `ddb`, `objects`,
//! `sqs`, `message`, `invalidation` key derivation and packing, `metrics`) is pure and
//! synchronous and knows no AWS SDK type; `pipeline` orchestrates; `ports` are the I/O
//! traits; `adapters` are the only code that performs I/O; `app` wires one handler per
//! function from those pieces.

pub mod adapters;
pub mod app;
pub mod config;
pub mod ddb;
pub mod enforce;
pub mod error;
pub mod explain;
pub mod flush;
pub mod invalidation;
pub mod keyhash;
pub mod lag;
pub mod lambda;
pub mod live;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod object_lag;
pub mod objects;
pub mod pipeline;
pub mod ports;
mod proptests;
pub mod regions;
pub mod replay;
pub mod replication_events;
pub mod residency;
mod sample_events;
pub mod samples;
pub mod settings;
pub mod sqs;
pub mod template;
pub mod wiring;

/// Wall-clock time in epoch milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Shared `main` plumbing for the function binaries.
pub mod runtime {
    /// Logs an init failure as one structured line and turns it into the process error, so
    /// Lambda reports it (Runtime.ExitError) with the message naming the setting.
    pub fn init_failed(
        function: &str,
        error: impl std::fmt::Display,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        tracing::error!(function, error = %error, "init failed");
        format!("{function}: init failed: {error}").into()
    }
}
