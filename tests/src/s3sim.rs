//! TEST CODE: S3 cross-region replication and the S3 events moto does not send.
//!
//! * [`S3Replicator`] copies each new object version (body, metadata, tags) from one
//!   region's bucket to the peer's, and delete markers too; deleting a specific version is
//!   never replicated (as on AWS). Copies are marked REPLICA at the proxy.
//! * [`EventFeed`] turns `ListObjectVersions` differences into the events AWS would send,
//!   with `versionId` and `sequencer`: EventBridge `Object Created` / `Object Deleted`
//!   (raw keys) or S3 notifications (form-encoded keys), delivered to a queue.
//!
//! A notification's key comes from [`NOTIFICATION_KEYS`], written out by hand, never from
//! Tidemark's own encoder: a harness that encoded with the code under test could not show
//! a mismatch with what S3 sends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
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

/// (key, version id) pairs the replicators wrote, per bucket: never replicated back.
pub type ReplicaSet = Arc<Mutex<HashSet<(String, String, String)>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
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
            });
        }
        for d in r.delete_markers() {
            out.push(Version {
                key: d.key().unwrap_or("").to_owned(),
                version_id: d.version_id().unwrap_or("null").to_owned(),
                delete_marker: true,
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
    replicas: ReplicaSet,
    proxy: Proxy,
    pub paused: bool,
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
            replicas,
            proxy,
            paused: false,
        }
    }

    /// (source region, destination region).
    pub fn route(&self) -> (&str, &str) {
        (&self.from.region, &self.to.region)
    }

    /// Copies what is new; returns how many versions it copied.
    pub async fn step(&mut self) -> Result<usize> {
        if self.paused {
            return Ok(0);
        }
        let mut copied = 0;
        let mut versions = list_versions(&self.from, &self.from_bucket).await?;
        versions.reverse(); // oldest first within a key
        for v in versions {
            if !self.seen.insert((v.key.clone(), v.version_id.clone())) {
                continue;
            }
            let mine = (
                self.from_bucket.clone(),
                v.key.clone(),
                v.version_id.clone(),
            );
            if self
                .replicas
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&mine)
            {
                continue; // a replica is not replicated back
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
                r.version_id().map(str::to_owned)
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
                    .set_metadata(metadata)
                    .set_content_type(content_type)
                    .body(body.into());
                if !tagging.is_empty() {
                    put = put.tagging(tagging.join("&"));
                }
                let r = put.send().await?;
                self.proxy.mark_replica(&self.to_bucket, &v.key);
                r.version_id().map(str::to_owned)
            };
            if let Some(id) = new_version {
                self.replicas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((self.to_bucket.clone(), v.key.clone(), id));
            }
            copied += 1;
        }
        Ok(copied)
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
}

impl EventFeed {
    pub fn new(clients: RegionClients, bucket: &str, queue_url: &str, shape: Shape) -> Self {
        Self {
            clients,
            bucket: bucket.to_owned(),
            queue_url: queue_url.to_owned(),
            shape,
            known: HashMap::new(),
            sequencer: 0,
        }
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
                ));
            }
        }
        for (id, _) in self.known.iter().filter(|(id, _)| !now.contains_key(*id)) {
            events.push((id.0.clone(), id.1.clone(), "permanent"));
        }
        self.known = now;
        let n = events.len();
        for (key, version, what) in events {
            self.sequencer += 1;
            let body = self.event(&key, &version, what)?;
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

    fn event(&self, key: &str, version: &str, what: &str) -> Result<String> {
        let sequencer = format!("{:018X}", self.sequencer);
        let time = "2026-11-22T12:00:00.000Z";
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
