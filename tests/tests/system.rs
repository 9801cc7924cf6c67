//! System tests: real function binaries (built by cargo-lambda) under the Runtime API,
//! moto behind the fault proxy, one redis-server per region. Assertions read state back
//! from moto and redis, never the functions' own counters.
//!
//! Run with `scripts/test.sh` (it starts the emulators); `TIDEMARK_IN_PROCESS=1` runs the
//! same handlers in-process.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tidemark::message::Invalidation;
use tidemark_tests::world::{Options, Stages, World};

const NO_INVALIDATOR: Stages = Stages {
    replication: true,
    streams: true,
    invalidator: false,
};

/// Keys announced in a region's invalidation queue (drained), minus the world prefix.
async fn announced(w: &World, region: &str) -> Result<Vec<Invalidation>> {
    let r = w.region(region);
    let bodies = r.clients.drain(&r.queue_url).await?;
    Ok(bodies
        .iter()
        .map(|b| Invalidation::decode(b).unwrap())
        .collect())
}

fn keys(msgs: &[Invalidation], prefix: &str) -> BTreeSet<String> {
    msgs.iter()
        .flat_map(|m| m.keys.iter())
        .map(|k| k.trim_start_matches(prefix).to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ------------------------------------------------------------------ harness smoke tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn write_replicates_and_reaches_both_stream_processors() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    w.put_user("us-east-1", "u1", "a@example.com").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;

    assert_eq!(
        w.get_user("eu-west-1", "u1").await?.as_deref(),
        Some("a@example.com"),
        "replicated to eu-west-1"
    );
    // Each region's stream-processor saw the change in its own replica's stream and
    // published it to its own topic.
    for region in ["us-east-1", "eu-west-1"] {
        let msgs = announced(&w, region).await?;
        assert_eq!(
            keys(&msgs, &w.key_prefix),
            set(&["user:u1", "user-email:a@example.com"]),
            "{region}"
        );
        assert!(
            msgs.iter()
                .all(|m| m.origin_region == "us-east-1" && m.replicated)
        );
    }
    if w.options.mode == tidemark_tests::world::Mode::Binary {
        // The binaries print EMF documents of the catalog on stdout.
        for region in ["us-east-1", "eu-west-1"] {
            let docs = w.emf(region, "stream-processor");
            let processed: f64 = docs
                .iter()
                .filter_map(|d| d.get("RecordsProcessed")?.as_f64())
                .sum();
            assert!(processed >= 1.0, "{region}: {docs:?}");
            for d in &docs {
                let directive = &d["_aws"]["CloudWatchMetrics"][0];
                assert_eq!(directive["Namespace"], "Tidemark");
                for m in directive["Metrics"].as_array().unwrap() {
                    let name = m["Name"].as_str().unwrap();
                    let spec = tidemark::metrics::CATALOG
                        .iter()
                        .find(|s| s.name == name)
                        .unwrap();
                    let dims: Vec<&str> = spec.dimensions.iter().map(|d| d.name()).collect();
                    assert_eq!(directive["Dimensions"][0], json!(dims), "{name}");
                    assert!(d.get(name).is_some() && dims.iter().all(|dim| d.get(*dim).is_some()));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn pausing_replication_stops_one_direction_only() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    w.pause("us-east-1", "eu-west-1", true);
    w.put_user("us-east-1", "from-us", "us@example.com").await?;
    w.put_user("eu-west-1", "from-eu", "eu@example.com").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;

    assert_eq!(
        w.get_user("eu-west-1", "from-us").await?,
        None,
        "paused direction carries nothing"
    );
    assert_eq!(
        w.get_user("us-east-1", "from-eu").await?.as_deref(),
        Some("eu@example.com"),
        "other direction flows"
    );
    let eu = keys(&announced(&w, "eu-west-1").await?, &w.key_prefix);
    assert!(
        !eu.contains("user:from-us"),
        "eu-west-1 must not announce data it does not hold: {eu:?}"
    );

    w.pause("us-east-1", "eu-west-1", false);
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;
    assert_eq!(
        w.get_user("eu-west-1", "from-us").await?.as_deref(),
        Some("us@example.com")
    );
    assert!(keys(&announced(&w, "eu-west-1").await?, &w.key_prefix).contains("user:from-us"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn poison_record_is_dead_lettered_and_neighbours_are_processed() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    w.pause("us-east-1", "eu-west-1", true);
    w.put_user("us-east-1", "before", "b@example.com").await?;
    // A record the stream could carry but no decoder can read: unknown type tag.
    let arn = w.region("us-east-1").stream_arn.clone();
    w.region_mut("us-east-1").stream_mapping.inject(json!({
        "eventID": "poison", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "eventSourceARN": arn,
        "dynamodb": {"Keys": {"pk": {"Q": "x"}}, "SequenceNumber": "999999999999999999999", "SizeBytes": 1}
    }));
    w.put_user("us-east-1", "after", "c@example.com").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;

    let dead = w.dead_letters("us-east-1").await?;
    assert_eq!(
        dead.len(),
        1,
        "exactly the poison record is dead-lettered: {dead:?}"
    );
    let entry: Value = serde_json::from_str(&dead[0])?;
    assert_eq!(entry["id"], "999999999999999999999");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("unknown attribute type tag `Q`")
    );
    assert!(
        entry["record"].as_str().unwrap().contains("\"poison\""),
        "the whole record is kept for replay"
    );
    let got = keys(&announced(&w, "us-east-1").await?, &w.key_prefix);
    assert!(
        got.contains("user:before") && got.contains("user:after"),
        "{got:?}"
    );
    // Logs name records by id and reason, never by content.
    for b in &w.region("us-east-1").binaries {
        for line in b.logs() {
            assert!(
                !line.contains("@example.com") && !line.contains("NewImage"),
                "content in a log line: {line}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn sqs_mapping_redelivers_only_failed_messages() -> Result<()> {
    let mut w = World::start(Options {
        cross_region: false,
        ..Options::default()
    })
    .await?;
    let r = w.region("us-east-1");
    let good = |k: &str| {
        json!({"v":1,"source":"users","origin_region":"us-east-1","replicated":true,"changed_at_ms":1,"keys":[format!("{}{k}", w.key_prefix)]}).to_string()
    };
    for k in ["a", "b"] {
        w.set_cached("us-east-1", k, "v").await?;
        r.clients
            .sqs
            .send_message()
            .queue_url(&r.queue_url)
            .message_body(good(k))
            .send()
            .await?;
    }
    let bad = r
        .clients
        .sqs
        .send_message()
        .queue_url(&r.queue_url)
        .message_body("{not an invalidation")
        .send()
        .await?;
    let bad_id = bad.message_id().unwrap().to_owned();
    // The rejected message's dead-letter write fails once: only it must come back.
    w.proxy.fail("SendMessageBatch", 500, Some(4));
    w.region("us-east-1").invalidation_mapping.step().await?;
    {
        let log = w
            .region("us-east-1")
            .invalidation_mapping
            .log
            .lock()
            .unwrap()
            .clone();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0.len(), 3);
        assert_eq!(log[0].1.as_ref().unwrap(), &vec![bad_id.clone()]);
    }
    assert!(
        w.cached_keys("us-east-1").await?.is_empty(),
        "good messages were applied"
    );
    w.proxy.clear_faults();
    w.settle_with(Stages::ALL, Duration::from_secs(30)).await?;
    let log = w
        .region("us-east-1")
        .invalidation_mapping
        .log
        .lock()
        .unwrap()
        .clone();
    assert_eq!(
        log[1].0,
        vec![bad_id],
        "only the failed message is delivered again"
    );
    let r = w.region_mut("us-east-1");
    let dlq = r.clients.drain(&r.queue_dlq_url.clone()).await?;
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0].contains("malformed invalidation message"),
        "{}",
        dlq[0]
    );
    Ok(())
}

// ------------------------------------------------------------------ invalidation publishing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn insert_update_delete_and_ttl_publish_exactly_the_expected_keys() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    w.pause("us-east-1", "eu-west-1", true);
    w.pause("eu-west-1", "us-east-1", true);
    let calls_before = w.proxy.calls("PublishBatch");

    w.put_user("us-east-1", "u1", "old@example.com").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(30))
        .await?;
    assert_eq!(
        keys(&announced(&w, "us-east-1").await?, &w.key_prefix),
        set(&["user:u1", "user-email:old@example.com"])
    );

    // A changed templated attribute invalidates the old and the new key.
    w.put_user("us-east-1", "u1", "new@example.com").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(30))
        .await?;
    assert_eq!(
        keys(&announced(&w, "us-east-1").await?, &w.key_prefix),
        set(&[
            "user:u1",
            "user-email:old@example.com",
            "user-email:new@example.com"
        ])
    );

    w.delete_user("us-east-1", "u1").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(30))
        .await?;
    assert_eq!(
        keys(&announced(&w, "us-east-1").await?, &w.key_prefix),
        set(&["user:u1", "user-email:new@example.com"])
    );

    w.put_user("us-east-1", "u2", "ttl@example.com").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(30))
        .await?;
    announced(&w, "us-east-1").await?;
    w.ttl_expire("us-east-1", "u2").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(30))
        .await?;
    assert_eq!(
        keys(&announced(&w, "us-east-1").await?, &w.key_prefix),
        set(&["user:u2", "user-email:ttl@example.com"])
    );

    // One PublishBatch per batch of changes (the only other publisher is eu-west-1's
    // processor, which saw nothing: replication was paused).
    assert_eq!(w.proxy.calls("PublishBatch") - calls_before, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn many_changes_pack_into_few_messages_under_the_size_limit() -> Result<()> {
    let mut w = World::start(Options {
        stream: tidemark_tests::streams::MappingSettings {
            batch_size: 1000,
            ..Default::default()
        },
        ..Options::default()
    })
    .await?;
    w.pause("us-east-1", "eu-west-1", true);
    let before = w.proxy.calls("PublishBatch");
    let n = 300;
    for i in 0..n {
        w.put_user(
            "us-east-1",
            &format!("user-{i:04}-{}", "x".repeat(200)),
            &format!("e{i}@example.com"),
        )
        .await?;
    }
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(120))
        .await?;
    let msgs = announced(&w, "us-east-1").await?;
    assert_eq!(keys(&msgs, &w.key_prefix).len(), 2 * n);
    let calls = w.proxy.calls("PublishBatch") - before;
    assert!(
        msgs.len() <= 2,
        "{} messages for ~130 KiB of keys",
        msgs.len()
    );
    assert!(calls <= 2, "{calls} PublishBatch calls");
    for size in w.proxy.body_sizes("PublishBatch") {
        assert!(size < 3 * 262_144, "form-encoded request of {size} bytes");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn sns_outage_loses_nothing() -> Result<()> {
    // The outage is shorter than the mapping's retry budget (template: 10 attempts, 6 h).
    let stream = tidemark_tests::streams::MappingSettings {
        max_retries: 10,
        ..Default::default()
    };
    let mut w = World::start(Options {
        stream,
        ..Options::default()
    })
    .await?;
    w.pause("us-east-1", "eu-west-1", true);
    w.proxy.fail("PublishBatch", 503, None);
    for i in 0..5 {
        w.put_user("us-east-1", &format!("o{i}"), &format!("o{i}@example.com"))
            .await?;
    }
    for _ in 0..4 {
        w.step(NO_INVALIDATOR).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        announced(&w, "us-east-1").await?.is_empty(),
        "nothing published during the outage"
    );
    let log = w
        .region("us-east-1")
        .stream_mapping
        .log
        .lock()
        .unwrap()
        .clone();
    assert!(
        log.iter()
            .any(|(_, r)| r.as_ref().is_ok_and(|f| !f.is_empty())),
        "records reported as failures: {log:?}"
    );
    w.proxy.clear_faults();
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;
    let got = keys(&announced(&w, "us-east-1").await?, &w.key_prefix);
    for i in 0..5 {
        assert!(
            got.contains(&format!("user:o{i}")),
            "o{i} announced after recovery: {got:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn object_events_invalidate_decoded_keys() -> Result<()> {
    use tidemark_tests::s3sim::Shape;
    // EventBridge carries keys as stored; S3 notifications form-encode them.
    for shape in [Shape::EventBridge, Shape::Notification] {
        object_events_in(shape).await?;
    }
    Ok(())
}

async fn object_events_in(shape: tidemark_tests::s3sim::Shape) -> Result<()> {
    let mut w = World::start(Options {
        object_events: shape,
        ..Options::default()
    })
    .await?;
    w.pause("us-east-1", "eu-west-1", true);
    let r = w.region("us-east-1");
    let awkward = ["red flower.jpg", "a+b.txt", "100%/x.png", "dir/é 日本.txt"];
    for k in awkward {
        r.clients
            .s3
            .put_object()
            .bucket(&r.bucket)
            .key(k)
            .body(b"x".to_vec().into())
            .send()
            .await?;
    }
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;
    let got = keys(&announced(&w, "us-east-1").await?, &w.key_prefix);
    let want: BTreeSet<String> = awkward.iter().map(|k| format!("asset:{k}")).collect();
    assert_eq!(got, want, "{shape:?}");
    Ok(())
}

// ------------------------------------------------------------------ invalidator, end to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn changes_in_both_regions_clear_both_caches_and_spare_untouched_keys() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    for region in ["us-east-1", "eu-west-1"] {
        for k in [
            "user:a",
            "user-email:a@x",
            "user:b",
            "user:c",
            "user:untouched",
        ] {
            w.set_cached(region, k, "stale").await?;
        }
    }
    w.put_user("us-east-1", "a", "a@x").await?;
    w.put_user("eu-west-1", "b", "b@x").await?;
    w.put_user("us-east-1", "c", "c@x").await?;
    w.settle().await?;
    w.ttl_expire("eu-west-1", "c").await?;
    w.settle().await?;
    for region in ["us-east-1", "eu-west-1"] {
        let left = w.cached(region).await?;
        assert_eq!(left, ["user:untouched"], "{region}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn replicated_sources_stay_in_region_and_regional_ones_cross() -> Result<()> {
    // A global table: each region announces from its own replica; nothing crosses.
    let mut w = World::start(Options::default()).await?;
    w.put_user("us-east-1", "g", "g@x").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;
    assert_eq!(
        announced(&w, "eu-west-1").await?.len(),
        1,
        "only eu-west-1's own announcement"
    );

    // A regional source (replicated = false): the announcement crosses to the peer.
    let mut w = World::start(Options {
        table_replicated: false,
        ..Options::default()
    })
    .await?;
    w.pause("us-east-1", "eu-west-1", true);
    w.put_user("us-east-1", "r", "r@x").await?;
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;
    let eu = announced(&w, "eu-west-1").await?;
    assert_eq!(eu.len(), 1);
    assert!(!eu[0].replicated && eu[0].origin_region == "us-east-1");
    Ok(())
}

// ------------------------------------------------------------------ cache adapter: TLS, cluster, outage

/// A single-node cache at `url` with `auth` (no private CA unless given).
fn cache_settings(
    url: &str,
    ca_pem: Option<Vec<u8>>,
    auth: tidemark::adapters::cache::CacheAuth,
) -> tidemark::adapters::cache::CacheSettings {
    tidemark::adapters::cache::CacheSettings {
        url: url.to_owned(),
        cluster: false,
        ca_pem,
        username: None,
        auth,
    }
}

/// The password-protected redis: its URL, its password, and a fresh key stored in it.
async fn auth_server_with_a_key(tag: &str) -> Result<(String, String, Vec<String>)> {
    let url = env("TIDEMARK_REDIS_AUTH_URL");
    let password = std::fs::read_to_string(env("TIDEMARK_REDIS_AUTH_PASSWORD_FILE"))?
        .trim()
        .to_owned();
    let key = vec![format!(
        "{tag}-{}-{}",
        std::process::id(),
        tidemark::now_ms()
    )];
    fill(
        &url.replace("redis://", &format!("redis://:{password}@")),
        None,
        &key,
    )
    .await?;
    Ok((url, password, key))
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run scripts/test.sh"))
}

async fn fill(url: &str, ca: Option<&str>, keys: &[String]) -> Result<()> {
    let client = match ca {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            },
        )?,
        None => redis::Client::open(url)?,
    };
    let mut c = client.get_multiplexed_async_connection().await?;
    for k in keys {
        redis::cmd("SET")
            .arg(k)
            .arg("v")
            .query_async::<()>(&mut c)
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn cache_unlinks_over_tls_with_a_private_ca() -> Result<()> {
    use tidemark::adapters::cache::{CacheAuth, RedisCache};
    use tidemark::ports::Cache;
    let url = env("TIDEMARK_REDIS_TLS_URL");
    let ca = env("TIDEMARK_REDIS_TLS_CA");
    let keys: Vec<String> = (0..50)
        .map(|i| format!("tls-{}:{i}", std::process::id()))
        .collect();
    fill(&url, Some(&ca), &keys).await?;
    let cache = RedisCache::new(cache_settings(
        &url,
        Some(std::fs::read(&ca)?),
        CacheAuth::None,
    ));
    assert_eq!(cache.unlink(&keys).await.map_err(anyhow::Error::msg)?, 50);
    assert_eq!(
        cache.unlink(&keys).await.map_err(anyhow::Error::msg)?,
        0,
        "idempotent"
    );
    // Without the private CA the server is not trusted: the call fails, it does not hang.
    let untrusted = RedisCache::new(cache_settings(&url, None, CacheAuth::None));
    assert!(untrusted.unlink(&keys).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn cache_password_comes_from_secrets_manager() -> Result<()> {
    use tidemark::adapters::cache::{CacheAuth, RedisCache};
    use tidemark::ports::Cache;
    let (url, password, key) = auth_server_with_a_key("secret").await?;
    let sdk = tidemark_tests::aws::sdk_config(&env("TIDEMARK_MOTO_URL"), "us-east-1", 1).await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let id = format!(
        "tidemark-cache-{}-{}",
        std::process::id(),
        tidemark::now_ms()
    );
    let arn = sm
        .create_secret()
        .name(&id)
        .secret_string(json!({"username": "default", "password": password}).to_string())
        .send()
        .await?
        .arn()
        .unwrap()
        .to_owned();
    let settings = |secret_id: &str| {
        let auth = CacheAuth::Secret {
            client: sm.clone(),
            secret_id: secret_id.to_owned(),
        };
        cache_settings(&url, None, auth)
    };
    assert_eq!(
        RedisCache::new(settings(&arn))
            .unlink(&key)
            .await
            .map_err(anyhow::Error::msg)?,
        1
    );
    // A wrong password fails the call (so the messages are retried), and names no secret value.
    let wrong = sm
        .create_secret()
        .name(format!("{id}-wrong"))
        .secret_string("not-the-password")
        .send()
        .await?;
    let err = RedisCache::new(settings(wrong.arn().unwrap()))
        .unlink(&key)
        .await
        .unwrap_err();
    assert_eq!(err.class(), tidemark::error::Class::Transient);
    let err = err.to_string();
    assert!(!err.contains("not-the-password"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn iam_auth_sends_the_user_and_a_fresh_token() -> Result<()> {
    use tidemark::adapters::cache::{CacheAuth, RedisCache};
    use tidemark::adapters::iam_auth::IamTarget;
    use tidemark::ports::Cache;
    let (url, _, key) = auth_server_with_a_key("iam").await?;
    let creds = aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
    let iam = |user: &str| {
        let auth = CacheAuth::Iam {
            target: IamTarget {
                cache_name: "sessions".into(),
                user_id: user.into(),
                region: "us-east-1".into(),
                serverless: false,
            },
            credentials: aws_credential_types::provider::SharedCredentialsProvider::new(
                creds.clone(),
            ),
        };
        cache_settings(&url, None, auth)
    };
    // The server's IAM-style user accepts the AUTH <user> <token> the adapter sends…
    assert_eq!(
        RedisCache::new(iam("tidemark-iam"))
            .unlink(&key)
            .await
            .map_err(anyhow::Error::msg)?,
        1
    );
    // …an unknown user is refused, and so is a connection without AUTH.
    assert!(RedisCache::new(iam("nobody")).unlink(&key).await.is_err());
    let none = cache_settings(&url, None, CacheAuth::None);
    assert!(RedisCache::new(none).unlink(&key).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn cluster_mode_groups_keys_by_slot() -> Result<()> {
    use tidemark::adapters::cache::{CacheSettings, RedisCache, group_by_slot};
    use tidemark::ports::Cache;
    let url = env("TIDEMARK_REDIS_CLUSTER_URL");
    let keys: Vec<String> = (0..200)
        .map(|i| format!("cl-{}:user:{i}", std::process::id()))
        .collect();
    assert!(group_by_slot(&keys).len() > 100, "keys span many slots");
    let client = redis::cluster::ClusterClient::new(vec![url.as_str()])?;
    let mut c = client.get_async_connection().await?;
    for k in &keys {
        redis::cmd("SET")
            .arg(k)
            .arg("v")
            .query_async::<()>(&mut c)
            .await?;
    }
    // A multi-key command spanning slots, sent to a node as a client unaware of slots
    // would, is rejected by the cluster…
    let mut node = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let naive: redis::RedisResult<u64> = redis::cmd("UNLINK")
        .arg(&keys[..10])
        .query_async(&mut node)
        .await;
    let err = naive.expect_err("a multi-slot UNLINK must fail");
    assert!(
        err.to_string().to_uppercase().contains("CROSSSLOT"),
        "{err}"
    );
    // …the adapter groups by slot and deletes everything.
    let cache = RedisCache::new(CacheSettings {
        url,
        cluster: true,
        ca_pem: None,
        username: None,
        auth: tidemark::adapters::cache::CacheAuth::None,
    });
    assert_eq!(cache.unlink(&keys).await.map_err(anyhow::Error::msg)?, 200);
    for k in &keys {
        let exists: u64 = redis::cmd("EXISTS").arg(k).query_async(&mut c).await?;
        assert_eq!(exists, 0, "{k}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn cache_outage_retries_messages_and_leaves_nothing_stale() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    for region in ["us-east-1", "eu-west-1"] {
        w.set_cached(region, "user:down", "stale").await?;
        w.region(region).cache_gate.set_open(false);
    }
    w.put_user("us-east-1", "down", "d@x").await?;
    for _ in 0..2 {
        w.step(Stages::ALL).await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let log = w
        .region("us-east-1")
        .invalidation_mapping
        .log
        .lock()
        .unwrap()
        .clone();
    assert!(
        log.iter().any(|(ids, r)| r
            .as_ref()
            .is_ok_and(|f| !f.is_empty() && f.len() == ids.len())),
        "{log:?}"
    );
    for region in ["us-east-1", "eu-west-1"] {
        w.region(region).cache_gate.set_open(true);
    }
    w.settle().await?;
    for region in ["us-east-1", "eu-west-1"] {
        assert!(w.cached_keys(region).await?.is_empty(), "{region}");
        let r = w.region(region);
        assert!(
            r.clients.drain(&r.queue_dlq_url).await?.is_empty(),
            "{region}: nothing given up"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ the stale-refill race

/// Runs a read-through filler in eu-west-1 (miss → read the local replica → set) while
/// us-east-1 updates items and everything settles; returns how many eu-west-1 cache
/// entries differ from eu-west-1's replica afterwards.
async fn stale_after_workload(naive: bool) -> Result<usize> {
    let mut w = World::start(Options {
        naive_wiring: naive,
        cross_region: false,
        replication_delay: Duration::from_millis(700),
        ..Options::default()
    })
    .await?;
    let items: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for pk in &items {
        w.put_user("us-east-1", pk, &format!("{pk}-v0@x")).await?;
    }
    w.settle().await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let filler = {
        let (stop, items) = (stop.clone(), items.clone());
        let (url, prefix, table) = (
            w.region("eu-west-1").redis_url.clone(),
            w.key_prefix.clone(),
            w.table.clone(),
        );
        let ddb = w.region("eu-west-1").clients.dynamodb.clone();
        tokio::spawn(async move {
            let client = redis::Client::open(url.as_str())?;
            let mut c = client.get_multiplexed_async_connection().await?;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for pk in &items {
                    let key = format!("{prefix}user:{pk}");
                    let cached: Option<String> =
                        redis::cmd("GET").arg(&key).query_async(&mut c).await?;
                    if cached.is_none() {
                        let out = ddb
                            .get_item()
                            .table_name(&table)
                            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.clone()))
                            .consistent_read(true)
                            .send()
                            .await?;
                        if let Some(email) = out
                            .item()
                            .and_then(|i| i.get("email"))
                            .and_then(|v| v.as_s().ok())
                        {
                            redis::cmd("SET")
                                .arg(&key)
                                .arg(email)
                                .query_async::<()>(&mut c)
                                .await?;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // the filler warms the cache
    for pk in &items {
        w.put_user("us-east-1", pk, &format!("{pk}-v1@x")).await?;
    }
    w.settle().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    filler.await??;

    let mut c = w.cache("eu-west-1").await?;
    let mut stale = 0;
    for pk in &items {
        let cached: Option<String> = redis::cmd("GET")
            .arg(format!("{}user:{pk}", w.key_prefix))
            .query_async(&mut c)
            .await?;
        let replica = w.get_user("eu-west-1", pk).await?;
        assert_eq!(
            replica.as_deref(),
            Some(format!("{pk}-v1@x").as_str()),
            "replication converged"
        );
        if cached.is_some() && cached != replica {
            stale += 1;
        }
    }
    Ok(stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn tidemark_wiring_leaves_no_stale_refill() -> Result<()> {
    assert_eq!(stale_after_workload(false).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn naive_cross_region_wiring_leaves_stale_refills() -> Result<()> {
    assert!(
        stale_after_workload(true).await? > 0,
        "invalidating before the replica changes lets readers refill old data"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn delayed_second_delete_removes_a_late_refill() -> Result<()> {
    let mut w = World::start(Options {
        second_delete_delay: Some(4),
        cross_region: false,
        ..Options::default()
    })
    .await?;
    w.pause("us-east-1", "eu-west-1", true);
    w.set_cached("us-east-1", "user:late", "old").await?;
    w.put_user("us-east-1", "late", "new@x").await?;
    w.settle().await?;
    // (The delay leaves the first settle ample time even on a loaded machine.)
    assert!(w.cached_keys("us-east-1").await?.is_empty(), "first delete");
    // A reader that read the old value before the change sets it after the first delete.
    w.set_cached("us-east-1", "user:late", "old").await?;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    w.settle().await?;
    assert!(
        w.cached_keys("us-east-1").await?.is_empty(),
        "the delayed second delete removed the late refill"
    );
    Ok(())
}

// ------------------------------------------------------------------ replication canary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn canary_heartbeats_replicate_and_report_their_age() -> Result<()> {
    use tidemark_tests::runtime::{BinaryFunction, Invoke, InvokeResult};
    let mut w = World::start(Options::default()).await?;
    let mut canaries = Vec::new();
    for region in ["us-east-1", "eu-west-1"] {
        let env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", w.proxy.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("TIDEMARK_S3_FORCE_PATH_STYLE", "true"),
            ("TIDEMARK_CONFIG_PATH", &w.config_path.display().to_string()),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        canaries.push(
            BinaryFunction::start(
                "replication-canary",
                &format!("canary-{region}"),
                region,
                &env,
            )
            .await?,
        );
    }
    for c in &canaries {
        assert_eq!(
            c.invoke("{}".into()).await?,
            InvokeResult::Ok(json!({"ok": true}))
        );
    }
    w.settle_with(NO_INVALIDATOR, Duration::from_secs(60))
        .await?;
    for c in &canaries {
        assert_eq!(
            c.invoke("{}".into()).await?,
            InvokeResult::Ok(json!({"ok": true}))
        );
    }
    // Each region now reads the peer's table and bucket heartbeats from its own replicas.
    for (c, (dest, src)) in canaries
        .iter()
        .zip([("us-east-1", "eu-west-1"), ("eu-west-1", "us-east-1")])
    {
        let docs = c.emf();
        let found: Vec<(String, f64)> = docs
            .iter()
            .filter(|d| {
                d.get("HeartbeatAge").is_some()
                    && d["SourceRegion"] == src
                    && d["DestinationRegion"] == dest
            })
            .map(|d| {
                (
                    d["Source"].as_str().unwrap_or("").to_owned(),
                    d["HeartbeatAge"].as_f64().unwrap_or(-1.0),
                )
            })
            .collect();
        let sources: BTreeSet<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            sources,
            set(&[w.table.as_str(), "assets"])
                .iter()
                .map(String::as_str)
                .collect(),
            "{dest}: {docs:?}"
        );
        assert!(
            found.iter().all(|(_, age)| (0.0..60.0).contains(age)),
            "{found:?}"
        );
    }
    // Heartbeats are measured, never announced as invalidations.
    for region in ["us-east-1", "eu-west-1"] {
        let k = keys(&announced(&w, region).await?, &w.key_prefix);
        assert!(
            k.iter().all(|k| !k.contains("tidemark-heartbeat")),
            "{region}: {k:?}"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ init failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn bad_configuration_fails_init_naming_the_field() -> Result<()> {
    use tidemark_tests::runtime::{BinaryFunction, Invoke};
    let dir = std::env::temp_dir().join(format!("tidemark-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("tidemark.toml");
    let text = tidemark::config::EMBEDDED.replacen(
        "allowed_regions = [\"eu-west-1\"]",
        "allowed_regions = [\"eu-west-9\"]",
        1,
    );
    std::fs::write(&bad, text)?;
    let cases = [
        (
            vec![("TIDEMARK_CONFIG_PATH", bad.display().to_string())],
            "rule \"eu-residents\", field `allowed_regions`: unknown region `eu-west-9`",
        ),
        (
            vec![("TIDEMARK_DEAD_LETTER_BUCKET", "b".to_owned())],
            "environment variable TIDEMARK_INVALIDATION_TOPIC_ARN is required",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let env: Vec<(String, String)> =
            extra.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let f = BinaryFunction::start(
            "stream-processor",
            &format!("bad-init-{i}"),
            "us-east-1",
            &env,
        )
        .await?;
        let err = f
            .invoke(r#"{"Records":[]}"#.into())
            .await
            .expect_err("init must fail");
        let logs = f.logs().join("\n");
        assert!(err.to_string().contains("bootstrap exited"), "{err}");
        // One structured JSON line at ERROR level whose error names the setting or field.
        let named = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v["level"] == "ERROR" && v["error"].as_str().is_some_and(|e| e.contains(want))
            });
        assert!(
            named,
            "want `{want}` in a JSON ERROR line of the init log:\n{logs}"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ replication lag and conflicts

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
/// Injected replication delays: fast one way, slow the other.
const FAST: Duration = Duration::from_millis(200); // us-east-1 → eu-west-1
const SLOW: Duration = Duration::from_secs(1); // eu-west-1 → us-east-1

/// A world whose table replication takes 200 ms from us-east-1 and 1 s from eu-west-1.
async fn asymmetric_world() -> Result<World> {
    let mut w = World::start(Options::default()).await?;
    w.set_replication_delay(US, EU, FAST);
    w.set_replication_delay(EU, US, SLOW);
    Ok(w)
}

/// Every value of `metric` in `docs` whose dimensions include `dims` (EMF value arrays
/// flattened).
fn metric_values(docs: &[Value], metric: &str, dims: &[(&str, &str)]) -> Vec<f64> {
    docs.iter()
        .filter(|d| dims.iter().all(|(k, v)| d[*k] == *v))
        .filter_map(|d| d.get(metric))
        .flat_map(|v| match v {
            Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        })
        .filter_map(|v| v.as_f64())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Sleeps until `offset_ms` past the next full second of the wall clock.
async fn at_second_offset(offset_ms: u64) {
    let now = tidemark::now_ms();
    let wait = 1000 - now % 1000 + offset_ms;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Writes from both regions, each round just after a full second, so that ACDT (rounded
/// down to the second) tells a 200 ms delay (same second) from a 1 s one (next second).
async fn lag_workload(w: &mut World) -> Result<()> {
    for i in 0..3 {
        at_second_offset(10).await;
        w.put_user(US, &format!("from-us-{i}"), &format!("us{i}@example.com"))
            .await?;
        w.put_user(EU, &format!("from-eu-{i}"), &format!("eu{i}@example.com"))
            .await?;
        w.settle().await?;
    }
    // Replicated and invalidated everywhere (real state, not counters).
    for region in [US, EU] {
        assert_eq!(
            w.get_user(region, "from-eu-2").await?.as_deref(),
            Some("eu2@example.com")
        );
        assert_eq!(
            w.get_user(region, "from-us-2").await?.as_deref(),
            Some("us2@example.com")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn injected_delays_of_200ms_and_1s_are_told_apart_per_region_pair() -> Result<()> {
    let mut w = asymmetric_world().await?;
    lag_workload(&mut w).await?;
    let table = w.table.clone();
    let pair = |from: &'static str, to: &'static str| {
        let docs = w.emf(to, "stream-processor");
        let d = [
            ("Source", table.as_str()),
            ("SourceRegion", from),
            ("DestinationRegion", to),
        ];
        (
            metric_values(&docs, "ReplicationLag", &d),
            metric_values(&docs, "EndToEndLag", &d),
        )
    };
    let (fast_lag, fast_e2e) = pair(US, EU);
    let (slow_lag, slow_e2e) = pair(EU, US);
    assert_eq!(fast_lag.len(), 3, "one sample per write: {fast_lag:?}");
    assert_eq!(slow_lag.len(), 3, "one sample per write: {slow_lag:?}");
    // Written ~10 ms past a second: 200 ms later is the same second (ACDT − written_at
    // reads 0), 1 s later is the next one (≈ 990 ms). ACDT's 1 s resolution bounds each
    // sample to [delay − 1 s, delay]; end-to-end has ms precision and is ≥ the delay.
    assert!(fast_lag.iter().all(|l| *l < 500.0), "{fast_lag:?}");
    assert!(slow_lag.iter().all(|l| *l >= 900.0), "{slow_lag:?}");
    assert!(fast_e2e.iter().all(|l| *l >= 200.0), "{fast_e2e:?}");
    assert!(slow_e2e.iter().all(|l| *l >= 1000.0), "{slow_e2e:?}");
    assert!(median(fast_e2e.clone()) < median(slow_e2e.clone()));
    // Local writes are their own pair (the local write-to-stream delay).
    for region in [US, EU] {
        let docs = w.emf(region, "stream-processor");
        let local = metric_values(
            &docs,
            "ReplicationLag",
            &[("SourceRegion", region), ("DestinationRegion", region)],
        );
        assert_eq!(local.len(), 3, "{region}: {local:?}");
        assert!(local.iter().all(|l| *l < 500.0), "{region}: {local:?}");
        assert!(
            !metric_values(&docs, "DeliveryDelay", &[("DestinationRegion", region)]).is_empty()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn invalidation_age_per_origin_reflects_the_injected_delay() -> Result<()> {
    let mut w = asymmetric_world().await?;
    lag_workload(&mut w).await?;
    let table = w.table.clone();
    let age = |region: &str, origin: &str| {
        metric_values(
            &w.emf(region, "cache-invalidator"),
            "InvalidationAge",
            &[("Source", table.as_str()), ("SourceRegion", origin)],
        )
    };
    let fast = age(EU, US); // us-east-1's writes, invalidated in eu-west-1
    let slow = age(US, EU); // eu-west-1's writes, invalidated in us-east-1
    assert!(!fast.is_empty() && !slow.is_empty(), "{fast:?} {slow:?}");
    assert!(fast.iter().all(|a| *a >= 200.0), "{fast:?}");
    assert!(slow.iter().all(|a| *a >= 1000.0), "{slow:?}");
    assert!(
        median(fast.clone()) < median(slow.clone()),
        "{fast:?} {slow:?}"
    );
    // Each region's own writes are their own origin, and faster than the peer's.
    for (region, peer) in [(US, EU), (EU, US)] {
        let local = age(region, region);
        assert!(!local.is_empty(), "{region}");
        assert!(
            median(local.clone()) < median(age(region, peer)),
            "{region}"
        );
    }
    Ok(())
}

fn conflicts(w: &World, region: &str, winner: &str, loser: &str) -> f64 {
    metric_values(
        &w.emf(region, "stream-processor"),
        "ConcurrentWriteConflict",
        &[
            ("Source", w.table.as_str()),
            ("WinningRegion", winner),
            ("LosingRegion", loser),
        ],
    )
    .iter()
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn concurrent_writes_from_both_regions_conflict_in_the_losing_region_only() -> Result<()> {
    let mut w = asymmetric_world().await?;
    // us-east-1 writes first, eu-west-1 a few ms later, before either has the other's write.
    w.put_user(US, "both", "us@example.com").await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    w.put_user(EU, "both", "eu@example.com").await?;
    w.settle().await?;
    // Last writer wins in both replicas.
    for region in [US, EU] {
        assert_eq!(
            w.get_user(region, "both").await?.as_deref(),
            Some("eu@example.com"),
            "{region}"
        );
    }
    assert_eq!(
        conflicts(&w, US, EU, US),
        1.0,
        "the losing region counts it"
    );
    assert_eq!(conflicts(&w, EU, EU, US) + conflicts(&w, EU, US, EU), 0.0);
    assert_eq!(conflicts(&w, US, US, EU), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn sequential_writes_from_two_regions_are_no_conflict() -> Result<()> {
    let mut w = asymmetric_world().await?;
    w.put_user(US, "seq", "us@example.com").await?;
    let first = tidemark::now_ms();
    w.settle().await?;
    assert_eq!(
        w.get_user(EU, "seq").await?.as_deref(),
        Some("us@example.com"),
        "eu-west-1 has us-east-1's write before writing its own"
    );
    // Further apart than the slowest lag between the two, with ACDT's second on top.
    let wait = (first + 3_000).saturating_sub(tidemark::now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    w.put_user(EU, "seq", "eu@example.com").await?;
    w.settle().await?;
    for region in [US, EU] {
        assert_eq!(
            w.get_user(region, "seq").await?.as_deref(),
            Some("eu@example.com"),
            "{region}"
        );
    }
    for region in [US, EU] {
        for (a, b) in [(US, EU), (EU, US)] {
            assert_eq!(conflicts(&w, region, a, b), 0.0, "{region}");
        }
    }
    // The overwrite did reach us-east-1's stream-processor (so "no conflict" is a finding).
    let seen = metric_values(
        &w.emf(US, "stream-processor"),
        "ReplicationLag",
        &[("SourceRegion", EU), ("DestinationRegion", US)],
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    Ok(())
}
