//! DynamoDB + S3 adapter for the canary's [`Heartbeats`] port.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::BoxFuture;

use crate::adapters::aws::port_error;
use crate::error::PortError;
use crate::ports::{Heartbeats, ItemValue};

#[derive(Debug, Clone)]
pub struct AwsHeartbeats {
    dynamodb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

impl AwsHeartbeats {
    /// No network I/O here.
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, s3: aws_sdk_s3::Client) -> Self {
        Self { dynamodb, s3 }
    }
}

fn attributes(values: Vec<(String, ItemValue)>) -> HashMap<String, AttributeValue> {
    values
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                ItemValue::S(s) => AttributeValue::S(s),
                ItemValue::N(n) => AttributeValue::N(n),
                ItemValue::B(b) => AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(b)),
            };
            (k, v)
        })
        .collect()
}

impl Heartbeats for AwsHeartbeats {
    fn put_item<'a>(
        &'a self,
        table: &'a str,
        item: Vec<(String, ItemValue)>,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.dynamodb
                .put_item()
                .table_name(table)
                .set_item(Some(attributes(item)))
                .send()
                .await
                .map(drop)
                .map_err(|e| port_error(&format!("PutItem {table}"), e))
        })
    }

    fn item_written_at<'a>(
        &'a self,
        table: &'a str,
        key: Vec<(String, ItemValue)>,
        attribute: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, PortError>> {
        Box::pin(async move {
            let out = self
                .dynamodb
                .get_item()
                .table_name(table)
                .set_key(Some(attributes(key)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| port_error(&format!("GetItem {table}"), e))?;
            Ok(out
                .item()
                .and_then(|i| i.get(attribute))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok()))
        })
    }

    fn put_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        metadata: &'a str,
        written_at_ms: u64,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .metadata(metadata, written_at_ms.to_string())
                .body(written_at_ms.to_string().into_bytes().into())
                .send()
                .await
                .map(drop)
                .map_err(|e| port_error(&format!("PutObject s3://{bucket}/{key}"), e))
        })
    }

    fn object_written_at<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        metadata: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, PortError>> {
        Box::pin(async move {
            match self.s3.head_object().bucket(bucket).key(key).send().await {
                Ok(h) => Ok(h
                    .metadata()
                    .and_then(|m| m.get(metadata))
                    .and_then(|v| v.parse::<u64>().ok())),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(port_error(&format!("HeadObject s3://{bucket}/{key}"), e)),
            }
        })
    }
}
