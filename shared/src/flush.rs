//! Flushing a source's cache keys by prefix, for when invalidations were given up.
//!
//! Rendering keys from the table cannot find what lost invalidations leave behind (keys of
//! deleted items, old e-mail values), so a flush deletes every key under each of the
//! source's template literal prefixes: `SCAN MATCH` on every node, then UNLINK in
//! rate-limited batches ([`crate::ports::Cache::flush_prefix`]).
//!
//! The cache is reachable only from inside its VPC, so the operator CLI sends a
//! [`FlushCommand`] through the region's invalidation queue and the cache-invalidator runs
//! it; `--local` runs [`run`] directly against a reachable cache.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::PortError;
use crate::ports::{Cache, FlushPlan};
use crate::template::Template;

/// The `command` value of a flush message.
pub const COMMAND: &str = "flush";
pub const VERSION: u32 = 1;

/// A flush request as it travels through the invalidation queue (raw, never via SNS).
///
/// `{"v":1,"command":"flush","source":"users","region":"eu-west-1",
/// "prefixes":["user:","user-email:"],"all":false,"requested_at_ms":…}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushCommand {
    pub v: u32,
    pub command: String,
    pub source: String,
    pub region: String,
    /// Literal prefixes to flush; ignored when `all`.
    pub prefixes: Vec<String>,
    /// Every key of the database.
    pub all: bool,
    pub requested_at_ms: u64,
}

impl FlushCommand {
    pub fn new(source: &str, region: &str, prefixes: Vec<String>, all: bool) -> Self {
        Self {
            v: VERSION,
            command: COMMAND.to_owned(),
            source: source.to_owned(),
            region: region.to_owned(),
            prefixes,
            all,
            requested_at_ms: crate::now_ms(),
        }
    }

    /// `Some` when `body` is a flush command (other messages are invalidations).
    pub fn parse(body: &str) -> Option<Result<Self, String>> {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            command: Option<&'a str>,
        }
        let probe: Probe<'_> = serde_json::from_str(body).ok()?;
        if probe.command != Some(COMMAND) {
            return None;
        }
        Some(match serde_json::from_str::<FlushCommand>(body) {
            Ok(c) if c.v != VERSION => Err(format!(
                "flush command version {} (expected {VERSION})",
                c.v
            )),
            Ok(c) if !c.all && c.prefixes.iter().any(String::is_empty) => Err(format!(
                "flush command for `{}` has an empty prefix without `all`",
                c.source
            )),
            Ok(c) => Ok(c),
            Err(e) => Err(format!(
                "malformed flush command: {}",
                crate::error::redact_serde(&e)
            )),
        })
    }

    /// What to SCAN for: the prefixes, or `""` (every key) with `all`.
    pub fn targets(&self) -> Vec<String> {
        if self.all {
            vec![String::new()]
        } else {
            self.prefixes.clone()
        }
    }
}

/// Why a source cannot be flushed selectively.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("no table or bucket named `{0}` in the configuration")]
    UnknownSource(String),
    #[error(
        "template `{template}` of `{name}` starts with a placeholder: its keys share no literal prefix, so `{name}` cannot be flushed selectively (use --all)"
    )]
    NoLiteralPrefix { name: String, template: String },
}

fn templates<'c>(config: &'c Config, source: &str) -> Option<&'c [Template]> {
    if let Some(t) = config.tables.iter().find(|t| t.name == source) {
        return Some(&t.cache_keys);
    }
    config
        .buckets
        .iter()
        .find(|b| b.name == source)
        .map(|b| b.cache_keys.as_slice())
}

/// The literal prefixes of `source`'s templates, without duplicates or prefixes another
/// one already covers, in configuration order.
pub fn prefixes(config: &Config, source: &str) -> Result<Vec<String>, PrefixError> {
    let templates =
        templates(config, source).ok_or_else(|| PrefixError::UnknownSource(source.to_owned()))?;
    let mut all: Vec<String> = Vec::new();
    for t in templates {
        let p = t.literal_prefix();
        if p.is_empty() {
            return Err(PrefixError::NoLiteralPrefix {
                name: source.to_owned(),
                template: t.source().to_owned(),
            });
        }
        all.push(p.to_owned());
    }
    let covered = |p: &String, all: &[String]| {
        all.iter()
            .any(|q| q != p && p.starts_with(q.as_str()) && q.len() < p.len())
    };
    let mut out: Vec<String> = Vec::new();
    for p in &all {
        if !covered(p, &all) && !out.contains(p) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Templates that cannot be flushed selectively: `(source, template)`, for `tidemark check`.
pub fn unflushable(config: &Config) -> Vec<(String, String)> {
    let tables = config
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t.cache_keys.as_slice()));
    let buckets = config
        .buckets
        .iter()
        .map(|b| (b.name.as_str(), b.cache_keys.as_slice()));
    tables
        .chain(buckets)
        .flat_map(|(source, ts)| {
            ts.iter()
                .filter(|t| t.literal_prefix().is_empty())
                .map(move |t| (source.to_owned(), t.source().to_owned()))
        })
        .collect()
}

/// Keys removed per prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub removed: Vec<(String, u64)>,
}

impl FlushReport {
    pub fn total(&self) -> u64 {
        self.removed.iter().map(|(_, n)| n).sum()
    }
}

/// Runs a flush: each target prefix in turn; `progress(prefix, removed so far)`.
pub async fn run(
    cache: &dyn Cache,
    command: &FlushCommand,
    plan: FlushPlan,
    progress: &(dyn Fn(&str, u64) + Send + Sync),
) -> Result<FlushReport, PortError> {
    let mut report = FlushReport::default();
    for prefix in command.targets() {
        let each = |n: u64| progress(&prefix, n);
        let n = cache.flush_prefix(&prefix, plan, &each).await?;
        report.removed.push((prefix.clone(), n));
    }
    Ok(report)
}

/// Sends the command to the region's invalidation queue (raw message).
pub async fn send(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    command: &FlushCommand,
) -> Result<String, String> {
    let body = serde_json::to_string(command).map_err(|e| format!("flush command: {e}"))?;
    let out = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "SendMessage {queue_url}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })?;
    Ok(out.message_id().unwrap_or_default().to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(keys: &str) -> Config {
        Config::parse(
            "t.toml",
            &format!(
                r#"[deployment]
regions = ["us-east-1", "eu-west-1"]

[residency]
unmatched = "anywhere"

[[tables]]
name = "users"
partition_key = {{ name = "pk", type = "S" }}
attributes = ["email"]
cache_keys = {keys}
"#
            ),
        )
        .unwrap()
    }

    #[test]
    fn prefixes_are_the_templates_literal_heads() {
        let c = config(r#"["user:{pk}", "user-email:{email}", "user:{pk}:profile"]"#);
        assert_eq!(prefixes(&c, "users").unwrap(), ["user:", "user-email:"]);
        assert!(unflushable(&c).is_empty());
        assert_eq!(
            prefixes(&c, "nope"),
            Err(PrefixError::UnknownSource("nope".into()))
        );
    }

    #[test]
    fn a_template_without_literal_prefix_cannot_be_flushed_selectively() {
        let c = config(r#"["user:{pk}", "{email}"]"#);
        assert!(matches!(
            prefixes(&c, "users"),
            Err(PrefixError::NoLiteralPrefix { .. })
        ));
        assert_eq!(
            unflushable(&c),
            [("users".to_owned(), "{email}".to_owned())]
        );
    }

    #[test]
    fn flush_commands_are_told_from_invalidations() {
        let cmd = FlushCommand::new("users", "eu-west-1", vec!["user:".into()], false);
        let body = serde_json::to_string(&cmd).unwrap();
        assert_eq!(FlushCommand::parse(&body), Some(Ok(cmd)));
        assert_eq!(FlushCommand::parse(r#"{"v":1,"keys":["a"]}"#), None);
        assert!(matches!(
            FlushCommand::parse(r#"{"command":"flush","v":1}"#),
            Some(Err(_))
        ));
        let empty = FlushCommand::new("users", "eu-west-1", vec![String::new()], false);
        let body = serde_json::to_string(&empty).unwrap();
        assert!(matches!(FlushCommand::parse(&body), Some(Err(_))));
    }
}
