//! S3 replication events end to end: hand-written notifications in AWS's documented shape
//! (`eventName` without the `s3:` prefix, `awsRegion` and `s3.bucket` naming the source,
//! `replicationEventData` with the destination bucket's ARN) delivered to the source
//! region's object-events queue, as the S3 notification does. Assertions read what a
//! subscriber of the alert topic received, the object-processor's EMF and the object
//! dead-letter queue.

use anyhow::Result;
use serde_json::{Value, json};
use tidemark_tests::world::{Options, World};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// One `s3:Replication:*` notification of `bucket` (in `region`), as S3 sends it.
pub(crate) fn notification(
    region: &str,
    bucket: &str,
    event: &str,
    key_encoded: &str,
    version: &str,
    data: Value,
) -> String {
    json!({"Records": [{
        "eventVersion": "2.2",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": "2026-11-23T12:00:05.250Z",
        "eventName": format!("Replication:{event}"),
        "userIdentity": {"principalId": "s3.amazonaws.com"},
        "requestParameters": {"sourceIPAddress": "s3.amazonaws.com"},
        "responseElements": {"x-amz-request-id": format!("REQ-{event}"), "x-amz-id-2": "id2"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "tidemark-replication-events",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": key_encoded, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "versionId": version, "sequencer": "0055AED6DCD90281E5"}
        },
        "replicationEventData": data
    }]})
    .to_string()
}

pub(crate) async fn send(w: &World, region: &str, body: String) -> Result<()> {
    let r = w.region(region);
    r.clients
        .sqs
        .send_message()
        .queue_url(&r.object_queue_url)
        .message_body(body)
        .send()
        .await?;
    Ok(())
}

async fn object_dead_letters(w: &World, region: &str) -> Result<Vec<Value>> {
    let r = w.region(region);
    r.clients.drain_json(&r.object_dlq_url).await
}

fn replication_failures(w: &World, region: &str, source: &str, event: &str) -> f64 {
    w.emf(region, "object-processor")
        .iter()
        .filter(|d| d["Source"] == source && d["Event"] == event)
        .filter_map(|d| d.get("ReplicationFailures"))
        .flat_map(|v| match v {
            Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        })
        .filter_map(|v| v.as_f64())
        .sum()
}

const EVENTS: [(&str, &str); 4] = [
    ("OperationFailedReplication", "replication-failed"),
    ("OperationMissedThreshold", "replication-missed-threshold"),
    (
        "OperationReplicatedAfterThreshold",
        "replication-replicated-after-threshold",
    ),
    ("OperationNotTracked", "replication-not-tracked"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn each_replication_event_type_gives_its_metric_and_alert() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    let source_bucket = w.region(US).bucket.clone();
    let destination = w.region(EU).bucket.clone();
    for (event, _) in EVENTS {
        let mut data = json!({
            "replicationRuleId": "assets-to-eu",
            "destinationBucket": format!("arn:aws:s3:::{destination}"),
            "s3Operation": "OBJECT_PUT",
            "requestTime": "2026-11-23T12:00:00.000Z",
        });
        if event == "OperationFailedReplication" {
            data["failureReason"] = json!("AssumeRoleNotPermitted");
        }
        // `images/red flower+1.jpg`, form-encoded by hand as S3 does.
        let body = notification(
            US,
            &source_bucket,
            event,
            "images/red+flower%2B1.jpg",
            &format!("v-{event}"),
            data,
        );
        send(&w, US, body).await?;
    }
    w.settle().await?;

    let mut got = w.alerts(US).await?;
    got.sort_by(|a, b| a.kind.cmp(&b.kind));
    assert_eq!(got.len(), 4, "{got:?}");
    for (event, kind) in EVENTS {
        let a = got
            .iter()
            .find(|a| a.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} alert in {got:?}"));
        assert_eq!(
            (a.source.as_str(), a.key.as_str(), a.region.as_str()),
            ("assets", "images/red flower+1.jpg", US),
            "{event}"
        );
        assert_eq!(a.version.as_deref(), Some(format!("v-{event}").as_str()));
        assert_eq!(a.rule.as_deref(), Some("assets-to-eu"));
        let note = a.note.as_deref().unwrap_or("");
        assert!(
            note.contains(&source_bucket) && note.contains(&format!("{destination} ({EU})")),
            "{event}: {note}"
        );
        assert_eq!(
            note.contains("failureReason AssumeRoleNotPermitted"),
            event == "OperationFailedReplication",
            "{event}: {note}"
        );
        assert_eq!(
            replication_failures(&w, US, "assets", event),
            1.0,
            "{event}: ReplicationFailures"
        );
    }
    // Handled in the source region only, nothing rejected.
    assert!(w.alerts(EU).await?.is_empty());
    assert!(object_dead_letters(&w, US).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn failure_event_of_an_unwatched_bucket_is_dead_lettered_with_the_reason() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    let destination = w.region(EU).bucket.clone();
    let source_bucket = w.region(US).bucket.clone();
    let data = |dest: &str| {
        json!({
            "replicationRuleId": "r1",
            "destinationBucket": format!("arn:aws:s3:::{dest}"),
            "s3Operation": "OBJECT_PUT",
            "requestTime": "2026-11-23T12:00:00.000Z",
            "failureReason": "DstBucketNotFound",
        })
    };
    let unwatched = format!("someone-elses-{}", w.id);
    send(
        &w,
        US,
        notification(
            US,
            &unwatched,
            "OperationFailedReplication",
            "k",
            "v1",
            data(&destination),
        ),
    )
    .await?;
    // A watched bucket replicating to a bucket that is no region's under the pattern.
    send(
        &w,
        US,
        notification(
            US,
            &source_bucket,
            "OperationFailedReplication",
            "k",
            "v2",
            data("elsewhere-bucket"),
        ),
    )
    .await?;
    w.settle().await?;

    let dead = object_dead_letters(&w, US).await?;
    let reasons: Vec<&str> = dead.iter().filter_map(|d| d["reason"].as_str()).collect();
    assert_eq!(reasons.len(), 2, "{dead:?}");
    assert!(
        reasons.iter().any(|r| r.contains(&unwatched)
            && r.contains("not in the configuration")
            && r.contains("OperationFailedReplication")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("elsewhere-bucket") && r.contains("pattern")),
        "{reasons:?}"
    );
    assert!(w.alerts(US).await?.is_empty());
    // Rejected records are counted, never reported as replication events.
    assert_eq!(
        replication_failures(&w, US, "assets", "OperationFailedReplication"),
        0.0
    );
    Ok(())
}

/// When the object-processor of `region` counted an `event` (the EMF timestamp, epoch ms).
fn counted_at(w: &World, region: &str, event: &str) -> Option<i64> {
    w.emf(region, "object-processor")
        .iter()
        .filter(|d| d.get("ReplicationFailures").is_some() && d["Event"] == event)
        .filter_map(|d| d["_aws"]["Timestamp"].as_i64())
        .max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn a_failure_event_puts_the_buckets_replication_failures_alarm_in_alarm() -> Result<()> {
    use tidemark_tests::alarms::{self, State};
    let mut w = World::start(Options::default()).await?;
    let source_bucket = w.region(US).bucket.clone();
    let destination = w.region(EU).bucket.clone();
    let data = |failure: Option<&str>| {
        let mut d = json!({
            "replicationRuleId": "assets-to-eu",
            "destinationBucket": format!("arn:aws:s3:::{destination}"),
            "s3Operation": "OBJECT_PUT",
            "requestTime": "2026-11-23T12:00:00.000Z",
        });
        if let Some(f) = failure {
            d["failureReason"] = json!(f);
        }
        d
    };
    // The deployed alarm of this world's bucket, as generated into the template.
    let alarm = alarms::alarm(&w.region(US).wiring, "ReplicationFailuresAssets")?;
    // CloudWatch evaluates the alarm every minute; the minute that holds the count is the
    // one that decides, so each evaluation is at the count's own timestamp.
    let state_at = |w: &World, region: &str, at: i64| -> Result<State> {
        let samples = alarms::samples(&w.emf(region, ""))?;
        Ok(alarm.evaluate(&samples, at)?.state)
    };

    // No failure event: a threshold event of the same bucket is counted (another Event
    // value) and the alarm stays OK.
    send(
        &w,
        US,
        notification(
            US,
            &source_bucket,
            "OperationMissedThreshold",
            "a.png",
            "v-late",
            data(None),
        ),
    )
    .await?;
    w.settle().await?;
    let at =
        counted_at(&w, US, "OperationMissedThreshold").expect("the threshold event was counted");
    assert_eq!(state_at(&w, US, at)?, State::Ok);

    // A failure event: ALARM in the source region, where S3 delivers it.
    send(
        &w,
        US,
        notification(
            US,
            &source_bucket,
            "OperationFailedReplication",
            "a.png",
            "v-failed",
            data(Some("AssumeRoleNotPermitted")),
        ),
    )
    .await?;
    w.settle().await?;
    let at =
        counted_at(&w, US, "OperationFailedReplication").expect("the failure event was counted");
    assert_eq!(state_at(&w, US, at)?, State::Alarm);
    // The destination region's alarm of the same bucket sees nothing.
    let eu_alarm = alarms::alarm(&w.region(EU).wiring, "ReplicationFailuresAssets")?;
    let eu_samples = alarms::samples(&w.emf(EU, ""))?;
    assert_eq!(eu_alarm.evaluate(&eu_samples, at)?.state, State::Ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn failing_s3_replication_is_reported_and_batch_replication_restores_the_replica()
-> Result<()> {
    // The harness's S3 fails us-east-1 → eu-west-1 replication (the role lost its rights on
    // the destination): no replica, S3's OperationFailedReplication notification instead.
    let mut w = World::start(Options::default()).await?;
    let key = "docs/quarterly report+1.txt";
    let (us_bucket, eu_bucket) = (w.region(US).bucket.clone(), w.region(EU).bucket.clone());
    w.fail_s3_replication(US, EU, true);
    w.put_app_object(US, key).await?;
    w.settle().await?;
    let exists = |w: &World, region: &'static str, bucket: String| {
        let s3 = w.region(region).clients.s3.clone();
        async move {
            Ok::<_, anyhow::Error>(
                s3.head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .is_ok(),
            )
        }
    };
    assert!(exists(&w, US, us_bucket.clone()).await?);
    assert!(
        !exists(&w, EU, eu_bucket.clone()).await?,
        "no replica while replication fails"
    );
    let alerts = w.alerts(US).await?;
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "replication-failed" && a.key == key && a.source == "assets"),
        "the failure reached the alert topic with the decoded key: {alerts:?}"
    );
    assert_eq!(
        replication_failures(&w, US, "assets", "OperationFailedReplication"),
        1.0
    );

    // Replication works again; what failed stays failed until batch replication.
    w.fail_s3_replication(US, EU, false);
    w.settle().await?;
    assert!(
        !exists(&w, EU, eu_bucket.clone()).await?,
        "S3 does not retry"
    );
    assert_eq!(w.replicate_failed().await?, 1);
    w.settle().await?;
    assert!(
        exists(&w, EU, eu_bucket.clone()).await?,
        "the replica exists after batch replication"
    );

    // A failed version a later one superseded is not replicated again: the destination
    // keeps the current one.
    let us_s3 = w.region(US).clients.s3.clone();
    let put = |body: &'static str| {
        let s3 = us_s3.clone();
        let bucket = us_bucket.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(body.as_bytes().to_vec().into())
                .send()
                .await
        }
    };
    w.fail_s3_replication(US, EU, true);
    put("failed").await?;
    w.settle().await?;
    w.fail_s3_replication(US, EU, false);
    put("current").await?;
    w.settle().await?;
    assert_eq!(
        w.replicate_failed().await?,
        0,
        "the failed version is superseded"
    );
    w.settle().await?;
    let got = w
        .region(EU)
        .clients
        .s3
        .get_object()
        .bucket(&eu_bucket)
        .key(key)
        .send()
        .await?;
    assert_eq!(got.body.collect().await?.into_bytes().as_ref(), b"current");

    // Nor one a delete marker superseded: the object stays deleted at the destination.
    w.fail_s3_replication(US, EU, true);
    put("failed again").await?;
    w.settle().await?;
    w.fail_s3_replication(US, EU, false);
    us_s3
        .delete_object()
        .bucket(&us_bucket)
        .key(key)
        .send()
        .await?;
    w.settle().await?;
    assert_eq!(
        w.replicate_failed().await?,
        0,
        "superseded by a delete marker"
    );
    w.settle().await?;
    assert!(
        !exists(&w, EU, eu_bucket).await?,
        "still deleted at the destination"
    );
    Ok(())
}
