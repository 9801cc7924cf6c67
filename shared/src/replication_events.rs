//! S3 replication events (`s3:Replication:*` notifications) in the object-processor.
//!
//! The **source** bucket emits them, so they arrive in the source region: `awsRegion` and
//! `s3.bucket` name the source; `replicationEventData.destinationBucket` names where the
//! object did not get (in time), and maps back to a deployment region through the
//! bucket's `{region}` pattern. Each event counts once in `ReplicationFailures`
//! (`Source`, `Event`: the event type, four values) and goes out as one alert; the
//! `failureReason` goes into the alert and the log line, never into a dimension.
//!
//! Failure events need S3 Replication metrics on the rule; threshold events
//! (`OperationMissedThreshold`, `OperationReplicatedAfterThreshold`) need S3 Replication
//! Time Control. EventBridge does not carry these events: an S3 notification sends them to
//! the object-events queue.

use futures::future::BoxFuture;
use tracing::warn;

use crate::config::{Bucket, Config};
use crate::error::StageError;
use crate::invalidation::ObjectEvent;
use crate::keyhash::KeyLabels;
use crate::metrics::{Dim, Metric, Metrics};
use crate::objects::{ObjectChange, ObjectEventKind, ReplicationEvent};
use crate::pipeline::Stage;
use crate::ports::{Alert, Alerts};

/// `kind` of the alert for each event type.
pub fn alert_kind(e: ReplicationEvent) -> &'static str {
    match e {
        ReplicationEvent::OperationFailedReplication => "replication-failed",
        ReplicationEvent::OperationMissedThreshold => "replication-missed-threshold",
        ReplicationEvent::OperationReplicatedAfterThreshold => {
            "replication-replicated-after-threshold"
        }
        ReplicationEvent::OperationNotTracked => "replication-not-tracked",
    }
}

/// The deployment region whose bucket (through the `{region}` pattern) is `name`.
pub fn destination_region<'c>(config: &'c Config, bucket: &Bucket, name: &str) -> Option<&'c str> {
    config
        .deployment
        .regions
        .iter()
        .find(|r| bucket.bucket_in(r) == name)
        .map(String::as_str)
}

/// The alert for one replication event of `bucket` seen in `region` (the source region),
/// and the destination region. Its `key` is the object key as stored: the stage replaces
/// it with its label (the keyed hash with `hash_keys_in_alerts`) before sending. `Err` is the reason the event cannot be reported as
/// configured (it is dead-lettered).
pub fn alert_for(
    config: &Config,
    bucket: &Bucket,
    region: &str,
    event: ReplicationEvent,
    c: &ObjectChange,
) -> Result<(Alert, String), String> {
    let detail = c.replication.clone().unwrap_or_default();
    let destination = match detail.destination_bucket.as_deref() {
        Some(name) => match destination_region(config, bucket, name) {
            Some(r) => r.to_owned(),
            None => {
                return Err(format!(
                    "{} event of bucket `{}` (source `{}`): destination bucket `{name}` is no region's bucket under the pattern `{}` (regions: {})",
                    event.as_str(),
                    c.bucket,
                    bucket.name,
                    bucket.bucket_pattern,
                    config.deployment.regions.join(", ")
                ));
            }
        },
        None => {
            return Err(format!(
                "{} event of bucket `{}` (source `{}`): expected replicationEventData.destinationBucket, found none",
                event.as_str(),
                c.bucket,
                bucket.name
            ));
        }
    };
    let mut note = format!(
        "{} from bucket {} ({region}) to bucket {} ({destination})",
        event.as_str(),
        c.bucket,
        detail.destination_bucket.as_deref().unwrap_or(""),
    );
    if let Some(op) = &detail.operation {
        note.push_str(&format!(", operation {op}"));
    }
    if let Some(reason) = &detail.failure_reason {
        note.push_str(&format!(", failureReason {reason}"));
    }
    let alert = Alert {
        kind: alert_kind(event).into(),
        // The notification's request id, event name and sequencer: the same on every
        // redelivery of this event, so consumers deduplicate on it.
        event_id: format!("s3:{region}:{}:{}", c.bucket, c.event_id),
        source: bucket.name.clone(),
        key: c.key.clone(),
        version: c.version_id.clone(),
        region: region.to_owned(),
        rule: detail.rule_id.clone(),
        action: "report".into(),
        note: Some(note),
    };
    Ok((alert, destination))
}

struct Found {
    index: usize,
    event: ReplicationEvent,
    alert: Alert,
    reason: Option<String>,
    destination: String,
}

/// object-processor: reports each S3 replication event (metric, alert, log line).
pub struct ReplicationEventStage<'p> {
    alerts: &'p dyn Alerts,
    labels: &'p KeyLabels,
    config: &'p Config,
    region: &'p str,
    found: Vec<Found>,
}

impl<'p> ReplicationEventStage<'p> {
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

impl<'c> Stage<ObjectEvent<'c>> for ReplicationEventStage<'_> {
    fn name(&self) -> &'static str {
        "replication-events"
    }

    fn observe(&mut self, index: usize, ev: &ObjectEvent<'c>) -> Result<(), StageError> {
        let mut found = Vec::new();
        for c in &ev.changes {
            let ObjectEventKind::Replication(event) = c.kind else {
                continue;
            };
            let (alert, destination) = alert_for(self.config, ev.bucket, self.region, event, c)
                .map_err(StageError::Invalid)?;
            found.push(Found {
                index,
                event,
                reason: c
                    .replication
                    .as_ref()
                    .and_then(|d| d.failure_reason.clone()),
                destination,
                alert,
            });
        }
        // All of the record's events or none: a record that fails is not half reported.
        self.found.extend(found);
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            let mut found = std::mem::take(&mut self.found);
            if found.is_empty() {
                return Vec::new();
            }
            // Keys leave as labels: the keyed hash when configured. A secret that cannot be
            // read yet retries the record (its key is never sent instead).
            let mut failed = Vec::new();
            let mut labelled = Vec::with_capacity(found.len());
            for mut f in found.drain(..) {
                match self.labels.label(&f.alert.key).await {
                    Ok(label) => {
                        f.alert.key = label;
                        labelled.push(f);
                    }
                    Err(e) => failed.push((f.index, StageError::Port(e))),
                }
            }
            let found = labelled;
            for f in &found {
                metrics.put(
                    Metric::ReplicationFailures,
                    &[
                        (Dim::Source, &f.alert.source),
                        (Dim::Event, f.event.as_str()),
                    ],
                    1.0,
                );
                warn!(
                    event = f.event.as_str(),
                    event_id = %f.alert.event_id,
                    source = %f.alert.source,
                    key = %f.alert.key,
                    version = f.alert.version.as_deref().unwrap_or(""),
                    destination_region = %f.destination,
                    replication_rule = f.alert.rule.as_deref().unwrap_or(""),
                    failure_reason = f.reason.as_deref().unwrap_or(""),
                    "S3 replication event"
                );
            }
            let alerts: Vec<Alert> = found.iter().map(|f| f.alert.clone()).collect();
            let results = self.alerts.send(&alerts).await;
            for (f, r) in found.iter().zip(results) {
                if let Err(e) = r {
                    let what = format!("alert {}", f.alert.event_id);
                    failed.push((f.index, StageError::Port(e.context(&what))));
                }
            }
            failed
        })
    }
}
