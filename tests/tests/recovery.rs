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

/// Runs the flush of `table`'s prefixes (as `flush_command` builds it) against the cache at
/// `url`; how many keys it removed.
async fn flush_all(url: &str, cluster: bool, id: &str, table: &str) -> Result<u64> {
    use tidemark::adapters::cache::{CacheAuth, CacheSettings, RedisCache};
    let cache = RedisCache::new(CacheSettings {
        url: url.to_owned(),
        cluster,
        ca_pem: None,
        username: None,
        auth: CacheAuth::None,
    });
    let cmd = flush_command(id, table)?;
    let plan = tidemark::ports::FlushPlan {
        batch: 100,
        pause: std::time::Duration::ZERO,
    };
    Ok(tidemark::flush::run(&cache, &cmd, plan, &|_, _| {})
        .await?
        .total())
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
        assert_eq!(flush_all(url, true, &id, &table).await?, stale.len() as u64);
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
        assert_eq!(
            flush_all(url, false, &id, &table).await?,
            stale.len() as u64
        );
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

// ------------------------------------------------------------------ replay

use tidemark::replay::{Store, Summary, Verdict};
use tidemark_tests::world::{Options, Stages, World};

async fn replay(w: &World, config: tidemark::config::Config, apply: bool) -> Summary {
    let options = tidemark::replay::Options {
        apply,
        from: Store::ALL.to_vec(),
        limit: None,
    };
    w.replay(REGION, config).run(&options, &|_, _, _| {}).await
}

/// Keys of a bucket under `prefix`.
async fn keys_under(c: &RegionClients, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let out =
        c.s3.list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

/// Messages of a queue: visible ones, and all (visible or not).
async fn visible_and_depth(c: &RegionClients, url: &str) -> Result<(usize, usize)> {
    use aws_sdk_sqs::types::QueueAttributeName as N;
    let a = c
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(N::ApproximateNumberOfMessages)
        .attribute_names(N::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?;
    let get = |n: N| {
        a.attributes()
            .and_then(|m| m.get(&n))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let visible = get(N::ApproximateNumberOfMessages);
    Ok((
        visible,
        visible + get(N::ApproximateNumberOfMessagesNotVisible),
    ))
}

async fn depth(c: &RegionClients, url: &str) -> Result<usize> {
    Ok(visible_and_depth(c, url).await?.1)
}

const STREAMS_ONLY: Stages = Stages {
    replication: false,
    streams: true,
    invalidator: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn replay_restores_what_an_outage_lost() -> Result<()> {
    let mut w = World::start(Options {
        cross_region: false,
        ..Options::default()
    })
    .await?;
    w.pause(REGION, "eu-west-1", true);
    let config = tidemark::config::Config::load(&w.config_path)?;
    let stale = [
        "user:g1",
        "user-email:g1@example.com",
        "user:g2",
        "user-email:g2@example.com",
        "user:d1",
        "user-email:d1@example.com",
    ];
    for k in stale {
        w.set_cached(REGION, k, "stale").await?;
    }
    let r = w.region(REGION);
    let (c, bucket, dlq) = (
        r.clients.clone(),
        r.failure_bucket.clone(),
        r.queue_dlq_url.clone(),
    );

    // 1. SNS refuses for longer than the stream mapping retries: it gives the batch up to
    //    its S3 on-failure destination.
    w.proxy.fail("PublishBatch", 503, None);
    w.put_user(REGION, "g1", "g1@example.com").await?;
    w.put_user(REGION, "g2", "g2@example.com").await?;
    let started = Instant::now();
    while keys_under(&c, &bucket, "aws/lambda/").await?.is_empty() {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the mapping never gave the batch up"
        );
        w.step(STREAMS_ONLY).await?;
    }
    w.proxy.clear_faults();

    // 2. The cache is down for longer than the invalidation queue redelivers (5 receives):
    //    the message lands in the dead-letter queue.
    w.region(REGION).cache_gate.set_open(false);
    w.put_user(REGION, "d1", "d1@example.com").await?;
    let started = Instant::now();
    while depth(&c, &dlq).await? == 0 {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the invalidation never reached the dead-letter queue"
        );
        w.step(STREAMS_ONLY).await?;
    }
    w.region(REGION).cache_gate.set_open(true);
    w.settle().await?;
    let cached = w.cached(REGION).await?;
    for k in stale {
        assert!(
            cached.contains(&k.to_owned()),
            "{k} stale after the outages: {cached:?}"
        );
    }
    let given_up = keys_under(&c, &bucket, "aws/lambda/").await?;
    assert_eq!(depth(&c, &dlq).await?, 1);

    // 3. A dry run lists what it would replay and changes nothing.
    let dry = replay(&w, config.clone(), false).await;
    eprintln!("{dry}");
    assert_eq!(
        dry.replayed(),
        3,
        "two given-up records and one message:\n{dry}"
    );
    assert!(dry.is_clean(), "{dry}");
    w.settle().await?;
    assert_eq!(w.cached(REGION).await?, cached, "a dry run deletes no key");
    assert_eq!(keys_under(&c, &bucket, "aws/lambda/").await?, given_up);
    assert_eq!(
        visible_and_depth(&c, &dlq).await?,
        (1, 1),
        "the message is back in the queue, visible"
    );

    // 4. While SNS still refuses, nothing is removed: a thing leaves its store only after
    //    its invalidations were published.
    w.proxy.fail("PublishBatch", 503, None);
    let refused = replay(&w, config.clone(), true).await;
    w.proxy.clear_faults();
    assert_eq!(
        refused.failed(),
        1,
        "the given-up batch failed again:\n{refused}"
    );
    assert_eq!(keys_under(&c, &bucket, "aws/lambda/").await?, given_up);
    // (The message needs no SNS: it went back to the invalidation queue.)
    w.settle().await?;
    let cached_now = w.cached(REGION).await?;
    for k in &stale[..4] {
        assert!(
            cached_now.contains(&(*k).to_owned()),
            "{k} deleted without a publish"
        );
    }

    // 5. Replay: the given-up batch goes through the stream-processor's pipeline and the
    //    message back through the invalidation queue; the stale keys are gone.
    let applied = replay(&w, config.clone(), true).await;
    assert!(applied.is_clean(), "{applied}");
    assert_eq!(applied.replayed(), 2, "{applied}");
    w.settle().await?;
    let cached = w.cached(REGION).await?;
    for k in stale {
        assert!(
            !cached.contains(&k.to_owned()),
            "{k} still cached: {cached:?}"
        );
    }
    assert!(keys_under(&c, &bucket, "aws/lambda/").await?.is_empty());
    assert_eq!(depth(&c, &dlq).await?, 0);

    // 6. A second replay is harmless: nothing is left to replay, fresh values stay.
    w.set_cached(REGION, "user:g1", "fresh").await?;
    let again = replay(&w, config, true).await;
    assert!(again.items.is_empty(), "{again}");
    w.settle().await?;
    assert!(w.cached(REGION).await?.contains(&"user:g1".to_owned()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn replay_keeps_a_still_bad_record_in_its_store_with_its_reason() -> Result<()> {
    let mut w = World::start(Options {
        cross_region: false,
        ..Options::default()
    })
    .await?;
    w.pause(REGION, "eu-west-1", true);
    let orders = format!("orders-{}", w.id);
    let record = |seq: &str, table: &str, pk: serde_json::Value, email: &str| {
        json!({
            "eventID": format!("ev-{seq}"),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": REGION,
            "eventSourceARN": format!("arn:aws:dynamodb:{REGION}:123456789012:table/{table}/stream/2026-01-01T00:00:00.000"),
            "dynamodb": {
                "ApproximateCreationDateTime": 1_700_000_000,
                "Keys": {"pk": pk},
                "NewImage": {"pk": pk, "email": {"S": email}},
                "SequenceNumber": seq,
                "SizeBytes": 10,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
        })
    };
    // A record of a table the configuration lacks (fixed by adding it), and a poison record
    // no configuration can read.
    let fixable = "910000000000000000001";
    let poison = "910000000000000000002";
    w.set_cached(REGION, "order:o1", "stale").await?;
    let m = &mut w.region_mut(REGION).stream_mapping;
    m.inject(record(
        fixable,
        &orders,
        json!({"S": "o1"}),
        "o1@example.com",
    ));
    m.step().await?;
    let table = w.table.clone();
    let m = &mut w.region_mut(REGION).stream_mapping;
    m.inject(record(
        poison,
        &table,
        json!({"Q": "x"}),
        "secret@example.com",
    ));
    m.step().await?;
    w.settle().await?;
    let r = w.region(REGION);
    let (c, bucket) = (r.clients.clone(), r.dead_letter_bucket.clone());
    let kept = keys_under(&c, &bucket, "dead-letter/stream-processor/").await?;
    assert_eq!(kept.len(), 2, "both rejected: {kept:?}");
    // An object that is not text, listed before the kept records: it is skipped (named, with
    // the reason), and the records after it are still replayed.
    let garbage = "dead-letter/stream-processor/0-unreadable.json".to_owned();
    c.s3.put_object()
        .bucket(&bucket)
        .key(&garbage)
        .body(vec![0xff_u8, 0xfe, 0x00, 0x80].into())
        .send()
        .await?;
    // A kept entry whose record is two objects joined: never run (the records are joined
    // into one batch), skipped with the reason.
    let joined = "dead-letter/stream-processor/1-joined.json".to_owned();
    let entry = DeadLetterEntry {
        function: "stream-processor".into(),
        source: table.clone(),
        id: Some("910000000000000000009".into()),
        index: 0,
        reason: "r".into(),
        record: format!(
            "{},{}",
            record(fixable, &table, json!({"S": "j1"}), "j1@example.com"),
            record(poison, &table, json!({"S": "j2"}), "j2@example.com")
        ),
    };
    c.s3.put_object()
        .bucket(&bucket)
        .key(&joined)
        .body(serde_json::to_vec(&entry)?.into())
        .send()
        .await?;
    let kept: Vec<String> = [garbage.clone(), joined.clone()]
        .into_iter()
        .chain(kept)
        .collect();
    // A flush command the invalidator gave up (it may be days old and empty the whole
    // cache): never sent again by replay, named in the summary, left in its queue.
    let dlq = r.queue_dlq_url.clone();
    let flush = tidemark::flush::FlushCommand::new(&table, REGION, Vec::new(), true);
    c.sqs
        .send_message()
        .queue_url(&dlq)
        .message_body(serde_json::to_string(&flush)?)
        .send()
        .await?;
    // Pointer messages naming an object outside the dead-letter bucket's `dead-letter/`
    // (another prefix of it; another bucket): never read (nor deleted after a replay),
    // skipped with the reason.
    let object_dlq = r.object_dlq_url.clone();
    for (bucket, key) in [
        (bucket.clone(), "aws/lambda/someone-elses.json"),
        (r.bucket.clone(), "dead-letter/stream-processor/x.json"),
    ] {
        let foreign = tidemark::adapters::dead_letter::Pointer {
            function: "object-processor".into(),
            source: "assets".into(),
            id: Some("m-foreign".into()),
            index: 0,
            reason: "r".into(),
            stored_in_s3: tidemark::adapters::dead_letter::S3Location {
                bucket,
                key: key.into(),
            },
        };
        c.sqs
            .send_message()
            .queue_url(&object_dlq)
            .message_body(serde_json::to_string(&foreign)?)
            .send()
            .await?;
    }

    // The fix: the configuration names the table (replay reads it from --config).
    let text = std::fs::read_to_string(&w.config_path)?;
    let fixed = format!(
        "{text}\n[[tables]]\nname = \"{orders}\"\npartition_key = {{ name = \"pk\", type = \"S\" }}\ncache_keys = [\"{}order:{{pk}}\"]\n",
        w.key_prefix
    );
    let config = tidemark::config::Config::parse("fixed.toml", &fixed)?;

    let dry = replay(&w, config.clone(), false).await;
    eprintln!("{dry}");
    assert_eq!(
        (dry.replayed(), dry.still_rejected(), dry.skipped()),
        (1, 1, 5),
        "{dry}"
    );
    w.settle().await?;
    assert_eq!(
        keys_under(&c, &bucket, "dead-letter/").await?,
        kept,
        "a dry run removes nothing"
    );
    assert!(w.cached(REGION).await?.contains(&"order:o1".to_owned()));

    let applied = replay(&w, config.clone(), true).await;
    eprintln!("{applied}");
    assert_eq!(
        (applied.replayed(), applied.still_rejected()),
        (1, 1),
        "{applied}"
    );
    let skipped = |what: &str| {
        applied
            .items
            .iter()
            .find(|i| i.location.contains(what))
            .map(|i| i.verdict.clone())
    };
    let Some(Verdict::Skipped { reason }) = skipped(&garbage) else {
        anyhow::bail!("the unreadable object is not skipped:\n{applied}");
    };
    assert!(reason.contains("not UTF-8"), "{reason}");
    let Some(Verdict::Skipped { reason }) = skipped(&joined) else {
        anyhow::bail!("the joined record is not skipped:\n{applied}");
    };
    assert!(reason.contains("not exactly one JSON object"), "{reason}");
    assert_eq!(
        applied.requeued, 0,
        "the flush command was sent again:\n{applied}"
    );
    let flush_item = applied
        .items
        .iter()
        .find(|i| i.store == Store::InvalidationDlq)
        .context("the flush command's item")?;
    let Verdict::Skipped { reason } = &flush_item.verdict else {
        anyhow::bail!("the flush command is not skipped:\n{applied}");
    };
    assert!(
        reason.contains(&format!("a flush command of {table}"))
            && reason.contains("run `tidemark flush` again if still wanted"),
        "{reason}"
    );
    assert_eq!(
        visible_and_depth(&c, &dlq).await?,
        (1, 1),
        "the flush command stays in its queue, visible"
    );
    let pointers: Vec<_> = applied
        .items
        .iter()
        .filter(|i| i.store == Store::ObjectDlq)
        .collect();
    assert_eq!(pointers.len(), 2, "{applied}");
    for p in pointers {
        let Verdict::Skipped { reason } = &p.verdict else {
            anyhow::bail!("a foreign pointer is not skipped:\n{applied}");
        };
        assert!(
            reason.contains("outside the dead-letter bucket"),
            "{reason}"
        );
    }
    assert_eq!(visible_and_depth(&c, &object_dlq).await?, (2, 2));
    let bad = applied
        .items
        .iter()
        .find(|i| matches!(i.verdict, Verdict::StillRejected { .. }))
        .context("a still-rejected item")?;
    assert!(
        bad.location.ends_with(&format!("/seq-{poison}.json")),
        "{}",
        bad.location
    );
    let Verdict::StillRejected { records } = &bad.verdict else {
        anyhow::bail!("not rejected: {bad:?}");
    };
    assert_eq!(records[0].id, poison);
    assert!(
        records[0].reason.contains("unknown attribute type tag `Q`"),
        "{}",
        records[0].reason
    );
    let shown = format!("{applied}{}", serde_json::to_string(&applied)?);
    assert!(
        !shown.contains("secret@example.com"),
        "a value in the summary: {shown}"
    );
    w.settle().await?;
    assert!(
        !w.cached(REGION).await?.contains(&"order:o1".to_owned()),
        "the fixed record's invalidation went out"
    );
    let left = keys_under(&c, &bucket, "dead-letter/").await?;
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(
        left[..2],
        [garbage, joined],
        "the skipped objects stay: {left:?}"
    );
    assert!(
        left[2].ends_with(&format!("/seq-{poison}.json")),
        "the bad record stays: {left:?}"
    );
    // Run again: the bad record is still there, still with its reason; nothing else happens.
    // The first release of a message fails (403, not retried): the other messages are
    // released all the same.
    w.proxy.fail("ChangeMessageVisibility", 403, Some(1));
    let again = replay(&w, config, true).await;
    w.proxy.clear_faults();
    assert_eq!(
        visible_and_depth(&c, &object_dlq).await?,
        (1, 2),
        "one release failed, the other message is visible again:\n{again}"
    );
    assert_eq!(
        (again.replayed(), again.still_rejected()),
        (0, 1),
        "{again}"
    );
    assert_eq!(keys_under(&c, &bucket, "dead-letter/").await?, left);
    Ok(())
}

/// Runs the `tidemark` binary (built with the workspace: `target/debug/tidemark`) against a
/// world, as an operator would: default credentials chain and endpoint from the
/// environment, names resolved by the command. Returns (exit code, stdout, stderr).
async fn tidemark_cli(w: &World, args: &[&str]) -> Result<(i32, String, String)> {
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let bin = target.join("debug/tidemark");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build -p tidemark --bin tidemark`",
        bin.display()
    );
    let out = tokio::process::Command::new(&bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_ENDPOINT_URL", &w.proxy.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_MAX_ATTEMPTS", "2")
        .env("TIDEMARK_S3_FORCE_PATH_STYLE", "true")
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn the_replay_command_runs_object_events_again_through_the_object_processor() -> Result<()> {
    let mut w = World::start(Options {
        cross_region: false,
        batching_windows: false,
        ..Options::default()
    })
    .await?;
    w.pause(REGION, "eu-west-1", true);
    let r = w.region(REGION);
    let c = r.clients.clone();
    let (queue, dlq, assets) = (
        r.object_queue_url.clone(),
        r.object_dlq_url.clone(),
        r.bucket.clone(),
    );
    w.set_cached(REGION, "doc:a.txt", "stale").await?;
    w.set_cached(REGION, "asset:b.txt", "stale").await?;

    // 1. An event of a bucket the configuration lacks: rejected into the object-processor's
    //    dead-letter queue (a dead-letter entry).
    let docs = format!("docs-{}-{REGION}", w.id);
    c.create_bucket(&docs, true).await?;
    let put =
        c.s3.put_object()
            .bucket(&docs)
            .key("a.txt")
            .body(b"x".to_vec().into())
            .send()
            .await?;
    let event = json!({
        "version": "0", "id": format!("ev-{}", w.id), "detail-type": "Object Created",
        "source": "aws.s3", "account": w.account, "time": "2026-01-01T00:00:00Z",
        "region": REGION, "resources": [format!("arn:aws:s3:::{docs}")],
        "detail": {"version": "0", "bucket": {"name": docs},
            "object": {"key": "a.txt", "size": 1, "version-id": put.version_id().unwrap_or_default(),
                "sequencer": "0055AED6DCD90281E5"},
            "reason": "PutObject"},
    });
    c.sqs
        .send_message()
        .queue_url(&queue)
        .message_body(event.to_string())
        .send()
        .await?;
    w.settle().await?;
    anyhow::ensure!(
        depth(&c, &dlq).await? == 1,
        "the docs event was not dead-lettered"
    );

    // 2. SNS refuses for longer than the object queue redelivers (5 receives): the event of
    //    a watched bucket is moved to the dead-letter queue whole by the redrive policy.
    w.proxy.fail("PublishBatch", 503, None);
    c.s3.put_object()
        .bucket(&assets)
        .key("b.txt")
        .body(b"y".to_vec().into())
        .send()
        .await?;
    let started = Instant::now();
    while depth(&c, &dlq).await? < 2 {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the assets event never reached the dead-letter queue"
        );
        w.step(STREAMS_ONLY).await?;
    }
    w.proxy.clear_faults();
    w.settle().await?;
    let cached = w.cached(REGION).await?;
    for k in ["doc:a.txt", "asset:b.txt"] {
        assert!(cached.contains(&k.to_owned()), "{k}: {cached:?}");
    }

    // The fix: the configuration names the docs bucket.
    let text = std::fs::read_to_string(&w.config_path)?;
    let fixed = w.config_path.with_file_name("fixed.toml");
    std::fs::write(
        &fixed,
        format!(
            "{text}\n[[buckets]]\nname = \"docs\"\nbucket = \"docs-{}-{{region}}\"\ncache_keys = [\"{}doc:{{key}}\"]\n",
            w.id, w.key_prefix
        ),
    )?;
    let fixed = fixed.display().to_string();
    // A message no configuration can read (as a redrive policy would have moved it): it is
    // rejected again at every replay and must stay in the queue.
    c.sqs
        .send_message()
        .queue_url(&dlq)
        .message_body("not an event")
        .send()
        .await?;
    let args = [
        "replay",
        "--region",
        REGION,
        "--config",
        &fixed,
        "--from",
        "object-dlq",
        "--json",
    ];

    // 3. The command's dry run: two would be replayed, one is rejected again, nothing
    //    changes.
    let (code, out, err) = tidemark_cli(&w, &args).await?;
    assert_eq!(code, 1, "not clean: one is rejected\n{out}\n{err}");
    let dry: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (
            dry["applied"].as_bool(),
            dry["replayed"].as_u64(),
            dry["still_rejected"].as_u64()
        ),
        (Some(false), Some(2), Some(1)),
        "{dry}"
    );
    w.settle().await?;
    assert_eq!(w.cached(REGION).await?, cached, "a dry run deletes no key");
    assert_eq!(visible_and_depth(&c, &dlq).await?, (3, 3));

    // 4. --apply while SNS refuses: the two fail for a transient reason, the third is
    //    rejected again; all three stay in the queue, visible (released, not deleted).
    let mut apply = args.to_vec();
    apply.push("--apply");
    w.proxy.fail("PublishBatch", 503, None);
    let (code, out, err) = tidemark_cli(&w, &apply).await?;
    w.proxy.clear_faults();
    assert_eq!(code, 1, "{out}\n{err}");
    let refused: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (
            refused["replayed"].as_u64(),
            refused["failed"].as_u64(),
            refused["still_rejected"].as_u64()
        ),
        (Some(0), Some(2), Some(1)),
        "{refused}"
    );
    assert_eq!(
        visible_and_depth(&c, &dlq).await?,
        (3, 3),
        "a message not replayed stays in its queue, visible"
    );
    w.settle().await?;
    assert_eq!(w.cached(REGION).await?, cached, "nothing was published");

    // 5. --apply: both go through the object-processor, their keys leave the cache; only
    //    the unreadable message is left, visible.
    let (code, out, err) = tidemark_cli(&w, &apply).await?;
    assert_eq!(code, 1, "{out}\n{err}");
    let done: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        (
            done["applied"].as_bool(),
            done["replayed"].as_u64(),
            done["still_rejected"].as_u64()
        ),
        (Some(true), Some(2), Some(1)),
        "{done}"
    );
    w.settle().await?;
    let cached = w.cached(REGION).await?;
    for k in ["doc:a.txt", "asset:b.txt"] {
        assert!(
            !cached.contains(&k.to_owned()),
            "{k} still cached: {cached:?}"
        );
    }
    assert_eq!(
        visible_and_depth(&c, &dlq).await?,
        (1, 1),
        "the rejected message stays, visible"
    );
    Ok(())
}
