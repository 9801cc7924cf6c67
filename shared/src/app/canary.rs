//! replication-canary: every minute, writes this region's heartbeat item per watched table
//! and heartbeat object per watched bucket, then reads the peers' heartbeats from the
//! local replicas and reports their age. A replication stall shows as a growing age even
//! when the application writes nothing; a heartbeat never seen emits no value, and the
//! alarm treats missing data as breaching.

use aws_sdk_dynamodb::types::AttributeValue;

use crate::config::{Bucket, Config, KeyType, Table};
use crate::metrics::{Dim, Metric, Metrics};

pub const FUNCTION: &str = "replication-canary";
/// Attribute / metadata holding the heartbeat's write time (epoch ms); the stream-processor
/// measures replication lag from it.
pub const WRITTEN_AT: &str = crate::lag::HEARTBEAT_WRITTEN_AT;

#[derive(Debug)]
pub struct Canary {
    pub config: Config,
    pub region: String,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
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

impl Canary {
    /// One tick. Errors are collected so one broken source does not hide the others.
    pub async fn run_tick(&self) -> Result<(), String> {
        let mut metrics = Metrics::new(&self.config.deployment.namespace);
        let mut errors = Vec::new();
        for t in self.config.tables.iter().filter(|t| t.canary.enabled) {
            if let Err(e) = self.table_tick(t, &mut metrics).await {
                errors.push(format!("table {}: {e}", t.name));
            }
        }
        for b in self.config.buckets.iter().filter(|b| b.canary.enabled) {
            if let Err(e) = self.bucket_tick(b, &mut metrics).await {
                errors.push(format!("bucket {}: {e}", b.name));
            }
        }
        metrics.flush_stdout();
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

    async fn table_tick(&self, t: &Table, metrics: &mut Metrics) -> Result<(), String> {
        let now = crate::now_ms();
        let mut item = self.item_key(t, &self.region);
        item.insert(WRITTEN_AT.to_owned(), AttributeValue::N(now.to_string()));
        if let Some(a) = &t.app_attributes.written_at_ms {
            item.insert(a.clone(), AttributeValue::N(now.to_string()));
        }
        if let Some(a) = &t.app_attributes.origin_region {
            item.insert(a.clone(), AttributeValue::S(self.region.clone()));
        }
        self.dynamodb
            .put_item()
            .table_name(&t.name)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "PutItem: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            })?;
        metrics.put(Metric::HeartbeatsWritten, &[(Dim::Source, &t.name)], 1.0);
        for peer in self.config.peers(&self.region) {
            let out = self
                .dynamodb
                .get_item()
                .table_name(&t.name)
                .set_key(Some(self.item_key(t, peer)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "GetItem: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e)
                    )
                })?;
            let written = out
                .item()
                .and_then(|i| i.get(WRITTEN_AT))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok());
            self.report_age(metrics, &t.name, peer, written, now);
        }
        Ok(())
    }

    async fn bucket_tick(&self, b: &Bucket, metrics: &mut Metrics) -> Result<(), String> {
        let now = crate::now_ms();
        let prefix = &self.config.deployment.heartbeat_prefix;
        let bucket = b.bucket_in(&self.region);
        self.s3
            .put_object()
            .bucket(&bucket)
            .key(heartbeat_object_key(prefix, &self.region))
            .metadata(WRITTEN_AT, now.to_string())
            .body(now.to_string().into_bytes().into())
            .send()
            .await
            .map_err(|e| format!("PutObject: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        metrics.put(Metric::HeartbeatsWritten, &[(Dim::Source, &b.name)], 1.0);
        for peer in self.config.peers(&self.region) {
            let head = self
                .s3
                .head_object()
                .bucket(&bucket)
                .key(heartbeat_object_key(prefix, peer))
                .send()
                .await;
            let written = match head {
                Ok(h) => h
                    .metadata()
                    .and_then(|m| m.get(WRITTEN_AT))
                    .and_then(|v| v.parse::<u64>().ok()),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => None,
                Err(e) => {
                    return Err(format!(
                        "HeadObject: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    ));
                }
            };
            self.report_age(metrics, &b.name, peer, written, now);
        }
        Ok(())
    }

    fn report_age(
        &self,
        metrics: &mut Metrics,
        source: &str,
        peer: &str,
        written: Option<u64>,
        now: u64,
    ) {
        match written {
            Some(w) => {
                let age_s = now.saturating_sub(w) as f64 / 1000.0;
                let d = [
                    (Dim::Source, source),
                    (Dim::SourceRegion, peer),
                    (Dim::DestinationRegion, self.region.as_str()),
                ];
                metrics.put(Metric::HeartbeatAge, &d, age_s);
                if age_s > self.config.deployment.stall_after_seconds as f64 {
                    tracing::warn!(source, peer, age_s, "replication looks stalled");
                }
            }
            None => tracing::warn!(source, peer, "no heartbeat from peer yet"),
        }
    }
}

impl crate::lambda::ScheduledHandler for Canary {
    fn tick(&self) -> impl std::future::Future<Output = Result<(), String>> + Send {
        self.run_tick()
    }
}

impl Canary {
    /// Init: configuration and clients, no network calls.
    pub async fn from_env() -> Result<Self, crate::settings::SettingsError> {
        let (config, region, sdk) = super::base_from_env().await?;
        Ok(Self {
            config,
            region,
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            s3: crate::adapters::aws::s3_client(&sdk),
        })
    }
}
