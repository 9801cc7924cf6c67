//! One handler per function, wired from the pipeline, stages and ports. Each takes the raw
//! event text (functions own the Lambda event and response types) and returns the ids to
//! report as batch item failures, or an error that fails the whole invocation.

pub mod canary;
pub mod invalidator;
pub mod object;
pub mod stream;

use std::sync::Arc;

use crate::ports::{Alerts, DeadLetter, Publish};

/// Ports shared by the processors.
#[derive(Clone)]
pub struct Ports {
    pub publisher: Arc<dyn Publish>,
    pub dead_letter: Arc<dyn DeadLetter>,
    /// How keys appear in logs (plain, or HMAC-hashed under a Secrets Manager key).
    pub labels: Arc<KeyLabels>,
    /// The alert topic (residency violations).
    pub alerts: Arc<dyn Alerts>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ports")
    }
}

use crate::adapters::{alerts, aws, dead_letter, secret, sns};
use crate::keyhash::KeyLabels;

/// Key labels for logs from the configuration: plain keys, or, with
/// `residency.hash_keys_in_alerts`, HMAC-SHA256 under the secret named by
/// `TIDEMARK_KEY_HASH_SECRET_ARN` (the same secret in every region). The secret is read at
/// first use, never here.
pub fn key_labels(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
) -> Result<Arc<KeyLabels>, SettingsError> {
    if !config.residency.hash_keys_in_alerts {
        return Ok(Arc::new(KeyLabels::plain()));
    }
    let secret_id = settings::required("TIDEMARK_KEY_HASH_SECRET_ARN")?;
    Ok(Arc::new(KeyLabels::hashed(Arc::new(
        secret::SecretsManagerSecret::new(aws_sdk_secretsmanager::Client::new(sdk), secret_id),
    ))))
}
use crate::settings::{self, SettingsError};

/// What every function reads at init: the configuration, its region, the SDK settings.
pub async fn base_from_env()
-> Result<(crate::config::Config, String, aws_config::SdkConfig), SettingsError> {
    let config = settings::config()?;
    let region = settings::region()?;
    Ok((config, region, aws::sdk_config().await))
}

/// Builds the publisher, the alert sender and an S3 dead-letter store from the environment:
/// `TIDEMARK_INVALIDATION_TOPIC_ARN`, `TIDEMARK_ALERT_TOPIC_ARN`, `TIDEMARK_DEAD_LETTER_BUCKET`.
pub async fn stream_ports(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
) -> Result<Ports, SettingsError> {
    let topic = settings::required("TIDEMARK_INVALIDATION_TOPIC_ARN")?;
    let bucket = settings::required("TIDEMARK_DEAD_LETTER_BUCKET")?;
    Ok(Ports {
        publisher: Arc::new(sns::SnsPublisher::new(aws_sdk_sns::Client::new(sdk), topic)),
        dead_letter: Arc::new(dead_letter::S3DeadLetter::new(aws::s3_client(sdk), bucket)),
        labels: key_labels(config, sdk)?,
        alerts: alert_sender(sdk)?,
    })
}

/// Builds the publisher, the alert sender and an SQS dead-letter store from the environment:
/// `TIDEMARK_INVALIDATION_TOPIC_ARN`, `TIDEMARK_ALERT_TOPIC_ARN`, `TIDEMARK_DEAD_LETTER_QUEUE_URL`.
pub async fn queue_ports(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
) -> Result<Ports, SettingsError> {
    let topic = settings::required("TIDEMARK_INVALIDATION_TOPIC_ARN")?;
    Ok(Ports {
        publisher: Arc::new(sns::SnsPublisher::new(aws_sdk_sns::Client::new(sdk), topic)),
        dead_letter: sqs_dead_letter(sdk)?,
        labels: key_labels(config, sdk)?,
        alerts: alert_sender(sdk)?,
    })
}

/// Alerts go to the region's alert topic: `TIDEMARK_ALERT_TOPIC_ARN`.
pub fn alert_sender(sdk: &aws_config::SdkConfig) -> Result<Arc<dyn Alerts>, SettingsError> {
    let topic = settings::required("TIDEMARK_ALERT_TOPIC_ARN")?;
    Ok(Arc::new(alerts::SnsAlerts::new(
        aws_sdk_sns::Client::new(sdk),
        topic,
    )))
}

/// `TIDEMARK_DEAD_LETTER_QUEUE_URL`, and optionally `TIDEMARK_DEAD_LETTER_BUCKET` for
/// entries too large for a message (without it they are retried, and the queue's redrive
/// policy moves the original message to the dead-letter queue whole).
pub fn sqs_dead_letter(sdk: &aws_config::SdkConfig) -> Result<Arc<dyn DeadLetter>, SettingsError> {
    let url = settings::required("TIDEMARK_DEAD_LETTER_QUEUE_URL")?;
    let overflow = settings::optional("TIDEMARK_DEAD_LETTER_BUCKET")
        .map(|bucket| dead_letter::S3DeadLetter::new(aws::s3_client(sdk), bucket));
    Ok(Arc::new(dead_letter::SqsDeadLetter::new(
        aws_sdk_sqs::Client::new(sdk),
        url,
        overflow,
    )))
}
