//! cache-invalidator: SQS (SNS-wrapped or raw) invalidation messages → UNLINK in the
//! regional cache, one round trip per batch. Flush commands (raw messages sent by
//! `tidemark flush`, never via SNS) delete every key under their prefixes.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::ddb::split_batch;
use crate::error::{DecodeError, StageError};
use crate::flush::FlushCommand;
use crate::message::Invalidation;
use crate::metrics::{Dim, EmfOut, Metric, Metrics};
use crate::pipeline::{self, Context, Decoded, Stage};
use crate::ports::{Cache, DeadLetter};
use crate::sqs::{SqsRecord, unwrap_sns};

pub const FUNCTION: &str = "cache-invalidator";

pub struct Invalidator {
    pub namespace: String,
    pub cache: Arc<dyn Cache>,
    pub dead_letter: Arc<dyn DeadLetter>,
    /// Where EMF documents go (stdout in Lambda).
    pub emf: EmfOut,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invalidator")
    }
}

/// One message of the invalidation queue.
#[derive(Debug)]
pub enum Work {
    Invalidate(Invalidation),
    Flush(FlushCommand),
}

/// Collects every key of the batch (deduplicated), deletes them in one call, and fails
/// every message of the batch if the cache call fails (deletes are idempotent). Then runs
/// the batch's flush commands, each failing only its own message.
struct CacheStage<'a> {
    cache: &'a dyn Cache,
    keys: Vec<String>,
    seen: std::collections::HashSet<String>,
    /// Per message: its index, change time, source and origin region.
    records: Vec<(usize, u64, String, String)>,
    flushes: Vec<(usize, FlushCommand)>,
}

impl Stage<Work> for CacheStage<'_> {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn observe(&mut self, index: usize, w: &Work) -> Result<(), StageError> {
        let m = match w {
            Work::Invalidate(m) => m,
            Work::Flush(c) => {
                self.flushes.push((index, c.clone()));
                return Ok(());
            }
        };
        for k in &m.keys {
            if self.seen.insert(k.clone()) {
                self.keys.push(k.clone());
            }
        }
        self.records.push((
            index,
            m.changed_at_ms,
            m.source.clone(),
            m.origin_region.clone(),
        ));
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            let mut failed = self.unlink(metrics).await;
            for (index, command) in std::mem::take(&mut self.flushes) {
                if let Err(e) = run_flush(self.cache, &command, metrics).await {
                    failed.push((index, StageError::Port(e)));
                }
            }
            failed
        })
    }
}

/// Runs one flush command, logging progress (keys removed so far) as it goes.
async fn run_flush(
    cache: &dyn Cache,
    command: &FlushCommand,
    metrics: &mut Metrics,
) -> Result<(), crate::error::PortError> {
    let f = [(Dim::Function, FUNCTION)];
    tracing::info!(source = %command.source, region = %command.region, prefixes = ?command.prefixes, all = command.all, "flush started");
    let progress = |prefix: &str, n: u64| {
        if n > 0 && n % 10_000 < crate::ports::FlushPlan::default().batch as u64 {
            tracing::info!(prefix, removed = n, "flush progress");
        }
    };
    match crate::flush::run(
        cache,
        command,
        crate::ports::FlushPlan::default(),
        &progress,
    )
    .await
    {
        Ok(report) => {
            metrics.put(Metric::KeysFlushed, &f, report.total() as f64);
            for (prefix, n) in &report.removed {
                tracing::info!(source = %command.source, prefix = %prefix, removed = n, "flush done");
            }
            Ok(())
        }
        Err(e) => {
            metrics.put(Metric::CacheFailures, &f, 1.0);
            tracing::warn!(source = %command.source, error = %e, "flush failed; the command will be retried");
            Err(e)
        }
    }
}

impl CacheStage<'_> {
    async fn unlink(&mut self, metrics: &mut Metrics) -> Vec<(usize, StageError)> {
        {
            let f = [(Dim::Function, FUNCTION)];
            if self.records.is_empty() && !self.flushes.is_empty() {
                return Vec::new(); // a batch of flush commands only
            }
            match self.cache.unlink(&self.keys).await {
                Ok(existed) => {
                    let now = crate::now_ms();
                    metrics.put(Metric::KeysInvalidated, &f, self.keys.len() as f64);
                    // Per (source, origin region): how stale a cache here can be for
                    // writes made in that region.
                    for (_, changed_at, source, origin) in &self.records {
                        if *changed_at > 0 {
                            let d = [
                                (Dim::Source, source.as_str()),
                                (Dim::SourceRegion, origin.as_str()),
                            ];
                            metrics.put(
                                Metric::InvalidationAge,
                                &d,
                                now.saturating_sub(*changed_at) as f64,
                            );
                        }
                    }
                    tracing::info!(
                        keys = self.keys.len(),
                        existed,
                        messages = self.records.len(),
                        "keys invalidated"
                    );
                    Vec::new()
                }
                Err(e) => {
                    metrics.put(Metric::CacheFailures, &f, 1.0);
                    tracing::warn!(error = %e, keys = self.keys.len(), "cache unavailable; messages will be retried");
                    self.records
                        .iter()
                        .map(|(i, ..)| (*i, StageError::Port(e.clone())))
                        .collect()
                }
            }
        }
    }
}

/// One message body of the invalidation queue (SNS-wrapped or raw) as the invalidator reads
/// it; `tidemark replay` checks dead-lettered messages with it before sending them back.
pub fn decode_body(body: &str) -> Result<Work, DecodeError> {
    // Flush commands are obeyed only as plain queue messages (what `tidemark flush` sends),
    // never inside an SNS envelope.
    let body = unwrap_sns(body);
    if matches!(body, std::borrow::Cow::Borrowed(_))
        && let Some(command) = FlushCommand::parse(&body)
    {
        return command.map(Work::Flush).map_err(DecodeError::Unsupported);
    }
    Invalidation::decode(&body).map(Work::Invalidate)
}

impl crate::lambda::BatchHandler for Invalidator {
    async fn handle(&self, event: &str) -> Result<Vec<String>, String> {
        let raws = split_batch(event).map_err(|e| e.to_string())?;
        let mut metrics = Metrics::new(&self.namespace);
        let mut stage = CacheStage {
            cache: self.cache.as_ref(),
            keys: Vec::new(),
            seen: Default::default(),
            records: Vec::new(),
            flushes: Vec::new(),
        };
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
            let id = msg.message_id.to_string();
            match decode_body(&msg.body) {
                Ok(Work::Invalidate(mut m)) if msg.second_delete => {
                    // A second delete: the change's age was measured at its first.
                    m.changed_at_ms = 0;
                    Decoded::Ok {
                        id,
                        change: Work::Invalidate(m),
                    }
                }
                Ok(change) => Decoded::Ok { id, change },
                Err(error) => Decoded::Reject {
                    id: Some(id),
                    error,
                },
            }
        });
        let plain = crate::keyhash::KeyLabels::plain();
        let ctx = Context {
            function: FUNCTION,
            source: "invalidations",
            // A message carries many keys; its id identifies it.
            labels: &plain,
            key_of: |_| None,
        };
        let report = pipeline::run(
            ctx,
            &raws,
            decode,
            &mut [&mut stage],
            self.dead_letter.as_ref(),
            &mut metrics,
        )
        .await;
        metrics.flush_into(&self.emf);
        report.failed_ids()
    }
}

impl Invalidator {
    /// Init: settings and clients, no network calls (the cache connects on first use).
    ///
    /// `TIDEMARK_CACHE_URL` (`redis://` or `rediss://` for TLS), `TIDEMARK_CACHE_CLUSTER`,
    /// `TIDEMARK_CACHE_CA_FILE` (optional PEM roots), `TIDEMARK_CACHE_USERNAME`,
    /// `TIDEMARK_CACHE_SECRET_ARN` (Secrets Manager secret holding the password — never the
    /// password itself in an environment variable) or `TIDEMARK_CACHE_IAM_USER` with
    /// `TIDEMARK_CACHE_NAME` and `TIDEMARK_CACHE_SERVERLESS` (ElastiCache IAM auth tokens),
    /// `TIDEMARK_DEAD_LETTER_QUEUE_URL`.
    pub async fn from_env() -> Result<Self, crate::settings::SettingsError> {
        use crate::adapters::cache::{CacheAuth, CacheSettings, RedisCache};
        use crate::settings::{SettingsError, flag, optional, required};
        let config = crate::settings::config()?;
        let read = |var: &'static str, path: String| {
            std::fs::read(&path).map_err(|e| SettingsError::Invalid {
                var,
                message: format!("cannot read {path}: {e}"),
            })
        };
        let ca_pem = optional("TIDEMARK_CACHE_CA_FILE")
            .map(|p| read("TIDEMARK_CACHE_CA_FILE", p))
            .transpose()?;
        let sdk = crate::adapters::aws::sdk_config().await;
        let auth = match (
            optional("TIDEMARK_CACHE_IAM_USER"),
            optional("TIDEMARK_CACHE_SECRET_ARN"),
        ) {
            (Some(_), Some(_)) => {
                return Err(SettingsError::Invalid {
                    var: "TIDEMARK_CACHE_IAM_USER",
                    message: "set either it or TIDEMARK_CACHE_SECRET_ARN, not both".into(),
                });
            }
            (Some(user_id), None) => {
                let credentials = sdk.credentials_provider().ok_or(SettingsError::Invalid {
                    var: "TIDEMARK_CACHE_IAM_USER",
                    message: "IAM auth needs AWS credentials and none are configured".into(),
                })?;
                CacheAuth::Iam {
                    target: crate::adapters::iam_auth::IamTarget {
                        cache_name: required("TIDEMARK_CACHE_NAME")?,
                        user_id,
                        region: crate::settings::region()?,
                        serverless: flag("TIDEMARK_CACHE_SERVERLESS", false)?,
                    },
                    credentials,
                    clock: crate::adapters::cache::Clock::system(),
                }
            }
            (None, Some(secret_id)) => CacheAuth::Secret {
                client: aws_sdk_secretsmanager::Client::new(&sdk),
                secret_id,
            },
            (None, None) => CacheAuth::None,
        };
        let settings = CacheSettings {
            url: required("TIDEMARK_CACHE_URL")?,
            cluster: flag("TIDEMARK_CACHE_CLUSTER", false)?,
            ca_pem,
            username: optional("TIDEMARK_CACHE_USERNAME"),
            auth,
        };
        Ok(Self {
            namespace: config.deployment.namespace.clone(),
            cache: Arc::new(RedisCache::new(settings)),
            dead_letter: super::sqs_dead_letter(&sdk)?,
            emf: EmfOut::Stdout,
        })
    }
}
