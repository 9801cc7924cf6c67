//! replication-canary: on each tick, writes this region's heartbeat item per watched table
//! and heartbeat object per watched bucket, then, for each peer P, reads P's newest
//! heartbeat twice: in P itself (a cross-region read) and in this region's replica.
//!
//! - P's own heartbeat fresh, the copy here old: replication P → here is behind by the
//!   gap (`Staleness`); this region serves stale data.
//! - P's own heartbeat old or unreadable: P is down (`PeerDown`), no staleness for it, so
//!   a dead peer never makes this region look unhealthy.
//!
//! Every read and write goes through the [`Heartbeats`] port (DynamoDB and S3 in
//! production, one store per region), so the decisions are unit-tested; a failed call is
//! contained where it happens (one peer's error never stops the other peers or sources).
//!
//! `WorstStaleness` (one value per tick, 0 when no live peer is behind) feeds the Route 53
//! health-check alarm. `HeartbeatAge` (now − the copy here) stays as a coarse stall
//! detector that also covers a copy that never arrived.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Bucket, Config, KeyType, Table};
use crate::error::PortError;
use crate::metrics::{Dim, Metric, Metrics};
use crate::ports::{Heartbeats, ItemValue, TickQueue};

pub const FUNCTION: &str = "replication-canary";
/// Attribute / metadata holding the heartbeat's write time (epoch ms); the stream-processor
/// measures replication lag from it.
pub const WRITTEN_AT: &str = crate::lag::HEARTBEAT_WRITTEN_AT;

pub struct Canary {
    pub config: Config,
    pub region: String,
    /// This region: own heartbeat writes, reads of the peers' copies.
    pub local: Arc<dyn Heartbeats>,
    /// Per peer region: reads of the peer's own heartbeat in the peer (cross-region).
    /// A peer without an entry is read as unreachable.
    pub peers: BTreeMap<String, Arc<dyn Heartbeats>>,
    /// Where the minute's schedule queues the ticks in between (none: one tick a minute).
    pub ticks: Option<Arc<dyn TickQueue>>,
}

impl std::fmt::Debug for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canary")
            .field("region", &self.region)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .field("ticks", &self.ticks.is_some())
            .finish_non_exhaustive()
    }
}

/// Delays (s) of the ticks the minute's scheduled tick queues after itself: one every
/// `interval_s` until the next minute's schedule (10 → 10, 20, 30, 40, 50).
pub fn sub_minute_delays(interval_s: u32) -> Vec<u32> {
    let interval_s = interval_s.clamp(1, 60);
    (1..60 / interval_s).map(|k| k * interval_s).collect()
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

fn key_value(kind: KeyType, text: &str) -> ItemValue {
    match kind {
        KeyType::S => ItemValue::S(text.to_owned()),
        KeyType::N => ItemValue::N("0".to_owned()),
        KeyType::B => ItemValue::B(text.as_bytes().to_vec()),
    }
}

fn no_store(peer: &str) -> PortError {
    PortError::Transient(format!("no heartbeat store for region {peer}"))
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

    fn item_key(&self, t: &Table, region: &str) -> Vec<(String, ItemValue)> {
        let prefix = &self.config.deployment.heartbeat_prefix;
        let pk = heartbeat_pk(prefix, region);
        let mut key = vec![(
            t.partition_key.name.clone(),
            key_value(t.partition_key.kind, &pk),
        )];
        if let Some(sk) = &t.sort_key {
            key.push((sk.name.clone(), key_value(sk.kind, "heartbeat")));
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
        item.push((WRITTEN_AT.to_owned(), ItemValue::N(now.to_string())));
        if let Some(a) = &t.app_attributes.written_at_ms {
            item.push((a.clone(), ItemValue::N(now.to_string())));
        }
        if let Some(a) = &t.app_attributes.origin_region {
            item.push((a.clone(), ItemValue::S(self.region.clone())));
        }
        match self.local.put_item(&t.name, item).await {
            Ok(()) => metrics.put(Metric::HeartbeatsWritten, &[(Dim::Source, &t.name)], 1.0),
            Err(e) => errors.push(format!("table {}: {e}", t.name)),
        }
        for peer in self.config.peers(&self.region) {
            let copy = match self
                .local
                .item_written_at(&t.name, self.item_key(t, peer), WRITTEN_AT)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("table {}, copy of {peer}'s heartbeat: {e}", t.name));
                    continue;
                }
            };
            let own = match self.peers.get(peer) {
                Some(p) => {
                    p.item_written_at(&t.name, self.item_key(t, peer), WRITTEN_AT)
                        .await
                }
                None => Err(no_store(peer)),
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
        let own_key = heartbeat_object_key(prefix, &self.region);
        match self
            .local
            .put_object(&bucket, &own_key, WRITTEN_AT, now)
            .await
        {
            Ok(()) => metrics.put(Metric::HeartbeatsWritten, &[(Dim::Source, &b.name)], 1.0),
            Err(e) => errors.push(format!("bucket {}: {e}", b.name)),
        }
        for peer in self.config.peers(&self.region) {
            let key = heartbeat_object_key(prefix, peer);
            let copy = match self
                .local
                .object_written_at(&bucket, &key, WRITTEN_AT)
                .await
            {
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
                Some(p) => {
                    p.object_written_at(&b.bucket_in(peer), &key, WRITTEN_AT)
                        .await
                }
                None => Err(no_store(peer)),
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
        own: Result<Option<u64>, PortError>,
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

impl Canary {
    /// One invocation. The EventBridge schedule (once a minute) first queues the minute's
    /// remaining ticks as delayed messages, then ticks; a tick message (an SQS batch,
    /// normally of one) just ticks. Queuing the minute's ticks from the schedule, rather
    /// than each tick queuing the next, means a lost or duplicated message costs or adds
    /// one tick and never ends or forks the chain.
    pub async fn handle_event(&self, event: &str) -> Result<(), String> {
        let from_queue = serde_json::from_str::<serde_json::Value>(event)
            .ok()
            .is_some_and(|v| v.get("Records").is_some_and(serde_json::Value::is_array));
        let mut errors = Vec::new();
        if !from_queue && let Some(q) = &self.ticks {
            let delays = sub_minute_delays(self.config.deployment.heartbeat_interval_seconds);
            if let Err(e) = q.send_delayed(&delays).await {
                errors.push(format!("queuing this minute's ticks: {e}"));
            }
        }
        if let Err(e) = self.run_tick().await {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Tick failures fail the invocation (they count in the function's Errors); a failed tick
/// message is not worth retrying, the tick queue's short retention drops it.
impl crate::lambda::BatchHandler for Canary {
    async fn handle(&self, event: &str) -> Result<Vec<String>, String> {
        self.handle_event(event).await.map(|()| Vec::new())
    }
}

/// Cross-region reads of a peer's heartbeat give up quickly: a peer that does not answer
/// within this time is down for this tick (the next tick asks again).
pub const PEER_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

impl Canary {
    /// Init: configuration and clients (this region's and one per peer), no network calls.
    pub async fn from_env() -> Result<Self, crate::settings::SettingsError> {
        use crate::adapters::heartbeats::AwsHeartbeats;
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
                let store: Arc<dyn Heartbeats> = Arc::new(AwsHeartbeats::new(
                    aws_sdk_dynamodb::Client::new(&peer_sdk),
                    crate::adapters::aws::s3_client(&peer_sdk),
                ));
                (p.to_owned(), store)
            })
            .collect();
        let ticks = crate::settings::optional("TIDEMARK_TICK_QUEUE_URL").map(|url| {
            Arc::new(crate::adapters::ticks::SqsTickQueue::new(
                aws_sdk_sqs::Client::new(&sdk),
                url,
            )) as Arc<dyn TickQueue>
        });
        Ok(Self {
            ticks,
            local: Arc::new(AwsHeartbeats::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                crate::adapters::aws::s3_client(&sdk),
            )),
            config,
            region,
            peers,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOWN_AFTER: u64 = 60_000;

    #[test]
    fn the_minute_is_filled_with_ticks_one_interval_apart() {
        assert_eq!(sub_minute_delays(10), vec![10, 20, 30, 40, 50]);
        assert_eq!(sub_minute_delays(60), Vec::<u32>::new());
        assert_eq!(sub_minute_delays(15), vec![15, 30, 45]);
    }

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

    // ------------------------------------------------------------ the tick, through the port

    use futures::future::BoxFuture;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// One region's tables and buckets in memory; reads or writes of names containing
    /// `fail` fail transiently.
    #[derive(Default)]
    struct Region {
        items: Mutex<HashMap<(String, String), u64>>,
        objects: Mutex<HashMap<(String, String), u64>>,
        fail: Vec<&'static str>,
    }

    fn pk_of(key: &[(String, ItemValue)]) -> String {
        match &key[0].1 {
            ItemValue::S(s) | ItemValue::N(s) => s.clone(),
            ItemValue::B(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }

    impl Region {
        fn check(&self, what: &str) -> Result<(), PortError> {
            match self.fail.iter().find(|f| what.contains(*f)) {
                Some(_) => Err(PortError::Transient(format!("{what}: throttled"))),
                None => Ok(()),
            }
        }
    }

    impl Heartbeats for Region {
        fn put_item<'a>(
            &'a self,
            table: &'a str,
            item: Vec<(String, ItemValue)>,
        ) -> BoxFuture<'a, Result<(), PortError>> {
            Box::pin(async move {
                let pk = pk_of(&item);
                self.check(&format!("put {table} {pk}"))?;
                let at = item
                    .iter()
                    .find(|(k, _)| k == WRITTEN_AT)
                    .and_then(|(_, v)| match v {
                        ItemValue::N(n) => n.parse().ok(),
                        _ => None,
                    })
                    .unwrap_or(0);
                self.items.lock().unwrap().insert((table.into(), pk), at);
                Ok(())
            })
        }
        fn item_written_at<'a>(
            &'a self,
            table: &'a str,
            key: Vec<(String, ItemValue)>,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<u64>, PortError>> {
            Box::pin(async move {
                let pk = pk_of(&key);
                self.check(&format!("get {table} {pk}"))?;
                Ok(self.items.lock().unwrap().get(&(table.into(), pk)).copied())
            })
        }
        fn put_object<'a>(
            &'a self,
            bucket: &'a str,
            key: &'a str,
            _: &'a str,
            at: u64,
        ) -> BoxFuture<'a, Result<(), PortError>> {
            Box::pin(async move {
                self.check(&format!("put {bucket} {key}"))?;
                self.objects
                    .lock()
                    .unwrap()
                    .insert((bucket.into(), key.into()), at);
                Ok(())
            })
        }
        fn object_written_at<'a>(
            &'a self,
            bucket: &'a str,
            key: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<u64>, PortError>> {
            Box::pin(async move {
                self.check(&format!("get {bucket} {key}"))?;
                Ok(self
                    .objects
                    .lock()
                    .unwrap()
                    .get(&(bucket.into(), key.into()))
                    .copied())
            })
        }
    }

    const US: &str = "us-east-1";
    const EU: &str = "eu-west-1";
    const AP: &str = "ap-southeast-2";

    fn three_regions() -> Config {
        Config::parse(
            "t.toml",
            r#"
[deployment]
regions = ["us-east-1", "eu-west-1", "ap-southeast-2"]
[residency]
unmatched = "anywhere"
[[tables]]
name = "users"
partition_key = { name = "pk", type = "S" }
canary = { enabled = true }
[[buckets]]
name = "assets"
bucket = "assets-{region}"
canary = { enabled = true }
"#,
        )
        .unwrap()
    }

    /// A canary in us-east-1 with these stores (its own, the peers').
    fn canary(local: Region, peers: Vec<(&str, Region)>) -> Canary {
        let peers = peers
            .into_iter()
            .map(|(r, store)| {
                let store: Arc<dyn Heartbeats> = Arc::new(store);
                (r.to_owned(), store)
            })
            .collect();
        Canary {
            config: three_regions(),
            region: US.into(),
            local: Arc::new(local),
            peers,
            ticks: None,
        }
    }

    fn seeded(fail: Vec<&'static str>, beats: &[(&str, u64)]) -> Region {
        let r = Region {
            fail,
            ..Region::default()
        };
        for (region, at) in beats {
            r.items.lock().unwrap().insert(
                ("users".into(), heartbeat_pk("tidemark-heartbeat", region)),
                *at,
            );
            for b in [US, EU, AP] {
                r.objects.lock().unwrap().insert(
                    (
                        format!("assets-{b}"),
                        heartbeat_object_key("tidemark-heartbeat", region),
                    ),
                    *at,
                );
            }
        }
        r
    }

    /// (metric, source, source region) of every value the tick emitted, with the value.
    fn emitted(metrics: &mut Metrics) -> Vec<(String, String, String, f64)> {
        let mut out = Vec::new();
        for d in metrics.drain_documents(0) {
            for m in ["Staleness", "PeerDown", "HeartbeatAge", "HeartbeatsWritten"] {
                if let Some(v) = d.get(m) {
                    let values: Vec<f64> = match v {
                        serde_json::Value::Array(a) => {
                            a.iter().filter_map(|x| x.as_f64()).collect()
                        }
                        x => x.as_f64().into_iter().collect(),
                    };
                    for v in values {
                        out.push((
                            m.to_owned(),
                            d["Source"].as_str().unwrap_or("").to_owned(),
                            d["SourceRegion"].as_str().unwrap_or("").to_owned(),
                            v,
                        ));
                    }
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn one_peers_failed_read_does_not_stop_the_other_peers_or_sources() {
        let now = crate::now_ms();
        // Here: the copy of eu-west-1's heartbeat cannot be read (table and bucket); the
        // copy of ap-southeast-2's is 30 s behind its own.
        let local = seeded(
            vec![
                "tidemark-heartbeat#eu-west-1",
                "tidemark-heartbeat/eu-west-1",
            ],
            &[(AP, now - 31_000)],
        );
        let eu = seeded(vec![], &[(EU, now - 1_000)]);
        let ap = seeded(vec![], &[(AP, now - 1_000)]);
        let c = canary(local, vec![(EU, eu), (AP, ap)]);
        let mut metrics = Metrics::new("T");
        let err = c.tick_into(&mut metrics).await.unwrap_err();
        assert!(err.contains("copy of eu-west-1's heartbeat"), "{err}");
        let got = emitted(&mut metrics);
        for source in ["users", "assets"] {
            let staleness: Vec<f64> = got
                .iter()
                .filter(|(m, s, r, _)| m == "Staleness" && s == source && r == AP)
                .map(|x| x.3)
                .collect();
            assert_eq!(staleness.len(), 1, "{source}: {got:?}");
            assert!((29.0..=31.0).contains(&staleness[0]), "{staleness:?}");
            assert!(
                got.iter()
                    .any(|(m, s, _, _)| m == "HeartbeatsWritten" && s == source),
                "{source}: {got:?}"
            );
        }
        assert!(
            !got.iter().any(|(_, _, r, _)| r == EU),
            "nothing is reported for the unreadable pair: {got:?}"
        );
        // Its own heartbeats were written here.
        assert!(
            c.local
                .item_written_at("users", c.item_key(&c.config.tables[0], US), WRITTEN_AT)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_down_and_a_failed_write_still_reads_the_peers() {
        let now = crate::now_ms();
        let local = seeded(
            vec!["put users", "put assets"],
            &[(EU, now - 5_000), (AP, now - 2_000)],
        );
        let eu = seeded(vec!["get"], &[(EU, now - 1_000)]);
        let ap = seeded(vec![], &[(AP, now - 2_000)]);
        let c = canary(local, vec![(EU, eu), (AP, ap)]);
        let mut metrics = Metrics::new("T");
        let err = c.tick_into(&mut metrics).await.unwrap_err();
        assert!(err.contains("table users: put users"), "{err}");
        assert!(err.contains("bucket assets: put assets"), "{err}");
        let got = emitted(&mut metrics);
        assert!(
            got.iter()
                .any(|(m, s, r, _)| m == "PeerDown" && s == "users" && r == EU),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|(m, s, r, v)| m == "Staleness" && s == "users" && r == AP && *v == 0.0),
            "{got:?}"
        );
        assert!(
            !got.iter().any(|(m, _, _, _)| m == "HeartbeatsWritten"),
            "{got:?}"
        );
    }
}
