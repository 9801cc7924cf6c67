//! SDK clients for the emulators, one set per simulated region, and provisioning.

use std::collections::HashMap;

use anyhow::{Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use aws_sdk_dynamodbstreams::types::AttributeValue as StreamAttr;
use serde_json::{Map, Value, json};

/// Clients of one region.
#[derive(Debug, Clone)]
pub struct RegionClients {
    pub region: String,
    pub endpoint: String,
    pub sdk: SdkConfig,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub s3: aws_sdk_s3::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
}

pub async fn sdk_config(endpoint: &str, region: &str, attempts: u32) -> SdkConfig {
    let creds =
        aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tidemark-harness");
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(attempts))
        .load()
        .await
}

impl RegionClients {
    pub async fn new(endpoint: &str, region: &str) -> Self {
        let sdk = sdk_config(endpoint, region, 3).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        Self {
            region: region.to_owned(),
            endpoint: endpoint.to_owned(),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            streams: aws_sdk_dynamodbstreams::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            s3,
            sdk,
        }
    }

    /// A table keyed by `pk` (S) with a NEW_AND_OLD_IMAGES stream; returns the stream ARN.
    pub async fn create_table(&self, name: &str) -> Result<String> {
        let out = self
            .dynamodb
            .create_table()
            .table_name(name)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()?,
            )
            .send()
            .await
            .with_context(|| format!("CreateTable {name} in {}", self.region))?;
        out.table_description()
            .and_then(|d| d.latest_stream_arn())
            .map(str::to_owned)
            .context("table has no stream")
    }

    pub async fn create_bucket(&self, name: &str, versioned: bool) -> Result<()> {
        let mut req = self.s3.create_bucket().bucket(name);
        if self.region != "us-east-1" {
            req = req.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.region.as_str(),
                    ))
                    .build(),
            );
        }
        req.send()
            .await
            .with_context(|| format!("CreateBucket {name}"))?;
        if versioned {
            self.s3
                .put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await?;
        }
        Ok(())
    }

    pub async fn create_topic(&self, name: &str) -> Result<String> {
        Ok(self
            .sns
            .create_topic()
            .name(name)
            .send()
            .await?
            .topic_arn()
            .context("no topic arn")?
            .to_owned())
    }

    /// A queue, optionally with a redrive policy to `dlq_arn`; returns (url, arn).
    pub async fn create_queue(
        &self,
        name: &str,
        dlq_arn: Option<&str>,
        max_receive: u32,
    ) -> Result<(String, String)> {
        let mut req = self.sqs.create_queue().queue_name(name).attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "30",
        );
        if let Some(dlq) = dlq_arn {
            req = req.attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq, "maxReceiveCount": max_receive.to_string()})
                    .to_string(),
            );
        }
        let url = req
            .send()
            .await?
            .queue_url()
            .context("no queue url")?
            .to_owned();
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .context("no queue arn")?;
        Ok((url, arn))
    }

    /// A queue whose messages become visible `delay` seconds after they are sent.
    pub async fn create_queue_with_delay(
        &self,
        name: &str,
        delay: u32,
    ) -> Result<(String, String)> {
        let (url, arn) = self.create_queue(name, None, 0).await?;
        self.sqs
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::DelaySeconds,
                delay.to_string(),
            )
            .send()
            .await?;
        Ok((url, arn))
    }

    /// Subscribes a queue to a topic (raw delivery optional, filter policy optional).
    pub async fn subscribe(
        &self,
        topic_arn: &str,
        queue_arn: &str,
        raw: bool,
        filter: Option<Value>,
    ) -> Result<()> {
        let mut req = self
            .sns
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", raw.to_string());
        if let Some(f) = filter {
            req = req
                .attributes("FilterPolicy", f.to_string())
                .attributes("FilterPolicyScope", "MessageAttributes");
        }
        req.send().await?;
        Ok(())
    }

    /// Receives and deletes everything currently in a queue (bodies).
    /// [`RegionClients::drain`], each body parsed as JSON into `T` (an error names the body
    /// that is not).
    pub async fn drain_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<Vec<T>> {
        self.drain(url)
            .await?
            .iter()
            .map(|b| {
                serde_json::from_str(b)
                    .with_context(|| format!("a message of {url} is not the JSON expected: {b}"))
            })
            .collect()
    }

    pub async fn drain(&self, url: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let r = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await?;
            let msgs = r.messages();
            if msgs.is_empty() {
                return Ok(out);
            }
            for m in msgs {
                out.push(m.body().unwrap_or_default().to_owned());
                if let Some(h) = m.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(h)
                        .send()
                        .await?;
                }
            }
        }
    }
}

/// DynamoDB Streams attribute value → the JSON Lambda delivers (`{"S": "…"}`).
pub fn attr_json(v: &StreamAttr) -> Value {
    use base64_like::encode;
    match v {
        StreamAttr::S(s) => json!({"S": s}),
        StreamAttr::N(n) => json!({"N": n}),
        StreamAttr::B(b) => json!({"B": encode(b.as_ref())}),
        StreamAttr::Bool(b) => json!({"BOOL": b}),
        StreamAttr::Null(_) => json!({"NULL": true}),
        StreamAttr::Ss(s) => json!({"SS": s}),
        StreamAttr::Ns(s) => json!({"NS": s}),
        StreamAttr::Bs(s) => {
            json!({"BS": s.iter().map(|b| encode(b.as_ref())).collect::<Vec<_>>()})
        }
        StreamAttr::L(l) => json!({"L": l.iter().map(attr_json).collect::<Vec<_>>()}),
        StreamAttr::M(m) => json!({"M": image_json(m)}),
        _ => json!({"NULL": true}),
    }
}

pub fn image_json(m: &HashMap<String, StreamAttr>) -> Value {
    let mut out = Map::new();
    for (k, v) in m {
        out.insert(k.clone(), attr_json(v));
    }
    Value::Object(out)
}

/// Stream attribute → table attribute (for replicating an image).
pub fn to_table_attr(v: &StreamAttr) -> aws_sdk_dynamodb::types::AttributeValue {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    match v {
        StreamAttr::S(s) => A::S(s.clone()),
        StreamAttr::N(n) => A::N(n.clone()),
        StreamAttr::B(b) => A::B(aws_sdk_dynamodb::primitives::Blob::new(b.as_ref().to_vec())),
        StreamAttr::Bool(b) => A::Bool(*b),
        StreamAttr::Null(n) => A::Null(*n),
        StreamAttr::Ss(s) => A::Ss(s.clone()),
        StreamAttr::Ns(s) => A::Ns(s.clone()),
        StreamAttr::Bs(s) => A::Bs(
            s.iter()
                .map(|b| aws_sdk_dynamodb::primitives::Blob::new(b.as_ref().to_vec()))
                .collect(),
        ),
        StreamAttr::L(l) => A::L(l.iter().map(to_table_attr).collect()),
        StreamAttr::M(m) => A::M(
            m.iter()
                .map(|(k, v)| (k.clone(), to_table_attr(v)))
                .collect(),
        ),
        _ => A::Null(true),
    }
}

mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 (with padding), as DynamoDB Streams encodes B values in JSON.
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
