//! TEST CODE: two simulated regions on one moto server (behind the fault proxy) and one
//! redis-server per region, wired by `template.yaml` itself: the SAM-expanded template is
//! deployed into moto's CloudFormation in both regions ([`crate::rehearsal`]), and the
//! functions' environments, queues, topics, subscriptions and mapping settings are read
//! back from those stacks.
//!
//! Every world deploys into a moto account of its own and gets a unique id (its table,
//! buckets and cache keys carry it), so tests run in parallel against the same emulators.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
use crate::rehearsal::{self, Pass, Plan, RegionWiring};
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
    /// Deploy the template's second pass (`PeerSubscriptions=true`): each region's queue
    /// subscribes to the peers' topics (filter: replicated = false).
    pub cross_region: bool,
    /// `replicated` of the table in the generated configuration.
    pub table_replicated: bool,
    /// Naive wiring for comparison: eu-west-1's cache is invalidated from us-east-1's topic
    /// (no filter) and eu-west-1's own stream-processor is off.
    pub naive_wiring: bool,
    /// `SecondDeleteDelaySeconds` of the deployed template (the delayed second delete).
    pub second_delete_delay: Option<u32>,
    /// Wait out each mapping's `MaximumBatchingWindowInSeconds` (the template's 1 s) before
    /// delivering a batch below the batch size, as Lambda does. On by default; tests that
    /// count receives or time a held reader against the second delete turn it off and say
    /// why.
    pub batching_windows: bool,
    /// Shape of the object events the harness delivers.
    pub object_events: Shape,
    /// Adds the residency rules of [`RESIDENCY_RULES`] to the configuration.
    pub residency: bool,
    /// `deployment.stale_after_seconds` (the staleness and health-check alarms' threshold).
    pub stale_after_seconds: Option<u64>,
    /// `residency.hash_keys_in_alerts = true`, with a Secrets Manager secret holding
    /// [`KEY_HASH_SECRET`] in each region (the template's `KeyHashSecretArn`).
    pub hash_keys: bool,
}

/// The HMAC key of [`Options::hash_keys`] worlds: the same in every region, as the README
/// asks (a key hashes alike everywhere).
pub const KEY_HASH_SECRET: &str = "tidemark-test-hmac-key";

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
            cross_region: true,
            table_replicated: true,
            naive_wiring: false,
            second_delete_delay: None,
            batching_windows: true,
            object_events: Shape::EventBridge,
            residency: false,
            stale_after_seconds: None,
            hash_keys: false,
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
    /// The stream mapping's on-failure destination (the template's: the dead-letter bucket).
    pub failure_bucket: String,
    pub redis_url: String,
    /// The region's alert topic (from the stack), and a queue subscribed to it (raw delivery).
    pub alert_topic_arn: String,
    pub alert_queue_url: String,
    /// The non-replicated bucket residency `hold` copies into.
    pub quarantine_bucket: String,
    /// The cache as the invalidator reaches it (through a gate that can fail it).
    pub cache_gate: Gate,
    pub stream_processor: Arc<dyn Invoke>,
    /// `AWS/SQS` `ApproximateNumberOfMessagesVisible` of the region's two dead-letter queues
    /// as CloudWatch would publish it: (queue name, epoch ms, messages), one sample per
    /// [`World::sample_dlq_depths`].
    pub dlq_depths: Arc<Mutex<Vec<(String, u64, f64)>>>,
    /// Every function of the region by binary name (`stream-processor`,
    /// `object-processor`, `cache-invalidator`), binary or in-process.
    pub functions: BTreeMap<String, Arc<dyn Invoke>>,
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
    /// What this region's deployed stack defines.
    pub wiring: RegionWiring,
}

pub struct World {
    pub id: String,
    /// The moto account this world's stacks live in.
    pub account: String,
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

/// A 12-digit moto account id no other world of this run uses.
fn unique_account() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let seed = u64::from(std::process::id()) * 1_000_003 + crate::now_ms() * 7919 + n;
    format!("{:012}", 100_000_000_000 + seed % 899_999_999_999)
}

/// The one mapping of a function (the template wires one source of each kind).
fn one<'a>(
    ms: Vec<&'a rehearsal::Mapping>,
    region: &str,
    binary: &str,
) -> Result<&'a rehearsal::Mapping> {
    match ms.as_slice() {
        [m] => Ok(m),
        _ => bail!(
            "{region}: expected one event source mapping for {binary} in the deployed stack, found {}",
            ms.len()
        ),
    }
}

/// A function's deployed environment plus what only the harness knows: the emulators'
/// endpoint and credentials, and this world's configuration file.
pub fn harness_env(
    proxy: &Proxy,
    config_path: &Path,
    deployed: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = deployed
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(
        [
            ("AWS_ENDPOINT_URL", proxy.url.clone()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_MAX_ATTEMPTS", "2".to_owned()),
            ("TIDEMARK_S3_FORCE_PATH_STYLE", "true".to_owned()),
            ("TIDEMARK_CONFIG_PATH", config_path.display().to_string()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

fn deployed<'a>(env: &'a BTreeMap<String, String>, binary: &str, var: &str) -> Result<&'a str> {
    env.get(var)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .with_context(|| format!("the deployed {binary} has no environment variable {var}"))
}

/// The handler of `binary`, in-process, configured from its deployed environment.
fn in_process(
    binary: &str,
    name: &str,
    config: &tidemark::config::Config,
    region: &str,
    clients: &RegionClients,
    env: &BTreeMap<String, String>,
    captured_emf: &mut Vec<(String, Arc<Mutex<Vec<serde_json::Value>>>)>,
) -> Result<Arc<dyn Invoke>> {
    let var = |v: &str| deployed(env, binary, v).map(str::to_owned);
    Ok(match binary {
        "stream-processor" => Arc::new(InProcess::new(
            name,
            tidemark::app::stream::StreamProcessor {
                config: config.clone(),
                region: region.to_owned(),
                ports: Ports {
                    publisher: Arc::new(SnsPublisher::new(
                        clients.sns.clone(),
                        var("TIDEMARK_INVALIDATION_TOPIC_ARN")?,
                    )),
                    dead_letter: Arc::new(S3DeadLetter::new(
                        clients.s3.clone(),
                        var("TIDEMARK_DEAD_LETTER_BUCKET")?,
                    )),
                    labels: labels(clients, env),
                    alerts: Arc::new(SnsAlerts::new(
                        clients.sns.clone(),
                        var("TIDEMARK_ALERT_TOPIC_ARN")?,
                    )),
                },
                emf: capture(captured_emf, binary),
            },
        )),
        "object-processor" => Arc::new(InProcess::new(
            name,
            tidemark::app::object::ObjectProcessor {
                config: config.clone(),
                region: region.to_owned(),
                ports: Ports {
                    publisher: Arc::new(SnsPublisher::new(
                        clients.sns.clone(),
                        var("TIDEMARK_INVALIDATION_TOPIC_ARN")?,
                    )),
                    dead_letter: Arc::new(SqsDeadLetter::new(
                        clients.sqs.clone(),
                        var("TIDEMARK_DEAD_LETTER_QUEUE_URL")?,
                        Some(S3DeadLetter::new(
                            clients.s3.clone(),
                            var("TIDEMARK_DEAD_LETTER_BUCKET")?,
                        )),
                    )),
                    labels: labels(clients, env),
                    alerts: Arc::new(SnsAlerts::new(
                        clients.sns.clone(),
                        var("TIDEMARK_ALERT_TOPIC_ARN")?,
                    )),
                },
                objects: Arc::new(S3ObjectStore::new(clients.s3.clone())),
                emf: capture(captured_emf, binary),
            },
        )),
        "cache-invalidator" => Arc::new(InProcess::new(
            name,
            tidemark::app::invalidator::Invalidator {
                namespace: config.deployment.namespace.clone(),
                cache: Arc::new(RedisCache::new(CacheSettings {
                    url: var("TIDEMARK_CACHE_URL")?,
                    cluster: var("TIDEMARK_CACHE_CLUSTER")? == "true",
                    ca_pem: None,
                    username: None,
                    auth: tidemark::adapters::cache::CacheAuth::None,
                })),
                dead_letter: Arc::new(SqsDeadLetter::new(
                    clients.sqs.clone(),
                    var("TIDEMARK_DEAD_LETTER_QUEUE_URL")?,
                    None,
                )),
                emf: capture(captured_emf, binary),
            },
        )),
        other => bail!("no in-process handler for {other}"),
    })
}

/// Key labels as `app::key_labels` builds them: hashed under the deployed
/// `TIDEMARK_KEY_HASH_SECRET_ARN` when the stack sets it, plain otherwise.
fn labels(
    clients: &RegionClients,
    env: &BTreeMap<String, String>,
) -> Arc<tidemark::keyhash::KeyLabels> {
    use tidemark::keyhash::KeyLabels;
    match env
        .get("TIDEMARK_KEY_HASH_SECRET_ARN")
        .filter(|v| !v.is_empty())
    {
        Some(arn) => Arc::new(KeyLabels::hashed(Arc::new(
            tidemark::adapters::secret::SecretsManagerSecret::new(
                aws_sdk_secretsmanager::Client::new(&clients.sdk),
                arn.clone(),
            ),
        ))),
        None => Arc::new(KeyLabels::plain()),
    }
}

/// User metadata holding an application object's write time in the world's bucket
/// (`lag.written_at_ms`, not the default, so a test shows the name is honoured); the origin
/// is the default `origin-region`.
pub const OBJECT_WRITTEN_AT: &str = "written-at";

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
lag = {{ enabled = true, written_at_ms = "{OBJECT_WRITTEN_AT}" }}
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
        let account = unique_account();
        let table = format!("users-{id}");
        let proxy = Proxy::start_in_account(&emulators.moto, Some(account.clone())).await?;
        // Replica versions and when the replicators wrote them (the event feeds read it).
        let replica_set: ReplicaSet = Arc::default();
        let dir = std::env::temp_dir().join(format!("tidemark-{id}"));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("tidemark.toml");
        let mut text = world_config(&id, &table, options.table_replicated);
        if options.hash_keys {
            text = text.replace(
                "unmatched = \"anywhere\"",
                "unmatched = \"anywhere\"\nhash_keys_in_alerts = true",
            );
        }
        if options.residency {
            let (tables, buckets) = RESIDENCY_RULES;
            text = text.replace("[[buckets]]", &format!("{tables}\n[[buckets]]"));
            text.push_str(buckets);
        }
        if let Some(n) = options.stale_after_seconds {
            text = text.replace(
                "[deployment]\n",
                &format!("[deployment]\nstale_after_seconds = {n}\n"),
            );
        }
        std::fs::write(&config_path, text)?;
        let config = tidemark::config::Config::load(&config_path)?;
        let ttl: TtlMarks = Arc::default();

        // What the application owns (the template's parameters): the global table, the
        // replicated bucket, and each region's cache (behind a gate that can fail it).
        let mut owned = Vec::new();
        let mut key_hash_secrets = Vec::new();
        for r in REGIONS {
            let clients = RegionClients::new(&proxy.url, r).await;
            // One secret per region, replicated by hand: the same key everywhere.
            key_hash_secrets.push(if options.hash_keys {
                aws_sdk_secretsmanager::Client::new(&clients.sdk)
                    .create_secret()
                    .name(format!("tidemark-key-hash-{id}"))
                    .secret_string(KEY_HASH_SECRET)
                    .send()
                    .await
                    .context("create the key-hash secret")?
                    .arn()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                String::new()
            });
            let stream_arn = clients.create_table(&table).await?;
            let bucket = format!("assets-{id}-{r}");
            clients.create_bucket(&bucket, true).await?;
            let quarantine_bucket = format!("quarantine-{id}-{r}");
            clients.create_bucket(&quarantine_bucket, false).await?;
            let redis_url = emulators.redis_url(r).to_owned();
            let cache_gate = Gate::start(redis_url.trim_start_matches("redis://")).await?;
            owned.push((
                r,
                clients,
                stream_arn,
                bucket,
                redis_url,
                cache_gate,
                quarantine_bucket,
            ));
        }

        // The README's deploy order: every region, then (when a replicated = false source
        // needs them) a second pass that enables the peer subscriptions.
        let parameters = |i: usize, peers: bool| {
            let (r, _, stream_arn, _, _, gate, _) = &owned[i];
            let p: BTreeMap<String, String> = [
                ("TableStreamArns", stream_arn.clone()),
                ("PeerSubscriptions", peers.to_string()),
                ("CacheUrl", format!("redis://{}", gate.addr)),
                ("CacheCluster", "false".to_owned()),
                ("CacheSubnetIds", "subnet-0a1b2c3d".to_owned()),
                ("CacheSecurityGroupIds", "sg-0a1b2c3d".to_owned()),
                ("VpcId", "vpc-0a1b2c3d".to_owned()),
                (
                    "SecondDeleteDelaySeconds",
                    options.second_delete_delay.unwrap_or(0).to_string(),
                ),
                ("KeyHashSecretArn", key_hash_secrets[i].clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            Pass {
                region: (*r).to_owned(),
                parameters: p,
            }
        };
        let mut passes: Vec<Pass> = (0..REGIONS.len()).map(|i| parameters(i, false)).collect();
        if options.cross_region {
            passes.extend((0..REGIONS.len()).map(|i| parameters(i, true)));
        }
        // template.yaml with its generated blocks rendered for this world's configuration,
        // exactly as `tidemark wiring` renders them for tidemark.toml.
        let template = dir.join("template.yaml");
        std::fs::write(&template, rehearsal::template_for(&config)?)?;
        // Straight to moto (same account header): the proxy serves the functions' traffic.
        let wiring = rehearsal::deploy(&emulators.moto, &account, &template, &Plan { passes })
            .await
            .context("deploy rehearsal of template.yaml")?;

        let mut regions = Vec::new();
        for (r, clients, stream_arn, bucket, redis_url, cache_gate, quarantine_bucket) in owned {
            let wired = wiring
                .regions
                .get(r)
                .with_context(|| format!("the rehearsal deployed no stack in {r}"))?
                .clone();
            let topic_arn = wired.physical("InvalidationTopic")?.to_owned();
            let queue_url = wired.physical("InvalidationQueue")?.to_owned();
            let queue_arn = wired.queue_arn("InvalidationQueue")?.to_owned();
            let queue_dlq_url = wired.physical("InvalidationDeadLetterQueue")?.to_owned();
            let object_queue_url = wired.physical("ObjectEventsQueue")?.to_owned();
            let object_dlq_url = wired.physical("ObjectEventsDeadLetterQueue")?.to_owned();
            let dead_letter_bucket = wired.physical("StreamDeadLetterBucket")?.to_owned();
            let alert_topic_arn = wired.physical("AlertTopic")?.to_owned();
            // A subscriber of the alert topic (as AlertEmail would be), for tests to read.
            let (alert_queue_url, alert_queue_arn) = clients
                .create_queue(&format!("alerts-{id}"), None, 0)
                .await?;
            clients
                .subscribe(&alert_topic_arn, &alert_queue_arn, true, None)
                .await?;

            let mut binaries = Vec::new();
            let mut captured_emf = Vec::new();
            let mut functions: BTreeMap<String, Arc<dyn Invoke>> = BTreeMap::new();
            for binary in ["stream-processor", "object-processor", "cache-invalidator"] {
                let f = wired.function(binary)?;
                let env = f.environment.clone();
                let invoke: Arc<dyn Invoke> = match options.mode {
                    Mode::Binary => {
                        // Instance names as the tests know them (`<binary>-<region>`).
                        let b = BinaryFunction::start(
                            binary,
                            &format!("{binary}-{r}"),
                            r,
                            &harness_env(&proxy, &config_path, &env),
                        )
                        .await?;
                        binaries.push(b.clone());
                        b
                    }
                    Mode::InProcess => in_process(
                        binary,
                        &format!("{binary}-{r}"),
                        &config,
                        r,
                        &clients,
                        &env,
                        &mut captured_emf,
                    )?,
                };
                functions.insert(binary.to_owned(), invoke);
            }
            let invoke = |binary: &str| functions[binary].clone();

            let stream = one(wired.mappings_of("stream-processor"), r, "stream-processor")?;
            if stream.source_arn() != stream_arn {
                bail!(
                    "{r}: the stream mapping reads {}, expected the watched table's stream {stream_arn}",
                    stream.source_arn()
                );
            }
            let on_failure = stream.on_failure_bucket().map(|b| (clients.s3.clone(), b));
            let stream_mapping = StreamMapping::new(
                clients.clone(),
                &table,
                &stream_arn,
                invoke("stream-processor"),
                {
                    let mut s = MappingSettings::from_template(stream)?;
                    if !options.batching_windows {
                        s.window = Duration::ZERO;
                    }
                    s
                },
                on_failure,
                ttl.clone(),
            );
            let sqs_mapping = |m: &rehearsal::Mapping, binary: &str| -> Result<SqsMapping> {
                let url = wired.queue_url_by_arn(m.source_arn()).with_context(|| {
                    format!(
                        "{r}: mapping {} reads {}, a queue the stack does not define",
                        m.logical,
                        m.source_arn()
                    )
                })?;
                let mapping = SqsMapping::from_template(clients.clone(), m, url, invoke(binary))?;
                Ok(if options.batching_windows {
                    mapping
                } else {
                    mapping.without_window()
                })
            };
            let mut invalidation_mapping = None;
            let mut delayed_mapping = None;
            for m in wired.mappings_of("cache-invalidator") {
                if m.source_arn() == queue_arn {
                    invalidation_mapping = Some(sqs_mapping(m, "cache-invalidator")?);
                } else {
                    delayed_mapping = Some(sqs_mapping(m, "cache-invalidator")?);
                }
            }
            let invalidation_mapping = invalidation_mapping.with_context(|| {
                format!("{r}: no mapping from InvalidationQueue to the cache-invalidator")
            })?;
            let object_mapping = sqs_mapping(
                one(wired.mappings_of("object-processor"), r, "object-processor")?,
                "object-processor",
            )?;
            let feed = EventFeed::new(
                clients.clone(),
                &bucket,
                &object_queue_url,
                options.object_events,
                replica_set.clone(),
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
                failure_bucket: dead_letter_bucket.clone(),
                dead_letter_bucket,
                redis_url,
                alert_topic_arn,
                alert_queue_url,
                quarantine_bucket,
                cache_gate,
                stream_processor: invoke("stream-processor"),
                functions: functions.clone(),
                dlq_depths: Arc::default(),
                binaries,
                stream_mapping,
                invalidation_mapping,
                delayed_mapping,
                object_mapping,
                stream_enabled: !(options.naive_wiring && r == "eu-west-1"),
                feed,
                captured_emf,
                wiring: wired,
            });
        }

        if options.naive_wiring {
            // Deliberately NOT the template's wiring (a comparison for one test): us-east-1's
            // changes invalidate eu-west-1's cache directly, without a filter.
            regions[0]
                .clients
                .subscribe(&regions[0].topic_arn, &regions[1].queue_arn, true, None)
                .await?;
        }

        let echoes = Arc::new(EchoFilter::default());
        let versions = Arc::new(Versions::default());
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
            account,
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
                busy |= r.stream_mapping.tick().await? > 0;
            }
            busy |= r.feed.step().await? > 0;
            busy |= r.object_mapping.tick().await? > 0;
            if stages.invalidator {
                busy |= r.invalidation_mapping.tick().await? > 0;
                if let Some(d) = &r.delayed_mapping {
                    busy |= d.tick().await? > 0;
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
    /// `tidemark replay` for `region`: the stores, topics and queues its deployed stack
    /// defines, as the command resolves them by name.
    pub fn replay(
        &self,
        region: &str,
        config: tidemark::config::Config,
    ) -> tidemark::replay::Replay {
        use tidemark::adapters::dead_letter::SqsQueue;
        use tidemark::replay::{Replay, Stores};
        let r = self.region(region);
        let c = &r.clients;
        let bucket = &r.dead_letter_bucket;
        Replay {
            config,
            region: region.to_owned(),
            publisher: Arc::new(SnsPublisher::new(c.sns.clone(), r.topic_arn.clone())),
            alerts: Arc::new(SnsAlerts::new(c.sns.clone(), r.alert_topic_arn.clone())),
            labels: Arc::new(tidemark::keyhash::KeyLabels::plain()),
            objects: Arc::new(S3ObjectStore::new(c.s3.clone())),
            stores: Stores {
                dead_letters: Some(Arc::new(tidemark::adapters::dead_letter::S3Kept::new(
                    c.s3.clone(),
                    bucket.clone(),
                    "dead-letter/stream-processor/".into(),
                ))),
                given_up: Some(Arc::new(tidemark::adapters::dead_letter::S3Kept::new(
                    c.s3.clone(),
                    r.failure_bucket.clone(),
                    "aws/lambda/".into(),
                ))),
                object_dlq: Some(Arc::new(SqsQueue::new(
                    c.sqs.clone(),
                    r.object_dlq_url.clone(),
                ))),
                invalidation_dlq: Some(Arc::new(SqsQueue::new(
                    c.sqs.clone(),
                    r.queue_dlq_url.clone(),
                ))),
                invalidation_queue: Some(Arc::new(SqsQueue::new(
                    c.sqs.clone(),
                    r.queue_url.clone(),
                ))),
                overflow: Some(Arc::new(S3DeadLetter::new(c.s3.clone(), bucket.clone()))),
            },
        }
    }

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

    /// Bodies of the records the stream-processor dead-lettered (the bucket also holds the
    /// mapping's on-failure batches, under `aws/lambda/`).
    pub async fn dead_letters(&self, region: &str) -> Result<Vec<String>> {
        let r = self.region(region);
        let out = r
            .clients
            .s3
            .list_objects_v2()
            .bucket(&r.dead_letter_bucket)
            .prefix("dead-letter/")
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

    /// The environment `binary` gets in `region`: its deployed environment plus the
    /// harness's endpoint, credentials and configuration (to start it as a binary).
    pub fn function_env(&self, region: &str, binary: &str) -> Result<Vec<(String, String)>> {
        let f = self.region(region).wiring.function(binary)?;
        Ok(harness_env(&self.proxy, &self.config_path, &f.environment))
    }

    /// EMF documents `function` printed in `region` so far (binaries or in-process).
    pub fn emf(&self, region: &str, function: &str) -> Vec<serde_json::Value> {
        let r = self.region(region);
        let mut docs: Vec<serde_json::Value> = r
            .binaries
            .iter()
            .filter(|b| b.name().contains(function))
            .flat_map(|b| b.emf())
            .collect();
        for (name, captured) in &r.captured_emf {
            if name.starts_with(function) {
                docs.extend(captured.lock().unwrap_or_else(|e| e.into_inner()).clone());
            }
        }
        docs
    }

    /// What a subscriber of `region`'s alert topic received so far (drained).
    pub async fn alerts(&self, region: &str) -> Result<Vec<tidemark::ports::Alert>> {
        let r = self.region(region);
        r.clients.drain_json(&r.alert_queue_url).await
    }

    /// The alarm evaluator's answer now for the deployed alarm `logical` of `region`, over
    /// every EMF document the region's functions printed plus `extra` (documents a test
    /// produced itself, such as in-process canary ticks).
    pub fn evaluate_alarm(
        &self,
        region: &str,
        logical: &str,
        extra: &[serde_json::Value],
    ) -> Result<crate::alarms::Evaluation> {
        let alarm = crate::alarms::alarm(&self.region(region).wiring, logical)?;
        let mut docs = self.emf(region, "");
        docs.extend_from_slice(extra);
        let samples = crate::alarms::samples(&docs)?;
        alarm.evaluate(&samples, crate::now_ms() as i64)
    }

    /// Sets the S3 replication delay of one direction (buckets); others keep theirs.
    pub fn set_s3_replication_delay(&mut self, from: &str, to: &str, delay: Duration) {
        for s in self
            .s3_replicators
            .iter_mut()
            .filter(|s| s.route() == (from, to))
        {
            s.set_delay(delay);
        }
    }

    /// Samples the visible messages of every region's dead-letter queues (what CloudWatch
    /// publishes per minute as `AWS/SQS` `ApproximateNumberOfMessagesVisible`).
    pub async fn sample_dlq_depths(&self) -> Result<()> {
        use aws_sdk_sqs::types::QueueAttributeName as N;
        for r in &self.regions {
            for url in [&r.queue_dlq_url, &r.object_dlq_url] {
                let a = r
                    .clients
                    .sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(N::ApproximateNumberOfMessages)
                    .send()
                    .await
                    .with_context(|| format!("attributes of {url}"))?;
                let visible = a
                    .attributes()
                    .and_then(|m| m.get(&N::ApproximateNumberOfMessages))
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("{url}: no ApproximateNumberOfMessages"))?;
                let name = url.rsplit('/').next().unwrap_or(url).to_owned();
                r.dlq_depths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name, crate::now_ms(), visible));
            }
        }
        Ok(())
    }

    /// S3 replication `from` → `to` fails from now on (`true`: object versions that come due
    /// are not copied, and S3's `OperationFailedReplication` notification goes to `from`'s
    /// object-events queue) or works again (`false`; what failed stays failed until
    /// [`World::replicate_failed`]).
    pub fn fail_s3_replication(&mut self, from: &str, to: &str, failing: bool) {
        let queue = failing.then(|| self.region(from).object_queue_url.clone());
        for s in self
            .s3_replicators
            .iter_mut()
            .filter(|s| s.route() == (from, to))
        {
            s.failing = queue.clone();
        }
    }

    /// S3 Batch Replication of every direction's failed versions (those still current):
    /// copied by the next steps. Returns how many.
    pub async fn replicate_failed(&mut self) -> Result<usize> {
        let mut n = 0;
        for s in &mut self.s3_replicators {
            n += s.replicate_failed().await?;
        }
        Ok(n)
    }

    /// Writes an application object in `region` with the metadata object lag reads
    /// (`origin-region`, [`OBJECT_WRITTEN_AT`] = now); returns its write time (epoch ms).
    pub async fn put_app_object(&self, region: &str, key: &str) -> Result<u64> {
        let r = self.region(region);
        let written_at = crate::now_ms();
        r.clients
            .s3
            .put_object()
            .bucket(&r.bucket)
            .key(key)
            .metadata("origin-region", region)
            .metadata(OBJECT_WRITTEN_AT, written_at.to_string())
            .body(b"x".to_vec().into())
            .send()
            .await?;
        Ok(written_at)
    }

    /// The alarm evaluator's state changes of the deployed alarm `logical` of `region` from
    /// `from_ms` to now (evaluated once a minute, as CloudWatch does), over the region's EMF
    /// plus `extra`: whether an alarm fired during a test, whatever minute it is now.
    pub fn alarm_timeline(
        &self,
        region: &str,
        logical: &str,
        extra: &[serde_json::Value],
        from_ms: u64,
    ) -> Result<Vec<(i64, crate::alarms::State)>> {
        let alarm = crate::alarms::alarm(&self.region(region).wiring, logical)?;
        let mut docs = self.emf(region, "");
        docs.extend_from_slice(extra);
        let samples = crate::alarms::samples(&docs)?;
        alarm.transitions(&samples, from_ms as i64, crate::now_ms() as i64)
    }

    /// Sets the replication delay of one direction (tables); others keep theirs.
    /// The queues' visibility timeout, scaled (see [`SqsMapping::retry_after`]): a
    /// message an invocation failed is received again `seconds` later.
    pub fn set_sqs_retry_after(&self, seconds: u32) {
        for r in &self.regions {
            r.invalidation_mapping.retry_after(seconds);
            r.object_mapping.retry_after(seconds);
            if let Some(m) = &r.delayed_mapping {
                m.retry_after(seconds);
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(w: &World, key: &str) -> Result<()> {
        let r = w.region("us-east-1");
        let body = json!({"v": 1, "source": "users", "origin_region": "us-east-1", "replicated": true,
            "changed_at_ms": 1, "keys": [format!("{}{key}", w.key_prefix)]});
        r.clients
            .sqs
            .send_message()
            .queue_url(&r.queue_url)
            .message_body(body.to_string())
            .send()
            .await?;
        Ok(())
    }

    fn batches(w: &World) -> Vec<usize> {
        let log = w.region("us-east-1").invalidation_mapping.log.clone();
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().map(|(ids, _)| ids.len()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the emulators: run scripts/test.sh"]
    async fn the_templates_batching_window_gathers_messages_sent_apart() -> Result<()> {
        let w = World::start(Options {
            batching_windows: true,
            cross_region: false,
            ..Options::default()
        })
        .await?;
        let m = &w.region("us-east-1").invalidation_mapping;
        send(&w, "a").await?;
        let opened = Instant::now();
        assert_eq!(m.tick().await?, 1, "held while the window is open");
        send(&w, "b").await?;
        while batches(&w).is_empty() && opened.elapsed() < Duration::from_secs(20) {
            m.tick().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            opened.elapsed() >= Duration::from_secs(1),
            "delivered {:?} after the window closed",
            opened.elapsed()
        );
        assert_eq!(batches(&w), vec![2], "one batch of both messages");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the emulators: run scripts/test.sh"]
    async fn without_batching_windows_each_tick_delivers() -> Result<()> {
        let w = World::start(Options {
            cross_region: false,
            batching_windows: false,
            ..Options::default()
        })
        .await?;
        let m = &w.region("us-east-1").invalidation_mapping;
        send(&w, "a").await?;
        m.tick().await?;
        send(&w, "b").await?;
        m.tick().await?;
        assert_eq!(batches(&w), vec![1, 1]);
        Ok(())
    }
}
