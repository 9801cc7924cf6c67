//! object-processor: S3 object events (EventBridge rule → SQS, and S3 replication
//! notifications → SQS) → invalidations, then object replication lag, residency and
//! replication events.

use std::sync::Arc;

use crate::config::Config;
use crate::ddb::split_batch;
use crate::enforce::ObjectResidencyStage;
use crate::error::DecodeError;
use crate::invalidation::{InvalidationStage, ObjectEvent};
use crate::metrics::{EmfOut, Metrics};
use crate::object_lag::ObjectLagStage;
use crate::objects::ObjectMessage;
use crate::pipeline::{self, Context, Decoded};
use crate::ports::ObjectStore;
use crate::replication_events::ReplicationEventStage;
use crate::sqs::SqsRecord;

use super::Ports;

pub const FUNCTION: &str = "object-processor";

pub struct ObjectProcessor {
    pub config: Config,
    pub region: String,
    pub ports: Ports,
    /// Reads object versions (lag, residency) and removes them (residency actions).
    pub objects: Arc<dyn ObjectStore>,
    /// Where the EMF documents go (stdout in Lambda; captured by in-process tests).
    pub emf: EmfOut,
}

impl std::fmt::Debug for ObjectProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectProcessor")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl crate::lambda::BatchHandler for ObjectProcessor {
    async fn handle(&self, event: &str) -> Result<Vec<String>, String> {
        let raws = split_batch(event).map_err(|e| e.to_string())?;
        let mut metrics = Metrics::new(&self.config.deployment.namespace);
        let mut invalidation =
            InvalidationStage::new(self.ports.publisher.as_ref(), FUNCTION, &self.region)
                .with_max_key_bytes(self.config.deployment.max_cache_key_bytes);
        // Before residency: a version residency removes can no longer be read.
        let mut lag = ObjectLagStage::new(
            self.objects.as_ref(),
            &self.config,
            &self.region,
            crate::now_ms(),
        );
        let mut residency = ObjectResidencyStage::new(
            self.objects.as_ref(),
            self.ports.alerts.as_ref(),
            &self.ports.labels,
            &self.config,
            &self.region,
        );
        let mut replication_events = ReplicationEventStage::new(
            self.ports.alerts.as_ref(),
            &self.ports.labels,
            &self.config,
            &self.region,
        );
        let config = &self.config;
        let region = self.region.as_str();
        let decode = pipeline::decoder(|raw| {
            let msg = match SqsRecord::decode(raw) {
                Ok(m) => m,
                Err(error) => {
                    return Decoded::Reject {
                        id: SqsRecord::salvage_id(raw),
                        error,
                    };
                }
            };
            let id = Some(msg.message_id.to_string());
            let changes = match ObjectMessage::decode(&msg.body) {
                Ok(ObjectMessage::TestEvent) => {
                    return Decoded::Skip {
                        id,
                        why: "s3:TestEvent",
                    };
                }
                Ok(ObjectMessage::Changes(c)) => c,
                Err(error) => return Decoded::Reject { id, error },
            };
            let Some(first) = changes.first() else {
                return Decoded::Skip {
                    id,
                    why: "no records",
                };
            };
            let bucket_region = if first.region.is_empty() {
                region
            } else {
                first.region.as_str()
            };
            let Some(bucket) = config.bucket_by_name(bucket_region, &first.bucket) else {
                return Decoded::Reject {
                    id,
                    error: DecodeError::Unconfigured(format!(
                        "bucket `{}` is not in the configuration as a bucket of {bucket_region} ({} event; configured: {})",
                        first.bucket,
                        first.kind.as_str(),
                        config
                            .buckets
                            .iter()
                            .map(|b| b.bucket_in(bucket_region))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
            };
            if changes.iter().any(|c| c.bucket != first.bucket) {
                return Decoded::Reject {
                    id,
                    error: DecodeError::Unsupported("one message names several buckets".into()),
                };
            }
            Decoded::Ok {
                id: msg.message_id.to_string(),
                change: ObjectEvent {
                    bucket,
                    changes,
                    heartbeat_prefix: &config.deployment.heartbeat_prefix,
                },
            }
        });
        let ctx = Context {
            function: FUNCTION,
            source: "s3",
            labels: &self.ports.labels,
            key_of: crate::objects::salvage_keys,
        };
        let report = pipeline::run(
            ctx,
            &raws,
            decode,
            &mut [
                &mut invalidation,
                &mut lag,
                &mut residency,
                &mut replication_events,
            ],
            self.ports.dead_letter.as_ref(),
            &mut metrics,
        )
        .await;
        metrics.flush_into(&self.emf);
        report.failed_ids()
    }
}

impl ObjectProcessor {
    /// Init: configuration and clients, no network calls.
    pub async fn from_env() -> Result<Self, crate::settings::SettingsError> {
        let (config, region, sdk) = super::base_from_env().await?;
        let ports = super::queue_ports(&config, &sdk).await?;
        Ok(Self {
            config,
            region,
            ports,
            objects: Arc::new(crate::adapters::object_store::S3ObjectStore::new(
                crate::adapters::aws::s3_client(&sdk),
            )),
            emf: EmfOut::Stdout,
        })
    }
}
