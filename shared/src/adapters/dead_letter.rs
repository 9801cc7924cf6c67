//! Dead-letter stores: S3 for stream functions (the stream forgets records after 24 h, and
//! SQS/SNS on-failure destinations keep only shard and sequence numbers), SQS for queue
//! consumers. Both keep whole records: encrypted, in-region, restricted by IAM.

use futures::future::BoxFuture;

use crate::adapters::aws::port_error;
use crate::error::PortError;
use crate::ports::{DeadLetter, DeadLetterEntry};

/// One object per rejected record under `dead-letter/<function>/<source>/<id>.json`;
/// the id makes a retried write idempotent.
#[derive(Debug, Clone)]
pub struct S3DeadLetter {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3DeadLetter {
    pub fn new(client: aws_sdk_s3::Client, bucket: String) -> Self {
        Self { client, bucket }
    }

    pub fn object_key(e: &DeadLetterEntry) -> String {
        let id =
            e.id.clone()
                .unwrap_or_else(|| format!("unidentified-{}-{}", crate::now_ms(), e.index));
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("dead-letter/{}/{}/{}.json", e.function, e.source, safe)
    }
}

impl DeadLetter for S3DeadLetter {
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            for e in entries {
                let body = serde_json::to_vec(&e)
                    .map_err(|e| PortError::Permanent(format!("dead-letter entry: {e}")))?;
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(Self::object_key(&e))
                    .content_type("application/json")
                    .body(body.into())
                    .send()
                    .await
                    .map_err(|err| port_error(&format!("PutObject s3://{}", self.bucket), err))?;
            }
            Ok(())
        })
    }
}

/// SendMessageBatch of the entries (JSON) to the consumer's dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsDeadLetter {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsDeadLetter {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }
}

impl DeadLetter for SqsDeadLetter {
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            for chunk in entries.chunks(10) {
                let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
                for (i, e) in chunk.iter().enumerate() {
                    let body = serde_json::to_string(e)
                        .map_err(|e| PortError::Permanent(format!("dead-letter entry: {e}")))?;
                    let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .message_body(body)
                        .build()
                        .map_err(|e| PortError::Permanent(format!("dead-letter entry: {e}")))?;
                    req = req.entries(entry);
                }
                let out = req
                    .send()
                    .await
                    .map_err(|e| port_error("SendMessageBatch", e))?;
                if let Some(f) = out.failed().first() {
                    let text = format!(
                        "SendMessageBatch entry {}: {}",
                        f.id(),
                        f.message().unwrap_or(f.code())
                    );
                    return Err(if f.sender_fault() {
                        PortError::Permanent(text)
                    } else {
                        PortError::Transient(text)
                    });
                }
            }
            Ok(())
        })
    }
}
