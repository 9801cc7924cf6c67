//! The canary's tick queue on SQS: delayed messages, sent with SendMessageBatch (≤ 10 each).

use futures::future::BoxFuture;

use crate::adapters::aws::port_error;
use crate::ports::{PortError, TickQueue};

#[derive(Debug, Clone)]
pub struct SqsTickQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsTickQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self { client, url }
    }
}

impl TickQueue for SqsTickQueue {
    fn send_delayed<'a>(&'a self, delays_s: &'a [u32]) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            for (n, chunk) in delays_s.chunks(10).enumerate() {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(format!("tick-{}", n * 10 + i))
                            .message_body(format!("{{\"tick_after_s\":{d}}}"))
                            .delay_seconds(i32::try_from(*d).unwrap_or(900))
                            .build()
                            .map_err(|e| {
                                PortError::Permanent(format!("SendMessageBatch entry: {e}"))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| port_error("SendMessageBatch", e))?;
                if let Some(f) = out.failed().first() {
                    return Err(PortError::Transient(format!(
                        "SendMessageBatch to {}: {} of {} entries failed, first {} ({})",
                        self.url,
                        out.failed().len(),
                        chunk.len(),
                        f.id(),
                        f.code()
                    )));
                }
            }
            Ok(())
        })
    }
}
