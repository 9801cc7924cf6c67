//! stream-processor: DynamoDB Streams of a watched global table → invalidations (then lag
//! audit and residency, in the same single pass: one reader per shard).

use serde::Deserialize;

use super::Ports;
use crate::config::Config;
use crate::ddb::{StreamRecord, split_batch, table_from_arn};
use crate::enforce::ItemResidencyStage;
use crate::error::DecodeError;
use crate::invalidation::{InvalidationStage, TableChange, check_view};
use crate::lag::{HEARTBEAT_WRITTEN_AT, LagStage};
use crate::metrics::{EmfOut, Metrics};
use crate::pipeline::{self, Context, Decoded};

pub const FUNCTION: &str = "stream-processor";

#[derive(Debug)]
pub struct StreamProcessor {
    pub config: Config,
    pub region: String,
    pub ports: Ports,
    /// Where EMF documents go (stdout in Lambda).
    pub emf: EmfOut,
}

impl crate::lambda::BatchHandler for StreamProcessor {
    async fn handle(&self, event: &str) -> Result<Vec<String>, String> {
        let raws = split_batch(event).map_err(|e| e.to_string())?;
        let source = first_table(&raws).unwrap_or_else(|| "unknown".to_owned());
        let mut metrics = Metrics::new(&self.config.deployment.namespace);
        let mut invalidation =
            InvalidationStage::new(self.ports.publisher.as_ref(), FUNCTION, &self.region)
                .with_max_key_bytes(self.config.deployment.max_cache_key_bytes);
        let mut lag = LagStage::new(
            &self.config,
            &self.region,
            &self.ports.labels,
            crate::now_ms(),
        );
        let mut residency = ItemResidencyStage::new(
            self.ports.alerts.as_ref(),
            &self.ports.labels,
            &self.config,
            &self.region,
        );
        let prefix = self.config.deployment.heartbeat_prefix.as_str();
        let config = &self.config;
        // One mapping per table: decode only the attributes that table declares (keys,
        // template, rule and app attributes) and the heartbeat's write time; everything
        // else in the images is skipped.
        let wanted: Option<Vec<String>> = config.table(&source).map(|t| {
            t.declared()
                .chain(std::iter::once(HEARTBEAT_WRITTEN_AT))
                .map(str::to_owned)
                .collect()
        });
        let decode =
            pipeline::decoder(
                |raw| match StreamRecord::decode_only(raw, wanted.as_deref()) {
                    // A stream's failure identifiers are sequence numbers (Lambda
                    // checkpoints at the lowest): never an eventID. A record without one
                    // that cannot be dead-lettered fails the whole invocation.
                    Err(error) => Decoded::Reject {
                        id: StreamRecord::salvage_id(raw)
                            .filter(|id| crate::adapters::dead_letter::is_sequence_number(id)),
                        error,
                    },
                    Ok(mut record) => {
                        let id = record.sequence_number.to_string();
                        // Another table than the batch's (a misconfigured mapping): decode in
                        // full, since `wanted` was chosen for the batch's table.
                        if record.table.as_deref() != Some(source.as_str())
                            && let Ok(full) = StreamRecord::decode(raw)
                        {
                            record = full;
                        }
                        let Some(name) = record.table.as_deref() else {
                            return Decoded::Reject {
                                id: Some(id),
                                error: DecodeError::Missing {
                                    what: "stream record",
                                    field: "eventSourceARN naming its table",
                                },
                            };
                        };
                        let Some(table) = config.table(name) else {
                            return Decoded::Reject {
                                id: Some(id),
                                error: DecodeError::Unconfigured(format!(
                                    "table `{name}` is not in the configuration"
                                )),
                            };
                        };
                        if let Err(error) = record
                            .check_keys(&table.partition_key, table.sort_key.as_ref())
                            .and_then(|()| check_view(table, &record))
                        {
                            return Decoded::Reject {
                                id: Some(id),
                                error,
                            };
                        }
                        let heartbeat = record
                            .keys
                            .scalar(&table.partition_key.name)
                            .is_some_and(|pk| crate::config::is_heartbeat_item(prefix, &pk));
                        Decoded::Ok {
                            id,
                            change: TableChange {
                                table,
                                record,
                                heartbeat,
                            },
                        }
                    }
                },
            );
        let ctx = Context {
            function: FUNCTION,
            source: &source,
            labels: &self.ports.labels,
            key_of: StreamRecord::salvage_key,
        };
        let report = pipeline::run(
            ctx,
            &raws,
            decode,
            &mut [&mut invalidation, &mut lag, &mut residency],
            self.ports.dead_letter.as_ref(),
            &mut metrics,
        )
        .await;
        metrics.flush_into(&self.emf);
        report.failed_ids()
    }
}

fn first_table(raws: &[&serde_json::value::RawValue]) -> Option<String> {
    #[derive(Deserialize)]
    struct Arn {
        #[serde(rename = "eventSourceARN")]
        arn: Option<String>,
    }
    raws.iter()
        .filter_map(|r| serde_json::from_str::<Arn>(r.get()).ok()?.arn)
        .find_map(|arn| table_from_arn(&arn).map(str::to_owned))
}

impl StreamProcessor {
    /// Init: configuration and clients, no network calls.
    pub async fn from_env() -> Result<Self, crate::settings::SettingsError> {
        let (config, region, sdk) = super::base_from_env().await?;
        let ports = super::stream_ports(&config, &sdk).await?;
        Ok(Self {
            config,
            region,
            ports,
            emf: EmfOut::Stdout,
        })
    }
}
