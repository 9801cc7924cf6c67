//! The one declarative configuration file (`tidemark.toml`).
//!
//! Parsing is strict (`deny_unknown_fields`) and validation is total: every problem is
//! reported as a [`ConfigError`] naming the file, the source or rule, and the field. A file
//! that does not parse (syntax, an unknown field, a value of the wrong shape) yields that
//! one error; a file that parses yields every problem at once ([`ConfigErrors`]).
//! Nothing here performs I/O except [`Config::load`], which reads one local file.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::regions;
use crate::template::{Template, TemplateError};

/// The configuration compiled into every function (see ARCHITECTURE.md, "Configuration").
pub const EMBEDDED: &str = include_str!("../../tidemark.toml");
/// Name used in error messages for [`EMBEDDED`].
pub const EMBEDDED_NAME: &str = "tidemark.toml (embedded)";

/// A configuration problem, precise enough to fix without reading code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{file}: {location}field `{field}`: {message}")]
pub struct ConfigError {
    pub file: String,
    /// `table "users", ` / `bucket "assets", rule "eu-only", ` or empty for top-level fields.
    pub location: String,
    pub field: String,
    pub message: String,
}

/// Every problem of one file, in file order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The first problem (there is always one).
    pub fn first(&self) -> Option<&ConfigError> {
        self.0.first()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// One line: the problems separated by `; ` (init logs stay one line per failure).
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Raw shape of the file; `Config` is the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    deployment: Deployment,
    residency: ResidencyDefaults,
    #[serde(default)]
    tables: Vec<RawTable>,
    #[serde(default)]
    buckets: Vec<RawBucket>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Every region Tidemark is deployed in; each is a peer of the others.
    pub regions: Vec<String>,
    /// CloudWatch namespace of every metric.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Key prefix reserved for heartbeats (table partition keys and object keys).
    #[serde(default = "default_heartbeat_prefix")]
    pub heartbeat_prefix: String,
    /// Heartbeat older than this (seconds) counts as a stall in alarms and the simulation.
    #[serde(default = "default_stall_after")]
    pub stall_after_seconds: u64,
    /// A peer whose own heartbeat (read in the peer's region) is older than this (seconds),
    /// or unreadable, is down: the canary emits `PeerDown` and no staleness for it.
    #[serde(default = "default_peer_down_after")]
    pub peer_down_after_seconds: u64,
    /// Staleness (seconds) above which a region counts as serving stale data: the
    /// threshold of the staleness alarms and of the Route 53 health-check alarm.
    #[serde(default = "default_stale_after")]
    pub stale_after_seconds: u64,
    /// Longest cache key (UTF-8 bytes) a template may render. A record that renders a
    /// longer one is rejected (dead-lettered with the reason) instead of being retried
    /// until the stream gives up: a key too large for any message can never be published.
    #[serde(default = "default_max_cache_key_bytes")]
    pub max_cache_key_bytes: usize,
    /// Seconds between canary ticks: the minute's schedule queues the ticks in between as
    /// delayed messages (1–60, dividing 60).
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval_seconds: u32,
}

/// Default of `deployment.max_cache_key_bytes`.
pub const DEFAULT_MAX_CACHE_KEY_BYTES: usize = 1024;
/// Largest `deployment.max_cache_key_bytes`: such a key fits in one invalidation message
/// even if every byte must be escaped twice (the packing's worst case).
pub const MAX_CACHE_KEY_BYTES: usize = 32 * 1024;

fn default_max_cache_key_bytes() -> usize {
    DEFAULT_MAX_CACHE_KEY_BYTES
}

fn default_namespace() -> String {
    "Tidemark".to_owned()
}
fn default_heartbeat_prefix() -> String {
    "tidemark-heartbeat".to_owned()
}
fn default_stall_after() -> u64 {
    300
}
fn default_peer_down_after() -> u64 {
    60
}
fn default_stale_after() -> u64 {
    60
}
fn default_heartbeat_interval() -> u32 {
    10
}

/// What happens to data no residency rule matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyDefaults {
    /// Where data that no rule matches may live. Required, so the choice is explicit.
    pub unmatched: Unmatched,
    /// Hash keys (SHA-256 prefix) in logs and alerts when keys themselves carry personal data.
    #[serde(default)]
    pub hash_keys_in_alerts: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unmatched {
    /// Unmatched data may live in every region.
    Anywhere,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    partition_key: KeyAttribute,
    #[serde(default)]
    sort_key: Option<KeyAttribute>,
    /// Non-key attributes that templates and rules may name.
    #[serde(default)]
    attributes: Vec<String>,
    #[serde(default)]
    cache_keys: Vec<String>,
    /// A global table replicates itself: its invalidations stay in each region.
    #[serde(default = "yes")]
    replicated: bool,
    #[serde(default)]
    canary: Canary,
    #[serde(default)]
    app_attributes: AppAttributes,
    #[serde(default)]
    residency: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucket {
    name: String,
    /// Bucket name per region; `{region}` is replaced, e.g. `acme-assets-{region}`.
    bucket: String,
    #[serde(default)]
    cache_keys: Vec<String>,
    #[serde(default = "yes")]
    replicated: bool,
    #[serde(default)]
    canary: Canary,
    /// Non-replicated bucket in the same region for the `hold` action (`{region}` allowed).
    #[serde(default)]
    quarantine_bucket: Option<String>,
    #[serde(default)]
    lag: ObjectLag,
    #[serde(default)]
    residency: Vec<RawRule>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAttribute {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: KeyType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    S,
    N,
    B,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Write and read heartbeats for this source.
    #[serde(default)]
    pub enabled: bool,
}

/// Default of `lag.origin_region` (buckets).
pub const DEFAULT_ORIGIN_REGION_METADATA: &str = "origin-region";
/// Default of `lag.written_at_ms` (buckets).
pub const DEFAULT_WRITTEN_AT_METADATA: &str = "written-at-ms";

fn default_origin_region_metadata() -> String {
    DEFAULT_ORIGIN_REGION_METADATA.to_owned()
}
fn default_written_at_metadata() -> String {
    DEFAULT_WRITTEN_AT_METADATA.to_owned()
}

/// Object replication lag of a bucket's application objects, from the user metadata the
/// application writes on each object (S3 replication copies it to the replicas).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLag {
    /// Measure every replica that arrives here: one HeadObject per new object version of
    /// the bucket (an event does not tell whether a version is a replica).
    #[serde(default)]
    pub enabled: bool,
    /// User metadata (name without `x-amz-meta-`) holding the region that wrote the object.
    #[serde(default = "default_origin_region_metadata")]
    pub origin_region: String,
    /// User metadata holding the write time in epoch milliseconds.
    #[serde(default = "default_written_at_metadata")]
    pub written_at_ms: String,
}

impl Default for ObjectLag {
    fn default() -> Self {
        Self {
            enabled: false,
            origin_region: default_origin_region_metadata(),
            written_at_ms: default_written_at_metadata(),
        }
    }
}

/// Attributes the application writes that tell where and when a change happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppAttributes {
    /// Attribute holding the region that wrote the item.
    #[serde(default)]
    pub origin_region: Option<String>,
    /// Attribute holding the write time in epoch milliseconds (type N).
    #[serde(default)]
    pub written_at_ms: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match")]
    matcher: Matcher,
    allowed_regions: Vec<String>,
    action: Action,
    /// `delete-replica` touches only objects S3 marked `REPLICA` unless this is false.
    #[serde(default = "yes")]
    replicas_only: bool,
}

/// What a residency rule matches on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Matcher {
    /// Partition key (tables) or object key (buckets) starts with this.
    KeyPrefix(String),
    /// An item attribute equals a value.
    Attribute { name: String, equals: String },
    /// An object tag equals a value.
    Tag { name: String, equals: String },
    /// User metadata (`x-amz-meta-*`, name without the prefix) equals a value.
    Metadata { name: String, equals: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Metric, alert, log. The only action for tables: a delete in a global table deletes everywhere.
    Report,
    /// Delete this object version in this region (never replicated; the origin is untouched).
    DeleteReplica,
    /// Copy the version into the quarantine bucket, then delete it here.
    Hold,
    /// Same as `report`, for buckets.
    Alert,
}

// ---------------------------------------------------------------- validated form

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub deployment: Deployment,
    pub residency: ResidencyDefaults,
    pub tables: Vec<Table>,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub partition_key: KeyAttribute,
    pub sort_key: Option<KeyAttribute>,
    pub attributes: Vec<String>,
    pub cache_keys: Vec<Template>,
    pub replicated: bool,
    pub canary: Canary,
    pub app_attributes: AppAttributes,
    pub residency: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Bucket {
    pub name: String,
    pub bucket_pattern: String,
    pub cache_keys: Vec<Template>,
    pub replicated: bool,
    pub canary: Canary,
    pub quarantine_bucket: Option<String>,
    pub lag: ObjectLag,
    pub residency: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub allowed_regions: Vec<String>,
    pub action: Action,
    pub replicas_only: bool,
}

/// Whether an item with this partition key value is a canary heartbeat (measured, never
/// invalidated): `<prefix>#<region>`. The stream-processor and `tidemark explain` both
/// decide with this. The separator is part of the match, so an item named `<prefix>.png`
/// is an ordinary item.
pub fn is_heartbeat_item(heartbeat_prefix: &str, partition_key: &str) -> bool {
    partition_key
        .strip_prefix(heartbeat_prefix)
        .is_some_and(|rest| rest.starts_with('#'))
}

/// Whether an object key is a canary heartbeat's (measured, never invalidated):
/// `<prefix>/<region>`.
pub fn is_heartbeat_object(heartbeat_prefix: &str, key: &str) -> bool {
    key.strip_prefix(heartbeat_prefix)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Placeholders an object template may use.
pub const OBJECT_PLACEHOLDERS: &[&str] = &["key", "dir", "file", "version"];

impl Bucket {
    /// The bucket's name in `region`.
    pub fn bucket_in(&self, region: &str) -> String {
        self.bucket_pattern.replace("{region}", region)
    }
    pub fn quarantine_in(&self, region: &str) -> Option<String> {
        self.quarantine_bucket
            .as_ref()
            .map(|q| q.replace("{region}", region))
    }
}

impl Table {
    /// Attribute names templates and rules may use: keys first, then declared attributes.
    pub fn declared(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.partition_key.name.as_str())
            .chain(self.sort_key.iter().map(|k| k.name.as_str()))
            .chain(self.attributes.iter().map(String::as_str))
    }
}

impl Config {
    /// Reads and validates a local file; the path is named in every error.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            location: String::new(),
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// The configuration compiled into the binary.
    pub fn embedded() -> Result<Self, ConfigErrors> {
        Self::parse(EMBEDDED_NAME, EMBEDDED)
    }

    /// Parses and validates `text`; `file` is only used in messages. Every problem is
    /// reported, not only the first.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigErrors> {
        let raw = parse_raw(file, text).map_err(ConfigErrors::from)?;
        validate(file, raw)
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The configured bucket whose name in `region` is `bucket`.
    pub fn bucket_by_name(&self, region: &str, bucket: &str) -> Option<&Bucket> {
        self.buckets.iter().find(|b| b.bucket_in(region) == bucket)
    }

    /// Regions other than `region`.
    pub fn peers<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.deployment
            .regions
            .iter()
            .map(String::as_str)
            .filter(move |r| *r != region)
    }
}

fn parse_raw(file: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        location: String::new(),
        field: "(syntax)".into(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let path = e.path().clone();
        let inner = e.into_inner();
        let message = inner.message().to_owned();
        // For an unknown field the path ends at its parent; name the field itself.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_owned);
        let (location, mut field) = locate(text, &path);
        // Depending on the format, the path ends at the unknown field or at its parent.
        if let Some(name) = unknown
            && field.rsplit('.').next() != Some(name.as_str())
        {
            field = if field.is_empty() {
                name
            } else {
                format!("{field}.{name}")
            };
        }
        ConfigError {
            file: file.to_owned(),
            location,
            field: if field.is_empty() {
                "(document)".into()
            } else {
                field
            },
            message,
        }
    })
}

/// Turns a serde path like `tables[1].residency[0].allowed_regions` into
/// (`table "orders", rule "eu-only", `, `allowed_regions`), using names from the text.
fn locate(text: &str, path: &serde_path_to_error::Path) -> (String, String) {
    use serde_path_to_error::Segment;
    let untyped: Option<toml::Table> = toml::from_str(text).ok();
    let mut location = String::new();
    let mut field: Vec<String> = Vec::new();
    let mut node: Option<&toml::Value> = None;
    let mut section: Option<&str> = None;
    for seg in path.iter() {
        match seg {
            Segment::Map { key } => {
                node = match node {
                    None => untyped.as_ref().and_then(|t| t.get(key.as_str())),
                    Some(v) => v.get(key.as_str()),
                };
                section = Some(match key.as_str() {
                    "tables" => "table",
                    "buckets" => "bucket",
                    "residency" => "rule",
                    _ => "",
                });
                field.push(key.clone());
            }
            Segment::Seq { index } => {
                node = node.and_then(|v| v.get(*index));
                let name = node.and_then(|v| v.get("name")).and_then(|v| v.as_str());
                match (section, name) {
                    (Some(kind), Some(name)) if !kind.is_empty() => {
                        field.pop();
                        location.push_str(&format!("{kind} \"{name}\", "));
                    }
                    _ => {
                        if let Some(last) = field.last_mut() {
                            last.push_str(&format!("[{index}]"));
                        }
                    }
                }
            }
            Segment::Enum { variant } => field.push(variant.clone()),
            Segment::Unknown => {}
        }
    }
    (location, field.join("."))
}

struct Checker<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn fail(&mut self, location: &str, field: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            location: location.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn region_list(
        &mut self,
        location: &str,
        field: &str,
        regions_: &[String],
        deployed: &[String],
    ) {
        if regions_.is_empty() {
            self.fail(location, field, "must name at least one region");
        }
        for r in regions_ {
            if !regions::is_known(r) {
                self.fail(location, field, format!("unknown region `{r}`"));
            } else if !deployed.is_empty() && !deployed.contains(r) {
                self.fail(
                    location,
                    field,
                    format!("region `{r}` is not in deployment.regions"),
                );
            }
        }
    }

    fn templates(&mut self, location: &str, sources: &[String], allowed: &[&str]) -> Vec<Template> {
        let mut out = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            let field = format!("cache_keys[{i}]");
            match Template::parse(src) {
                Ok(t) => {
                    for p in t.placeholders() {
                        if !allowed.contains(&p) {
                            self.fail(
                                location,
                                &field,
                                format!(
                                    "placeholder `{{{p}}}` in `{src}` names no declared attribute (declared: {})",
                                    allowed.join(", ")
                                ),
                            );
                        }
                    }
                    out.push(t);
                }
                Err(e) => self.fail(location, &field, template_message(src, &e)),
            }
        }
        out
    }

    fn rules(
        &mut self,
        location: &str,
        raw: Vec<RawRule>,
        deployed: &[String],
        table: Option<&[&str]>,
    ) -> Vec<Rule> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for rule in raw {
            let here = format!("{location}rule \"{}\", ", rule.name);
            if rule.name.trim().is_empty() {
                self.fail(location, "residency.name", "a rule needs a non-empty name");
            }
            if !seen.insert(rule.name.clone()) {
                self.fail(&here, "name", "duplicate rule name in this source");
            }
            self.region_list(&here, "allowed_regions", &rule.allowed_regions, deployed);
            match (&rule.matcher, table) {
                (Matcher::Attribute { name, .. }, Some(declared))
                    if !declared.contains(&name.as_str()) =>
                {
                    self.fail(
                        &here,
                        "match.attribute.name",
                        format!(
                            "attribute `{name}` is not declared by the table (declared: {})",
                            declared.join(", ")
                        ),
                    )
                }
                (Matcher::Tag { .. } | Matcher::Metadata { .. }, Some(_)) => self.fail(
                    &here,
                    "match",
                    "tables can match on key_prefix or attribute only",
                ),
                (Matcher::Attribute { .. }, None) => self.fail(
                    &here,
                    "match",
                    "buckets can match on key_prefix, tag or metadata only",
                ),
                _ => {}
            }
            if table.is_some() && rule.action != Action::Report {
                self.fail(
                    &here,
                    "action",
                    "tables support only `report`: a delete in a global table deletes in every region",
                );
            }
            if table.is_none() && rule.action == Action::Report {
                self.fail(
                    &here,
                    "action",
                    "buckets use `alert`, `delete-replica` or `hold`",
                );
            }
            // First matching rule wins: a rule that an earlier one always beats is dead.
            if let Some(earlier) = out
                .iter()
                .find(|e: &&Rule| covers(&e.matcher, &rule.matcher))
            {
                let field = match rule.matcher {
                    Matcher::KeyPrefix(_) => "match.key_prefix",
                    _ => "match",
                };
                self.fail(
                    &here,
                    field,
                    format!(
                        "can never match: earlier rule \"{}\" ({}) matches everything {} would (the first matching rule wins)",
                        earlier.name,
                        earlier.matcher,
                        rule.matcher
                    ),
                );
            }
            out.push(Rule {
                name: rule.name,
                matcher: rule.matcher,
                allowed_regions: rule.allowed_regions,
                action: rule.action,
                replicas_only: rule.replicas_only,
            });
        }
        out
    }
}

impl Checker<'_> {
    /// A bucket's `lag` section: metadata names S3 can return, and replicas to measure.
    fn object_lag(&mut self, location: &str, lag: &ObjectLag, replicated: bool) {
        for (field, name) in [
            ("lag.origin_region", &lag.origin_region),
            ("lag.written_at_ms", &lag.written_at_ms),
        ] {
            if let Some(problem) = metadata_name_problem(name) {
                self.fail(location, field, problem);
            }
        }
        if lag.origin_region == lag.written_at_ms {
            self.fail(
                location,
                "lag.written_at_ms",
                format!(
                    "expected a metadata name other than lag.origin_region's, found `{}` for both",
                    lag.written_at_ms
                ),
            );
        }
        if lag.enabled && !replicated {
            self.fail(
                location,
                "lag.enabled",
                "the bucket is not replicated (`replicated = false`): no replica arrives to be measured",
            );
        }
    }
}

/// Why S3 would never return user metadata under `name` (as a configuration names it),
/// or `None` when it can.
fn metadata_name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("expected a user metadata name, found an empty one".into());
    }
    if name.to_ascii_lowercase().starts_with("x-amz-meta-") {
        return Some(format!(
            "expected the name without the `x-amz-meta-` prefix S3 adds (`{}`), found `{name}`",
            &name["x-amz-meta-".len()..]
        ));
    }
    if name.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Some(format!(
            "S3 returns user metadata names in lower case, so `{name}` would never match: expected `{}`",
            name.to_ascii_lowercase()
        ));
    }
    // It travels as an HTTP header name; these characters are safe in every client.
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-_.".contains(*ch)))
    {
        return Some(format!(
            "expected lower-case letters, digits, `-`, `_` and `.` in a metadata name (it travels as an HTTP header), found {bad:?} in `{name}`"
        ));
    }
    None
}

/// Whether every subject `later` matches is matched by `earlier` already.
fn covers(earlier: &Matcher, later: &Matcher) -> bool {
    match (earlier, later) {
        // An empty prefix matches every key, so it shadows every later rule.
        (Matcher::KeyPrefix(p), _) if p.is_empty() => true,
        (Matcher::KeyPrefix(p), Matcher::KeyPrefix(q)) => q.starts_with(p.as_str()),
        (a, b) => a == b,
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::KeyPrefix(p) => write!(f, "key prefix `{p}`"),
            Matcher::Attribute { name, equals } => write!(f, "attribute `{name}` = `{equals}`"),
            Matcher::Tag { name, equals } => write!(f, "tag `{name}` = `{equals}`"),
            Matcher::Metadata { name, equals } => write!(f, "metadata `{name}` = `{equals}`"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Report => "report",
            Action::DeleteReplica => "delete-replica",
            Action::Hold => "hold",
            Action::Alert => "alert",
        }
    }
}

fn template_message(src: &str, e: &TemplateError) -> String {
    format!("malformed template `{src}`: {e}")
}

fn validate(file: &str, raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        file,
        errors: Vec::new(),
    };
    let deployed = raw.deployment.regions.clone();
    c.region_list("", "deployment.regions", &deployed, &[]);
    if raw.deployment.namespace.trim().is_empty() {
        c.fail("", "deployment.namespace", "must not be empty");
    }
    if raw.deployment.heartbeat_prefix.trim().is_empty() {
        c.fail("", "deployment.heartbeat_prefix", "must not be empty");
    }
    if raw.deployment.peer_down_after_seconds == 0 {
        c.fail(
            "",
            "deployment.peer_down_after_seconds",
            "must be at least 1 (0 would call every peer down)",
        );
    }
    if !(1..=MAX_CACHE_KEY_BYTES).contains(&raw.deployment.max_cache_key_bytes) {
        c.fail(
            "",
            "deployment.max_cache_key_bytes",
            format!(
                "expected 1 to {MAX_CACHE_KEY_BYTES} (what one invalidation message can hold), found {}",
                raw.deployment.max_cache_key_bytes
            ),
        );
    }
    let interval = raw.deployment.heartbeat_interval_seconds;
    if interval == 0 || interval > 60 || 60 % interval != 0 {
        c.fail(
            "",
            "deployment.heartbeat_interval_seconds",
            format!("expected a divisor of 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60), found {interval}"),
        );
    }

    let mut names = HashSet::new();
    let mut tables = Vec::new();
    for t in raw.tables {
        let loc = format!("table \"{}\", ", t.name);
        if !names.insert(format!("table:{}", t.name)) {
            c.fail(&loc, "name", "duplicate table");
        }
        let mut declared: Vec<&str> = vec![t.partition_key.name.as_str()];
        if let Some(sk) = &t.sort_key {
            declared.push(sk.name.as_str());
        }
        declared.extend(t.attributes.iter().map(String::as_str));
        if let Some(attr) = &t.app_attributes.origin_region
            && !declared.contains(&attr.as_str())
        {
            c.fail(
                &loc,
                "app_attributes.origin_region",
                format!("attribute `{attr}` is not declared"),
            );
        }
        if let Some(attr) = &t.app_attributes.written_at_ms
            && !declared.contains(&attr.as_str())
        {
            c.fail(
                &loc,
                "app_attributes.written_at_ms",
                format!("attribute `{attr}` is not declared"),
            );
        }
        if t.canary.enabled && t.partition_key.kind != KeyType::S {
            c.fail(
                &loc,
                "canary.enabled",
                "heartbeat items need a string partition key (`<heartbeat_prefix>#<region>`)",
            );
        }
        let cache_keys = c.templates(&loc, &t.cache_keys, &declared);
        let residency = c.rules(&loc, t.residency, &deployed, Some(&declared));
        tables.push(Table {
            name: t.name,
            partition_key: t.partition_key,
            sort_key: t.sort_key,
            attributes: t.attributes,
            cache_keys,
            replicated: t.replicated,
            canary: t.canary,
            app_attributes: t.app_attributes,
            residency,
        });
    }

    let mut buckets = Vec::new();
    for b in raw.buckets {
        let loc = format!("bucket \"{}\", ", b.name);
        if !names.insert(format!("bucket:{}", b.name)) {
            c.fail(&loc, "name", "duplicate bucket");
        }
        if deployed.len() > 1 && !b.bucket.contains("{region}") {
            c.fail(
                &loc,
                "bucket",
                "bucket names are global: include `{region}` to name each region's bucket",
            );
        }
        let cache_keys = c.templates(&loc, &b.cache_keys, OBJECT_PLACEHOLDERS);
        let residency = c.rules(&loc, b.residency, &deployed, None);
        if residency.iter().any(|r| r.action == Action::Hold) && b.quarantine_bucket.is_none() {
            c.fail(
                &loc,
                "quarantine_bucket",
                "required by a rule with action `hold`",
            );
        }
        c.object_lag(&loc, &b.lag, b.replicated);
        buckets.push(Bucket {
            name: b.name,
            bucket_pattern: b.bucket,
            cache_keys,
            replicated: b.replicated,
            canary: b.canary,
            quarantine_bucket: b.quarantine_bucket,
            lag: b.lag,
            residency,
        });
    }

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        deployment: raw.deployment,
        residency: raw.residency,
        tables,
        buckets,
    })
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::S => "S",
            KeyType::N => "N",
            KeyType::B => "B",
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[deployment]
regions = ["us-east-1", "eu-west-1"]

[residency]
unmatched = "anywhere"

[[tables]]
name = "users"
partition_key = { name = "pk", type = "S" }
attributes = ["email", "home"]
cache_keys = ["user:{pk}", "user-email:{email}"]

[[tables.residency]]
name = "eu-only"
match = { attribute = { name = "home", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "report"

[[buckets]]
name = "assets"
bucket = "acme-assets-{region}"
cache_keys = ["asset:{key}"]
"#;

    /// The first problem of an invalid file.
    fn err(text: &str) -> ConfigError {
        Config::parse("t.toml", text).unwrap_err().0.remove(0)
    }

    /// Every problem of an invalid file, as (location, field).
    fn all(text: &str) -> Vec<(String, String)> {
        Config::parse("t.toml", text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| (e.location, e.field))
            .collect()
    }

    #[test]
    fn example_config_is_valid() {
        Config::embedded().unwrap();
        let c = Config::parse("t.toml", BASE).unwrap();
        assert_eq!(c.tables[0].cache_keys.len(), 2);
        assert_eq!(c.buckets[0].bucket_in("eu-west-1"), "acme-assets-eu-west-1");
    }

    #[test]
    fn unknown_field_names_table_and_field() {
        let e = err(&BASE.replace("attributes = [", "cache_key = 1\nattributes = ["));
        assert_eq!(e.location, "table \"users\", ");
        assert_eq!(e.field, "cache_key");
        assert!(
            e.to_string()
                .starts_with("t.toml: table \"users\", field `cache_key`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_in_rule_names_rule() {
        let e = err(&BASE.replace("action = \"report\"", "action = \"report\"\nregion = \"x\""));
        assert_eq!(e.location, "table \"users\", rule \"eu-only\", ");
        assert_eq!(e.field, "region");
    }

    #[test]
    fn malformed_templates_are_rejected() {
        let e = err(&BASE.replace("user:{pk}", "user:{pk"));
        assert_eq!(
            (e.location.as_str(), e.field.as_str()),
            ("table \"users\", ", "cache_keys[0]")
        );
        assert!(e.message.contains("unclosed"), "{e}");
        let e = err(&BASE.replace("user:{pk}", "user:{}"));
        assert!(e.message.contains("empty placeholder"), "{e}");
    }

    #[test]
    fn undeclared_placeholder_is_rejected() {
        let e = err(&BASE.replace("user-email:{email}", "user-phone:{phone}"));
        assert_eq!(e.field, "cache_keys[1]");
        assert!(e.message.contains("`{phone}`"), "{e}");
    }

    #[test]
    fn unknown_region_is_rejected() {
        let e = err(&BASE.replace(
            "allowed_regions = [\"eu-west-1\"]",
            "allowed_regions = [\"eu-west-9\"]",
        ));
        assert_eq!(e.location, "table \"users\", rule \"eu-only\", ");
        assert_eq!(e.field, "allowed_regions");
        assert!(e.message.contains("unknown region `eu-west-9`"));
        let e = err(&BASE.replace(
            "regions = [\"us-east-1\", \"eu-west-1\"]",
            "regions = [\"mars-1\"]",
        ));
        assert_eq!(e.field, "deployment.regions");
    }

    #[test]
    fn rule_without_regions_is_rejected() {
        let e = err(&BASE.replace("allowed_regions = [\"eu-west-1\"]", "allowed_regions = []"));
        assert_eq!(e.field, "allowed_regions");
        assert!(e.message.contains("at least one region"));
    }

    #[test]
    fn canary_needs_a_string_partition_key() {
        let text = BASE.replace(
            "type = \"S\" }",
            "type = \"N\" }\ncanary = { enabled = true }",
        );
        let e = err(&text);
        assert_eq!(
            (e.location.as_str(), e.field.as_str()),
            ("table \"users\", ", "canary.enabled")
        );
    }

    #[test]
    fn bucket_lag_metadata_names_default_and_are_validated() {
        let c = Config::parse("t.toml", BASE).unwrap();
        assert_eq!(
            c.buckets[0].lag,
            ObjectLag {
                enabled: false,
                origin_region: "origin-region".into(),
                written_at_ms: "written-at-ms".into(),
            }
        );
        let with = |lag: &str| {
            BASE.replace(
                "cache_keys = [\"asset:{key}\"]",
                &format!("cache_keys = [\"asset:{{key}}\"]\nlag = {lag}"),
            )
        };
        let c = Config::parse(
            "t.toml",
            &with(r#"{ enabled = true, written_at_ms = "written-at" }"#),
        )
        .unwrap();
        assert!(c.buckets[0].lag.enabled);
        assert_eq!(c.buckets[0].lag.written_at_ms, "written-at");
        assert_eq!(c.buckets[0].lag.origin_region, "origin-region");

        for (lag, field, says) in [
            (
                r#"{ enabled = true, written_at_ms = "x-amz-meta-written-at" }"#,
                "lag.written_at_ms",
                "without the `x-amz-meta-` prefix S3 adds (`written-at`)",
            ),
            (
                r#"{ origin_region = "Origin-Region" }"#,
                "lag.origin_region",
                "lower case, so `Origin-Region` would never match: expected `origin-region`",
            ),
            (
                r#"{ written_at_ms = "written at" }"#,
                "lag.written_at_ms",
                "found ' ' in `written at`",
            ),
            (r#"{ origin_region = "" }"#, "lag.origin_region", "empty"),
            (
                r#"{ origin_region = "at", written_at_ms = "at" }"#,
                "lag.written_at_ms",
                "found `at` for both",
            ),
            (r#"{ enable = true }"#, "lag.enable", "unknown field"),
        ] {
            let e = err(&with(lag));
            assert_eq!(
                (e.location.as_str(), e.field.as_str()),
                ("bucket \"assets\", ", field),
                "{lag}: {e}"
            );
            assert!(e.message.contains(says), "{lag}: {e}");
            assert!(
                e.to_string().starts_with("t.toml: bucket \"assets\", "),
                "{e}"
            );
        }
        let e = err(&with("{ enabled = true }").replace(
            "cache_keys = [\"asset:{key}\"]",
            "cache_keys = [\"asset:{key}\"]\nreplicated = false",
        ));
        assert_eq!(e.field, "lag.enabled");
        assert!(e.message.contains("not replicated"), "{e}");
    }

    #[test]
    fn heartbeat_interval_must_divide_the_minute() {
        let with = |n: &str| {
            BASE.replace(
                "regions = [\"us-east-1\", \"eu-west-1\"]\n",
                &format!(
                    "regions = [\"us-east-1\", \"eu-west-1\"]\nheartbeat_interval_seconds = {n}\n"
                ),
            )
        };
        for bad in ["7", "0", "120"] {
            let e = err(&with(bad));
            assert_eq!(e.field, "deployment.heartbeat_interval_seconds", "{bad}");
            assert!(e.message.contains(&format!("found {bad}")), "{}", e.message);
        }
        assert!(Config::parse("t.toml", &with("15")).is_ok());
    }

    #[test]
    fn table_rules_can_only_report() {
        let e = err(&BASE.replace("action = \"report\"", "action = \"delete-replica\""));
        assert_eq!(e.field, "action");
    }

    #[test]
    fn bad_enum_value_names_field() {
        let e = err(&BASE.replace("action = \"report\"", "action = \"explode\""));
        assert_eq!(e.location, "table \"users\", rule \"eu-only\", ");
        assert_eq!(e.field, "action");
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let text = BASE
            .replace("user-email:{email}", "user-phone:{phone}")
            .replace(
                "allowed_regions = [\"eu-west-1\"]",
                "allowed_regions = [\"eu-west-9\"]",
            )
            .replace("acme-assets-{region}", "acme-assets");
        assert_eq!(
            all(&text),
            [
                ("table \"users\", ".to_owned(), "cache_keys[1]".to_owned()),
                (
                    "table \"users\", rule \"eu-only\", ".to_owned(),
                    "allowed_regions".to_owned()
                ),
                ("bucket \"assets\", ".to_owned(), "bucket".to_owned()),
            ]
        );
        let errors = Config::parse("t.toml", &text).unwrap_err();
        assert_eq!(
            errors.to_string().matches("t.toml: ").count(),
            3,
            "{errors}"
        );
    }

    const PREFIX_RULES: &str = r#"
[[buckets.residency]]
name = "eu"
match = { key_prefix = "eu/" }
allowed_regions = ["eu-west-1"]
action = "alert"

[[buckets.residency]]
name = "eu-private"
match = { key_prefix = "eu/private/" }
allowed_regions = ["eu-west-1"]
action = "delete-replica"
"#;

    #[test]
    fn prefix_rule_covered_by_an_earlier_prefix_rule_is_rejected() {
        let e = err(&format!("{BASE}{PREFIX_RULES}"));
        assert_eq!(e.location, "bucket \"assets\", rule \"eu-private\", ");
        assert_eq!(e.field, "match.key_prefix");
        assert!(
            e.message
                .contains("can never match: earlier rule \"eu\" (key prefix `eu/`)"),
            "{e}"
        );
        // The narrower prefix first is fine: both can match.
        let swapped = PREFIX_RULES
            .replacen("\"eu/\"", "\"TMP\"", 1)
            .replacen("\"eu/private/\"", "\"eu/\"", 1)
            .replacen("\"TMP\"", "\"eu/private/\"", 1);
        Config::parse("t.toml", &format!("{BASE}{swapped}")).unwrap();
        // An empty prefix matches every key: nothing after it can match.
        let catch_all = PREFIX_RULES.replacen("\"eu/\"", "\"\"", 1);
        assert_eq!(err(&format!("{BASE}{catch_all}")).field, "match.key_prefix");
    }

    #[test]
    fn identical_matchers_shadow_the_later_rule() {
        let text = BASE.replace(
            "action = \"report\"\n",
            "action = \"report\"\n\n[[tables.residency]]\nname = \"eu-again\"\nmatch = { attribute = { name = \"home\", equals = \"eu\" } }\nallowed_regions = [\"eu-west-1\", \"us-east-1\"]\naction = \"report\"\n",
        );
        let e = err(&text);
        assert_eq!(
            (e.location.as_str(), e.field.as_str()),
            ("table \"users\", rule \"eu-again\", ", "match")
        );
    }

    #[test]
    fn duplicate_rule_names_are_rejected() {
        let text =
            format!("{BASE}{PREFIX_RULES}").replace("name = \"eu-private\"", "name = \"eu\"");
        let errors = all(&text);
        assert!(
            errors.contains(&(
                "bucket \"assets\", rule \"eu\", ".to_owned(),
                "name".to_owned()
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn empty_region_list_and_unknown_action_are_rejected() {
        let e = err(&BASE.replace("regions = [\"us-east-1\", \"eu-west-1\"]", "regions = []"));
        assert_eq!(e.field, "deployment.regions");
        assert!(e.message.contains("at least one region"), "{e}");
        let e = err(&BASE.replace("action = \"report\"", "action = \"shred\""));
        assert_eq!(e.field, "action");
        assert!(e.message.contains("unknown variant `shred`"), "{e}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = err("[deployment\n");
        assert_eq!(e.field, "(syntax)");
    }

    #[test]
    fn cache_key_limit_has_a_default_and_a_range() {
        let c = Config::parse("t.toml", BASE).unwrap();
        assert_eq!(
            c.deployment.max_cache_key_bytes,
            DEFAULT_MAX_CACHE_KEY_BYTES
        );
        let set = |n: &str| {
            BASE.replace(
                "regions = [\"us-east-1\", \"eu-west-1\"]",
                &format!("regions = [\"us-east-1\", \"eu-west-1\"]\nmax_cache_key_bytes = {n}"),
            )
        };
        assert_eq!(
            Config::parse("t.toml", &set("4096"))
                .unwrap()
                .deployment
                .max_cache_key_bytes,
            4096
        );
        for bad in ["0", "1000000"] {
            let e = err(&set(bad));
            assert_eq!(e.field, "deployment.max_cache_key_bytes", "{e}");
        }
    }

    #[test]
    fn heartbeat_names_match_with_their_separator() {
        assert!(is_heartbeat_item(
            "tidemark-heartbeat",
            "tidemark-heartbeat#eu-west-1"
        ));
        assert!(!is_heartbeat_item(
            "tidemark-heartbeat",
            "tidemark-heartbeat.png"
        ));
        assert!(!is_heartbeat_item(
            "tidemark-heartbeat",
            "tidemark-heartbeats#x"
        ));
        assert!(is_heartbeat_object(
            "tidemark-heartbeat",
            "tidemark-heartbeat/eu-west-1"
        ));
        assert!(!is_heartbeat_object(
            "tidemark-heartbeat",
            "tidemark-heartbeat.png"
        ));
    }
}
