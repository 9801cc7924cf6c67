//! Reads one region of the deployed account into a [`live::Account`] snapshot for
//! `tidemark check --live`: each watched table's stream and replicas, each watched bucket's
//! notification and replication configuration. Read-only calls: DescribeTable,
//! GetBucketNotificationConfiguration, GetBucketReplication, GetBucketLocation.

use aws_config::SdkConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};

use crate::config::Config;
use crate::live::{
    Account, BucketFacts, BucketState, Notification, Read, ReplicationRule, TableFacts, TableState,
};

/// Reads one region's account with one DynamoDB and one S3 client of that region.
#[derive(Debug, Clone)]
pub struct AccountReader {
    ddb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

impl AccountReader {
    pub fn new(ddb: aws_sdk_dynamodb::Client, s3: aws_sdk_s3::Client) -> Self {
        Self { ddb, s3 }
    }

    /// Clients for `region` from the shared SDK configuration (default credential chain,
    /// `AWS_ENDPOINT_URL*` overrides, `TIDEMARK_S3_FORCE_PATH_STYLE`).
    pub fn from_sdk(sdk: &SdkConfig, region: &str) -> Self {
        let regional = sdk
            .to_builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build();
        Self::new(
            aws_sdk_dynamodb::Client::new(&regional),
            super::aws::s3_client(&regional),
        )
    }

    /// Reads what the checks need in `region`. Never fails as a whole: a resource that
    /// cannot be read is recorded as such, and the report names it.
    pub async fn read(&self, config: &Config, region: &str) -> Account {
        let mut account = Account {
            region: region.to_owned(),
            ..Account::default()
        };
        for t in &config.tables {
            account.tables.push(TableState {
                name: t.name.clone(),
                facts: read_table(&self.ddb, &t.name).await,
            });
        }
        for b in &config.buckets {
            let bucket = b.bucket_in(region);
            let facts = read_bucket(&self.s3, config, &bucket).await;
            account.buckets.push(BucketState {
                source: b.name.clone(),
                bucket,
                facts,
            });
        }
        account
    }
}

async fn read_table(ddb: &aws_sdk_dynamodb::Client, name: &str) -> Read<TableFacts> {
    let out = match ddb.describe_table().table_name(name).send().await {
        Ok(out) => out,
        Err(e) if e.code() == Some("ResourceNotFoundException") => {
            return Read::Missing("DescribeTable: ResourceNotFoundException".into());
        }
        Err(e) => {
            return Read::Failed(format!(
                "DescribeTable: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            ));
        }
    };
    let Some(t) = out.table() else {
        return Read::Failed("DescribeTable returned no table description".into());
    };
    let spec = t.stream_specification();
    Read::Found(TableFacts {
        stream_enabled: spec.is_some_and(|s| s.stream_enabled()),
        view_type: spec
            .and_then(|s| s.stream_view_type())
            .map(|v| v.as_str().to_owned()),
        replica_regions: t
            .replicas()
            .iter()
            .filter_map(|r| r.region_name().map(str::to_owned))
            .collect(),
    })
}

async fn read_bucket(s3: &aws_sdk_s3::Client, config: &Config, bucket: &str) -> Read<BucketFacts> {
    let notif = match s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(n) => n,
        Err(e) if e.code() == Some("NoSuchBucket") => {
            return Read::Missing("GetBucketNotificationConfiguration: NoSuchBucket".into());
        }
        Err(e) => {
            return Read::Failed(format!(
                "GetBucketNotificationConfiguration: {}",
                DisplayErrorContext(&e)
            ));
        }
    };
    let events = |ev: &[aws_sdk_s3::types::Event]| -> Vec<String> {
        ev.iter().map(|e| e.as_str().to_owned()).collect()
    };
    let mut notifications = Vec::new();
    for q in notif.queue_configurations() {
        notifications.push(Notification {
            id: q.id().unwrap_or_default().to_owned(),
            target: q.queue_arn().to_owned(),
            events: events(q.events()),
        });
    }
    for t in notif.topic_configurations() {
        notifications.push(Notification {
            id: t.id().unwrap_or_default().to_owned(),
            target: t.topic_arn().to_owned(),
            events: events(t.events()),
        });
    }
    for l in notif.lambda_function_configurations() {
        notifications.push(Notification {
            id: l.id().unwrap_or_default().to_owned(),
            target: l.lambda_function_arn().to_owned(),
            events: events(l.events()),
        });
    }
    let replication = match s3.get_bucket_replication().bucket(bucket).send().await {
        Ok(out) => match out.replication_configuration() {
            Some(rc) => {
                let mut rules = Vec::new();
                for r in rc.rules() {
                    rules.push(replication_rule(s3, config, r).await);
                }
                Some(rules)
            }
            None => None,
        },
        Err(e) if e.code() == Some("ReplicationConfigurationNotFoundError") => None,
        Err(e) => {
            return Read::Failed(format!("GetBucketReplication: {}", DisplayErrorContext(&e)));
        }
    };
    Read::Found(BucketFacts {
        eventbridge: notif.event_bridge_configuration().is_some(),
        notifications,
        replication,
    })
}

async fn replication_rule(
    s3: &aws_sdk_s3::Client,
    config: &Config,
    r: &aws_sdk_s3::types::ReplicationRule,
) -> ReplicationRule {
    use aws_sdk_s3::types::{MetricsStatus, ReplicationRuleStatus, ReplicationTimeStatus};
    let filter = r.filter();
    let and = filter.and_then(|f| f.and());
    // Filter.Prefix, Filter.And.Prefix, or the rule-level Prefix of the older (V1) schema,
    // which S3 still returns for rules written with it.
    #[allow(deprecated)]
    let v1_prefix = r.prefix();
    let prefix = filter
        .and_then(|f| f.prefix())
        .or_else(|| and.and_then(|a| a.prefix()))
        .or(v1_prefix)
        .unwrap_or_default()
        .to_owned();
    let tags = filter
        .and_then(|f| f.tag())
        .into_iter()
        .chain(and.map(|a| a.tags()).unwrap_or_default())
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    let dest = r.destination();
    let destination_bucket = dest
        .map(|d| d.bucket().trim_start_matches("arn:aws:s3:::").to_owned())
        .unwrap_or_default();
    let destination_region = destination_region(s3, config, &destination_bucket).await;
    ReplicationRule {
        id: r.id().unwrap_or_default().to_owned(),
        enabled: r.status() == &ReplicationRuleStatus::Enabled,
        prefix,
        tags,
        destination_region,
        destination_bucket,
        metrics: dest
            .and_then(|d| d.metrics())
            .is_some_and(|m| m.status() == &MetricsStatus::Enabled),
        rtc: dest
            .and_then(|d| d.replication_time())
            .is_some_and(|t| t.status() == &ReplicationTimeStatus::Enabled),
    }
}

/// The region of a destination bucket: a configured bucket's name in some deployed region,
/// else what GetBucketLocation says (no constraint means us-east-1, `EU` eu-west-1).
async fn destination_region(
    s3: &aws_sdk_s3::Client,
    config: &Config,
    bucket: &str,
) -> Option<String> {
    if bucket.is_empty() {
        return None;
    }
    for b in &config.buckets {
        if let Some(r) = config
            .deployment
            .regions
            .iter()
            .find(|r| b.bucket_in(r) == bucket)
        {
            return Some(r.clone());
        }
    }
    let out = s3.get_bucket_location().bucket(bucket).send().await.ok()?;
    Some(match out.location_constraint().map(|c| c.as_str()) {
        None | Some("") => "us-east-1".to_owned(),
        Some("EU") => "eu-west-1".to_owned(),
        Some(other) => other.to_owned(),
    })
}
