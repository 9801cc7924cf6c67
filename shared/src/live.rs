//! `tidemark check --live`: compare what one region of the deployed account holds with the
//! configuration, and name every misconfiguration before it bites.
//!
//! Two halves. [`crate::adapters::account`] reads the account into an [`Account`] (plain
//! values, no SDK types). The checks here are pure functions over the configuration and that
//! snapshot, each adding [`Problem`]s to one [`Report`]. A capability adds its check by
//! appending a function to [`CHECKS`] (and, when it needs a fact not read yet, a field to
//! the snapshot and a read to the adapter).

use std::fmt;

use serde::Serialize;

use crate::config::{Bucket, Config, Matcher, Rule};

/// The stream view type the stream-processor needs: the old image for the old keys (a
/// changed e-mail) and the new image for the new ones.
pub const REQUIRED_VIEW_TYPE: &str = "NEW_AND_OLD_IMAGES";

/// Something read from the account: present, absent, or unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<T> {
    Found(T),
    /// The resource does not exist (the message says what the service answered).
    Missing(String),
    /// The read failed (permissions, throttling, an outage).
    Failed(String),
}

impl<T> Read<T> {
    pub fn found(&self) -> Option<&T> {
        match self {
            Read::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// One region of the deployed account, as far as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Account {
    pub region: String,
    pub tables: Vec<TableState>,
    pub buckets: Vec<BucketState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub name: String,
    pub facts: Read<TableFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableFacts {
    pub stream_enabled: bool,
    /// `StreamViewType` when a stream is on.
    pub view_type: Option<String>,
    /// Regions of the global table's replicas (empty for a regional table).
    pub replica_regions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    /// Logical name in the configuration.
    pub source: String,
    /// The bucket's name in this region.
    pub bucket: String,
    pub facts: Read<BucketFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketFacts {
    /// "Send notifications to Amazon EventBridge" is on.
    pub eventbridge: bool,
    /// Event notifications to queues, topics and functions.
    pub notifications: Vec<Notification>,
    /// Replication rules; `None` when the bucket has no replication configuration.
    pub replication: Option<Vec<ReplicationRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notification {
    pub id: String,
    /// Queue, topic or function ARN.
    pub target: String,
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicationRule {
    pub id: String,
    pub enabled: bool,
    /// Key prefix the rule replicates (empty: every key).
    pub prefix: String,
    /// Tags an object needs to be replicated (all of them).
    pub tags: Vec<(String, String)>,
    pub destination_bucket: String,
    /// The destination bucket's region, when it could be told.
    pub destination_region: Option<String>,
    /// Replication metrics (needed for `OperationFailedReplication` events).
    pub metrics: bool,
    /// Replication Time Control (needed for the threshold events).
    pub rtc: bool,
}

impl ReplicationRule {
    /// Whether the rule replicates an untagged object with this key.
    fn takes_untagged(&self, key: &str) -> bool {
        self.tags.is_empty() && key.starts_with(self.prefix.as_str())
    }

    fn describe_filter(&self) -> String {
        let mut parts = Vec::new();
        parts.push(if self.prefix.is_empty() {
            "every key".to_owned()
        } else {
            format!("prefix `{}`", self.prefix)
        });
        for (k, v) in &self.tags {
            parts.push(format!("tag `{k}` = `{v}`"));
        }
        parts.join(", ")
    }
}

/// One finding, named precisely enough to fix without reading code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The check that found it (see [`CHECKS`]).
    pub check: &'static str,
    /// `table users` or `bucket assets`: the configuration entry.
    pub source: String,
    /// The AWS resource (table name, bucket name, `bucket/rule-id`).
    pub resource: String,
    pub message: String,
}

/// The report of one region: what was checked and every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub region: String,
    pub checks: Vec<&'static str>,
    pub tables: usize,
    pub buckets: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A check: reads the configuration and the snapshot, adds problems.
pub type CheckFn = fn(&Config, &Account, &mut Vec<Problem>);

/// Every check, in report order. Add new ones here.
pub const CHECKS: &[(&str, CheckFn)] = &[
    ("readable", readable),
    ("stream-view-type", stream_view_type),
    ("global-table-residency", global_table_residency),
    ("replication-residency", replication_residency),
    ("heartbeat-replicated", heartbeat_replicated),
    ("eventbridge-notifications", eventbridge_notifications),
    ("replication-events", replication_events),
];

/// Runs every check over one region's snapshot.
pub fn run(config: &Config, account: &Account) -> Report {
    let mut problems = Vec::new();
    for (name, check) in CHECKS {
        let before = problems.len();
        check(config, account, &mut problems);
        // A check names itself: the functions need not repeat it.
        for p in &mut problems[before..] {
            p.check = name;
        }
    }
    Report {
        region: account.region.clone(),
        checks: CHECKS.iter().map(|(n, _)| *n).collect(),
        tables: account.tables.len(),
        buckets: account.buckets.len(),
        problems,
    }
}

fn problem(source: String, resource: &str, message: String) -> Problem {
    Problem {
        check: "",
        source,
        resource: resource.to_owned(),
        message,
    }
}

fn table_source(name: &str) -> String {
    format!("table {name}")
}

fn bucket_source(name: &str) -> String {
    format!("bucket {name}")
}

/// Every watched table and bucket exists in the region and can be read.
fn readable(_: &Config, a: &Account, out: &mut Vec<Problem>) {
    for t in &a.tables {
        match &t.facts {
            Read::Found(_) => {}
            Read::Missing(why) => out.push(problem(
                table_source(&t.name),
                &t.name,
                format!("table not found in {}: {why}", a.region),
            )),
            Read::Failed(why) => out.push(problem(
                table_source(&t.name),
                &t.name,
                format!("cannot read the table: {why}"),
            )),
        }
    }
    for b in &a.buckets {
        match &b.facts {
            Read::Found(_) => {}
            Read::Missing(why) => out.push(problem(
                bucket_source(&b.source),
                &b.bucket,
                format!("bucket not found in {}: {why}", a.region),
            )),
            Read::Failed(why) => out.push(problem(
                bucket_source(&b.source),
                &b.bucket,
                format!("cannot read the bucket's configuration: {why}"),
            )),
        }
    }
}

/// A watched table's stream is on and carries both images.
fn stream_view_type(_: &Config, a: &Account, out: &mut Vec<Problem>) {
    for t in &a.tables {
        let Some(f) = t.facts.found() else { continue };
        let message = match (f.stream_enabled, f.view_type.as_deref()) {
            (false, _) => format!(
                "the stream is off: nothing is invalidated for this table; enable a {REQUIRED_VIEW_TYPE} stream"
            ),
            (true, Some(REQUIRED_VIEW_TYPE)) => continue,
            (true, other) => format!(
                "stream view type is {}, expected {REQUIRED_VIEW_TYPE}: without both images a changed templated attribute leaves its old key in the cache",
                other.unwrap_or("unknown")
            ),
        };
        out.push(problem(table_source(&t.name), &t.name, message));
    }
}

/// A global table copies every item to every replica: a rule forbidding one of its replica
/// regions cannot be complied with.
fn global_table_residency(c: &Config, a: &Account, out: &mut Vec<Problem>) {
    for t in &a.tables {
        let Some(f) = t.facts.found() else { continue };
        if f.replica_regions.is_empty() {
            continue;
        }
        let Some(table) = c.table(&t.name) else {
            continue;
        };
        let mut regions: Vec<&str> = f.replica_regions.iter().map(String::as_str).collect();
        if !regions.contains(&a.region.as_str()) {
            regions.push(&a.region);
        }
        regions.sort_unstable();
        for rule in &table.residency {
            let forbidden: Vec<&str> = regions
                .iter()
                .copied()
                .filter(|r| !rule.allowed_regions.iter().any(|x| x == r))
                .collect();
            if forbidden.is_empty() {
                continue;
            }
            out.push(problem(
                table_source(&t.name),
                &t.name,
                format!(
                    "global table with replicas in {}: every item rule \"{}\" ({}) matches is copied to {}, which the rule forbids (allowed: {}): a configuration that cannot comply",
                    regions.join(", "),
                    rule.name,
                    rule.matcher,
                    forbidden.join(", "),
                    rule.allowed_regions.join(", ")
                ),
            ));
        }
    }
}

/// Whether some object a replication rule takes may match `matcher`.
fn may_overlap(r: &ReplicationRule, matcher: &Matcher) -> bool {
    match matcher {
        Matcher::KeyPrefix(q) => {
            r.prefix.starts_with(q.as_str()) || q.starts_with(r.prefix.as_str())
        }
        // A replication rule that needs this tag with another value never takes it.
        Matcher::Tag { name, equals } => !r.tags.iter().any(|(k, v)| k == name && v != equals),
        // Replication cannot filter on metadata (and attributes are for tables).
        Matcher::Metadata { .. } | Matcher::Attribute { .. } => true,
    }
}

/// Whether an earlier residency rule matches every object the replication rule takes, so
/// `rules[index]` never decides for them (the first matching rule wins).
fn shadowed(r: &ReplicationRule, rules: &[Rule], index: usize) -> bool {
    rules[..index].iter().any(|e| match &e.matcher {
        Matcher::KeyPrefix(p) => r.prefix.starts_with(p.as_str()),
        Matcher::Tag { name, equals } => r.tags.iter().any(|(k, v)| k == name && v == equals),
        _ => false,
    })
}

/// Bucket replication rules whose filters ship objects into a region a residency rule forbids.
fn replication_residency(c: &Config, a: &Account, out: &mut Vec<Problem>) {
    for (b, bucket, rules) in replicating(c, a) {
        for r in rules.iter().filter(|r| r.enabled) {
            let resource = format!("{}/{}", b.bucket, r.id);
            let Some(dest) = r.destination_region.as_deref() else {
                out.push(problem(
                    bucket_source(&b.source),
                    &resource,
                    format!(
                        "replication rule \"{}\" ships to bucket `{}`, whose region cannot be told: residency cannot be checked for it",
                        r.id, r.destination_bucket
                    ),
                ));
                continue;
            };
            for (i, rule) in bucket.residency.iter().enumerate() {
                if rule.allowed_regions.iter().any(|x| x == dest)
                    || !may_overlap(r, &rule.matcher)
                    || shadowed(r, &bucket.residency, i)
                {
                    continue;
                }
                out.push(problem(
                    bucket_source(&b.source),
                    &resource,
                    format!(
                        "replication rule \"{}\" ({}) ships objects matching residency rule \"{}\" ({}) to {dest} (bucket `{}`), which the rule forbids (allowed: {})",
                        r.id,
                        r.describe_filter(),
                        rule.name,
                        rule.matcher,
                        r.destination_bucket,
                        rule.allowed_regions.join(", ")
                    ),
                ));
            }
        }
    }
}

/// Buckets read successfully with their configuration entry and replication rules (an
/// empty list when the bucket has no replication configuration).
fn replicating<'a>(
    c: &'a Config,
    a: &'a Account,
) -> impl Iterator<Item = (&'a BucketState, &'a Bucket, &'a [ReplicationRule])> + 'a {
    a.buckets.iter().filter_map(|b| {
        let f = b.facts.found()?;
        let bucket = c.buckets.iter().find(|x| x.name == b.source)?;
        Some((b, bucket, f.replication.as_deref().unwrap_or(&[])))
    })
}

/// This region's heartbeat object replicates to every peer (otherwise the peers see a stall).
fn heartbeat_replicated(c: &Config, a: &Account, out: &mut Vec<Problem>) {
    let key = crate::app::canary::heartbeat_object_key(&c.deployment.heartbeat_prefix, &a.region);
    for (b, bucket, rules) in replicating(c, a) {
        if !bucket.canary.enabled {
            continue;
        }
        for peer in c.peers(&a.region) {
            let carried = rules.iter().any(|r| {
                r.enabled && r.destination_region.as_deref() == Some(peer) && r.takes_untagged(&key)
            });
            if !carried {
                out.push(problem(
                    bucket_source(&b.source),
                    &b.bucket,
                    format!(
                        "heartbeat object `{key}` is outside every enabled replication rule to {peer}: {peer} will report a replication stall from {}; widen a rule's filter to include `{}`",
                        a.region, c.deployment.heartbeat_prefix
                    ),
                ));
            }
        }
    }
}

/// Object events reach the object-processor through EventBridge.
fn eventbridge_notifications(_: &Config, a: &Account, out: &mut Vec<Problem>) {
    for b in &a.buckets {
        let Some(f) = b.facts.found() else { continue };
        if !f.eventbridge {
            out.push(problem(
                bucket_source(&b.source),
                &b.bucket,
                "EventBridge notifications are off: no object change reaches the object-processor (turn on \"Send notifications to Amazon EventBridge\")".into(),
            ));
        }
    }
}

const THRESHOLD_EVENTS: &[&str] = &[
    "s3:Replication:OperationMissedThreshold",
    "s3:Replication:OperationReplicatedAfterThreshold",
];

/// Replication events need a notification, replication metrics (failures) and RTC (the
/// threshold events) on every rule whose events the notification asks for.
fn replication_events(c: &Config, a: &Account, out: &mut Vec<Problem>) {
    for (b, bucket, rules) in replicating(c, a) {
        let enabled: Vec<&ReplicationRule> = rules.iter().filter(|r| r.enabled).collect();
        if enabled.is_empty() || !bucket.replicated {
            continue;
        }
        let Some(f) = b.facts.found() else { continue };
        let events: Vec<&str> = f
            .notifications
            .iter()
            .flat_map(|n| n.events.iter().map(String::as_str))
            .filter(|e| e.starts_with("s3:Replication:"))
            .collect();
        if events.is_empty() {
            out.push(problem(
                bucket_source(&b.source),
                &b.bucket,
                "no event notification for s3:Replication:* events: replication failures reach no one (point one at the object-processor's queue)".into(),
            ));
            continue;
        }
        let wants_threshold = events.iter().any(|e| THRESHOLD_EVENTS.contains(e));
        for r in enabled {
            let resource = format!("{}/{}", b.bucket, r.id);
            if !r.metrics {
                out.push(problem(
                    bucket_source(&b.source),
                    &resource,
                    format!(
                        "replication rule \"{}\" has replication metrics off: S3 sends no replication failure events for it",
                        r.id
                    ),
                ));
            }
            if wants_threshold && !r.rtc {
                out.push(problem(
                    bucket_source(&b.source),
                    &resource,
                    format!(
                        "replication rule \"{}\" has Replication Time Control off, but the notifications ask for threshold events: they never come",
                        r.id
                    ),
                ));
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(
                f,
                "{}: {} ({}): {} [{}]",
                self.region, p.source, p.resource, p.message, p.check
            )?;
        }
        if self.is_clean() {
            writeln!(
                f,
                "{}: ok — {} check(s) on {} table(s), {} bucket(s)",
                self.region,
                self.checks.len(),
                self.tables,
                self.buckets
            )
        } else {
            writeln!(f, "{}: {} problem(s)", self.region, self.problems.len())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::embedded().unwrap()
    }

    fn rule(id: &str, prefix: &str, dest: &str) -> ReplicationRule {
        ReplicationRule {
            id: id.into(),
            enabled: true,
            prefix: prefix.into(),
            tags: vec![],
            destination_bucket: format!("tidemark-assets-{dest}"),
            destination_region: Some(dest.into()),
            metrics: true,
            rtc: true,
        }
    }

    /// A correct eu-west-1: both images on the stream, EventBridge on, replication of
    /// everything but `eu/` (and the heartbeats) to us-east-1 with metrics and RTC.
    fn clean(region: &str) -> Account {
        let peer = if region == "eu-west-1" {
            "us-east-1"
        } else {
            "eu-west-1"
        };
        let rules = if region == "eu-west-1" {
            vec![
                rule("public", "public/", peer),
                rule("heartbeats", "tidemark-heartbeat/", peer),
            ]
        } else {
            vec![rule("all", "", peer)]
        };
        Account {
            region: region.into(),
            tables: vec![TableState {
                name: "users".into(),
                facts: Read::Found(TableFacts {
                    stream_enabled: true,
                    view_type: Some(REQUIRED_VIEW_TYPE.into()),
                    replica_regions: vec![],
                }),
            }],
            buckets: vec![BucketState {
                source: "assets".into(),
                bucket: format!("tidemark-assets-{region}"),
                facts: Read::Found(BucketFacts {
                    eventbridge: true,
                    notifications: vec![Notification {
                        id: "n".into(),
                        target: "arn:aws:sqs:x:1:q".into(),
                        events: vec!["s3:Replication:*".into()],
                    }],
                    replication: Some(rules),
                }),
            }],
        }
    }

    fn bucket_facts(a: &mut Account) -> &mut BucketFacts {
        match &mut a.buckets[0].facts {
            Read::Found(f) => f,
            _ => unreachable!(),
        }
    }

    fn checks_of(r: &Report) -> Vec<&'static str> {
        r.problems.iter().map(|p| p.check).collect()
    }

    #[test]
    fn a_correct_setup_is_clean_in_both_regions() {
        for region in ["us-east-1", "eu-west-1"] {
            let r = run(&config(), &clean(region));
            assert!(r.is_clean(), "{r}");
            assert_eq!(r.checks.len(), CHECKS.len());
        }
    }

    #[test]
    fn wrong_view_type_and_disabled_stream_are_named() {
        let mut a = clean("us-east-1");
        a.tables[0].facts = Read::Found(TableFacts {
            stream_enabled: true,
            view_type: Some("NEW_IMAGE".into()),
            replica_regions: vec![],
        });
        let r = run(&config(), &a);
        assert_eq!(checks_of(&r), ["stream-view-type"]);
        assert!(r.problems[0].message.contains("NEW_IMAGE"), "{r}");
        assert_eq!(r.problems[0].source, "table users");
        a.tables[0].facts = Read::Found(TableFacts::default());
        assert!(
            run(&config(), &a).problems[0]
                .message
                .contains("stream is off")
        );
    }

    #[test]
    fn replication_of_an_eu_prefix_to_us_east_1_is_named() {
        let mut a = clean("eu-west-1");
        bucket_facts(&mut a)
            .replication
            .as_mut()
            .unwrap()
            .push(rule("eu-to-us", "eu/docs/", "us-east-1"));
        let r = run(&config(), &a);
        assert_eq!(checks_of(&r), ["replication-residency"], "{r}");
        let p = &r.problems[0];
        assert_eq!(p.resource, "tidemark-assets-eu-west-1/eu-to-us");
        assert!(
            p.message.contains("\"eu-to-us\" (prefix `eu/docs/`)")
                && p.message
                    .contains("residency rule \"eu-only\" (key prefix `eu/`) to us-east-1"),
            "{r}"
        );
        // Everything (empty prefix) includes eu/ too.
        let mut a = clean("eu-west-1");
        bucket_facts(&mut a).replication = Some(vec![rule("all", "", "us-east-1")]);
        assert_eq!(checks_of(&run(&config(), &a)), ["replication-residency"]);
    }

    #[test]
    fn tag_filters_and_earlier_rules_limit_what_replication_ships() {
        let text = config_text().replace(
            "[[buckets.residency]]\nname = \"eu-only\"",
            "[[buckets.residency]]\nname = \"eu-public\"\nmatch = { key_prefix = \"eu/public/\" }\nallowed_regions = [\"eu-west-1\", \"us-east-1\"]\naction = \"alert\"\n\n[[buckets.residency]]\nname = \"eu-tagged\"\nmatch = { tag = { name = \"residency\", equals = \"eu\" } }\nallowed_regions = [\"eu-west-1\"]\naction = \"alert\"\n\n[[buckets.residency]]\nname = \"eu-only\"",
        );
        let c = Config::parse("t.toml", &text).unwrap();
        let mut a = clean("eu-west-1");
        let mut tagged_us = rule("public-us", "public/", "us-east-1");
        tagged_us.tags = vec![("residency".into(), "us".into())];
        bucket_facts(&mut a).replication = Some(vec![
            tagged_us,
            rule("eu-public", "eu/public/", "us-east-1"),
        ]);
        let residency = |r: &Report| -> Vec<String> {
            r.problems
                .iter()
                .filter(|p| p.check == "replication-residency")
                .map(|p| p.message.clone())
                .collect()
        };
        // A rule that needs residency=us never takes residency=eu objects, and eu/public/
        // objects match "eu-public" (allowed in us-east-1) before any other rule.
        let r = run(&c, &a);
        assert!(residency(&r).is_empty(), "{r}");
        // Without the tag, `public/` objects tagged residency=eu would ship.
        bucket_facts(&mut a).replication.as_mut().unwrap()[0].tags = vec![];
        let r = run(&c, &a);
        let found = residency(&r);
        assert_eq!(found.len(), 1, "{r}");
        assert!(found[0].contains("\"eu-tagged\""), "{r}");
    }

    fn config_text() -> String {
        crate::config::EMBEDDED.to_owned()
    }

    #[test]
    fn global_table_with_a_forbidden_replica_cannot_comply() {
        let mut a = clean("us-east-1");
        a.tables[0].facts = Read::Found(TableFacts {
            stream_enabled: true,
            view_type: Some(REQUIRED_VIEW_TYPE.into()),
            replica_regions: vec!["eu-west-1".into()],
        });
        let r = run(&config(), &a);
        assert_eq!(checks_of(&r), ["global-table-residency"], "{r}");
        assert!(
            r.problems[0]
                .message
                .contains("rule \"eu-residents\" (attribute `home_region` = `eu`) matches is copied to us-east-1"),
            "{r}"
        );
    }

    #[test]
    fn heartbeat_outside_the_replication_filter_is_named() {
        let mut a = clean("eu-west-1");
        bucket_facts(&mut a).replication.as_mut().unwrap().pop();
        let r = run(&config(), &a);
        assert_eq!(checks_of(&r), ["heartbeat-replicated"], "{r}");
        assert!(
            r.problems[0]
                .message
                .contains("heartbeat object `tidemark-heartbeat/eu-west-1` is outside every enabled replication rule to us-east-1"),
            "{r}"
        );
    }

    #[test]
    fn missing_eventbridge_metrics_rtc_and_replication_notifications_are_named() {
        let mut a = clean("us-east-1");
        let f = bucket_facts(&mut a);
        f.eventbridge = false;
        f.notifications[0].events = vec!["s3:Replication:OperationMissedThreshold".into()];
        let r0 = &mut f.replication.as_mut().unwrap()[0];
        r0.metrics = false;
        r0.rtc = false;
        let r = run(&config(), &a);
        assert_eq!(
            checks_of(&r),
            [
                "eventbridge-notifications",
                "replication-events",
                "replication-events"
            ],
            "{r}"
        );
        assert!(r.problems[1].message.contains("replication metrics off"));
        assert!(
            r.problems[2]
                .message
                .contains("Replication Time Control off")
        );
        bucket_facts(&mut a).notifications.clear();
        let r = run(&config(), &a);
        assert!(
            r.problems.iter().any(|p| p
                .message
                .contains("no event notification for s3:Replication:*")),
            "{r}"
        );
    }

    #[test]
    fn unreadable_and_missing_resources_are_problems() {
        let mut a = clean("us-east-1");
        a.tables[0].facts = Read::Missing("ResourceNotFoundException".into());
        a.buckets[0].facts = Read::Failed("AccessDenied".into());
        let r = run(&config(), &a);
        assert_eq!(checks_of(&r), ["readable", "readable"], "{r}");
    }
}
