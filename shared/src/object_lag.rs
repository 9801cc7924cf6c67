//! S3 object replication lag: the object-processor's lag stage.
//!
//! In region R, the replica of an object written in region O arrives as an `Object Created`
//! event of R's bucket. Its event time is when S3 wrote the replica in R (EventBridge gives
//! it to the second, S3 notifications to the ms): the object counterpart of a stream's
//! `ApproximateCreationDateTime`. The write time and the origin come from the object's own
//! user metadata, which S3 replication copies with it:
//!
//! * heartbeat objects (`<heartbeat_prefix>/<region>`, buckets with `canary.enabled`): the
//!   origin is the key's region, the write time the canary's `tidemark_written_at_ms`;
//! * application objects (buckets with `lag.enabled`): the metadata named by
//!   `lag.origin_region` and `lag.written_at_ms`.
//!
//! The figures are [`crate::lag::lags`] of (written_at, event time, processing time), emitted
//! through [`LagSamples`] with the tables' dimension sets: `ReplicationLag` and
//! `EndToEndLag` per (Source, SourceRegion, DestinationRegion), `DeliveryDelay` per
//! (Source, DestinationRegion).
//!
//! An event does not say whether a version is a replica, and it carries no metadata: the
//! stage reads both with one HeadObject per new version of a lag-enabled bucket (peers'
//! heartbeat objects are replicas by their key). Versions S3 does not mark `REPLICA` are
//! local writes, not replications: not measured.
//!
//! Lag never fails a record. A replica whose metadata is missing or unusable (no origin,
//! an origin outside the deployment, a write time that is not epoch milliseconds), an event
//! without a version id, and a HeadObject that fails (transient or permanent) leave that
//! object unmeasured: one warning per object with the reason, bucket and version (never the
//! key or a metadata value). Retrying the record would re-run its invalidation and
//! residency for one lag sample, and a retried sample would measure the retry.

use futures::StreamExt;
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::config::{Bucket, Config};
use crate::error::StageError;
use crate::invalidation::ObjectEvent;
use crate::lag::{HEARTBEAT_WRITTEN_AT, LagSamples, lags, parse_written_at};
use crate::metrics::Metrics;
use crate::objects::ObjectEventKind;
use crate::pipeline::Stage;
use crate::ports::{ObjectStore, PortError, VersionHead};

/// HeadObject calls in flight at once.
const CONCURRENCY: usize = 8;

/// Where the origin and the write time of a version come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'p> {
    /// A peer's heartbeat object: origin from its key.
    Heartbeat(&'p str),
    /// An application object: both from the bucket's `lag` metadata.
    Application,
}

/// A new object version to measure.
#[derive(Debug)]
struct Candidate<'p, 'c> {
    bucket: &'c Bucket,
    /// The bucket's name in this region.
    bucket_name: String,
    key: String,
    version: String,
    /// The event's time in epoch ms (0: none).
    event_time_ms: u64,
    kind: Kind<'p>,
}

/// What one HEAD said about a candidate.
#[derive(Debug, PartialEq, Eq)]
enum Reading<'c> {
    /// A replica written in `origin` at `written_at_ms`.
    Measured { origin: &'c str, written_at_ms: u64 },
    /// A local write (not marked REPLICA), or a version gone since the event.
    NotReplicated,
    /// Not measured, for this reason (names and codes only, no value).
    Unmeasured(String),
}

/// object-processor: measures replicas of heartbeat objects and of application objects.
pub struct ObjectLagStage<'p, 'c> {
    store: &'p dyn ObjectStore,
    regions: &'p [String],
    region: &'p str,
    now_ms: u64,
    candidates: Vec<Candidate<'p, 'c>>,
    /// (source, bucket, version, reason) of objects found unmeasurable in `observe`.
    unmeasured: Vec<(String, String, String, String)>,
}

impl<'p, 'c> ObjectLagStage<'p, 'c> {
    /// `region` is this region; `now_ms` the processing time.
    pub fn new(
        store: &'p dyn ObjectStore,
        config: &'p Config,
        region: &'p str,
        now_ms: u64,
    ) -> Self {
        Self {
            store,
            regions: &config.deployment.regions,
            region,
            now_ms,
            candidates: Vec::new(),
            unmeasured: Vec::new(),
        }
    }

    fn known_region(&self, text: &str) -> Option<&'p str> {
        self.regions
            .iter()
            .find(|r| r.as_str() == text)
            .map(String::as_str)
    }

    /// What `head` says about `c`.
    fn read(&self, c: &Candidate<'p, 'c>, head: Option<VersionHead>) -> Reading<'p> {
        let Some(head) = head else {
            return Reading::NotReplicated;
        };
        if !head.replica {
            return match c.kind {
                // Only replication writes a peer's heartbeat here.
                Kind::Heartbeat(_) => Reading::Unmeasured(
                    "a peer's heartbeat object that S3 does not mark REPLICA".into(),
                ),
                Kind::Application => Reading::NotReplicated,
            };
        }
        let meta = |name: &str| {
            head.metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let (origin, written_name) = match c.kind {
            Kind::Heartbeat(origin) => (Ok(origin), HEARTBEAT_WRITTEN_AT),
            Kind::Application => {
                let name = c.bucket.lag.origin_region.as_str();
                (
                    match meta(name) {
                        None => Err(format!("no `{name}` user metadata (lag.origin_region)")),
                        Some(v) => self.known_region(v.trim()).ok_or_else(|| {
                            format!(
                                "`{name}` user metadata (lag.origin_region) is not a deployment region ({})",
                                self.regions.join(", ")
                            )
                        }),
                    },
                    c.bucket.lag.written_at_ms.as_str(),
                )
            }
        };
        let origin = match origin {
            Ok(o) if o == self.region => {
                return Reading::Unmeasured(format!(
                    "S3 marks the version REPLICA but its origin is this region ({})",
                    self.region
                ));
            }
            Ok(o) => o,
            Err(reason) => return Reading::Unmeasured(reason),
        };
        match meta(written_name).map(|v| parse_written_at(v, self.now_ms)) {
            Some(Some(written_at_ms)) => Reading::Measured {
                origin,
                written_at_ms,
            },
            Some(None) => Reading::Unmeasured(format!(
                "`{written_name}` user metadata is not a write time in epoch milliseconds (not a number, seconds, or more than a day ahead)"
            )),
            None => Reading::Unmeasured(format!("no `{written_name}` user metadata")),
        }
    }
}

impl<'p, 'c> Stage<ObjectEvent<'c>> for ObjectLagStage<'p, 'c> {
    fn name(&self) -> &'static str {
        "object-lag"
    }

    fn observe(&mut self, _index: usize, ev: &ObjectEvent<'c>) -> Result<(), StageError> {
        let b = ev.bucket;
        for c in &ev.changes {
            if c.kind != ObjectEventKind::Created {
                continue;
            }
            let kind = if crate::config::is_heartbeat_object(ev.heartbeat_prefix, &c.key) {
                let origin = &c.key[ev.heartbeat_prefix.len() + 1..];
                // This region's own heartbeat is a local write, not a replication.
                if !b.canary.enabled || origin == self.region {
                    continue;
                }
                match self.known_region(origin) {
                    Some(o) => Kind::Heartbeat(o),
                    None => {
                        self.unmeasured.push((
                            b.name.clone(),
                            c.bucket.clone(),
                            c.version_id.clone().unwrap_or_default(),
                            "a heartbeat object whose key names no deployment region".into(),
                        ));
                        continue;
                    }
                }
            } else if b.lag.enabled {
                Kind::Application
            } else {
                continue;
            };
            let Some(version) = c.version_id.clone() else {
                self.unmeasured.push((
                    b.name.clone(),
                    c.bucket.clone(),
                    String::new(),
                    "the event has no version id (is versioning enabled?)".into(),
                ));
                continue;
            };
            self.candidates.push(Candidate {
                bucket: b,
                bucket_name: c.bucket.clone(),
                key: c.key.clone(),
                version,
                event_time_ms: c.event_time_ms,
                kind,
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
            let this = &*self;
            let mut reads = Vec::with_capacity(candidates.len());
            for c in candidates {
                reads.push(async move {
                    let r = this
                        .store
                        .head_version(&c.bucket_name, &c.key, &c.version)
                        .await;
                    (c, r)
                });
            }
            let heads: Vec<(Candidate<'p, 'c>, Result<Option<VersionHead>, PortError>)> =
                futures::stream::iter(reads)
                    .buffered(CONCURRENCY)
                    .collect()
                    .await;
            let mut samples = LagSamples::default();
            let mut unmeasured = std::mem::take(&mut self.unmeasured);
            for (c, head) in heads {
                let reading = match head {
                    Ok(h) => self.read(&c, h),
                    // The error names the object; the key stays out of logs.
                    Err(e) => Reading::Unmeasured(format!(
                        "HeadObject failed ({}): {}",
                        if matches!(e, PortError::Permanent(_)) {
                            "permanent"
                        } else {
                            "transient"
                        },
                        e.to_string().replace(&c.key, "<key>")
                    )),
                };
                match reading {
                    Reading::Measured {
                        origin,
                        written_at_ms,
                    } => {
                        let applied = (c.event_time_ms > 0).then_some(c.event_time_ms);
                        samples.record(
                            &c.bucket.name,
                            origin,
                            lags(written_at_ms, applied, self.now_ms),
                        );
                    }
                    Reading::NotReplicated => {}
                    Reading::Unmeasured(reason) => {
                        unmeasured.push((c.bucket.name.clone(), c.bucket_name, c.version, reason))
                    }
                }
            }
            samples.emit(metrics, self.region);
            for (source, bucket, version, reason) in &unmeasured {
                warn!(
                    source = %source,
                    bucket = %bucket,
                    version = %version,
                    reason = %reason,
                    "object replication lag not measured"
                );
            }
            if !unmeasured.is_empty() {
                info!(
                    objects = unmeasured.len(),
                    "objects whose replication lag could not be measured (lag never fails a record)"
                );
            }
            Vec::new()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::objects::ObjectChange;

    const CONFIG: &str = r#"
[deployment]
regions = ["us-east-1", "eu-west-1", "ap-southeast-2"]
[residency]
unmatched = "anywhere"
[[buckets]]
name = "assets"
bucket = "assets-{region}"
canary = { enabled = true }
lag = { enabled = true, written_at_ms = "written-at" }
[[buckets]]
name = "plain"
bucket = "plain-{region}"
"#;

    /// HEAD answers by version id (`Err` text: transient failure); records every call.
    #[derive(Default)]
    struct Heads {
        heads: HashMap<String, Result<Option<VersionHead>, String>>,
        calls: Mutex<Vec<String>>,
    }

    impl ObjectStore for Heads {
        fn head_version<'a>(
            &'a self,
            _bucket: &'a str,
            _key: &'a str,
            version: &'a str,
        ) -> BoxFuture<'a, Result<Option<VersionHead>, PortError>> {
            self.calls.lock().unwrap().push(version.to_owned());
            let r = match self.heads.get(version) {
                Some(Ok(h)) => Ok(h.clone()),
                Some(Err(e)) => Err(PortError::Transient(e.clone())),
                None => Ok(None),
            };
            Box::pin(async move { r })
        }
        fn version_tags<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<(String, String)>, PortError>> {
            unreachable!()
        }
        fn delete_version<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), PortError>> {
            unreachable!()
        }
        fn copy_version<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: u64,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), PortError>> {
            unreachable!()
        }
    }

    fn head(replica: bool, meta: &[(&str, &str)]) -> Result<Option<VersionHead>, String> {
        Ok(Some(VersionHead {
            replica,
            size: 1,
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }))
    }

    fn created(bucket: &str, key: &str, version: Option<&str>, at: u64) -> ObjectChange {
        ObjectChange {
            event_id: format!("e-{key}"),
            region: "eu-west-1".into(),
            bucket: bucket.into(),
            key: key.into(),
            version_id: version.map(str::to_owned),
            sequencer: None,
            kind: ObjectEventKind::Created,
            event_time_ms: at,
            replication: None,
        }
    }

    const NOW: u64 = 1_700_000_005_000;

    async fn run(config: &Config, store: &Heads, changes: Vec<(&str, ObjectChange)>) -> Metrics {
        let mut stage = ObjectLagStage::new(store, config, "eu-west-1", NOW);
        for (i, (name, c)) in changes.into_iter().enumerate() {
            let ev = ObjectEvent {
                bucket: config.buckets.iter().find(|b| b.name == name).unwrap(),
                changes: vec![c],
                heartbeat_prefix: &config.deployment.heartbeat_prefix,
            };
            stage.observe(i, &ev).unwrap();
        }
        let mut metrics = Metrics::new("T");
        assert!(
            stage.flush(&mut metrics).await.is_empty(),
            "lag never fails a record"
        );
        metrics
    }

    fn values(docs: &[serde_json::Value], name: &str, from: &str) -> Vec<f64> {
        docs.iter()
            .filter(|d| d["SourceRegion"] == from || from.is_empty())
            .filter_map(|d| d.get(name).cloned())
            .flat_map(|v| match v {
                serde_json::Value::Array(a) => a,
                v => vec![v],
            })
            .filter_map(|v| v.as_f64())
            .collect()
    }

    #[tokio::test]
    async fn replicas_are_measured_from_their_metadata_per_origin() {
        let config = Config::parse("t", CONFIG).unwrap();
        let store = Heads {
            heads: HashMap::from([
                (
                    "app-us".to_owned(),
                    head(
                        true,
                        &[
                            ("origin-region", "us-east-1"),
                            ("written-at", "1700000001250"),
                        ],
                    ),
                ),
                (
                    "app-ap".to_owned(),
                    head(
                        true,
                        &[
                            ("origin-region", "ap-southeast-2"),
                            ("written-at", "1700000000000"),
                        ],
                    ),
                ),
                (
                    "hb-us".to_owned(),
                    head(true, &[("tidemark_written_at_ms", "1700000002900")]),
                ),
            ]),
            ..Heads::default()
        };
        let mut m = run(
            &config,
            &store,
            vec![
                (
                    "assets",
                    created(
                        "assets-eu-west-1",
                        "a.png",
                        Some("app-us"),
                        1_700_000_002_000,
                    ),
                ),
                (
                    "assets",
                    created(
                        "assets-eu-west-1",
                        "b.png",
                        Some("app-ap"),
                        1_700_000_004_000,
                    ),
                ),
                (
                    "assets",
                    created(
                        "assets-eu-west-1",
                        "tidemark-heartbeat/us-east-1",
                        Some("hb-us"),
                        1_700_000_003_000,
                    ),
                ),
            ],
        )
        .await;
        let docs = m.drain_documents(0);
        for d in &docs {
            if d.get("ReplicationLag").is_some() {
                assert_eq!(d["Source"], "assets");
                assert_eq!(d["DestinationRegion"], "eu-west-1");
            }
        }
        // Event time − written_at; end-to-end = now − written_at.
        assert_eq!(values(&docs, "ReplicationLag", "us-east-1"), [750.0, 100.0]);
        assert_eq!(
            values(&docs, "EndToEndLag", "us-east-1"),
            [3_750.0, 2_100.0]
        );
        assert_eq!(values(&docs, "ReplicationLag", "ap-southeast-2"), [4_000.0]);
        assert_eq!(
            values(&docs, "DeliveryDelay", ""),
            [3_000.0, 1_000.0, 2_000.0]
        );
    }

    #[tokio::test]
    async fn local_writes_bad_metadata_and_failed_heads_are_skipped_not_failed() {
        let config = Config::parse("t", CONFIG).unwrap();
        let store = Heads {
            heads: HashMap::from([
                (
                    "local".to_owned(),
                    head(
                        false,
                        &[
                            ("origin-region", "us-east-1"),
                            ("written-at", "1700000001000"),
                        ],
                    ),
                ),
                (
                    "seconds".to_owned(),
                    head(
                        true,
                        &[("origin-region", "us-east-1"), ("written-at", "1700000001")],
                    ),
                ),
                (
                    "no-origin".to_owned(),
                    head(true, &[("written-at", "1700000001000")]),
                ),
                (
                    "mars".to_owned(),
                    head(
                        true,
                        &[("origin-region", "mars-1"), ("written-at", "1700000001000")],
                    ),
                ),
                ("throttled".to_owned(), Err("SlowDown".to_owned())),
            ]),
            ..Heads::default()
        };
        let mut m = run(
            &config,
            &store,
            ["local", "seconds", "no-origin", "mars", "throttled", "gone"]
                .into_iter()
                .map(|v| {
                    (
                        "assets",
                        created("assets-eu-west-1", v, Some(v), 1_700_000_002_000),
                    )
                })
                .collect(),
        )
        .await;
        assert!(values(&m.drain_documents(0), "ReplicationLag", "").is_empty());
        assert_eq!(store.calls.lock().unwrap().len(), 6);
    }

    #[tokio::test]
    async fn only_lag_enabled_buckets_and_peer_heartbeats_cost_a_head() {
        let config = Config::parse("t", CONFIG).unwrap();
        let store = Heads::default();
        run(
            &config,
            &store,
            vec![
                // Lag not enabled, no canary: no HEAD.
                ("plain", created("plain-eu-west-1", "x", Some("p1"), 1)),
                (
                    "plain",
                    created(
                        "plain-eu-west-1",
                        "tidemark-heartbeat/us-east-1",
                        Some("p2"),
                        1,
                    ),
                ),
                // This region's own heartbeat is no replication.
                (
                    "assets",
                    created(
                        "assets-eu-west-1",
                        "tidemark-heartbeat/eu-west-1",
                        Some("own"),
                        1,
                    ),
                ),
                // No version id: nothing to HEAD.
                ("assets", created("assets-eu-west-1", "y", None, 1)),
                ("assets", created("assets-eu-west-1", "z", Some("a1"), 1)),
            ],
        )
        .await;
        assert_eq!(*store.calls.lock().unwrap(), ["a1"]);
    }
}
