//! `tidemark-bench`: measurements that need the emulators (not run in CI).
//!
//!   tidemark-bench runtime   the stream-processor binary (cargo-lambda, local profile) under
//!                            the Runtime API: init time, 4,000-record batch time, peak RSS
//!   tidemark-bench cache     UNLINK throughput into a local redis-server, one round trip per batch
//!   tidemark-bench invalidator  the cache-invalidator's handler end to end: an SQS batch of
//!                            SNS-wrapped invalidation messages (packed by the real packer) →
//!                            parse → UNLINK in a local redis-server; messages/s and keys/s
//!
//! Run through `scripts/bench.sh`, which builds and starts what is needed.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tidemark::adapters::cache::{CacheSettings, RedisCache};
use tidemark::ports::Cache;
use tidemark_tests::aws::RegionClients;
use tidemark_tests::runtime::{BinaryFunction, Invoke, InvokeResult, failed_ids};
use tidemark_tests::world::{Emulators, world_config};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("runtime") => runtime().await,
        Some("cache") => cache().await,
        Some("invalidator") => invalidator().await,
        _ => {
            eprintln!("usage: tidemark-bench runtime|cache|invalidator");
            std::process::exit(2)
        }
    }
}

async fn runtime() -> Result<()> {
    let emu = Emulators::from_env()?;
    let id = format!("bench{}", std::process::id());
    let table = format!("users-{id}");
    let clients = RegionClients::new(&emu.moto, "us-east-1").await;
    let topic = clients.create_topic(&format!("bench-{id}")).await?;
    let bucket = format!("dl-{id}");
    clients.create_bucket(&bucket, false).await?;
    let dir = std::env::temp_dir().join(format!("tidemark-{id}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("tidemark.toml");
    std::fs::write(&config, world_config(&id, &table, true))?;
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", emu.moto.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("TIDEMARK_S3_FORCE_PATH_STYLE", "true"),
        ("TIDEMARK_CONFIG_PATH", &config.display().to_string()),
        ("TIDEMARK_INVALIDATION_TOPIC_ARN", &topic),
        // No rule in this configuration: nothing is ever sent to the alert topic.
        ("TIDEMARK_ALERT_TOPIC_ARN", &topic),
        ("TIDEMARK_DEAD_LETTER_BUCKET", &bucket),
        ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
        // As template.yaml's Globals set it for every function.
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let f = BinaryFunction::start(
        "stream-processor",
        "stream-processor-bench",
        "us-east-1",
        &env,
    )
    .await?;
    let batch = tidemark::samples::stream_batch(4000, &table);
    let rss_idle = {
        // Wait for init (the first /next) before reading the idle RSS.
        for _ in 0..100 {
            if f.init_time().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        f.peak_rss_kib().context("no /proc status")?
    };
    let init = f
        .init_time()
        .context("bootstrap never asked for an invocation")?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let r = f.invoke(batch.clone()).await?;
        times.push(start.elapsed().as_secs_f64());
        match r {
            InvokeResult::Ok(v) if failed_ids(&v).is_empty() => {}
            other => bail!("batch failed: {other:?}"),
        }
    }
    let peak = f.peak_rss_kib().context("no /proc status")?;
    println!("stream-processor (local profile, x86-64) under the Runtime API:");
    println!(
        "  init (process start → first /next): {:.1} ms",
        init.as_secs_f64() * 1e3
    );
    println!("  batch: 4,000 records, {:.2} MB", batch.len() as f64 / 1e6);
    println!(
        "  batch time incl. Runtime API and SNS on loopback: first {:.1} ms, best {:.1} ms",
        times[0] * 1e3,
        times.iter().copied().fold(f64::MAX, f64::min) * 1e3
    );
    println!(
        "  peak RSS: idle {:.1} MiB, after 5 batches {:.1} MiB",
        rss_idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

/// us-east-1's local redis-server: its URL and the cache adapter on it (plain, no auth).
fn local_cache() -> Result<(String, Arc<RedisCache>)> {
    let emu = Emulators::from_env()?;
    let url = emu.redis_url("us-east-1").to_owned();
    let cache = Arc::new(RedisCache::new(CacheSettings {
        url: url.clone(),
        cluster: false,
        ca_pem: None,
        username: None,
        auth: tidemark::adapters::cache::CacheAuth::None,
    }));
    Ok((url, cache))
}

async fn cache() -> Result<()> {
    let (url, cache) = local_cache()?;
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let prefix = format!("bench{}:", std::process::id());
    for batch in [100usize, 1000, 10_000] {
        let rounds = (200_000 / batch).max(5);
        let mut total = 0.0;
        let mut deleted = 0u64;
        for r in 0..rounds {
            let keys: Vec<String> = (0..batch)
                .map(|i| format!("{prefix}{batch}:{r}:user:{i}"))
                .collect();
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("SET").arg(k).arg("v").ignore();
            }
            pipe.query_async::<()>(&mut con).await?;
            let start = Instant::now();
            deleted += cache.unlink(&keys).await.map_err(anyhow::Error::msg)?;
            total += start.elapsed().as_secs_f64();
        }
        let keys = (rounds * batch) as f64;
        if deleted as f64 != keys {
            bail!("deleted {deleted} of {keys} keys");
        }
        println!(
            "UNLINK, {batch:>6} keys per batch (one round trip): {:>9.0} keys/s over {rounds} batches",
            keys / total
        );
    }
    Ok(())
}

struct NoDeadLetter;
impl tidemark::ports::DeadLetter for NoDeadLetter {
    fn put(
        &self,
        entries: Vec<tidemark::ports::DeadLetterEntry>,
    ) -> futures::future::BoxFuture<'_, Result<(), tidemark::ports::PortError>> {
        Box::pin(async move {
            Err(tidemark::ports::PortError::Permanent(format!(
                "the bench rejected {} messages",
                entries.len()
            )))
        })
    }
}

/// An SQS event of `messages` SNS-wrapped invalidation messages (the sample event's
/// envelope and record), each the packer's output for `keys_per_message` e-mail keys.
fn invalidation_event(
    prefix: &str,
    messages: usize,
    keys_per_message: usize,
) -> (String, Vec<String>) {
    use serde_json::{Value, json};
    use tidemark::invalidation::{BODY_BUDGET, Coalescer};
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/sqs-sns-invalidation.json"
        ))
        .expect("events/sqs-sns-invalidation.json"),
    )
    .expect("sample event");
    let record = &sample["Records"][0];
    let envelope: Value =
        serde_json::from_str(record["body"].as_str().unwrap_or_default()).expect("SNS envelope");
    let mut records = Vec::new();
    let mut all_keys = Vec::new();
    for m in 0..messages {
        let mut co = Coalescer::default();
        let g = co.group("users", "us-east-1", true);
        for i in 0..keys_per_message {
            let key = format!("{prefix}user-email:m{m}.n{i}@example.com");
            co.add_key(g, &key, i, 1_763_812_800_123);
            all_keys.push(key);
        }
        let packed = co.pack(BODY_BUDGET);
        assert_eq!(
            packed.len(),
            1,
            "{keys_per_message} keys do not fit one message"
        );
        let mut env = envelope.clone();
        env["Message"] = json!(packed[0].outbound.body);
        env["MessageId"] = json!(format!("00000000-0000-0000-0000-{m:012}"));
        let mut r = record.clone();
        r["messageId"] = json!(format!("m{m}"));
        r["body"] = json!(env.to_string());
        records.push(r);
    }
    (json!({ "Records": records }).to_string(), all_keys)
}

async fn invalidator() -> Result<()> {
    use tidemark::lambda::BatchHandler;
    let (url, cache) = local_cache()?;
    let handler = tidemark::app::invalidator::Invalidator {
        namespace: "Tidemark".into(),
        cache,
        dead_letter: Arc::new(NoDeadLetter),
        emf: tidemark::metrics::EmfOut::Captured(Arc::default()),
    };
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let prefix = format!("bench{}:", std::process::id());
    // Lambda's default SQS batch is 10 messages; the packer fills a message to ~248 KiB
    // (about 6,000 keys of this length).
    for (messages, keys_per_message) in [(10usize, 100usize), (10, 1_000), (10, 5_000)] {
        let (event, keys) = invalidation_event(&prefix, messages, keys_per_message);
        let rounds = (400_000 / keys.len()).clamp(5, 200);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("SET").arg(k).arg("v").ignore();
            }
            pipe.query_async::<()>(&mut con).await?;
            let start = Instant::now();
            let failed = handler.handle(&event).await.map_err(anyhow::Error::msg)?;
            times.push(start.elapsed().as_secs_f64());
            if !failed.is_empty() {
                bail!("{} messages failed", failed.len());
            }
            // What the bench claims: every key is gone from the cache.
            let mut pipe = redis::pipe();
            for k in keys.iter().step_by(97) {
                pipe.cmd("EXISTS").arg(k);
            }
            let left: Vec<u64> = pipe.query_async(&mut con).await?;
            if left.iter().any(|n| *n != 0) {
                bail!("keys left in the cache after the batch");
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let best = times[0];
        println!(
            "invalidator, SQS batch of {messages} SNS-wrapped messages × {keys_per_message} keys ({:.2} MB): median {:.2} ms → {:.0} messages/s, {:.0} keys/s (best {:.0} keys/s) over {rounds} batches",
            event.len() as f64 / 1e6,
            median * 1e3,
            messages as f64 / median,
            keys.len() as f64 / median,
            keys.len() as f64 / best,
        );
    }
    Ok(())
}
