//! TEST CODE: S3 cross-region replication and the S3 events moto does not send.
//!
//! * [`S3Replicator`] copies each new object version (body, user metadata, tags) from one
//!   region's bucket to the peer's, and delete markers too, each after the direction's
//!   delay ([`S3Replicator::set_delay`]); deleting a specific version is never replicated
//!   (as on AWS). Copies are marked REPLICA at the proxy, per version, as S3 CRR marks them
//!   (`x-amz-replication-status: REPLICA`).
//! * [`EventFeed`] turns `ListObjectVersions` differences into the events AWS would send,
//!   with `versionId` and `sequencer`: EventBridge `Object Created` / `Object Deleted`
//!   (raw keys) or S3 notifications (form-encoded keys), delivered to a queue. The event
//!   time is when the version was written (a replica: when the replicator's PutObject
//!   returned; otherwise when the feed first saw it), to the second for EventBridge and to
//!   the ms for notifications, as AWS sends them.
//!
//! A notification's key comes from [`NOTIFICATION_KEYS`], written out by hand, never from
//! Tidemark's own encoder: a harness that encoded with the code under test could not show
//! a mismatch with what S3 sends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::aws::RegionClients;
use crate::proxy::Proxy;

/// Object keys as S3 event notifications carry them. AWS documents the key as URL encoded
/// in `application/x-www-form-urlencoded` form, with the example "red flower.jpg" →
/// "red+flower.jpg" (S3 User Guide, "Event message structure"): a space is `+`, so a `+` in
/// the key is `%2B`, `%` is `%25`, non-ASCII is percent-encoded UTF-8, `/` stays.
pub const NOTIFICATION_KEYS: &[(&str, &str)] = &[
    ("red flower.jpg", "red+flower.jpg"),
    ("a+b.txt", "a%2Bb.txt"),
    ("100%/x.png", "100%25/x.png"),
    ("dir/é 日本.txt", "dir/%C3%A9+%E6%97%A5%E6%9C%AC.txt"),
    (
        "eu/report 2026+Q1 100%.txt",
        "eu/report+2026%2BQ1+100%25.txt",
    ),
    (
        "résidence eu+/%/fiche 1.txt",
        "r%C3%A9sidence+eu%2B/%25/fiche+1.txt",
    ),
];

/// The key as a notification carries it: from [`NOTIFICATION_KEYS`], or unchanged when it
/// holds only characters no encoding touches.
pub fn notification_key(key: &str) -> Result<String> {
    if let Some((_, encoded)) = NOTIFICATION_KEYS.iter().find(|(k, _)| *k == key) {
        return Ok((*encoded).to_owned());
    }
    if key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return Ok(key.to_owned());
    }
    anyhow::bail!(
        "no documented notification encoding for key {key:?}: add it to NOTIFICATION_KEYS"
    )
}

/// (bucket, key, version id) of every version the replicators wrote (never replicated
/// back) → when it was written (epoch ms, as its PutObject returned).
pub type ReplicaSet = Arc<Mutex<HashMap<(String, String, String), u64>>>;

/// One version a replicator copied, with the times that bound its replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Applied {
    pub key: String,
    /// The replica's version id in the destination bucket.
    pub version: String,
    /// The source's user metadata, as copied.
    pub metadata: HashMap<String, String>,
    /// When the replicator first saw the source version (epoch ms).
    pub seen_ms: u64,
    /// Just before the replica's PutObject, and as it returned (epoch ms).
    pub before_ms: u64,
    pub after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    /// The key's current version (or delete marker).
    pub is_latest: bool,
}

pub async fn list_versions(c: &RegionClients, bucket: &str) -> Result<Vec<Version>> {
    let mut out = Vec::new();
    let mut key_marker = None;
    let mut version_marker = None;
    loop {
        let r =
            c.s3.list_object_versions()
                .bucket(bucket)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await?;
        for v in r.versions() {
            out.push(Version {
                key: v.key().unwrap_or("").to_owned(),
                version_id: v.version_id().unwrap_or("null").to_owned(),
                delete_marker: false,
                is_latest: v.is_latest() == Some(true),
            });
        }
        for d in r.delete_markers() {
            out.push(Version {
                key: d.key().unwrap_or("").to_owned(),
                version_id: d.version_id().unwrap_or("null").to_owned(),
                delete_marker: true,
                is_latest: d.is_latest() == Some(true),
            });
        }
        if r.is_truncated() == Some(true) {
            key_marker = r.next_key_marker().map(str::to_owned);
            version_marker = r.next_version_id_marker().map(str::to_owned);
        } else {
            return Ok(out);
        }
    }
}

pub struct S3Replicator {
    from: RegionClients,
    to: RegionClients,
    from_bucket: String,
    to_bucket: String,
    seen: HashSet<(String, String)>,
    /// Versions waiting out the delay: when each was first listed.
    pending: HashMap<(String, String), (Instant, u64)>,
    delay: Duration,
    replicas: ReplicaSet,
    proxy: Proxy,
    pub paused: bool,
    /// Every object version copied so far, in order (delete markers not included).
    pub applied: Arc<Mutex<Vec<S3Applied>>>,
    /// While set, the object versions that come due fail to replicate, as when the
    /// replication role loses its permissions on the destination: S3 does not retry them,
    /// and sends `s3:Replication:OperationFailedReplication` to this queue (the source
    /// bucket's notification: the region's object-events queue).
    pub failing: Option<String>,
    /// Versions that failed to replicate (key, version id), until re-replicated.
    pub failed: Vec<(String, String)>,
}

impl S3Replicator {
    pub fn new(
        from: RegionClients,
        from_bucket: &str,
        to: RegionClients,
        to_bucket: &str,
        replicas: ReplicaSet,
        proxy: Proxy,
    ) -> Self {
        Self {
            from,
            to,
            from_bucket: from_bucket.to_owned(),
            to_bucket: to_bucket.to_owned(),
            seen: HashSet::new(),
            pending: HashMap::new(),
            delay: Duration::ZERO,
            replicas,
            proxy,
            paused: false,
            applied: Arc::default(),
            failing: None,
            failed: Vec::new(),
        }
    }

    /// S3 Batch Replication of the versions that failed (the ReplicationFailures runbook):
    /// each failed version still current in the source is replicated again on the next
    /// step; one a later version superseded is not (replicating it would not change the
    /// destination's current version in S3, and here would overwrite it). Returns how many
    /// will be replicated.
    pub async fn replicate_failed(&mut self) -> Result<usize> {
        let versions = list_versions(&self.from, &self.from_bucket).await?;
        let mut again = 0;
        for (key, version) in std::mem::take(&mut self.failed) {
            let current = versions.iter().find(|v| v.key == key && v.is_latest);
            if current.is_some_and(|v| v.version_id == version && !v.delete_marker) {
                self.seen.remove(&(key, version));
                again += 1;
            }
        }
        Ok(again)
    }

    /// The `s3:Replication:OperationFailedReplication` notification S3 sends for a version
    /// that failed to replicate.
    async fn report_failure(&self, queue_url: &str, key: &str, version: &str) -> Result<()> {
        let now = crate::now_ms();
        let body = json!({"Records": [{
            "eventVersion": "2.2",
            "eventSource": "aws:s3",
            "awsRegion": self.from.region,
            "eventTime": rfc3339(now, true),
            "eventName": "Replication:OperationFailedReplication",
            "userIdentity": {"principalId": "s3.amazonaws.com"},
            "requestParameters": {"sourceIPAddress": "s3.amazonaws.com"},
            "responseElements": {"x-amz-request-id": format!("REPL-{now}"), "x-amz-id-2": "harness"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "tidemark-replication-events",
                "bucket": {"name": self.from_bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                           "arn": format!("arn:aws:s3:::{}", self.from_bucket)},
                "object": {"key": tidemark::objects::encode_form_key(key), "size": 0,
                           "versionId": version, "sequencer": format!("{now:016X}")}
            },
            "replicationEventData": {
                "replicationRuleId": "tidemark-replication",
                "destinationBucket": format!("arn:aws:s3:::{}", self.to_bucket),
                "s3Operation": "OBJECT_PUT",
                "requestTime": rfc3339(now, true),
                "failureReason": "DstPutObjectNotPermitted",
            }
        }]});
        self.from
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body.to_string())
            .send()
            .await
            .with_context(|| format!("send a replication failure of {key}"))?;
        Ok(())
    }

    /// Replication delay of this direction from now on: a version is copied once this long
    /// has passed since the replicator first listed it (so at least this long after its
    /// write).
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// (source region, destination region).
    pub fn route(&self) -> (&str, &str) {
        (&self.from.region, &self.to.region)
    }

    /// Copies what is new and due; returns how many versions it copied plus how many
    /// still wait out the delay (so a settling world keeps stepping).
    pub async fn step(&mut self) -> Result<usize> {
        if self.paused {
            return Ok(0);
        }
        let mut copied = 0;
        let mut waiting = 0;
        let mut versions = list_versions(&self.from, &self.from_bucket).await?;
        versions.reverse(); // oldest first within a key
        for v in versions {
            let id = (v.key.clone(), v.version_id.clone());
            if self.seen.contains(&id) {
                continue;
            }
            let (first, seen_ms) = *self
                .pending
                .entry(id.clone())
                .or_insert_with(|| (Instant::now(), crate::now_ms()));
            if first.elapsed() < self.delay {
                waiting += 1;
                continue;
            }
            self.pending.remove(&id);
            self.seen.insert(id);
            let mine = (
                self.from_bucket.clone(),
                v.key.clone(),
                v.version_id.clone(),
            );
            if self
                .replicas
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&mine)
            {
                continue; // a replica is not replicated back
            }
            if let Some(queue) = self.failing.clone()
                && !v.delete_marker
            {
                self.report_failure(&queue, &v.key, &v.version_id).await?;
                self.failed.push((v.key.clone(), v.version_id.clone()));
                continue;
            }
            let new_version = if v.delete_marker {
                let r = self
                    .to
                    .s3
                    .delete_object()
                    .bucket(&self.to_bucket)
                    .key(&v.key)
                    .send()
                    .await?;
                r.version_id().map(|v| (v.to_owned(), crate::now_ms()))
            } else {
                let got = self
                    .from
                    .s3
                    .get_object()
                    .bucket(&self.from_bucket)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .send()
                    .await?;
                let metadata = got.metadata().cloned();
                let content_type = got.content_type().map(str::to_owned);
                let body = got.body.collect().await?.into_bytes();
                let tags = self
                    .from
                    .s3
                    .get_object_tagging()
                    .bucket(&self.from_bucket)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .send()
                    .await?;
                let tagging: Vec<String> = tags
                    .tag_set()
                    .iter()
                    .map(|t| {
                        format!(
                            "{}={}",
                            tidemark::objects::encode_form_key(t.key()),
                            tidemark::objects::encode_form_key(t.value())
                        )
                    })
                    .collect();
                let mut put = self
                    .to
                    .s3
                    .put_object()
                    .bucket(&self.to_bucket)
                    .key(&v.key)
                    .set_metadata(metadata.clone())
                    .set_content_type(content_type)
                    .body(body.into());
                if !tagging.is_empty() {
                    put = put.tagging(tagging.join("&"));
                }
                let before_ms = crate::now_ms();
                let r = put.send().await?;
                let after_ms = crate::now_ms();
                let version = r.version_id().map(str::to_owned);
                self.proxy
                    .mark_replica(&self.to_bucket, &v.key, version.as_deref());
                self.applied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(S3Applied {
                        key: v.key.clone(),
                        version: version.clone().unwrap_or_default(),
                        metadata: metadata.unwrap_or_default(),
                        seen_ms,
                        before_ms,
                        after_ms,
                    });
                version.map(|v| (v, after_ms))
            };
            if let Some((id, at_ms)) = new_version {
                self.replicas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((self.to_bucket.clone(), v.key.clone(), id), at_ms);
            }
            copied += 1;
        }
        Ok(copied + waiting)
    }
}

/// Which event shape a feed produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    EventBridge,
    Notification,
}

pub struct EventFeed {
    clients: RegionClients,
    bucket: String,
    queue_url: String,
    shape: Shape,
    known: HashMap<(String, String), bool>,
    sequencer: u64,
    /// When the replicators wrote their replicas (event times of replica versions).
    replicas: ReplicaSet,
}

impl EventFeed {
    pub fn new(
        clients: RegionClients,
        bucket: &str,
        queue_url: &str,
        shape: Shape,
        replicas: ReplicaSet,
    ) -> Self {
        Self {
            clients,
            bucket: bucket.to_owned(),
            queue_url: queue_url.to_owned(),
            shape,
            known: HashMap::new(),
            sequencer: 0,
            replicas,
        }
    }

    /// When `version` of `key` was written: the replica's PutObject, or now (first seen).
    fn written_ms(&self, key: &str, version: &str) -> u64 {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(self.bucket.clone(), key.to_owned(), version.to_owned()))
            .copied()
            .unwrap_or_else(crate::now_ms)
    }

    /// Emits events for versions that appeared or disappeared since the last step.
    pub async fn step(&mut self) -> Result<usize> {
        let mut now: HashMap<(String, String), bool> = HashMap::new();
        let mut versions = list_versions(&self.clients, &self.bucket).await?;
        versions.reverse();
        let mut events = Vec::new();
        for v in &versions {
            let id = (v.key.clone(), v.version_id.clone());
            now.insert(id.clone(), v.delete_marker);
            if !self.known.contains_key(&id) {
                events.push((
                    v.key.clone(),
                    v.version_id.clone(),
                    if v.delete_marker { "marker" } else { "created" },
                    self.written_ms(&v.key, &v.version_id),
                ));
            }
        }
        for (id, _) in self.known.iter().filter(|(id, _)| !now.contains_key(*id)) {
            events.push((id.0.clone(), id.1.clone(), "permanent", crate::now_ms()));
        }
        self.known = now;
        let n = events.len();
        for (key, version, what, at_ms) in events {
            self.sequencer += 1;
            let body = self.event(&key, &version, what, at_ms)?;
            self.clients
                .sqs
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .send()
                .await?;
        }
        Ok(n)
    }

    fn event(&self, key: &str, version: &str, what: &str, at_ms: u64) -> Result<String> {
        let sequencer = format!("{:018X}", self.sequencer);
        // EventBridge's `time` is to the second; a notification's `eventTime` to the ms.
        let time = match self.shape {
            Shape::EventBridge => rfc3339(at_ms / 1000 * 1000, false),
            Shape::Notification => rfc3339(at_ms, true),
        };
        match self.shape {
            Shape::EventBridge => {
                let (detail_type, deletion) = match what {
                    "created" => ("Object Created", None),
                    "marker" => ("Object Deleted", Some("Delete Marker Created")),
                    _ => ("Object Deleted", Some("Permanently Deleted")),
                };
                let mut detail = json!({
                    "version": "0",
                    "bucket": {"name": self.bucket},
                    "object": {"key": key, "version-id": version, "sequencer": sequencer},
                    "request-id": format!("req-{sequencer}"),
                    "requester": "123456789012",
                    "reason": if what == "created" { "PutObject" } else { "DeleteObject" },
                });
                if let Some(d) = deletion {
                    detail["deletion-type"] = json!(d);
                }
                Ok(json!({
                    "version": "0", "id": format!("ev-{}-{sequencer}", self.bucket), "detail-type": detail_type,
                    "source": "aws.s3", "account": "123456789012", "time": time, "region": self.clients.region,
                    "resources": [format!("arn:aws:s3:::{}", self.bucket)], "detail": detail,
                })
                .to_string())
            }
            Shape::Notification => {
                let name = match what {
                    "created" => "ObjectCreated:Put",
                    "marker" => "ObjectRemoved:DeleteMarkerCreated",
                    _ => "ObjectRemoved:Delete",
                };
                let key = notification_key(key)?;
                Ok(json!({"Records": [{
                    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": self.clients.region, "eventTime": time,
                    "eventName": name, "userIdentity": {"principalId": "harness"},
                    "responseElements": {"x-amz-request-id": format!("req-{sequencer}")},
                    "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": self.bucket, "arn": format!("arn:aws:s3:::{}", self.bucket)},
                           "object": {"key": key, "versionId": version, "sequencer": sequencer}},
                }]})
                .to_string())
            }
        }
    }
}

/// `2026-11-23T12:00:05Z` (or `…05.250Z` with `millis`) for epoch ms `ms`, UTC.
pub fn rfc3339(ms: u64, millis: bool) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if millis {
        format!(
            "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            ms % 1000
        )
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, true), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 (a leap day) 23:59:59.250 UTC.
        assert_eq!(rfc3339(1_709_251_199_250, true), "2024-02-29T23:59:59.250Z");
        assert_eq!(rfc3339(1_709_251_199_250, false), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(1_795_435_205_250, false), "2026-11-23T12:00:05Z");
    }
}
