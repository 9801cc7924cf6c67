//! Data-driven tests over `events/`: every sample decodes, and yields the expected keys.

#![cfg(test)]
#![allow(clippy::unwrap_used)]

use crate::config::Config;
use crate::ddb::{StreamRecord, split_batch};
use crate::invalidation::{object_keys, table_keys};
use crate::message::Invalidation;
use crate::objects::{ObjectEventKind, ObjectMessage, ReplicationEvent};
use crate::sqs::{SqsRecord, unwrap_sns};

fn sample(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn stream_keys(name: &str) -> (StreamRecord<'static>, Vec<String>) {
    let text: &'static str = Box::leak(sample(name).into_boxed_str());
    let cfg = Config::embedded().unwrap();
    let raws = split_batch(text).unwrap();
    let rec = StreamRecord::decode(raws[0].get()).unwrap();
    let mut keys = Vec::new();
    table_keys(
        cfg.table(rec.table.as_deref().unwrap()).unwrap(),
        &rec,
        |k| keys.push(k),
    );
    keys.sort();
    (rec, keys)
}

#[test]
fn dynamodb_samples_yield_expected_keys() {
    let (_, k) = stream_keys("dynamodb-insert.json");
    assert_eq!(k, ["user-email:ada@example.com", "user:user#1"]);
    let (_, k) = stream_keys("dynamodb-modify.json");
    assert_eq!(
        k,
        [
            "user-email:ada.lovelace@example.com",
            "user-email:ada@example.com",
            "user:user#1"
        ]
    );
    let (_, k) = stream_keys("dynamodb-remove.json");
    assert_eq!(k, ["user-email:ada.lovelace@example.com", "user:user#1"]);
    let (rec, k) = stream_keys("dynamodb-ttl-delete.json");
    assert!(rec.ttl_delete);
    assert_eq!(k, ["user-email:grace@example.com", "user:session#9"]);
}

#[test]
fn s3_samples_decode_keys_by_shape() {
    let cfg = Config::embedded().unwrap();
    let ObjectMessage::Changes(eb) =
        ObjectMessage::decode(&sample("eventbridge-object-created.json")).unwrap()
    else {
        panic!()
    };
    let ObjectMessage::Changes(n) =
        ObjectMessage::decode(&sample("s3-notification-put.json")).unwrap()
    else {
        panic!()
    };
    // The same object, encoded two ways, decodes to the same key.
    assert_eq!(eb[0].key, "images/red flower+1.jpg");
    assert_eq!(n[0].key, eb[0].key);
    let mut keys = Vec::new();
    let bucket = cfg.bucket_by_name("us-east-1", &eb[0].bucket).unwrap();
    object_keys(bucket, &eb[0].key, eb[0].version_id.as_deref(), |k| {
        keys.push(k)
    });
    assert_eq!(keys, ["asset:images/red flower+1.jpg", "asset-dir:images"]);
    let ObjectMessage::Changes(r) =
        ObjectMessage::decode(&sample("s3-notification-replication.json")).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        r[0].kind,
        ObjectEventKind::Replication(ReplicationEvent::OperationMissedThreshold)
    );
}

#[test]
fn replication_sample_is_handled_where_aws_delivers_it() {
    // The source bucket emits replication events: `awsRegion` is the source's region, and
    // the bucket is this configuration's bucket there; the destination maps back to its
    // region through the bucket pattern.
    let cfg = Config::embedded().unwrap();
    let ObjectMessage::Changes(r) =
        ObjectMessage::decode(&sample("s3-notification-replication.json")).unwrap()
    else {
        panic!()
    };
    let c = &r[0];
    let bucket = cfg
        .bucket_by_name(&c.region, &c.bucket)
        .unwrap_or_else(|| panic!("bucket {} is not configured in {}", c.bucket, c.region));
    let ObjectEventKind::Replication(event) = c.kind else {
        panic!()
    };
    let (alert, destination) =
        crate::replication_events::alert_for(&cfg, bucket, &c.region, event, c).unwrap();
    assert_eq!(destination, "eu-west-1");
    assert_eq!(alert.region, "us-east-1");
    assert_eq!(alert.key, "images/red flower+1.jpg");
    assert_eq!(alert.rule.as_deref(), Some("assets-to-eu"));
}

#[test]
fn sqs_samples_unwrap_to_their_payloads() {
    let text = sample("sqs-object-events.json");
    let raws = split_batch(&text).unwrap();
    assert_eq!(raws.len(), 2);
    for raw in raws {
        let m = SqsRecord::decode(raw.get()).unwrap();
        assert!(matches!(
            ObjectMessage::decode(&m.body).unwrap(),
            ObjectMessage::Changes(_)
        ));
    }
    let text = sample("sqs-sns-invalidation.json");
    let raws = split_batch(&text).unwrap();
    let m = SqsRecord::decode(raws[0].get()).unwrap();
    let inv = Invalidation::decode(&unwrap_sns(&m.body)).unwrap();
    assert_eq!(inv.keys, ["user:user#1", "user-email:ada@example.com"]);
    assert!(!inv.replicated);
}
