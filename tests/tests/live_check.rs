//! `tidemark check --live` against moto in both regions, through the harness proxy (which
//! returns the replication and notification documents as put: moto drops replication
//! filters and `EventBridgeConfiguration`). The account is read by the same
//! `AccountReader` the command uses; the checks are `tidemark::live::run`.

use anyhow::Result;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    DeleteMarkerReplication, DeleteMarkerReplicationStatus, Destination, Event,
    EventBridgeConfiguration, Metrics, MetricsStatus, NotificationConfiguration,
    QueueConfiguration, ReplicationConfiguration, ReplicationRule, ReplicationRuleFilter,
    ReplicationRuleStatus, ReplicationTime, ReplicationTimeStatus, ReplicationTimeValue,
    VersioningConfiguration,
};
use tidemark::adapters::account::AccountReader;
use tidemark::config::Config;
use tidemark::live::{self, Report};
use tidemark_tests::aws::RegionClients;
use tidemark_tests::proxy::Proxy;
use tidemark_tests::world::Emulators;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// One isolated account layout: a table and a bucket per region, named with a unique id.
struct Account {
    id: String,
    config: Config,
    us: RegionClients,
    eu: RegionClients,
}

impl Account {
    async fn new() -> Result<Self> {
        let emulators = Emulators::from_env()?;
        let proxy = Proxy::start(&emulators.moto).await?;
        let id = format!("lc{:x}", tidemark_tests::now_ms() % 0xff_ffff_ffff);
        let text = tidemark::config::EMBEDDED
            .replace("name = \"users\"", &format!("name = \"{id}-users\""))
            .replace(
                "tidemark-assets-{region}",
                &format!("{id}-assets-{{region}}"),
            )
            .replace(
                "tidemark-quarantine-{region}",
                &format!("{id}-q-{{region}}"),
            );
        let config = Config::parse("live-check.toml", &text)?;
        Ok(Self {
            config,
            us: RegionClients::new(&proxy.url, US).await,
            eu: RegionClients::new(&proxy.url, EU).await,
            id,
        })
    }

    fn clients(&self, region: &str) -> &RegionClients {
        if region == US { &self.us } else { &self.eu }
    }

    fn bucket(&self, region: &str) -> String {
        format!("{}-assets-{region}", self.id)
    }

    async fn table(&self, region: &str, view: StreamViewType) -> Result<()> {
        self.clients(region)
            .dynamodb
            .create_table()
            .table_name(format!("{}-users", self.id))
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
                    .stream_view_type(view)
                    .build()?,
            )
            .send()
            .await?;
        Ok(())
    }

    /// A versioned bucket with EventBridge on, replication events to a queue, and these
    /// replication rules (id, prefix) to the peer's bucket, with metrics and RTC.
    async fn bucket_with(&self, region: &str, rules: &[(&str, &str)]) -> Result<()> {
        let c = self.clients(region);
        let name = self.bucket(region);
        let mut create = c.s3.create_bucket().bucket(&name);
        if region != US {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        create.send().await?;
        c.s3.put_bucket_versioning()
            .bucket(&name)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await?;
        c.s3.put_bucket_notification_configuration()
            .bucket(&name)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .event_bridge_configuration(EventBridgeConfiguration::builder().build())
                    .queue_configurations(
                        QueueConfiguration::builder()
                            .queue_arn(format!(
                                "arn:aws:sqs:{region}:123456789012:{}-objects",
                                self.id
                            ))
                            .events(Event::from("s3:Replication:*"))
                            .build()?,
                    )
                    .build(),
            )
            .send()
            .await?;
        let peer = if region == US { EU } else { US };
        let mut rc =
            ReplicationConfiguration::builder().role("arn:aws:iam::123456789012:role/replication");
        for (i, (id, prefix)) in rules.iter().enumerate() {
            rc = rc.rules(
                ReplicationRule::builder()
                    .id(*id)
                    .priority(i32::try_from(i)? + 1)
                    .status(ReplicationRuleStatus::Enabled)
                    .filter(ReplicationRuleFilter::builder().prefix(*prefix).build())
                    .delete_marker_replication(
                        DeleteMarkerReplication::builder()
                            .status(DeleteMarkerReplicationStatus::Disabled)
                            .build(),
                    )
                    .destination(
                        Destination::builder()
                            .bucket(format!("arn:aws:s3:::{}", self.bucket(peer)))
                            .metrics(Metrics::builder().status(MetricsStatus::Enabled).build()?)
                            .replication_time(
                                ReplicationTime::builder()
                                    .status(ReplicationTimeStatus::Enabled)
                                    .time(ReplicationTimeValue::builder().minutes(15).build())
                                    .build()?,
                            )
                            .build()?,
                    )
                    .build()?,
            );
        }
        c.s3.put_bucket_replication()
            .bucket(&name)
            .replication_configuration(rc.build()?)
            .send()
            .await?;
        Ok(())
    }

    async fn check(&self, region: &str) -> Report {
        let c = self.clients(region);
        let reader = AccountReader::new(c.dynamodb.clone(), c.s3.clone());
        live::run(&self.config, &reader.read(&self.config, region).await)
    }
}

fn named(r: &Report) -> Vec<(&str, &str)> {
    r.problems
        .iter()
        .map(|p| (p.check, p.resource.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn live_check_reports_a_correct_setup_as_clean_in_both_regions() -> Result<()> {
    let a = Account::new().await?;
    for region in [US, EU] {
        a.table(region, StreamViewType::NewAndOldImages).await?;
    }
    // us-east-1 replicates everything to eu-west-1 (eu/ may live there); eu-west-1 ships
    // only public/ and the heartbeats to us-east-1.
    a.bucket_with(US, &[("all", "")]).await?;
    a.bucket_with(
        EU,
        &[("public", "public/"), ("heartbeats", "tidemark-heartbeat/")],
    )
    .await?;
    for region in [US, EU] {
        let r = a.check(region).await;
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.tables, r.buckets), (1, 1));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn live_check_names_eu_prefix_replicated_to_us_east_1_and_a_wrong_view_type() -> Result<()> {
    let a = Account::new().await?;
    a.table(US, StreamViewType::NewImage).await?;
    a.table(EU, StreamViewType::NewAndOldImages).await?;
    a.bucket_with(US, &[("all", "")]).await?;
    a.bucket_with(
        EU,
        &[
            ("public", "public/"),
            ("eu-docs", "eu/docs/"),
            ("heartbeats", "tidemark-heartbeat/"),
        ],
    )
    .await?;

    let us = a.check(US).await;
    let table = format!("{}-users", a.id);
    assert_eq!(named(&us), [("stream-view-type", table.as_str())], "{us}");
    assert!(
        us.problems[0]
            .message
            .contains("stream view type is NEW_IMAGE"),
        "{us}"
    );

    let eu = a.check(EU).await;
    let rule = format!("{}/eu-docs", a.bucket(EU));
    assert_eq!(
        named(&eu),
        [("replication-residency", rule.as_str())],
        "{eu}"
    );
    let m = &eu.problems[0].message;
    assert!(
        m.contains("replication rule \"eu-docs\" (prefix `eu/docs/`)")
            && m.contains("residency rule \"eu-only\" (key prefix `eu/`) to us-east-1"),
        "{eu}"
    );
    Ok(())
}
