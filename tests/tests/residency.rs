//! Residency enforcement: the alert and object-version adapters against moto, and the
//! rules end to end in both regions (objects replicated by the harness, marked REPLICA at
//! its proxy). Assertions read moto back: versions in each region's bucket, the quarantine
//! bucket, the item table, and what a subscriber of the alert topic received.

use std::time::Duration;

use anyhow::Result;
use tidemark::adapters::alerts::SnsAlerts;
use tidemark::adapters::object_store::S3ObjectStore;
use tidemark::enforce::quarantine_key;
use tidemark::ports::{Alert, Alerts, ObjectStore, PortError};
use tidemark_tests::alarms::State;
use tidemark_tests::aws::RegionClients;
use tidemark_tests::s3sim::{Shape, list_versions};
use tidemark_tests::world::{KEY_HASH_SECRET, Options, World};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

fn alert(i: usize) -> Alert {
    Alert {
        kind: "residency-violation".into(),
        event_id: format!("s3:us-east-1:bucket:v{i}"),
        source: "assets".into(),
        key: format!("eu/ä {i}+%.txt"),
        version: Some(format!("v{i}")),
        region: US.into(),
        rule: Some("eu-only".into()),
        action: "delete-replica".into(),
        note: None,
    }
}

async fn moto(region: &str) -> Result<RegionClients> {
    let emu = tidemark_tests::world::Emulators::from_env()?;
    Ok(RegionClients::new(&emu.moto, region).await)
}

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        tidemark::now_ms() % 1_000_000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn alert_adapter_delivers_every_alert_to_a_topic_subscriber() -> Result<()> {
    let c = moto(US).await?;
    let id = unique("alerts");
    let topic = c.create_topic(&id).await?;
    let (url, arn) = c.create_queue(&id, None, 0).await?;
    c.subscribe(&topic, &arn, true, None).await?;
    let sender = SnsAlerts::new(c.sns.clone(), topic.clone());
    // Twelve alerts: two PublishBatch calls (ten entries at most each).
    let sent: Vec<Alert> = (0..12).map(alert).collect();
    let results = sender.send(&sent).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut got: Vec<Alert> = c.drain_json(&url).await?;
    got.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let mut want = sent.clone();
    want.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(got, want);

    // A topic that does not exist can never take the alert: permanent, per alert.
    let missing = SnsAlerts::new(c.sns.clone(), format!("{topic}-missing"));
    let results = missing.send(&sent[..2]).await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(PortError::Permanent(m)) if m.contains("-missing"))),
        "{results:?}"
    );
    Ok(())
}

async fn put(
    c: &RegionClients,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    tag: Option<&str>,
    meta: Option<&str>,
) -> Result<String> {
    let mut req = c.s3.put_object().bucket(bucket).key(key).body(body.into());
    if let Some(t) = tag {
        req = req.tagging(format!("residency={t}"));
    }
    if let Some(m) = meta {
        req = req.metadata("residency", m);
    }
    Ok(req
        .send()
        .await?
        .version_id()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn object_store_adapter_reads_copies_and_deletes_one_exact_version() -> Result<()> {
    let c = moto(EU).await?;
    let bucket = unique("os");
    let quarantine = format!("{bucket}-q");
    c.create_bucket(&bucket, true).await?;
    c.create_bucket(&quarantine, false).await?;
    let key = "eu/red flower+1%é.txt";
    let v1 = put(&c, &bucket, key, b"first".to_vec(), Some("eu"), Some("eu")).await?;
    let v2 = put(&c, &bucket, key, b"second!".to_vec(), None, None).await?;
    let store = S3ObjectStore::new(c.s3.clone());

    // The exact version's metadata and tags, not the latest's.
    let head = store.head_version(&bucket, key, &v1).await?.unwrap();
    assert_eq!(head.size, 5);
    assert_eq!(head.metadata, [("residency".to_owned(), "eu".to_owned())]);
    assert!(!head.replica);
    let tags = store.version_tags(&bucket, key, &v1).await?;
    assert_eq!(tags, [("residency".to_owned(), "eu".to_owned())]);
    assert!(store.version_tags(&bucket, key, &v2).await?.is_empty());

    // Copy of v1 (single CopyObject) keeps body, metadata and tags.
    let to = quarantine_key(&bucket, key, &v1);
    store
        .copy_version(&bucket, key, &v1, head.size, &quarantine, &to)
        .await?;
    let got =
        c.s3.get_object()
            .bucket(&quarantine)
            .key(&to)
            .send()
            .await?;
    assert_eq!(
        got.metadata()
            .and_then(|m| m.get("residency"))
            .map(String::as_str),
        Some("eu")
    );
    assert_eq!(got.body.collect().await?.into_bytes().as_ref(), b"first");

    // Multipart copy (limits lowered so a 11 MiB object takes three parts of 5 MiB).
    let big = vec![7u8; 11 * 1024 * 1024];
    let vb = put(&c, &bucket, "big.bin", big.clone(), Some("eu"), Some("eu")).await?;
    let multipart = S3ObjectStore::new(c.s3.clone()).with_multipart_limits(1024, 5 * 1024 * 1024);
    multipart
        .copy_version(
            &bucket,
            "big.bin",
            &vb,
            big.len() as u64,
            &quarantine,
            "big-copy.bin",
        )
        .await?;
    let got =
        c.s3.get_object()
            .bucket(&quarantine)
            .key("big-copy.bin")
            .send()
            .await?;
    assert_eq!(
        got.metadata()
            .and_then(|m| m.get("residency"))
            .map(String::as_str),
        Some("eu")
    );
    assert_eq!(got.body.collect().await?.into_bytes().len(), big.len());
    let tags = store
        .version_tags(&quarantine, "big-copy.bin", "null")
        .await;
    // moto keeps tags of unversioned objects under the null version.
    if let Ok(tags) = tags {
        assert_eq!(tags, [("residency".to_owned(), "eu".to_owned())]);
    }

    // Deleting v1 removes that version only; deleting it again succeeds.
    store.delete_version(&bucket, key, &v1).await?;
    store.delete_version(&bucket, key, &v1).await?;
    let left: Vec<String> = list_versions(&c, &bucket)
        .await?
        .into_iter()
        .filter(|v| v.key == key)
        .map(|v| v.version_id)
        .collect();
    assert_eq!(left, std::slice::from_ref(&v2));
    assert_eq!(store.head_version(&bucket, key, &v1).await?, None);

    // A quarantine bucket that does not exist: permanent, naming the source version.
    let e = store
        .copy_version(&bucket, key, &v2, 7, &format!("{bucket}-nope"), "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PortError::Permanent(m) if m.contains(&v2) && m.contains("-nope")),
        "{e}"
    );
    Ok(())
}

// ------------------------------------------------------------------ end to end

async fn residency_world(shape: Shape) -> Result<World> {
    World::start(Options {
        residency: true,
        object_events: shape,
        ..Options::default()
    })
    .await
}

/// Version ids of `key` in `region`'s watched bucket (delete markers excluded).
async fn versions(w: &World, region: &str, key: &str) -> Result<Vec<String>> {
    let r = w.region(region);
    Ok(list_versions(&r.clients, &r.bucket)
        .await?
        .into_iter()
        .filter(|v| v.key == key && !v.delete_marker)
        .map(|v| v.version_id)
        .collect())
}

async fn put_in(
    w: &World,
    region: &str,
    key: &str,
    tag: Option<&str>,
    meta: Option<&str>,
) -> Result<String> {
    let r = w.region(region);
    put(&r.clients, &r.bucket, key, b"contents".to_vec(), tag, meta).await
}

async fn quarantined(w: &World, region: &str) -> Result<Vec<String>> {
    let r = w.region(region);
    let out = r
        .clients
        .s3
        .list_objects_v2()
        .bucket(&r.quarantine_bucket)
        .send()
        .await?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn eu_objects_replicated_to_us_are_removed_from_us_only() -> Result<()> {
    for shape in [Shape::EventBridge, Shape::Notification] {
        let mut w = residency_world(shape).await?;
        let key = "eu/report 2026+Q1 100%.txt";
        let origin = put_in(&w, EU, key, None, None).await?;
        w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
            .await?;

        assert_eq!(
            versions(&w, EU, key).await?,
            std::slice::from_ref(&origin),
            "{shape:?}: origin stays"
        );
        assert!(
            versions(&w, US, key).await?.is_empty(),
            "{shape:?}: the replica's version is gone from us-east-1"
        );
        let us = w.alerts(US).await?;
        assert_eq!(us.len(), 1, "{shape:?}: {us:?}");
        let a = &us[0];
        assert_eq!(
            (a.source.as_str(), a.key.as_str(), a.region.as_str()),
            ("assets", key, US)
        );
        assert_eq!(a.rule.as_deref(), Some("eu-only"));
        assert_eq!(a.action, "delete-replica");
        assert!(a.event_id.contains(a.version.as_deref().unwrap()));
        assert!(w.alerts(EU).await?.is_empty(), "eu-west-1 is allowed");
    }
    Ok(())
}

/// Keys whose rule prefix itself needs decoding: classified on the decoded key, in both
/// event shapes (EventBridge keys are raw, notification keys form-encoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn keys_are_classified_on_the_decoded_key() -> Result<()> {
    for shape in [Shape::EventBridge, Shape::Notification] {
        let mut w = residency_world(shape).await?;
        let key = "résidence eu+/%/fiche 1.txt";
        put_in(&w, EU, key, None, None).await?;
        w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
            .await?;
        assert_eq!(versions(&w, EU, key).await?.len(), 1, "{shape:?}");
        assert!(versions(&w, US, key).await?.is_empty(), "{shape:?}");
        let us = w.alerts(US).await?;
        assert_eq!(us.len(), 1, "{shape:?}: {us:?}");
        assert_eq!(us[0].rule.as_deref(), Some("eu-special"));
        assert_eq!(us[0].key, key);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn hold_leaves_the_version_in_quarantine_only() -> Result<()> {
    let mut w = residency_world(Shape::EventBridge).await?;
    let key = "hold/scan 7.pdf";
    put_in(&w, EU, key, None, None).await?;
    w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
        .await?;
    assert_eq!(versions(&w, EU, key).await?.len(), 1, "origin stays");
    assert!(
        versions(&w, US, key).await?.is_empty(),
        "no longer in the watched bucket"
    );
    let us = w.alerts(US).await?;
    assert_eq!(us.len(), 1, "{us:?}");
    assert_eq!(us[0].action, "hold");
    let replica_version = us[0].version.clone().unwrap();
    let held = quarantined(&w, US).await?;
    assert_eq!(
        held,
        [quarantine_key(&w.region(US).bucket, key, &replica_version)]
    );
    assert!(quarantined(&w, EU).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn rules_on_tags_and_metadata_are_honoured() -> Result<()> {
    let mut w = residency_world(Shape::EventBridge).await?;
    put_in(&w, EU, "tagged.txt", Some("eu"), None).await?;
    put_in(&w, EU, "described.txt", None, Some("eu")).await?;
    put_in(&w, EU, "plain.txt", Some("us"), Some("us")).await?;
    w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
        .await?;
    for key in ["tagged.txt", "described.txt", "plain.txt"] {
        assert_eq!(versions(&w, EU, key).await?.len(), 1, "{key}: origin stays");
    }
    assert!(versions(&w, US, "tagged.txt").await?.is_empty());
    assert!(versions(&w, US, "described.txt").await?.is_empty());
    assert_eq!(
        versions(&w, US, "plain.txt").await?.len(),
        1,
        "no rule matches"
    );
    let mut us: Vec<(String, String, String)> = w
        .alerts(US)
        .await?
        .into_iter()
        .map(|a| (a.key, a.rule.unwrap_or_default(), a.action))
        .collect();
    us.sort();
    assert_eq!(
        us,
        [
            (
                "described.txt".into(),
                "eu-metadata".into(),
                "delete-replica".into()
            ),
            ("tagged.txt".into(), "eu-tagged".into(), "hold".into()),
        ]
    );
    assert_eq!(quarantined(&w, US).await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn origin_objects_are_held_or_reported_never_deleted_unless_the_rule_opts_in() -> Result<()> {
    let mut w = residency_world(Shape::EventBridge).await?;
    // Written in us-east-1 itself: origin copies, not replicas.
    let reported = put_in(&w, US, "eu/origin.txt", None, None).await?;
    put_in(&w, US, "hold/origin.txt", None, None).await?;
    put_in(&w, US, "purge/origin.txt", None, None).await?;
    w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
        .await?;
    assert_eq!(
        versions(&w, US, "eu/origin.txt").await?,
        [reported],
        "delete-replica never deletes an origin copy"
    );
    assert!(versions(&w, US, "hold/origin.txt").await?.is_empty());
    assert!(
        versions(&w, US, "purge/origin.txt").await?.is_empty(),
        "replicas_only = false"
    );
    let held = quarantined(&w, US).await?;
    assert_eq!(held.len(), 1);
    assert!(held[0].ends_with("/hold/origin.txt"), "{held:?}");
    let mut us: Vec<(String, String, bool)> = w
        .alerts(US)
        .await?
        .into_iter()
        .map(|a| (a.key, a.action, a.note.is_some()))
        .collect();
    us.sort();
    assert_eq!(
        us,
        [
            ("eu/origin.txt".into(), "alert".into(), true),
            ("hold/origin.txt".into(), "hold".into(), false),
            ("purge/origin.txt".into(), "delete-replica".into(), false),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn eu_item_is_reported_in_us_and_stays() -> Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let mut w = residency_world(Shape::EventBridge).await?;
    let started = tidemark::now_ms();
    for (pk, home) in [("anna", "eu"), ("bob", "us")] {
        w.region(EU)
            .clients
            .dynamodb
            .put_item()
            .table_name(&w.table)
            .item("pk", A::S(pk.into()))
            .item("email", A::S(format!("{pk}@example.com")))
            .item("home_region", A::S(home.into()))
            .item("updated_at_ms", A::N(tidemark::now_ms().to_string()))
            .item("origin_region", A::S(EU.into()))
            .send()
            .await?;
    }
    w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
        .await?;
    assert_eq!(
        w.get_user(US, "anna").await?.as_deref(),
        Some("anna@example.com"),
        "the item stays: a delete in a global table deletes everywhere"
    );
    let us = w.alerts(US).await?;
    assert_eq!(us.len(), 1, "{us:?}");
    let a = &us[0];
    assert_eq!(
        (a.source.as_str(), a.key.as_str(), a.action.as_str()),
        (w.table.as_str(), "anna", "report")
    );
    assert_eq!(a.rule.as_deref(), Some("eu-residents"));
    let seq = a.version.clone().unwrap();
    assert!(a.event_id.ends_with(&seq), "{a:?}");
    // Contents never leave: the alert carries no attribute value but the key.
    let body = serde_json::to_string(a)?;
    assert!(!body.contains("anna@example.com"), "{body}");
    assert!(w.alerts(EU).await?.is_empty());
    // The residency alarm, applied to this run's EMF by the alarm evaluator: it went to
    // ALARM where the item must not live (in the violation's minute, whatever minute it is
    // now), and never where it may.
    let us = w.alarm_timeline(US, "ResidencyViolationAlarm", &[], started)?;
    assert!(us.iter().any(|(_, s)| *s == State::Alarm), "{us:?}");
    let eu = w.alarm_timeline(EU, "ResidencyViolationAlarm", &[], started)?;
    assert!(eu.iter().all(|(_, s)| *s == State::Ok), "{eu:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn throttled_delete_is_retried_until_the_replica_is_gone() -> Result<()> {
    let mut w = residency_world(Shape::EventBridge).await?;
    let key = "eu/retry.txt";
    put_in(&w, EU, key, None, None).await?;
    // The next four DeleteObject requests fail with 503 (transient): more than the SDK's own
    // attempts (3 in-process, 2 for the binaries), so the record itself must be retried.
    // Nothing else deletes in this world.
    w.proxy.fail("S3:DELETE", 503, Some(4));
    w.settle_with(tidemark_tests_stages(), Duration::from_secs(90))
        .await?;
    assert!(
        versions(&w, US, key).await?.is_empty(),
        "retried until the delete went through"
    );
    assert!(
        w.proxy.calls("S3:DELETE") >= 5,
        "every injected failure was hit"
    );
    assert_eq!(versions(&w, EU, key).await?.len(), 1);
    // At least once: the alert may repeat, always under the same event id.
    let us = w.alerts(US).await?;
    assert!(!us.is_empty());
    assert!(us.iter().all(|a| a.event_id == us[0].event_id), "{us:?}");
    Ok(())
}

fn tidemark_tests_stages() -> tidemark_tests::world::Stages {
    tidemark_tests::world::Stages {
        replication: true,
        streams: true,
        invalidator: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn permanent_action_failures_are_dead_lettered_with_the_reason() -> Result<()> {
    // Keys hashed in logs and alerts: the reasons name the key by its HMAC only.
    let mut w = World::start(Options {
        residency: true,
        object_events: Shape::EventBridge,
        hash_keys: true,
        ..Options::default()
    })
    .await?;
    // A quarantine bucket that does not exist, and access denied on every version delete.
    let q = w.region(US).quarantine_bucket.clone();
    w.region(US)
        .clients
        .s3
        .delete_bucket()
        .bucket(&q)
        .send()
        .await?;
    w.proxy.fail("S3:DELETE", 403, None);
    put_in(&w, EU, "eu/denied.txt", None, None).await?;
    put_in(&w, EU, "hold/nowhere.txt", None, None).await?;
    w.settle_with(tidemark_tests_stages(), Duration::from_secs(60))
        .await?;

    // Never silently skipped: both replicas are still there, each record dead-lettered
    // once (not retried until the queue gives up) with a reason naming what failed and the
    // key's HMAC, never the key (the dead-letter entry's record keeps it, for replay).
    assert_eq!(versions(&w, US, "eu/denied.txt").await?.len(), 1);
    assert_eq!(versions(&w, US, "hold/nowhere.txt").await?.len(), 1);
    let r = w.region(US);
    let dead: Vec<serde_json::Value> = r.clients.drain_json(&r.object_dlq_url).await?;
    let reasons: Vec<&str> = dead.iter().filter_map(|d| d["reason"].as_str()).collect();
    assert_eq!(reasons.len(), 2, "{dead:?}");
    let label = |key: &str| {
        format!(
            "hmac-sha256:{}",
            tidemark::keyhash::hmac_sha256_hex(KEY_HASH_SECRET.as_bytes(), key.as_bytes())
        )
    };
    assert!(
        reasons.iter().any(|r| r.contains("delete-replica failed")
            && r.contains("403")
            && r.contains(&label("eu/denied.txt"))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("hold failed")
            && r.contains(&q)
            && r.contains(&label("hold/nowhere.txt"))),
        "{reasons:?}"
    );
    for key in ["eu/denied.txt", "hold/nowhere.txt", "denied", "nowhere"] {
        assert!(
            reasons.iter().all(|r| !r.contains(key)),
            "a reason names the key {key:?}: {reasons:?}"
        );
    }
    // The alerts carry the same label.
    let mut keys: Vec<String> = w.alerts(US).await?.into_iter().map(|a| a.key).collect();
    keys.sort();
    keys.dedup();
    let mut expected = vec![label("eu/denied.txt"), label("hold/nowhere.txt")];
    expected.sort();
    assert_eq!(keys, expected);
    Ok(())
}
