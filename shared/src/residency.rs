//! Residency rule evaluation: which rule matches an item or object, and whether it may
//! live in a region. Pure and synchronous; `tidemark explain` and enforcement use it alike.
//!
//! The first matching rule wins. Data no rule matches follows `residency.unmatched`, which
//! the configuration states explicitly.

use std::borrow::Cow;

use crate::config::{Action, Matcher, Rule, Table, Unmatched};
use crate::ddb::Image;

/// What a rule can look at. Items answer `key` (the partition key value) and `attribute`;
/// objects answer `key` (the object key), `tag` and `metadata`.
pub trait Subject {
    /// Partition key value (items) or object key (objects).
    fn key(&self) -> Option<Cow<'_, str>>;
    fn attribute(&self, _name: &str) -> Option<Cow<'_, str>> {
        None
    }
    fn tag(&self, _name: &str) -> Option<&str> {
        None
    }
    fn metadata(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// An item image of a configured table.
#[derive(Debug, Clone, Copy)]
pub struct Item<'t, 'i, 'a> {
    pub table: &'t Table,
    pub image: &'i Image<'a>,
}

impl Subject for Item<'_, '_, '_> {
    fn key(&self) -> Option<Cow<'_, str>> {
        self.image.scalar(&self.table.partition_key.name)
    }
    fn attribute(&self, name: &str) -> Option<Cow<'_, str>> {
        self.image.scalar(name)
    }
}

/// An object: its key as stored, its tags and its user metadata (names without
/// `x-amz-meta-`; S3 stores them lower-case, so they compare case-insensitively).
#[derive(Debug, Clone, Copy)]
pub struct Object<'o> {
    pub key: &'o str,
    pub tags: &'o [(String, String)],
    pub metadata: &'o [(String, String)],
}

impl Subject for Object<'_> {
    fn key(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.key))
    }
    fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether `matcher` matches `subject`.
pub fn matches(matcher: &Matcher, subject: &dyn Subject) -> bool {
    match matcher {
        Matcher::KeyPrefix(p) => subject.key().is_some_and(|k| k.starts_with(p.as_str())),
        Matcher::Attribute { name, equals } => subject
            .attribute(name)
            .is_some_and(|v| v == equals.as_str()),
        Matcher::Tag { name, equals } => subject.tag(name) == Some(equals.as_str()),
        Matcher::Metadata { name, equals } => subject.metadata(name) == Some(equals.as_str()),
    }
}

/// The first rule that matches, if any.
pub fn first_match<'r>(rules: &'r [Rule], subject: &dyn Subject) -> Option<&'r Rule> {
    rules.iter().find(|r| matches(&r.matcher, subject))
}

/// The residency decision for one item or object in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'r> {
    /// The rule that decided; `None` when no rule matched (`residency.unmatched` applies).
    pub rule: Option<&'r Rule>,
    pub region: String,
    /// Whether the data may live in `region`.
    pub allowed: bool,
    /// What enforcement does when it may not (`None` when allowed).
    pub action: Option<Action>,
}

impl Decision<'_> {
    pub fn is_violation(&self) -> bool {
        !self.allowed
    }
}

/// Decides whether `subject` may live in `region`: the first matching rule's
/// `allowed_regions`, or `unmatched` when no rule matches.
pub fn decide<'r>(
    rules: &'r [Rule],
    unmatched: &Unmatched,
    region: &str,
    subject: &dyn Subject,
) -> Decision<'r> {
    let (rule, allowed) = verdict(rules, unmatched, region, subject);
    Decision {
        rule,
        region: region.to_owned(),
        allowed,
        action: rule.filter(|_| !allowed).map(|r| r.action),
    }
}

/// [`decide`] without building a [`Decision`] (no allocation: the stream-processor asks
/// for every record): the rule that decided, if any, and whether `region` is allowed.
pub fn verdict<'r>(
    rules: &'r [Rule],
    unmatched: &Unmatched,
    region: &str,
    subject: &dyn Subject,
) -> (Option<&'r Rule>, bool) {
    match first_match(rules, subject) {
        Some(rule) => (Some(rule), rule.allowed_regions.iter().any(|r| r == region)),
        None => (
            None,
            match unmatched {
                Unmatched::Anywhere => true,
            },
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[deployment]
regions = ["us-east-1", "eu-west-1"]
[residency]
unmatched = "anywhere"
[[tables]]
name = "users"
partition_key = { name = "pk", type = "S" }
attributes = ["home"]
cache_keys = ["user:{pk}"]
[[tables.residency]]
name = "eu-home"
match = { attribute = { name = "home", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "report"
[[tables.residency]]
name = "eu-keys"
match = { key_prefix = "eu#" }
allowed_regions = ["eu-west-1"]
action = "report"
[[buckets]]
name = "assets"
bucket = "assets-{region}"
cache_keys = ["asset:{key}"]
quarantine_bucket = "q-{region}"
[[buckets.residency]]
name = "eu-tag"
match = { tag = { name = "residency", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "hold"
[[buckets.residency]]
name = "eu-meta"
match = { metadata = { name = "Residency", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "alert"
[[buckets.residency]]
name = "eu-prefix"
match = { key_prefix = "eu/" }
allowed_regions = ["eu-west-1"]
action = "delete-replica"
"#;

    fn image(json: &str) -> Image<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_decides_per_region() {
        let c = Config::parse("t.toml", CONFIG).unwrap();
        let t = &c.tables[0];
        let img = image(r#"{"pk":{"S":"eu#1"},"home":{"S":"eu"}}"#);
        let item = Item {
            table: t,
            image: &img,
        };
        let d = decide(&t.residency, &c.residency.unmatched, "us-east-1", &item);
        assert_eq!(d.rule.unwrap().name, "eu-home");
        assert!(!d.allowed);
        assert_eq!(d.action, Some(Action::Report));
        let d = decide(&t.residency, &c.residency.unmatched, "eu-west-1", &item);
        assert!(d.allowed);
        assert_eq!(d.action, None);
        // The key prefix rule matches on the partition key value.
        let img = image(r#"{"pk":{"S":"eu#2"},"home":{"S":"us"}}"#);
        let item = Item {
            table: t,
            image: &img,
        };
        assert_eq!(first_match(&t.residency, &item).unwrap().name, "eu-keys");
    }

    #[test]
    fn unmatched_data_follows_the_explicit_default() {
        let c = Config::parse("t.toml", CONFIG).unwrap();
        let t = &c.tables[0];
        let img = image(r#"{"pk":{"S":"us#1"},"home":{"S":"us"}}"#);
        let item = Item {
            table: t,
            image: &img,
        };
        let d = decide(&t.residency, &c.residency.unmatched, "us-east-1", &item);
        assert_eq!(d.rule, None);
        assert!(d.allowed);
    }

    #[test]
    fn objects_match_on_tags_metadata_and_prefix() {
        let c = Config::parse("t.toml", CONFIG).unwrap();
        let rules = &c.buckets[0].residency;
        let none: Vec<(String, String)> = vec![];
        let tags = vec![("residency".to_owned(), "eu".to_owned())];
        let meta = vec![("residency".to_owned(), "eu".to_owned())];
        let name = |key: &str, tags: &[(String, String)], metadata: &[(String, String)]| {
            first_match(
                rules,
                &Object {
                    key,
                    tags,
                    metadata,
                },
            )
            .map(|r| r.name.clone())
        };
        assert_eq!(name("eu/a.txt", &tags, &meta).as_deref(), Some("eu-tag"));
        // Metadata names compare case-insensitively (S3 lower-cases them).
        assert_eq!(name("eu/a.txt", &none, &meta).as_deref(), Some("eu-meta"));
        assert_eq!(name("eu/a.txt", &none, &none).as_deref(), Some("eu-prefix"));
        assert_eq!(name("us/a.txt", &none, &none), None);
        // Tag names do not: `Residency` is another tag than `residency`.
        let other = vec![("Residency".to_owned(), "eu".to_owned())];
        assert_eq!(name("us/a.txt", &other, &none), None);
    }
}
