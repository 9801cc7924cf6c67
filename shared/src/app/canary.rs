//! replication-canary: on each tick, writes this region's heartbeat item per watched table
//! and heartbeat object per watched bucket, then, for each peer P, reads P's newest
//! heartbeat twice: in P itself (a cross-region read) and in this region's replica.
//!
//! - P's own heartbeat fresh, the copy here old: replication P → here is behind by the
//!   gap (`Staleness`); this region serves stale data.
//! - P's own heartbeat old or unreadable: P is down (`PeerDown`), no staleness for it, so
//!   a dead peer never makes this region look unhealthy.
//!
//! `WorstStaleness` (one value per tick, 0 when no live peer is behind) feeds the Route 53
//! health-check alarm. `HeartbeatAge` (now − the copy here) stays as a coarse stall
//! detector that also covers a copy that never arrived.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::config::{Bucket, Config, KeyType, Table};
use crate::metrics::{Dim, Metric, Metrics};

pub const FUNCTION: &str = "replication-canary";
/// Attribute / metadata holding the heartbeat's write time (epoch ms); the stream-processor
/// measures replication lag from it.
pub const WRITTEN_AT: &str = crate::lag::HEARTBEAT_WRITTEN_AT;

/// The clients of one region.
#[derive(Debug, Clone)]
pub struct RegionClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
}

#[derive(Debug)]
pub struct Canary {
    pub config: Config,
    pub region: String,
    /// This region: own heartbeat writes, reads of the peers' copies.
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    /// Per peer region: reads of the peer's own heartbeat in the peer (cross-region).
    /// A peer without an entry is read as unreachable.
    pub peers: BTreeMap<String, RegionClients>,
}

/// What one peer's two heartbeats say about it and about this region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerView {
    /// The peer's own heartbeat is older than the limit, missing or unreadable.
    Down,
    /// The peer is live and this region's copy is `staleness_ms` behind its own heartbeat.
    Live { staleness_ms: u64 },
    /// The peer is live but this region holds no copy yet (first deploy, or replication
    /// never delivered: `HeartbeatAge` has no value either, and its alarm treats that as
    /// breaching).
    LiveNoCopy,
}

/// `own`: the peer's heartbeat as the peer holds it (None: missing or unreadable);
/// `copy`: as this region's replica holds it. Times in epoch ms.
pub fn assess(now_ms: u64, own: Option<u64>, copy: Option<u64>, down_after_ms: u64) -> PeerView {
    match own {
        Some(own) if now_ms.saturating_sub(own) <= down_after_ms => match copy {
            Some(copy) => PeerView::Live {
                staleness_ms: own.saturating_sub(copy),
            },
            None => PeerView::LiveNoCopy,
        },
        _ => PeerView::Down,
    }
}

/// Partition-key value of `region`'s heartbeat item.
pub fn heartbeat_pk(prefix: &str, region: &str) -> String {
    format!("{prefix}#{region}")
}

/// Object key of `region`'s heartbeat object.
pub fn heartbeat_object_key(prefix: &str, region: &str) -> String {
    format!("{prefix}/{region}")
}

fn key_value(kind: KeyType, text: &str) -> AttributeValue {
    match kind {
        KeyType::S => AttributeValue::S(text.to_owned()),
        KeyType::N => AttributeValue::N("0".to_owned()),
        KeyType::B => AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(text.as_bytes())),
    }
}

/// The heartbeat time (epoch ms) of `region`'s item in table `t`, read through `client`.
async fn item_written(
    client: &aws_sdk_dynamodb::Client,
    t: &Table,
    key: std::collections::HashMap<String, AttributeValue>,
) -> Result<Option<u64>, String> {
    let out = client
        .get_item()
        .table_name(&t.name)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| {
            format!(
                "GetItem: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        })?;
    Ok(out
        .item()
        .and_then(|i| i.get(WRITTEN_AT))
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<u64>().ok()))
}

/// The heartbeat time (epoch ms) of object `key` in `bucket`; a missing object is `None`.
async fn object_written(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<u64>, String> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(h) => Ok(h
            .metadata()
            .and_then(|m| m.get(WRITTEN_AT))
            .and_then(|v| v.parse::<u64>().ok())),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(format!(
            "HeadObject: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
    }
}

/// This tick's worst staleness against live peers (ms); `None` until a pair was assessed.
#[derive(Debug, Default)]
struct Worst(Option<u64>);

impl Worst {
    fn assessed(&mut self, staleness_ms: u64) {
        self.0 = Some(self.0.map_or(staleness_ms, |w| w.max(staleness_ms)));
    }
}

impl Canary {
    /// One tick, its EMF printed to stdout.
    pub async fn run_tick(&self) -> Result<(), String> {
        let mut metrics = Metrics::new(&self.config.deployment.namespace);
        let result = self.tick_into(&mut metrics).await;
        metrics.flush_stdout();
        result
    }

    /// One tick, its metrics collected in `metrics`. Errors are collected so one broken
    /// source or peer does not hide the others; a peer that cannot be read is down, not
    /// an error of this region.
    pub async fn tick_into(&self, metrics: &mut Metrics) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut worst = Worst::default();
        for t in self.config.tables.iter().filter(|t| t.canary.enabled) {
            self.table_tick(t, metrics, &mut worst, &mut errors).await;
        }
        for b in self.config.buckets.iter().filter(|b| b.canary.enabled) {
            self.bucket_tick(b, metrics, &mut worst, &mut errors).await;
        }
        if let Some(w) = worst.0 {
            metrics.put(
                Metric::WorstStaleness,
                &[(Dim::DestinationRegion, self.region.as_str())],
                w as f64 / 1000.0,
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn item_key(
        &self,
        t: &Table,
        region: &str,
    ) -> std::collections::HashMap<String, AttributeValue> {
        let prefix = &self.config.deployment.heartbeat_prefix;
        let pk = heartbeat_pk(prefix, region);
        let mut key = std::collections::HashMap::new();
        key.insert(
            t.partition_key.name.clone(),
            key_value(t.partition_key.kind, &pk),
        );
        if let Some(sk) = &t.sort_key {
            key.insert(sk.name.clone(), key_value(sk.kind, "heartbeat"));
        }
        key
    }

    async fn table_tick(
        &self,
        t: &Table,
        metrics: &mut Metrics,
        worst: &mut Worst,
        errors: &mut Vec<String>,
    ) {
        let now = crate::now_ms();
        let mut item = self.item_key(t, &self.region);
        item.insert(WRITTEN_AT.to_owned(), AttributeValue::N(now.to_string()));
        if let Some(a) = &t.app_attributes.written_at_ms {
            item.insert(a.clone(), AttributeValue::N(now.to_string()));
        }
        if let Some(a) = &t.app_attributes.origin_region {
            item.insert(a.clone(), AttributeValue::S(self.region.clone()));
        }
        match self
            .dynamodb
            .put_item()
            .table_name(&t.name)
            .set_item(Some(item))
            .send()
            .await
        {
            Ok(_) => metrics.put(Metric::HeartbeatsWritten, &[(Dim::Source, &t.name)], 1.0),
            Err(e) => errors.push(format!(
                "table {}: PutItem: {}",
                t.name,
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )),
        }
        for peer in self.config.peers(&self.region) {
            let copy = match item_written(&self.dynamodb, t, self.item_key(t, peer)).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("table {}, copy of {peer}'s heartbeat: {e}", t.name));
                    continue;
                }
            };
            let own = match self.peers.get(peer) {
                Some(p) => item_written(&p.dynamodb, t, self.item_key(t, peer)).await,
                None => Err("no client for this region".to_owned()),
            };
            self.report(metrics, worst, &t.name, peer, own, copy);
        }
    }

    async fn bucket_tick(
        &self,
        b: &Bucket,
        metrics: &mut Metrics,
        worst: &mut Worst,
        errors: &mut Vec<String>,
    ) {
        let now = crate::now_ms();
        let prefix = &self.config.deployment.heartbeat_prefix;
        let bucket = b.bucket_in(&self.region);
        match self
            .s3
            .put_object()
            .bucket(&bucket)
            .key(heartbeat_object_key(prefix, &self.region))
            .metadata(WRITTEN_AT, now.to_string())
            .body(now.to_string().into_bytes().into())
            .send()
            .await
        {
            Ok(_) => metrics.put(Metric::HeartbeatsWritten, &[(Dim::Source, &b.name)], 1.0),
            Err(e) => errors.push(format!(
                "bucket {}: PutObject: {}",
                b.name,
                aws_sdk_s3::error::DisplayErrorContext(e)
            )),
        }
        for peer in self.config.peers(&self.region) {
            let key = heartbeat_object_key(prefix, peer);
            let copy = match object_written(&self.s3, &bucket, &key).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!(
                        "bucket {}, copy of {peer}'s heartbeat: {e}",
                        b.name
                    ));
                    continue;
                }
            };
            // The peer's own heartbeat lives in the peer's bucket.
            let own = match self.peers.get(peer) {
                Some(p) => object_written(&p.s3, &b.bucket_in(peer), &key).await,
                None => Err("no client for this region".to_owned()),
            };
            self.report(metrics, worst, &b.name, peer, own, copy);
        }
    }

    fn report(
        &self,
        metrics: &mut Metrics,
        worst: &mut Worst,
        source: &str,
        peer: &str,
        own: Result<Option<u64>, String>,
        copy: Option<u64>,
    ) {
        let now = crate::now_ms();
        let d = [
            (Dim::Source, source),
            (Dim::SourceRegion, peer),
            (Dim::DestinationRegion, self.region.as_str()),
        ];
        if let Some(c) = copy {
            let age_s = now.saturating_sub(c) as f64 / 1000.0;
            metrics.put(Metric::HeartbeatAge, &d, age_s);
        }
        let own = match own {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(source, peer, error = %e, "peer's own heartbeat unreadable");
                None
            }
        };
        let down_after_ms = self.config.deployment.peer_down_after_seconds * 1000;
        match assess(now, own, copy, down_after_ms) {
            PeerView::Down => {
                tracing::warn!(
                    source,
                    peer,
                    "peer is down: its own heartbeat is old or unreadable"
                );
                metrics.put(Metric::PeerDown, &d, 1.0);
                // A down peer leaves this region as healthy as before.
                worst.assessed(0);
            }
            PeerView::Live { staleness_ms } => {
                let staleness_s = staleness_ms as f64 / 1000.0;
                metrics.put(Metric::Staleness, &d, staleness_s);
                if staleness_s > self.config.deployment.stale_after_seconds as f64 {
                    tracing::warn!(
                        source,
                        peer,
                        staleness_s,
                        "replication from a live peer is behind"
                    );
                }
                worst.assessed(staleness_ms);
            }
            PeerView::LiveNoCopy => {
                tracing::warn!(
                    source,
                    peer,
                    "peer is live but no copy of its heartbeat is here yet"
                );
            }
        }
    }
}

impl crate::lambda::ScheduledHandler for Canary {
    fn tick(&self) -> impl std::future::Future<Output = Result<(), String>> + Send {
        self.run_tick()
    }
}

/// Cross-region reads of a peer's heartbeat give up quickly: a peer that does not answer
/// within this time is down for this tick (the next tick asks again).
pub const PEER_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

impl Canary {
    /// Init: configuration and clients (this region's and one per peer), no network calls.
    pub async fn from_env() -> Result<Self, crate::settings::SettingsError> {
        let (config, region, sdk) = super::base_from_env().await?;
        let peer_timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(crate::adapters::aws::CONNECT_TIMEOUT)
            .operation_attempt_timeout(PEER_OPERATION_TIMEOUT)
            .operation_timeout(PEER_OPERATION_TIMEOUT)
            .build();
        let peers = config
            .peers(&region)
            .map(|p| {
                let peer_sdk = sdk
                    .to_builder()
                    .region(aws_config::Region::new(p.to_owned()))
                    .timeout_config(peer_timeouts.clone())
                    .build();
                (
                    p.to_owned(),
                    RegionClients {
                        dynamodb: aws_sdk_dynamodb::Client::new(&peer_sdk),
                        s3: crate::adapters::aws::s3_client(&peer_sdk),
                    },
                )
            })
            .collect();
        Ok(Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            s3: crate::adapters::aws::s3_client(&sdk),
            config,
            region,
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN_AFTER: u64 = 60_000;

    #[test]
    fn a_fresh_peer_with_an_old_copy_here_is_stale_by_the_gap() {
        let now = 1_000_000;
        assert_eq!(
            assess(now, Some(now - 2_000), Some(now - 47_000), DOWN_AFTER),
            PeerView::Live {
                staleness_ms: 45_000
            }
        );
    }

    #[test]
    fn a_peer_whose_own_heartbeat_is_old_is_down_however_old_the_copy() {
        let now = 1_000_000;
        assert_eq!(
            assess(now, Some(now - 61_000), Some(now - 500_000), DOWN_AFTER),
            PeerView::Down
        );
        assert_eq!(
            assess(now, None, Some(now - 1_000), DOWN_AFTER),
            PeerView::Down
        );
    }

    #[test]
    fn a_copy_as_new_as_the_peers_own_is_not_stale() {
        let now = 1_000_000;
        assert_eq!(
            assess(now, Some(now - 60_000), Some(now - 60_000), DOWN_AFTER),
            PeerView::Live { staleness_ms: 0 }
        );
        // A copy newer than the peer's read (the peer wrote in between): not negative.
        assert_eq!(
            assess(now, Some(now - 3_000), Some(now - 1_000), DOWN_AFTER),
            PeerView::Live { staleness_ms: 0 }
        );
        assert_eq!(
            assess(now, Some(now - 3_000), None, DOWN_AFTER),
            PeerView::LiveNoCopy
        );
    }
}
