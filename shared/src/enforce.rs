//! Residency enforcement stages: the decision is [`crate::residency::decide`] (pure); these
//! stages fetch what it needs (an object version's tags and metadata), report every
//! violation (metric, alert, log line) and apply the rule's action.
//!
//! * Items are **reported only**: a delete in a global table deletes in every region.
//! * Objects: `delete-replica` deletes that version here (version deletes are never
//!   replicated; the origin copy stays), only when S3 marked it `REPLICA` unless the rule
//!   opts in; `hold` copies the version into the region's quarantine bucket, then deletes
//!   it; `alert` reports only.
//!
//! The alert goes out before the action, so a record whose action fails is retried with
//! its alert sent again under the same event id: delivery is at least once, consumers
//! deduplicate on the id. Tags and metadata are read from the event's exact version, so a
//! later overwrite of the key cannot change the decision.

use futures::StreamExt;
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::config::{Action, Bucket, Config, Matcher, Rule, Table};
use crate::ddb::EventName;
use crate::error::StageError;
use crate::invalidation::{ObjectEvent, TableChange};
use crate::keyhash::KeyLabels;
use crate::metrics::{Dim, Metric, Metrics};
use crate::objects::ObjectEventKind;
use crate::pipeline::Stage;
use crate::ports::{Alert, Alerts, ObjectStore, PortError};
use crate::residency::{self, Item, Object};

/// `kind` of residency alerts.
pub const ALERT_KIND: &str = "residency-violation";

/// How many object versions one invocation inspects at once.
const CONCURRENCY: usize = 8;

/// What the alert says about the action (kebab-case, as in the configuration).
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Report => "report",
        Action::DeleteReplica => "delete-replica",
        Action::Hold => "hold",
        Action::Alert => "alert",
    }
}

/// Whether any rule could forbid `region` (otherwise nothing needs to be fetched).
fn any_rule_forbids(rules: &[Rule], region: &str) -> bool {
    rules
        .iter()
        .any(|r| !r.allowed_regions.iter().any(|a| a == region))
}

// ------------------------------------------------------------------ items

struct ItemViolation {
    index: usize,
    /// The item key; the alert carries its label (hashed when configured).
    key: String,
    alert: Alert,
}

/// stream-processor: reports items whose rule does not allow this region.
pub struct ItemResidencyStage<'p> {
    alerts: &'p dyn Alerts,
    labels: &'p KeyLabels,
    config: &'p Config,
    region: &'p str,
    found: Vec<ItemViolation>,
}

impl<'p> ItemResidencyStage<'p> {
    pub fn new(
        alerts: &'p dyn Alerts,
        labels: &'p KeyLabels,
        config: &'p Config,
        region: &'p str,
    ) -> Self {
        Self {
            alerts,
            labels,
            config,
            region,
            found: Vec::new(),
        }
    }
}

fn item_key(table: &Table, image: &crate::ddb::Image<'_>) -> String {
    let pk = image
        .scalar(&table.partition_key.name)
        .unwrap_or_default()
        .into_owned();
    match table
        .sort_key
        .as_ref()
        .and_then(|sk| image.scalar(&sk.name))
    {
        Some(sk) => format!("{pk}|{sk}"),
        None => pk,
    }
}

impl<'c, 'r> Stage<TableChange<'c, 'r>> for ItemResidencyStage<'_> {
    fn name(&self) -> &'static str {
        "residency"
    }

    fn observe(&mut self, index: usize, c: &TableChange<'c, 'r>) -> Result<(), StageError> {
        if c.heartbeat || c.record.event_name == EventName::Remove {
            return Ok(());
        }
        let Some(image) = c.record.new.as_ref() else {
            return Ok(());
        };
        let (rule, allowed) = residency::verdict(
            &c.table.residency,
            &self.config.residency.unmatched,
            self.region,
            &Item {
                table: c.table,
                image,
            },
        );
        let (Some(rule), false) = (rule, allowed) else {
            return Ok(());
        };
        let seq = c.record.sequence_number.to_string();
        self.found.push(ItemViolation {
            index,
            key: item_key(c.table, image),
            alert: Alert {
                kind: ALERT_KIND.into(),
                event_id: format!("ddb:{}:{}:{seq}", self.region, c.table.name),
                source: c.table.name.clone(),
                key: String::new(),
                version: Some(seq),
                region: self.region.to_owned(),
                rule: Some(rule.name.clone()),
                action: action_name(Action::Report).into(),
                note: None,
            },
        });
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            let mut failed = Vec::new();
            let mut found = Vec::new();
            for mut v in std::mem::take(&mut self.found) {
                // The key as alerts and logs may carry it (HMAC when configured).
                match self.labels.label(&v.key).await {
                    Ok(label) => {
                        v.alert.key = label;
                        found.push(v);
                    }
                    Err(e) => failed.push((v.index, StageError::Port(e))),
                }
            }
            if found.is_empty() {
                return failed;
            }
            for v in &found {
                violation(metrics, &v.alert);
            }
            let alerts: Vec<Alert> = found.iter().map(|v| v.alert.clone()).collect();
            let results = self.alerts.send(&alerts).await;
            for (v, r) in found.iter().zip(results) {
                match r {
                    Ok(()) => acted(metrics, &v.alert),
                    Err(e) => failed.push((v.index, alert_failed(&v.alert, &e))),
                }
            }
            failed
        })
    }
}

// ------------------------------------------------------------------ objects

/// An object version to inspect.
struct Candidate<'c> {
    index: usize,
    bucket: &'c Bucket,
    /// The bucket's name in this region.
    bucket_name: String,
    key: String,
    version: String,
}

/// A violation found in an object version, with the action to apply.
struct ObjectViolation<'c> {
    candidate: Candidate<'c>,
    action: Action,
    size: u64,
    alert: Alert,
}

/// object-processor: enforces residency rules on new object versions.
pub struct ObjectResidencyStage<'p, 'c> {
    store: &'p dyn ObjectStore,
    alerts: &'p dyn Alerts,
    labels: &'p KeyLabels,
    config: &'p Config,
    region: &'p str,
    candidates: Vec<Candidate<'c>>,
}

impl<'p, 'c> ObjectResidencyStage<'p, 'c> {
    pub fn new(
        store: &'p dyn ObjectStore,
        alerts: &'p dyn Alerts,
        labels: &'p KeyLabels,
        config: &'p Config,
        region: &'p str,
    ) -> Self {
        Self {
            store,
            alerts,
            labels,
            config,
            region,
            candidates: Vec::new(),
        }
    }
}

impl<'c> Stage<ObjectEvent<'c>> for ObjectResidencyStage<'_, 'c> {
    fn name(&self) -> &'static str {
        "residency"
    }

    fn observe(&mut self, index: usize, ev: &ObjectEvent<'c>) -> Result<(), StageError> {
        let rules = &ev.bucket.residency;
        if !any_rule_forbids(rules, self.region) {
            return Ok(());
        }
        for change in &ev.changes {
            if change.kind != ObjectEventKind::Created
                || change.key.starts_with(ev.heartbeat_prefix)
            {
                continue;
            }
            // Rules on key prefixes alone decide without any I/O.
            if rules
                .iter()
                .all(|r| matches!(r.matcher, Matcher::KeyPrefix(_)))
            {
                let d = residency::decide(
                    rules,
                    &self.config.residency.unmatched,
                    self.region,
                    &Object {
                        key: &change.key,
                        tags: &[],
                        metadata: &[],
                    },
                );
                if d.allowed {
                    continue;
                }
            }
            let Some(version) = change.version_id.clone() else {
                return Err(StageError::Invalid(format!(
                    "bucket `{}`: the event has no version id, and residency rules act on one exact version (is versioning enabled?)",
                    change.bucket
                )));
            };
            self.candidates.push(Candidate {
                index,
                bucket: ev.bucket,
                bucket_name: change.bucket.clone(),
                key: change.key.clone(),
                version,
            });
        }
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            let candidates = std::mem::take(&mut self.candidates);
            if candidates.is_empty() {
                return Vec::new();
            }
            let mut failed: Vec<(usize, StageError)> = Vec::new();

            // 1. Read each version's replication status, metadata and tags; decide.
            let this = &*self;
            let mut reads = Vec::with_capacity(candidates.len());
            for c in candidates {
                reads.push(async move {
                    let r = this.inspect(&c).await;
                    (c, r)
                });
            }
            let inspected: Vec<(
                Candidate<'c>,
                Result<Option<ObjectViolation<'c>>, PortError>,
            )> = futures::stream::iter(reads)
                .buffered(CONCURRENCY)
                .collect()
                .await;
            let mut violations = Vec::new();
            for (c, r) in inspected {
                match r {
                    Ok(Some(v)) => violations.push(v),
                    Ok(None) => {}
                    Err(e) => {
                        let e = about_key(self.labels, &c.key, &e).await;
                        failed.push((c.index, StageError::Port(e)));
                    }
                }
            }
            if violations.is_empty() {
                return failed;
            }
            for v in &violations {
                violation(metrics, &v.alert);
            }

            // 2. Alert first: a failed action retries the record, and its alert with it.
            let alerts: Vec<Alert> = violations.iter().map(|v| v.alert.clone()).collect();
            let results = self.alerts.send(&alerts).await;
            let mut to_act = Vec::new();
            for (v, r) in violations.into_iter().zip(results) {
                match r {
                    Ok(()) => to_act.push(v),
                    Err(e) => failed.push((v.candidate.index, alert_failed(&v.alert, &e))),
                }
            }

            // 3. Apply the actions.
            let mut actions = Vec::with_capacity(to_act.len());
            for v in to_act {
                actions.push(async move {
                    let r = this.act(&v).await;
                    (v, r)
                });
            }
            let done: Vec<(ObjectViolation<'c>, Result<(), PortError>)> =
                futures::stream::iter(actions)
                    .buffered(CONCURRENCY)
                    .collect()
                    .await;
            for (v, r) in done {
                match r {
                    Ok(()) => acted(metrics, &v.alert),
                    Err(e) => {
                        warn!(
                            event_id = %v.alert.event_id, source = %v.alert.source,
                            key = %v.alert.key, version = %v.candidate.version,
                            action = %v.alert.action, permanent = matches!(e, PortError::Permanent(_)), error = %e,
                            "residency action failed"
                        );
                        failed.push((v.candidate.index, action_failed(&v.alert, e)));
                    }
                }
            }
            failed
        })
    }
}

impl<'c> ObjectResidencyStage<'_, 'c> {
    async fn inspect(&self, c: &Candidate<'c>) -> Result<Option<ObjectViolation<'c>>, PortError> {
        let Some(head) = self
            .store
            .head_version(&c.bucket_name, &c.key, &c.version)
            .await?
        else {
            info!(bucket = %c.bucket_name, version = %c.version,
                "version no longer exists: nothing to enforce");
            return Ok(None);
        };
        let rules = &c.bucket.residency;
        let tags = if rules
            .iter()
            .any(|r| matches!(r.matcher, Matcher::Tag { .. }))
        {
            self.store
                .version_tags(&c.bucket_name, &c.key, &c.version)
                .await?
        } else {
            Vec::new()
        };
        let decision = residency::decide(
            rules,
            &self.config.residency.unmatched,
            self.region,
            &Object {
                key: &c.key,
                tags: &tags,
                metadata: &head.metadata,
            },
        );
        let (Some(rule), false) = (decision.rule, decision.allowed) else {
            return Ok(None);
        };
        let (action, note) = match rule.action {
            Action::DeleteReplica if !head.replica && rule.replicas_only => (
                Action::Alert,
                Some(
                    "origin copy (not a replica): reported, not deleted (the rule's replicas_only)"
                        .to_owned(),
                ),
            ),
            a => (a, None),
        };
        Ok(Some(ObjectViolation {
            alert: Alert {
                kind: ALERT_KIND.into(),
                event_id: format!("s3:{}:{}:{}", self.region, c.bucket_name, c.version),
                source: c.bucket.name.clone(),
                key: self.labels.label(&c.key).await?,
                version: Some(c.version.clone()),
                region: self.region.to_owned(),
                rule: Some(rule.name.clone()),
                action: action_name(action).into(),
                note,
            },
            action,
            size: head.size,
            candidate: Candidate {
                index: c.index,
                bucket: c.bucket,
                bucket_name: c.bucket_name.clone(),
                key: c.key.clone(),
                version: c.version.clone(),
            },
        }))
    }

    async fn act(&self, v: &ObjectViolation<'c>) -> Result<(), PortError> {
        let c = &v.candidate;
        match v.action {
            Action::Alert | Action::Report => Ok(()),
            Action::DeleteReplica => {
                self.store
                    .delete_version(&c.bucket_name, &c.key, &c.version)
                    .await
            }
            Action::Hold => {
                let Some(quarantine) = c.bucket.quarantine_in(self.region) else {
                    return Err(PortError::Permanent(format!(
                        "bucket \"{}\": action `hold` needs `quarantine_bucket`",
                        c.bucket.name
                    )));
                };
                self.store
                    .copy_version(
                        &c.bucket_name,
                        &c.key,
                        &c.version,
                        v.size,
                        &quarantine,
                        &quarantine_key(&c.bucket_name, &c.key, &c.version),
                    )
                    .await?;
                self.store
                    .delete_version(&c.bucket_name, &c.key, &c.version)
                    .await
            }
        }
    }
}

/// Where a held version lands in the quarantine bucket: one object per source version, so
/// a retried hold overwrites its own copy and two versions of a key never collide.
pub fn quarantine_key(bucket: &str, key: &str, version: &str) -> String {
    format!("{bucket}/{version}/{key}")
}

// ------------------------------------------------------------------ reporting

fn violation(metrics: &mut Metrics, a: &Alert) {
    let rule = a.rule.as_deref().unwrap_or("(unmatched)");
    metrics.put(
        Metric::ResidencyViolations,
        &[(Dim::Source, &a.source), (Dim::Rule, rule)],
        1.0,
    );
    warn!(
        event_id = %a.event_id, source = %a.source, key = %a.key,
        version = a.version.as_deref().unwrap_or(""), region = %a.region, rule,
        action = %a.action, note = a.note.as_deref().unwrap_or(""),
        "residency violation"
    );
}

fn acted(metrics: &mut Metrics, a: &Alert) {
    metrics.put(
        Metric::ResidencyActions,
        &[(Dim::Source, &a.source), (Dim::Action, &a.action)],
        1.0,
    );
}

fn alert_failed(a: &Alert, e: &PortError) -> StageError {
    let permanent = matches!(e, PortError::Permanent(_));
    warn!(event_id = %a.event_id, permanent, error = %e, "residency alert failed");
    StageError::Port(e.context(&format!("alert {}", a.event_id)))
}

/// The alert carries the key's label (hashed when configured); the adapter's error text
/// names no key.
fn action_failed(a: &Alert, e: PortError) -> StageError {
    StageError::Port(e.context(&format!("{} failed for key {}", a.action, a.key)))
}

/// A port error about the object `key`, with the key's label in front: adapters leave keys
/// out of their error text, and with `hash_keys_in_alerts` only the hash may reach a reason.
async fn about_key(labels: &KeyLabels, key: &str, e: &PortError) -> PortError {
    let label = labels
        .label(key)
        .await
        .unwrap_or_else(|_| "(hash unavailable)".to_owned());
    e.context(&format!("key {label}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::ddb::StreamRecord;
    use crate::ports::SecretSource;

    #[derive(Default)]
    struct Received(Mutex<Vec<Alert>>);
    impl Alerts for Received {
        fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, Vec<Result<(), PortError>>> {
            Box::pin(async move {
                self.0.lock().unwrap().extend_from_slice(alerts);
                alerts.iter().map(|_| Ok(())).collect()
            })
        }
    }

    struct Secret;
    impl SecretSource for Secret {
        fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, PortError>> {
            Box::pin(async { Ok(b"shared key".to_vec()) })
        }
    }

    #[tokio::test]
    async fn hashed_item_alert_carries_the_hmac_never_the_key() {
        let config = Config::embedded().unwrap();
        let table = config.table("users").unwrap();
        let raw = r#"{"eventID":"e1","eventSource":"aws:dynamodb","eventName":"INSERT","awsRegion":"us-east-1","dynamodb":{"Keys":{"pk":{"S":"ada@example.com"}},"NewImage":{"pk":{"S":"ada@example.com"},"home_region":{"S":"eu"}},"SequenceNumber":"42"}}"#;
        let record = StreamRecord::decode(raw).unwrap();
        let change = TableChange {
            table,
            record,
            heartbeat: false,
        };
        let received = Received::default();
        let labels = KeyLabels::hashed(Arc::new(Secret));
        let mut stage = ItemResidencyStage::new(&received, &labels, &config, "us-east-1");
        stage.observe(0, &change).unwrap();
        let mut metrics = Metrics::new("Tidemark");
        assert!(stage.flush(&mut metrics).await.is_empty());
        let got = received.0.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].key.starts_with("hmac-sha256:"), "{:?}", got[0]);
        let body = serde_json::to_string(&got[0]).unwrap();
        assert!(!body.contains("ada@example.com"), "{body}");
        assert_eq!(got[0].event_id, "ddb:us-east-1:users:42");
    }
}
