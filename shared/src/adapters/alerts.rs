//! SNS adapter for [`Alerts`]: one PublishBatch per ten alerts on the alert topic.
//!
//! The body is the alert as JSON; `kind`, `source`, `action` and `rule` are also message
//! attributes so subscribers can filter. Alerts carry keys and ids, never contents.

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use futures::future::BoxFuture;

use super::errors::classify;
use crate::error::{Fault, classify_code};
use crate::ports::{Alert, Alerts, PortError};

/// SNS PublishBatch takes at most ten entries.
const BATCH: usize = 10;

#[derive(Debug, Clone)]
pub struct SnsAlerts {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsAlerts {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { client, topic_arn }
    }

    async fn send_chunk(&self, alerts: &[Alert]) -> Vec<Result<(), PortError>> {
        let mut req = self.client.publish_batch().topic_arn(&self.topic_arn);
        for (i, a) in alerts.iter().enumerate() {
            match entry(i, a) {
                Ok(e) => req = req.publish_batch_request_entries(e),
                Err(e) => return vec![Err(e); alerts.len()],
            }
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let e = classify("PublishBatch", &format!("to {}", self.topic_arn), &e);
                return vec![Err(e); alerts.len()];
            }
        };
        // A 200 reply can still fail single entries: match them by id.
        (0..alerts.len())
            .map(|i| {
                let id = i.to_string();
                if let Some(f) = out.failed().iter().find(|f| f.id() == id) {
                    let text = format!(
                        "PublishBatch to {}: entry {id}: {} {}",
                        self.topic_arn,
                        f.code(),
                        f.message().unwrap_or("")
                    );
                    // SNS marks errors caused by the request itself as the sender's fault;
                    // KMS throttling is one too, and is transient.
                    return Err(PortError::of(
                        classify_code(f.code(), Fault::from_sender_fault(f.sender_fault())),
                        text,
                    ));
                }
                if out.successful().iter().any(|s| s.id() == Some(id.as_str())) {
                    Ok(())
                } else {
                    Err(PortError::Transient(format!(
                        "PublishBatch to {}: entry {id} missing from the reply",
                        self.topic_arn
                    )))
                }
            })
            .collect()
    }
}

fn entry(i: usize, a: &Alert) -> Result<PublishBatchRequestEntry, PortError> {
    let body = serde_json::to_string(a)
        .map_err(|e| PortError::Permanent(format!("alert {}: {e}", a.event_id)))?;
    let mut b = PublishBatchRequestEntry::builder()
        .id(i.to_string())
        .message(body);
    let mut attrs = vec![
        ("kind", a.kind.as_str()),
        ("source", a.source.as_str()),
        ("action", a.action.as_str()),
    ];
    if let Some(rule) = &a.rule {
        attrs.push(("rule", rule.as_str()));
    }
    for (name, value) in attrs {
        let v = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| PortError::Permanent(format!("alert {}: {e}", a.event_id)))?;
        b = b.message_attributes(name, v);
    }
    b.build()
        .map_err(|e| PortError::Permanent(format!("alert {}: {e}", a.event_id)))
}

impl Alerts for SnsAlerts {
    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, Vec<Result<(), PortError>>> {
        Box::pin(async move {
            let chunks = alerts.chunks(BATCH).map(|c| self.send_chunk(c));
            futures::future::join_all(chunks)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }
}
