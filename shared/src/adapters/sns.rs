//! SNS PublishBatch adapter for [`Publish`].

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use futures::future::BoxFuture;

use crate::ports::{Outbound, Publish};

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
    fn publish_batch<'a>(
        &'a self,
        entries: &'a [Outbound],
    ) -> BoxFuture<'a, Result<Vec<Result<(), String>>, String>> {
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
                        .map_err(|err| err.to_string())?;
                    b = b.message_attributes(*name, attr);
                }
                req = req.publish_batch_request_entries(b.build().map_err(|err| err.to_string())?);
            }
            let out = req.send().await.map_err(|e| {
                format!(
                    "PublishBatch: {}",
                    aws_sdk_sns::error::DisplayErrorContext(e)
                )
            })?;
            // A 200 reply can still fail single entries: match them by id.
            let failed: Vec<(String, String)> = out
                .failed()
                .iter()
                .map(|f| {
                    (
                        f.id().to_owned(),
                        format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    )
                })
                .collect();
            let ok: Vec<&str> = out.successful().iter().filter_map(|s| s.id()).collect();
            Ok(entries
                .iter()
                .map(|e| match failed.iter().find(|(id, _)| *id == e.id) {
                    Some((_, why)) => Err(why.clone()),
                    None if ok.contains(&e.id.as_str()) => Ok(()),
                    None => Err("entry missing from PublishBatch reply".to_owned()),
                })
                .collect())
        })
    }
}
