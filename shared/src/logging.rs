//! Structured logs: JSON when Lambda's log format is JSON, text otherwise.
//!
//! Level from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`. Logs go to stderr so
//! stdout carries only EMF documents (Lambda sends both to CloudWatch Logs).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|l| l.to_lowercase())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init()
    } else {
        builder.without_time().with_ansi(false).try_init()
    };
    // A second init (tests) is harmless.
    drop(result);
}
