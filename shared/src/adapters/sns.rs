//! SNS PublishBatch adapter for [`Publish`].

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use futures::future::BoxFuture;

use crate::adapters::aws::port_error;
use crate::error::{Fault, PortError, classify_code};
use crate::ports::{Outbound, Publish, PublishResult};

#[derive(Debug, Clone)]
pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { client, topic_arn }
    }
}

impl Publish for SnsPublisher {
    fn publish_batch<'a>(&'a self, entries: &'a [Outbound]) -> BoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let mut req = self.client.publish_batch().topic_arn(&self.topic_arn);
            for e in entries {
                let mut b = PublishBatchRequestEntry::builder()
                    .id(&e.id)
                    .message(&e.body);
                for (name, value) in &e.attributes {
                    let attr = MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(value)
                        .build()
                        .map_err(|err| {
                            PortError::Permanent(format!("PublishBatch entry: {err}"))
                        })?;
                    b = b.message_attributes(*name, attr);
                }
                let entry = b
                    .build()
                    .map_err(|err| PortError::Permanent(format!("PublishBatch entry: {err}")))?;
                req = req.publish_batch_request_entries(entry);
            }
            let out = req
                .send()
                .await
                .map_err(|e| port_error("PublishBatch", e))?;
            // A 200 reply can still fail single entries: match them by id. An entry SNS
            // refuses as the sender's fault is permanent, unless its code says
            // "try again" (KMS throttling); internal errors are transient.
            let failed: Vec<(String, PortError)> = out
                .failed()
                .iter()
                .map(|f| {
                    let text = format!(
                        "PublishBatch entry {}: {}: {}",
                        f.id(),
                        f.code(),
                        f.message().unwrap_or("")
                    );
                    let e = PortError::of(
                        classify_code(f.code(), Fault::from_sender_fault(f.sender_fault())),
                        text,
                    );
                    (f.id().to_owned(), e)
                })
                .collect();
            let ok: Vec<&str> = out.successful().iter().filter_map(|s| s.id()).collect();
            Ok(entries
                .iter()
                .map(|e| match failed.iter().find(|(id, _)| *id == e.id) {
                    Some((_, why)) => Err(why.clone()),
                    None if ok.contains(&e.id.as_str()) => Ok(()),
                    None => Err(PortError::Transient(format!(
                        "PublishBatch entry {}: missing from the reply",
                        e.id
                    ))),
                })
                .collect())
        })
    }
}
