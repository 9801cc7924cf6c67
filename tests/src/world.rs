//! TEST CODE: two simulated regions wired the way `template.yaml` wires AWS, on one moto
//! server (behind the fault proxy) and one redis-server per region.
//!
//! Every world gets a unique id: its tables, buckets, topics, queues and cache keys carry
//! it, so tests run in parallel against the same emulators.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use tidemark::adapters::alerts::SnsAlerts;
use tidemark::adapters::cache::{CacheSettings, RedisCache};
use tidemark::adapters::dead_letter::{S3DeadLetter, SqsDeadLetter};
use tidemark::adapters::object_store::S3ObjectStore;
use tidemark::adapters::sns::SnsPublisher;
use tidemark::app::Ports;

use crate::aws::RegionClients;
use crate::gate::Gate;
use crate::proxy::Proxy;
use crate::runtime::{BinaryFunction, InProcess, Invoke};
use crate::s3sim::{EventFeed, ReplicaSet, S3Replicator, Shape};
use crate::sqs::SqsMapping;
use crate::streams::{EchoFilter, MappingSettings, Replicator, StreamMapping, TtlMarks, Versions};

pub const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];

/// How functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The cargo-lambda-built bootstrap under the Runtime API (default).
    Binary,
    /// The same handlers called in-process (fast).
    InProcess,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub replication_delay: Duration,
    pub stream: MappingSettings,
    pub sqs_batch: usize,
    /// Subscribe each region's queue to the peers' topics (filter: replicated = false).
    pub cross_region: bool,
    /// `replicated` of the table in the generated configuration.
    pub table_replicated: bool,
    /// Naive wiring for comparison: eu-west-1's cache is invalidated from us-east-1's topic
    /// (no filter) and eu-west-1's own stream-processor is off.
    pub naive_wiring: bool,
    /// Delivery delay (s) of a second subscription for the delayed second delete.
    pub second_delete_delay: Option<u32>,
    /// Shape of the object events the harness delivers.
    pub object_events: Shape,
    /// Adds the residency rules of [`RESIDENCY_RULES`] to the configuration.
    pub residency: bool,
}

impl Default for Options {
    fn default() -> Self {
        let mode = if std::env::var("TIDEMARK_IN_PROCESS").is_ok_and(|v| v == "1") {
            Mode::InProcess
        } else {
            Mode::Binary
        };
        Self {
            mode,
            replication_delay: Duration::from_millis(200),
            stream: MappingSettings::default(),
            sqs_batch: 10,
            cross_region: true,
            table_replicated: true,
            naive_wiring: false,
            second_delete_delay: None,
            object_events: Shape::EventBridge,
            residency: false,
        }
    }
}

/// The emulators, from the environment `scripts/env.sh` sets.
#[derive(Debug, Clone)]
pub struct Emulators {
    pub moto: String,
    pub redis: Vec<(String, String)>,
}

impl Emulators {
    pub fn from_env() -> Result<Self> {
        let moto = std::env::var("TIDEMARK_MOTO_URL")
            .context("TIDEMARK_MOTO_URL is not set: run the system tests with scripts/test.sh (it starts moto and redis)")?;
        let mut redis = Vec::new();
        for r in REGIONS {
            let var = format!("TIDEMARK_REDIS_{}", r.replace('-', "_").to_uppercase());
            let url = std::env::var(&var)
                .with_context(|| format!("{var} is not set: run scripts/test.sh"))?;
            redis.push((r.to_owned(), url));
        }
        Ok(Self { moto, redis })
    }

    pub fn redis_url(&self, region: &str) -> &str {
        self.redis
            .iter()
            .find(|(r, _)| r == region)
            .map_or("", |(_, u)| u.as_str())
    }
}

/// One simulated region.
pub struct RegionWorld {
    pub name: String,
    pub clients: RegionClients,
    pub stream_arn: String,
    pub bucket: String,
    pub topic_arn: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub queue_dlq_url: String,
    pub object_queue_url: String,
    pub object_dlq_url: String,
    pub dead_letter_bucket: String,
    pub failure_bucket: String,
    pub redis_url: String,
    /// The region's alert topic, and a queue subscribed to it (raw delivery).
    pub alert_topic_arn: String,
    pub alert_queue_url: String,
    /// The non-replicated bucket residency `hold` copies into.
    pub quarantine_bucket: String,
    /// The cache as the invalidator reaches it (through a gate that can fail it).
    pub cache_gate: Gate,
    pub stream_processor: Arc<dyn Invoke>,
    pub binaries: Vec<Arc<BinaryFunction>>,
    pub stream_mapping: StreamMapping,
    pub invalidation_mapping: SqsMapping,
    pub delayed_mapping: Option<SqsMapping>,
    pub object_mapping: SqsMapping,
    /// Whether `step` drives this region's stream mapping.
    pub stream_enabled: bool,
    pub feed: EventFeed,
    /// EMF documents of the in-process handlers, by function name (binaries print theirs).
    pub captured_emf: Vec<(String, Arc<Mutex<Vec<serde_json::Value>>>)>,
}

pub struct World {
    pub id: String,
    pub table: String,
    pub key_prefix: String,
    pub config_path: PathBuf,
    pub proxy: Proxy,
    pub emulators: Emulators,
    pub regions: Vec<RegionWorld>,
    pub replicators: Vec<Replicator>,
    pub s3_replicators: Vec<S3Replicator>,
    pub ttl: TtlMarks,
    pub options: Options,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!(
        "t{:x}{:x}{n}",
        std::process::id(),
        crate::now_ms() % 0xffffff
    )
}

/// The configuration every function of this world loads (`TIDEMARK_CONFIG_PATH`).
pub fn world_config(id: &str, table: &str, replicated: bool) -> String {
    format!(
        r#"[deployment]
regions = ["us-east-1", "eu-west-1"]
namespace = "Tidemark"
heartbeat_prefix = "tidemark-heartbeat"

[residency]
unmatched = "anywhere"

[[tables]]
name = "{table}"
partition_key = {{ name = "pk", type = "S" }}
attributes = ["email", "updated_at_ms", "origin_region", "home_region"]
cache_keys = ["{id}:user:{{pk}}", "{id}:user-email:{{email}}"]
replicated = {replicated}
canary = {{ enabled = true }}
app_attributes = {{ origin_region = "origin_region", written_at_ms = "updated_at_ms" }}

[[buckets]]
name = "assets"
bucket = "assets-{id}-{{region}}"
cache_keys = ["{id}:asset:{{key}}"]
canary = {{ enabled = true }}
quarantine_bucket = "quarantine-{id}-{{region}}"
"#
    )
}

/// Residency rules (`Options::residency`): everything they match may live in eu-west-1 only.
/// Tag and metadata rules come first (the first matching rule wins).
pub const RESIDENCY_RULES: (&str, &str) = (
    r#"
[[tables.residency]]
name = "eu-residents"
match = { attribute = { name = "home_region", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "report"
"#,
    r#"
[[buckets.residency]]
name = "eu-tagged"
match = { tag = { name = "residency", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "hold"

[[buckets.residency]]
name = "eu-metadata"
match = { metadata = { name = "residency", equals = "eu" } }
allowed_regions = ["eu-west-1"]
action = "delete-replica"

[[buckets.residency]]
name = "eu-only"
match = { key_prefix = "eu/" }
allowed_regions = ["eu-west-1"]
action = "delete-replica"

[[buckets.residency]]
name = "eu-special"
match = { key_prefix = "résidence eu+/%/" }
allowed_regions = ["eu-west-1"]
action = "delete-replica"

[[buckets.residency]]
name = "eu-hold"
match = { key_prefix = "hold/" }
allowed_regions = ["eu-west-1"]
action = "hold"

[[buckets.residency]]
name = "eu-alert"
match = { key_prefix = "alert/" }
allowed_regions = ["eu-west-1"]
action = "alert"

[[buckets.residency]]
name = "eu-any-copy"
match = { key_prefix = "purge/" }
allowed_regions = ["eu-west-1"]
action = "delete-replica"
replicas_only = false
"#,
);

impl World {
    pub async fn start(options: Options) -> Result<Self> {
        let emulators = Emulators::from_env()?;
        let id = unique_id();
        let table = format!("users-{id}");
        let proxy = Proxy::start(&emulators.moto).await?;
        let dir = std::env::temp_dir().join(format!("tidemark-{id}"));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("tidemark.toml");
        let mut text = world_config(&id, &table, options.table_replicated);
        if options.residency {
            let (tables, buckets) = RESIDENCY_RULES;
            text = text.replace("[[buckets]]", &format!("{tables}\n[[buckets]]"));
            text.push_str(buckets);
        }
        std::fs::write(&config_path, text)?;
        let config = tidemark::config::Config::load(&config_path)?;
        let ttl: TtlMarks = Arc::default();

        let mut regions = Vec::new();
        for r in REGIONS {
            let clients = RegionClients::new(&proxy.url, r).await;
            let stream_arn = clients.create_table(&table).await?;
            let bucket = format!("assets-{id}-{r}");
            clients.create_bucket(&bucket, true).await?;
            let dead_letter_bucket = format!("dl-{id}-{r}");
            clients.create_bucket(&dead_letter_bucket, false).await?;
            let failure_bucket = format!("fail-{id}-{r}");
            clients.create_bucket(&failure_bucket, false).await?;
            let topic_arn = clients
                .create_topic(&format!("tidemark-invalidations-{r}-{id}"))
                .await?;
            let (queue_dlq_url, queue_dlq_arn) = clients
                .create_queue(&format!("inval-dlq-{id}"), None, 0)
                .await?;
            let (queue_url, queue_arn) = clients
                .create_queue(&format!("inval-{id}"), Some(&queue_dlq_arn), 3)
                .await?;
            clients
                .subscribe(&topic_arn, &queue_arn, true, None)
                .await?;
            let (object_dlq_url, object_dlq_arn) = clients
                .create_queue(&format!("objects-dlq-{id}"), None, 0)
                .await?;
            let (object_queue_url, object_queue_arn) = clients
                .create_queue(&format!("objects-{id}"), Some(&object_dlq_arn), 3)
                .await?;
            let quarantine_bucket = format!("quarantine-{id}-{r}");
            clients.create_bucket(&quarantine_bucket, false).await?;
            let alert_topic_arn = clients
                .create_topic(&format!("tidemark-alerts-{r}-{id}"))
                .await?;
            let (alert_queue_url, alert_queue_arn) = clients
                .create_queue(&format!("alerts-{id}"), None, 0)
                .await?;
            clients
                .subscribe(&alert_topic_arn, &alert_queue_arn, true, None)
                .await?;
            let redis_url = emulators.redis_url(r).to_owned();
            let cache_gate = Gate::start(redis_url.trim_start_matches("redis://")).await?;
            let gated_url = format!("redis://{}", cache_gate.addr);

            let mut binaries = Vec::new();
            let mut captured_emf = Vec::new();
            let (stream_processor, object_processor, invalidator): (
                Arc<dyn Invoke>,
                Arc<dyn Invoke>,
                Arc<dyn Invoke>,
            ) = match options.mode {
                Mode::Binary => {
                    let base = vec![
                        ("AWS_ENDPOINT_URL".to_owned(), proxy.url.clone()),
                        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
                        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
                        ("AWS_MAX_ATTEMPTS".to_owned(), "2".to_owned()),
                        ("TIDEMARK_S3_FORCE_PATH_STYLE".to_owned(), "true".to_owned()),
                        (
                            "TIDEMARK_CONFIG_PATH".to_owned(),
                            config_path.display().to_string(),
                        ),
                        (
                            "TIDEMARK_INVALIDATION_TOPIC_ARN".to_owned(),
                            topic_arn.clone(),
                        ),
                        (
                            "TIDEMARK_ALERT_TOPIC_ARN".to_owned(),
                            alert_topic_arn.clone(),
                        ),
                        ("RUST_LOG".to_owned(), "info".to_owned()),
                    ];
                    let with = |extra: &[(&str, &str)]| {
                        let mut e = base.clone();
                        e.extend(
                            extra
                                .iter()
                                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                        );
                        e
                    };
                    let sp = BinaryFunction::start(
                        "stream-processor",
                        &format!("stream-processor-{r}"),
                        r,
                        &with(&[("TIDEMARK_DEAD_LETTER_BUCKET", &dead_letter_bucket)]),
                    )
                    .await?;
                    let op = BinaryFunction::start(
                        "object-processor",
                        &format!("object-processor-{r}"),
                        r,
                        &with(&[
                            ("TIDEMARK_DEAD_LETTER_QUEUE_URL", &object_dlq_url),
                            ("TIDEMARK_DEAD_LETTER_BUCKET", &dead_letter_bucket),
                        ]),
                    )
                    .await?;
                    let ci = BinaryFunction::start(
                        "cache-invalidator",
                        &format!("cache-invalidator-{r}"),
                        r,
                        &with(&[
                            ("TIDEMARK_DEAD_LETTER_QUEUE_URL", &queue_dlq_url),
                            ("TIDEMARK_CACHE_URL", &gated_url),
                        ]),
                    )
                    .await?;
                    binaries.extend([sp.clone(), op.clone(), ci.clone()]);
                    (sp, op, ci)
                }
                Mode::InProcess => {
                    let s3_dl = S3DeadLetter::new(clients.s3.clone(), dead_letter_bucket.clone());
                    let publisher =
                        Arc::new(SnsPublisher::new(clients.sns.clone(), topic_arn.clone()));
                    let alerts =
                        Arc::new(SnsAlerts::new(clients.sns.clone(), alert_topic_arn.clone()));
                    let sp = tidemark::app::stream::StreamProcessor {
                        config: config.clone(),
                        region: r.to_owned(),
                        ports: Ports {
                            publisher: publisher.clone(),
                            dead_letter: Arc::new(s3_dl),
                            labels: Arc::new(tidemark::keyhash::KeyLabels::plain()),
                            alerts: alerts.clone(),
                        },
                        emf: capture(&mut captured_emf, "stream-processor"),
                    };
                    let op = tidemark::app::object::ObjectProcessor {
                        config: config.clone(),
                        region: r.to_owned(),
                        ports: Ports {
                            publisher,
                            dead_letter: Arc::new(SqsDeadLetter::new(
                                clients.sqs.clone(),
                                object_dlq_url.clone(),
                                Some(S3DeadLetter::new(
                                    clients.s3.clone(),
                                    dead_letter_bucket.clone(),
                                )),
                            )),
                            labels: Arc::new(tidemark::keyhash::KeyLabels::plain()),
                            alerts,
                        },
                        objects: Arc::new(S3ObjectStore::new(clients.s3.clone())),
                        emf: capture(&mut captured_emf, "object-processor"),
                    };
                    let ci = tidemark::app::invalidator::Invalidator {
                        namespace: "Tidemark".into(),
                        cache: Arc::new(RedisCache::new(CacheSettings {
                            url: gated_url.clone(),
                            cluster: false,
                            ca_pem: None,
                            username: None,
                            auth: tidemark::adapters::cache::CacheAuth::None,
                        })),
                        dead_letter: Arc::new(SqsDeadLetter::new(
                            clients.sqs.clone(),
                            queue_dlq_url.clone(),
                            None,
                        )),
                        emf: capture(&mut captured_emf, "cache-invalidator"),
                    };
                    (
                        Arc::new(InProcess::new(&format!("stream-processor-{r}"), sp)),
                        Arc::new(InProcess::new(&format!("object-processor-{r}"), op)),
                        Arc::new(InProcess::new(&format!("cache-invalidator-{r}"), ci)),
                    )
                }
            };
            let stream_mapping = StreamMapping::new(
                clients.clone(),
                &table,
                &stream_arn,
                stream_processor.clone(),
                options.stream.clone(),
                Some((clients.s3.clone(), failure_bucket.clone())),
                ttl.clone(),
            );
            let invalidation_mapping = SqsMapping::new(
                clients.clone(),
                &queue_url,
                &queue_arn,
                invalidator.clone(),
                options.sqs_batch,
            );
            let delayed_mapping = match options.second_delete_delay {
                Some(delay) => {
                    let (url, arn) = clients
                        .create_queue_with_delay(&format!("inval-delayed-{id}"), delay)
                        .await?;
                    clients.subscribe(&topic_arn, &arn, true, None).await?;
                    Some(SqsMapping::new(
                        clients.clone(),
                        &url,
                        &arn,
                        invalidator,
                        options.sqs_batch,
                    ))
                }
                None => None,
            };
            let object_mapping = SqsMapping::new(
                clients.clone(),
                &object_queue_url,
                &object_queue_arn,
                object_processor,
                options.sqs_batch,
            );
            let feed = EventFeed::new(
                clients.clone(),
                &bucket,
                &object_queue_url,
                options.object_events,
            );
            regions.push(RegionWorld {
                name: r.to_owned(),
                clients,
                stream_arn,
                bucket,
                topic_arn,
                queue_url,
                queue_arn,
                queue_dlq_url,
                object_queue_url,
                object_dlq_url,
                dead_letter_bucket,
                failure_bucket,
                redis_url,
                alert_topic_arn,
                alert_queue_url,
                quarantine_bucket,
                cache_gate,
                stream_processor,
                binaries,
                stream_mapping,
                invalidation_mapping,
                delayed_mapping,
                object_mapping,
                stream_enabled: !(options.naive_wiring && r == "eu-west-1"),
                feed,
                captured_emf,
            });
        }

        if options.cross_region {
            for i in 0..regions.len() {
                for j in 0..regions.len() {
                    if i != j {
                        let filter = json!({"replicated": ["false"]});
                        regions[j]
                            .clients
                            .subscribe(
                                &regions[j].topic_arn,
                                &regions[i].queue_arn,
                                true,
                                Some(filter),
                            )
                            .await?;
                    }
                }
            }
        }

        if options.naive_wiring {
            // The naive alternative: us-east-1's changes invalidate eu-west-1's cache directly.
            regions[0]
                .clients
                .subscribe(&regions[0].topic_arn, &regions[1].queue_arn, true, None)
                .await?;
        }

        let echoes = Arc::new(EchoFilter::default());
        let versions = Arc::new(Versions::default());
        let replica_set: ReplicaSet = Arc::default();
        let mut replicators = Vec::new();
        let mut s3_replicators = Vec::new();
        for i in 0..regions.len() {
            for j in 0..regions.len() {
                if i == j {
                    continue;
                }
                replicators.push(Replicator::new(
                    &table,
                    regions[i].clients.clone(),
                    &regions[i].stream_arn,
                    regions[j].clients.clone(),
                    options.replication_delay,
                    echoes.clone(),
                    versions.clone(),
                    Some("updated_at_ms".into()),
                ));
                s3_replicators.push(S3Replicator::new(
                    regions[i].clients.clone(),
                    &regions[i].bucket,
                    regions[j].clients.clone(),
                    &regions[j].bucket,
                    replica_set.clone(),
                    proxy.clone(),
                ));
            }
        }
        Ok(Self {
            key_prefix: format!("{id}:"),
            id,
            table,
            config_path,
            proxy,
            emulators,
            regions,
            replicators,
            s3_replicators,
            ttl,
            options,
        })
    }

    pub fn region(&self, name: &str) -> &RegionWorld {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .unwrap_or(&self.regions[0])
    }

    pub fn region_mut(&mut self, name: &str) -> &mut RegionWorld {
        let i = self
            .regions
            .iter()
            .position(|r| r.name == name)
            .unwrap_or(0);
        &mut self.regions[i]
    }

    /// Pauses or resumes replication `from` → `to` (tables and buckets).
    pub fn pause(&mut self, from: &str, to: &str, paused: bool) {
        for r in self
            .replicators
            .iter()
            .filter(|r| r.from == from && r.to == to)
        {
            r.paused.store(paused, Ordering::SeqCst);
        }
        for s in self
            .s3_replicators
            .iter_mut()
            .filter(|s| s.route() == (from, to))
        {
            s.paused = paused;
        }
    }

    /// One round of everything; returns true if anything moved or is still pending
    /// (paused backlogs do not count).
    pub async fn step(&mut self, stages: Stages) -> Result<bool> {
        let mut busy = false;
        if stages.replication {
            for r in &mut self.replicators {
                let waiting = r.step().await?;
                if waiting > 0 && !r.paused.load(Ordering::SeqCst) {
                    busy = true;
                }
            }
            for s in &mut self.s3_replicators {
                busy |= s.step().await? > 0;
            }
        }
        for r in &mut self.regions {
            if stages.streams && r.stream_enabled {
                busy |= r.stream_mapping.step().await? > 0;
            }
            busy |= r.feed.step().await? > 0;
            busy |= r.object_mapping.step().await? > 0;
            if stages.invalidator {
                busy |= r.invalidation_mapping.step().await? > 0;
                if let Some(d) = &r.delayed_mapping {
                    busy |= d.step().await? > 0;
                }
            }
        }
        Ok(busy)
    }

    /// Runs rounds until two consecutive rounds are quiet (or `limit` passes).
    pub async fn settle_with(&mut self, stages: Stages, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut quiet = 0;
        while quiet < 2 {
            if start.elapsed() > limit {
                bail!("world {} did not settle within {limit:?}", self.id);
            }
            if self.step(stages).await? {
                quiet = 0;
            } else {
                quiet += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn settle(&mut self) -> Result<()> {
        self.settle_with(Stages::ALL, Duration::from_secs(60)).await
    }

    /// Writes an item in `region` (the application's write).
    pub async fn put_user(&self, region: &str, pk: &str, email: &str) -> Result<()> {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        self.region(region)
            .clients
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", A::S(pk.to_owned()))
            .item("email", A::S(email.to_owned()))
            .item("updated_at_ms", A::N(crate::now_ms().to_string()))
            .item("origin_region", A::S(region.to_owned()))
            .send()
            .await?;
        Ok(())
    }

    pub async fn delete_user(&self, region: &str, pk: &str) -> Result<()> {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        self.region(region)
            .clients
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", A::S(pk.to_owned()))
            .send()
            .await?;
        Ok(())
    }

    /// Expires an item by TTL in `region`: its REMOVE carries the service principal there only.
    pub async fn ttl_expire(&self, region: &str, pk: &str) -> Result<()> {
        let key = crate::streams::key_text(&json!({"pk": {"S": pk}}));
        self.ttl.lock().unwrap_or_else(|e| e.into_inner()).insert((
            region.to_owned(),
            self.table.clone(),
            key,
        ));
        self.delete_user(region, pk).await
    }

    pub async fn get_user(&self, region: &str, pk: &str) -> Result<Option<String>> {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        let out = self
            .region(region)
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", A::S(pk.to_owned()))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out
            .item()
            .and_then(|i| i.get("email"))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }

    /// A redis connection to `region`'s cache.
    pub async fn cache(&self, region: &str) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.region(region).redis_url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Cache keys of this world present in `region`'s cache, sorted.
    pub async fn cached_keys(&self, region: &str) -> Result<Vec<String>> {
        let mut c = self.cache(region).await?;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.key_prefix))
            .query_async(&mut c)
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Like [`World::cached_keys`], without this world's prefix.
    pub async fn cached(&self, region: &str) -> Result<Vec<String>> {
        Ok(self
            .cached_keys(region)
            .await?
            .into_iter()
            .map(|k| k.trim_start_matches(&self.key_prefix).to_owned())
            .collect())
    }

    pub async fn set_cached(&self, region: &str, key: &str, value: &str) -> Result<()> {
        let mut c = self.cache(region).await?;
        let full = format!("{}{key}", self.key_prefix);
        redis::cmd("SET")
            .arg(&full)
            .arg(value)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// Objects in a bucket (key list).
    pub async fn dead_letters(&self, region: &str) -> Result<Vec<String>> {
        let r = self.region(region);
        let out = r
            .clients
            .s3
            .list_objects_v2()
            .bucket(&r.dead_letter_bucket)
            .send()
            .await?;
        let mut bodies = Vec::new();
        for o in out.contents() {
            let key = o.key().unwrap_or_default();
            let got = r
                .clients
                .s3
                .get_object()
                .bucket(&r.dead_letter_bucket)
                .key(key)
                .send()
                .await?;
            bodies.push(
                String::from_utf8_lossy(&got.body.collect().await?.into_bytes()).into_owned(),
            );
        }
        Ok(bodies)
    }

    /// EMF documents `function` printed in `region` so far (binaries or in-process).
    pub fn emf(&self, region: &str, function: &str) -> Vec<serde_json::Value> {
        let r = self.region(region);
        let mut docs: Vec<serde_json::Value> = r
            .binaries
            .iter()
            .filter(|b| b.name().starts_with(function))
            .flat_map(|b| b.emf())
            .collect();
        for (name, captured) in &r.captured_emf {
            if name.starts_with(function) {
                docs.extend(captured.lock().unwrap_or_else(|e| e.into_inner()).clone());
            }
        }
        docs
    }

    /// Sets the replication delay of one direction (tables); others keep theirs.
    pub fn set_replication_delay(&mut self, from: &str, to: &str, delay: Duration) {
        for r in self
            .replicators
            .iter_mut()
            .filter(|r| r.from == from && r.to == to)
        {
            r.set_delay(delay);
        }
    }
}

/// A capture for an in-process handler's EMF documents, remembered under `function`.
fn capture(
    captured: &mut Vec<(String, Arc<Mutex<Vec<serde_json::Value>>>)>,
    function: &str,
) -> tidemark::metrics::EmfOut {
    let docs = Arc::new(Mutex::new(Vec::new()));
    captured.push((function.to_owned(), docs.clone()));
    tidemark::metrics::EmfOut::Captured(docs)
}

/// Which parts of the world `step` drives.
#[derive(Debug, Clone, Copy)]
pub struct Stages {
    pub replication: bool,
    pub streams: bool,
    pub invalidator: bool,
}

impl Stages {
    pub const ALL: Stages = Stages {
        replication: true,
        streams: true,
        invalidator: true,
    };
}
