//! Recovery against the emulators: dead-letter stores that keep what they are given,
//! replay of what they kept, and flushing a cache by template prefix.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use tidemark::adapters::dead_letter::{
    QueuedDeadLetter, S3DeadLetter, SQS_MESSAGE_LIMIT, SqsDeadLetter,
};
use tidemark::ports::{DeadLetter, DeadLetterEntry};
use tidemark_tests::aws::RegionClients;
use tidemark_tests::world::Emulators;

const REGION: &str = "us-east-1";

/// Names unique to one test run (tests share one moto).
fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or_default()
    )
}

async fn clients() -> Result<RegionClients> {
    let e = Emulators::from_env()?;
    Ok(RegionClients::new(&e.moto, REGION).await)
}

fn entry(id: Option<&str>, index: usize, record: String) -> DeadLetterEntry {
    DeadLetterEntry {
        function: "cache-invalidator".into(),
        source: "invalidations".into(),
        id: id.map(str::to_owned),
        index,
        reason: "not an invalidation message".into(),
        record,
    }
}

/// Every object of a bucket: (key, body).
async fn objects(c: &RegionClients, bucket: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page =
            c.s3.list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token)
                .send()
                .await?;
        for o in page.contents() {
            let key = o.key().unwrap_or_default().to_owned();
            let body = c.s3.get_object().bucket(bucket).key(&key).send().await?;
            let body = body.body.collect().await?.into_bytes();
            out.push((key, String::from_utf8(body.to_vec())?));
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn colliding_s3_dead_letters_are_all_kept_and_never_overwritten() -> Result<()> {
    let c = clients().await?;
    let bucket = unique("dl-collide");
    c.create_bucket(&bucket, false).await?;
    let store = S3DeadLetter::new(c.s3.clone(), bucket.clone());

    // Two records without a sequence number and with the same eventID, in two batches at
    // the same position; and two ids that sanitise alike.
    let first = vec![
        entry(Some("ev-1"), 0, r#"{"eventID":"ev-1","a":1}"#.into()),
        entry(Some("x:1"), 1, r#"{"eventID":"x:1"}"#.into()),
    ];
    let second = vec![
        entry(Some("ev-1"), 0, r#"{"eventID":"ev-1","a":2}"#.into()),
        entry(Some("x/1"), 1, r#"{"eventID":"x/1"}"#.into()),
    ];
    store.put(first.clone()).await.map_err(anyhow::Error::msg)?;
    store
        .put(second.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    // The same batch again (a retried invocation) writes nothing new and succeeds.
    store.put(first.clone()).await.map_err(anyhow::Error::msg)?;
    // A record with a sequence number rejected again for another reason: the first copy stays.
    let mut seq = entry(Some("4200000000000000000001"), 2, r#"{"seq":1}"#.into());
    store
        .put(vec![seq.clone()])
        .await
        .map_err(anyhow::Error::msg)?;
    let original = seq.clone();
    seq.reason = "another reason".into();
    store.put(vec![seq]).await.map_err(anyhow::Error::msg)?;

    let kept = objects(&c, &bucket).await?;
    let mut got: Vec<DeadLetterEntry> = kept
        .iter()
        .map(|(_, b)| serde_json::from_str(b))
        .collect::<Result<_, _>>()?;
    let mut want: Vec<DeadLetterEntry> = first.into_iter().chain(second).collect();
    want.push(original);
    let order = |e: &DeadLetterEntry| (e.record.clone(), e.index);
    got.sort_by_key(order);
    want.sort_by_key(order);
    assert_eq!(got, want, "every record kept whole, none overwritten");
    assert!(
        kept.iter()
            .any(|(k, _)| k.ends_with("/seq-4200000000000000000001.json")),
        "a record with a sequence number is named by it: {:?}",
        kept.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn a_thousand_rejects_are_all_kept() -> Result<()> {
    let c = clients().await?;
    let bucket = unique("dl-many");
    c.create_bucket(&bucket, false).await?;
    let store = S3DeadLetter::new(c.s3.clone(), bucket.clone());
    let entries: Vec<DeadLetterEntry> = (0..1000)
        .map(|i| entry(None, i, format!(r#"{{"n":{i}}}"#)))
        .collect();
    let started = Instant::now();
    store.put(entries).await.map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    eprintln!("1000 dead letters written in {took:?}");
    let mut n = 0;
    let mut token = None;
    loop {
        let page =
            c.s3.list_objects_v2()
                .bucket(&bucket)
                .set_continuation_token(token)
                .send()
                .await?;
        n += page.contents().len();
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(n, 1000);
    Ok(())
}

async fn queue_bodies(c: &RegionClients, url: &str) -> Result<Vec<String>> {
    c.drain(url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn oversized_sqs_dead_letters_are_kept_whole() -> Result<()> {
    let c = clients().await?;
    let (url, _) = c.create_queue(&unique("dl-big"), None, 5).await?;
    let bucket = unique("dl-overflow");
    c.create_bucket(&bucket, false).await?;
    let overflow = S3DeadLetter::new(c.s3.clone(), bucket.clone());
    let store = SqsDeadLetter::new(c.sqs.clone(), url.clone(), Some(overflow));

    // Ten 150 KB garbage bodies: more than one request's worth together.
    let garbage: Vec<DeadLetterEntry> = (0..10)
        .map(|i| {
            entry(
                Some(&format!("m{i}")),
                i,
                format!("{i}{}", "g".repeat(150_000)),
            )
        })
        .collect();
    // 300 KB of quote characters: over 1 MiB once escaped twice (record, then entry).
    let quotes = entry(
        Some("q"),
        10,
        serde_json::to_string(&json!({"body": "\"".repeat(300_000)}))?,
    );
    assert!(serde_json::to_string(&quotes)?.len() > SQS_MESSAGE_LIMIT);
    let mut all = garbage.clone();
    all.push(quotes.clone());
    store.put(all).await.map_err(anyhow::Error::msg)?;

    let mut kept = Vec::new();
    for body in queue_bodies(&c, &url).await? {
        match QueuedDeadLetter::parse(&body) {
            QueuedDeadLetter::Entry(e) => kept.push(e),
            QueuedDeadLetter::Pointer(p) => {
                assert_eq!(p.stored_in_s3.bucket, bucket);
                assert_eq!(p.id.as_deref(), Some("q"));
                let o =
                    c.s3.get_object()
                        .bucket(&p.stored_in_s3.bucket)
                        .key(&p.stored_in_s3.key)
                        .send()
                        .await?;
                let bytes = o.body.collect().await?.into_bytes();
                kept.push(serde_json::from_slice(&bytes)?);
            }
            QueuedDeadLetter::Redriven(b) => anyhow::bail!("unexpected message: {}", b.len()),
        }
    }
    kept.sort_by_key(|e| e.index);
    let mut want = garbage;
    want.push(quotes.clone());
    assert_eq!(kept, want, "all eleven kept whole");

    // Without an overflow bucket the oversized entry is refused with its size named, and
    // nothing is half-written.
    let (url2, _) = c.create_queue(&unique("dl-nooverflow"), None, 5).await?;
    let bare = SqsDeadLetter::new(c.sqs.clone(), url2.clone(), None);
    let err = bare.put(vec![quotes]).await.err().context("must fail")?;
    assert!(
        matches!(&err, tidemark::error::PortError::Permanent(t) if t.contains("over the SQS message limit of 1048576 bytes")),
        "{err:?}"
    );
    assert!(queue_bodies(&c, &url2).await?.is_empty());
    Ok(())
}

/// The stream-processor with a dead-letter bucket that does not exist.
async fn stream_processor_without_store(
    c: &RegionClients,
) -> Result<(tidemark::app::stream::StreamProcessor, String)> {
    let id = unique("seq");
    let table = format!("{id}-users");
    let config = tidemark::config::Config::parse(
        "test.toml",
        &tidemark_tests::world::world_config(&id, &table, false),
    )?;
    let topic = c.create_topic(&unique("t")).await?;
    let ports = tidemark::app::Ports {
        publisher: std::sync::Arc::new(tidemark::adapters::sns::SnsPublisher::new(
            c.sns.clone(),
            topic.clone(),
        )),
        dead_letter: std::sync::Arc::new(S3DeadLetter::new(c.s3.clone(), unique("missing"))),
        labels: std::sync::Arc::new(tidemark::keyhash::KeyLabels::plain()),
        // No residency rule in this configuration: nothing is sent.
        alerts: std::sync::Arc::new(tidemark::adapters::alerts::SnsAlerts::new(
            c.sns.clone(),
            topic,
        )),
    };
    Ok((
        tidemark::app::stream::StreamProcessor {
            config,
            region: REGION.into(),
            ports,
            emf: tidemark::metrics::EmfOut::Stdout,
        },
        table,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn stream_failures_are_reported_by_sequence_number_only() -> Result<()> {
    use tidemark::lambda::BatchHandler;
    let c = clients().await?;
    let (sp, table) = stream_processor_without_store(&c).await?;
    let arn = format!(
        "arn:aws:dynamodb:{REGION}:123456789012:table/{table}/stream/2026-01-01T00:00:00.000"
    );
    let poison = |seq: Option<&str>| {
        let mut body = json!({"Keys": {"pk": {"Q": "x"}}, "SizeBytes": 1});
        if let Some(s) = seq {
            body["SequenceNumber"] = json!(s);
        }
        json!({"eventID": "ev-poison", "eventName": "MODIFY", "eventSource": "aws:dynamodb",
               "awsRegion": REGION, "eventSourceARN": arn, "dynamodb": body})
    };
    // With a sequence number: the record is retried under it, never under its eventID.
    let event = json!({"Records": [poison(Some("111"))]}).to_string();
    let failed = sp.handle(&event).await.map_err(anyhow::Error::msg)?;
    assert_eq!(failed, ["111"]);
    // Without one: the whole invocation fails (Lambda retries the batch).
    let event = json!({"Records": [poison(None)]}).to_string();
    let err = sp
        .handle(&event)
        .await
        .err()
        .context("must fail the invocation")?;
    assert!(err.contains("without an identifier"), "{err}");
    Ok(())
}

/// Fills a cache with keys of `id`: stale ones under the source's prefixes, and others.
fn flush_fixture(id: &str) -> (Vec<String>, Vec<String>) {
    let mut stale: Vec<String> = (0..1200).map(|i| format!("{id}:user:{i}")).collect();
    stale.push(format!("{id}:user-email:old@example.com"));
    stale.push(format!("{id}:user:{{tagged}}:x"));
    let kept = vec![
        format!("{id}:asset:logo.png"),
        format!("{id}:session:9"),
        format!("{id}:usr:1"),
    ];
    (stale, kept)
}

fn flush_command(id: &str, table: &str) -> Result<tidemark::flush::FlushCommand> {
    let config = tidemark::config::Config::parse(
        "test.toml",
        &tidemark_tests::world::world_config(id, table, false),
    )?;
    let prefixes = tidemark::flush::prefixes(&config, table)?;
    assert_eq!(
        prefixes,
        [format!("{id}:user:"), format!("{id}:user-email:")]
    );
    Ok(tidemark::flush::FlushCommand::new(
        table, REGION, prefixes, false,
    ))
}

async fn flush_locally(url: &str, cluster: bool) -> Result<()> {
    use redis::AsyncCommands;
    use tidemark::adapters::cache::{CacheAuth, CacheSettings, RedisCache};
    let id = unique("flush");
    let table = format!("{id}-users");
    let (stale, kept) = flush_fixture(&id);
    let everything: Vec<&String> = stale.iter().chain(&kept).collect();
    let present = |found: Vec<String>| -> Vec<String> {
        let mut f: Vec<String> = found
            .into_iter()
            .filter(|k| k.starts_with(&format!("{id}:")))
            .collect();
        f.sort();
        f
    };
    let remaining = if cluster {
        let client = redis::cluster::ClusterClient::new(vec![url])?;
        let mut c = client.get_async_connection().await?;
        for k in &everything {
            c.set::<_, _, ()>(k.as_str(), "v").await?;
        }
        let cache = RedisCache::new(CacheSettings {
            url: url.to_owned(),
            cluster: true,
            ca_pem: None,
            username: None,
            auth: CacheAuth::None,
        });
        let cmd = flush_command(&id, &table)?;
        let plan = tidemark::ports::FlushPlan {
            batch: 100,
            pause: std::time::Duration::ZERO,
        };
        let report = tidemark::flush::run(&cache, &cmd, plan, &|_, _| {}).await?;
        assert_eq!(report.total(), stale.len() as u64);
        let mut left = Vec::new();
        for k in &everything {
            if c.exists::<_, bool>(k.as_str()).await? {
                left.push((*k).clone());
            }
        }
        left
    } else {
        let client = redis::Client::open(url)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        for k in &everything {
            c.set::<_, _, ()>(k.as_str(), "v").await?;
        }
        let cache = RedisCache::new(CacheSettings {
            url: url.to_owned(),
            cluster: false,
            ca_pem: None,
            username: None,
            auth: CacheAuth::None,
        });
        let cmd = flush_command(&id, &table)?;
        let plan = tidemark::ports::FlushPlan {
            batch: 100,
            pause: std::time::Duration::ZERO,
        };
        let report = tidemark::flush::run(&cache, &cmd, plan, &|_, _| {}).await?;
        assert_eq!(report.total(), stale.len() as u64);
        redis::cmd("KEYS")
            .arg(format!("{id}:*"))
            .query_async::<Vec<String>>(&mut c)
            .await?
    };
    let mut want = kept.clone();
    want.sort();
    assert_eq!(
        present(remaining),
        want,
        "only keys outside the prefixes remain"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn flush_removes_keys_under_each_prefix_and_leaves_others() -> Result<()> {
    let e = Emulators::from_env()?;
    flush_locally(e.redis_url(REGION), false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn flush_scans_every_cluster_node() -> Result<()> {
    let url = std::env::var("TIDEMARK_REDIS_CLUSTER_URL")
        .context("TIDEMARK_REDIS_CLUSTER_URL is not set: run scripts/test.sh")?;
    flush_locally(&url, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn flush_command_travels_through_the_invalidation_queue() -> Result<()> {
    use tidemark_tests::world::{Options, World};
    let mut w = World::start(Options::default()).await?;
    for k in [
        "user:1",
        "user:2",
        "user-email:old@example.com",
        "asset:logo.png",
        "session:9",
    ] {
        w.set_cached(REGION, k, "stale").await?;
    }
    let mut other = w.cached_keys("eu-west-1").await?;
    w.set_cached("eu-west-1", "user:1", "v").await?;
    other.push(format!("{}user:1", w.key_prefix));
    let config = tidemark::config::Config::load(&w.config_path)?;
    let cmd = tidemark::flush::FlushCommand::new(
        &w.table,
        REGION,
        tidemark::flush::prefixes(&config, &w.table)?,
        false,
    );
    let r = w.region(REGION);
    tidemark::flush::send(&r.clients.sqs, &r.queue_url, &cmd)
        .await
        .map_err(anyhow::Error::msg)?;
    w.settle().await?;
    assert_eq!(
        w.cached(REGION).await?,
        ["asset:logo.png", "session:9"],
        "the invalidator flushed the source's prefixes in its region"
    );
    assert_eq!(
        w.cached_keys("eu-west-1").await?,
        other,
        "another region's cache is untouched"
    );
    Ok(())
}
