//! `tidemark-bench`: measurements that need the emulators (not run in CI).
//!
//!   tidemark-bench runtime   the stream-processor binary (cargo-lambda, local profile) under
//!                            the Runtime API: init time, 4,000-record batch time, peak RSS
//!   tidemark-bench cache     UNLINK throughput into a local redis-server, one round trip per batch
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
        _ => {
            eprintln!("usage: tidemark-bench runtime|cache");
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

async fn cache() -> Result<()> {
    let emu = Emulators::from_env()?;
    let url = emu.redis_url("us-east-1").to_owned();
    let cache = Arc::new(RedisCache::new(CacheSettings {
        url: url.clone(),
        cluster: false,
        ca_pem: None,
        username: None,
        auth: tidemark::adapters::cache::CacheAuth::None,
    }));
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
