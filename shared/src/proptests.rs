//! Property tests of every decoder (proptest, stable Rust):
//!
//! * arbitrary bytes, and arbitrary mutations of real events, never panic;
//! * a bad record is rejected alone, and its good neighbours are processed as if it were
//!   not there;
//! * no reason contains an attribute value of the input.

#![cfg(test)]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::app::Ports;
use crate::app::stream::StreamProcessor;
use crate::config::Config;
use crate::ddb::{StreamRecord, split_batch};
use crate::error::PortError;
use crate::lambda::BatchHandler;
use crate::message::Invalidation;
use crate::objects::{ObjectMessage, decode_form_key, parse_rfc3339_ms};
use crate::ports::{DeadLetter, DeadLetterEntry, Outbound, Publish, PublishResult};
use crate::sqs::{SqsRecord, unwrap_sns};

fn sample(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const SAMPLES: &[&str] = &[
    "dynamodb-insert.json",
    "dynamodb-modify.json",
    "dynamodb-remove.json",
    "dynamodb-ttl-delete.json",
    "eventbridge-object-created.json",
    "s3-notification-put.json",
    "s3-notification-replication.json",
    "sqs-object-events.json",
    "sqs-sns-invalidation.json",
];

/// Runs every decoder on `text` (as a record, a batch, a body); only panics matter.
fn decode_everything(text: &str) {
    let _ = StreamRecord::decode(text);
    let _ = StreamRecord::decode_only(text, Some(&["email".to_owned()]));
    let _ = StreamRecord::salvage_id(text);
    let _ = SqsRecord::decode(text);
    let _ = SqsRecord::salvage_id(text);
    let _ = ObjectMessage::decode(text);
    let _ = Invalidation::decode(&unwrap_sns(text));
    let _ = decode_form_key(text);
    let _ = parse_rfc3339_ms(text);
    if let Ok(raws) = split_batch(text) {
        for r in raws {
            let _ = StreamRecord::decode(r.get());
            let _ = SqsRecord::decode(r.get()).map(|m| {
                let _ = ObjectMessage::decode(&m.body);
                let _ = Invalidation::decode(&unwrap_sns(&m.body));
            });
        }
    }
}

/// A JSON value of any kind, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("\u{fffd}")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[A-Za-z]{1,4}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Replaces the node reached by `path` (indices into objects/arrays, taken modulo their
/// size) with `with`, or removes it when `with` is `None`.
fn mutate(v: &mut Value, path: &[usize], with: Option<Value>) {
    let Some((&first, rest)) = path.split_first() else {
        if let Some(w) = with {
            *v = w;
        }
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(first % m.len()).cloned().unwrap();
            if rest.is_empty() && with.is_none() {
                m.remove(&key);
            } else if let Some(child) = m.get_mut(&key) {
                mutate(child, rest, with);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = first % a.len();
            if rest.is_empty() && with.is_none() {
                a.remove(i);
            } else {
                mutate(&mut a[i], rest, with);
            }
        }
        _ => {
            if let Some(w) = with {
                *v = w;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        decode_everything(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn byte_mutations_of_real_events_never_panic(
        sample_index in 0..SAMPLES.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8),
    ) {
        let mut bytes = sample(SAMPLES[sample_index]).into_bytes();
        for (pos, byte, op) in edits {
            let i = pos % (bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        decode_everything(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn structural_mutations_of_real_events_never_panic(
        sample_index in 0..SAMPLES.len(),
        path in prop::collection::vec(any::<usize>(), 0..7),
        with in prop::option::of(any_json()),
    ) {
        let mut v: Value = serde_json::from_str(&sample(SAMPLES[sample_index])).unwrap();
        mutate(&mut v, &path, with);
        decode_everything(&v.to_string());
        // The body of an SQS record too (SNS envelope, object event), mutated in place.
        if let Some(body) = v.pointer("/Records/0/body").and_then(Value::as_str)
            && let Ok(mut inner) = serde_json::from_str::<Value>(body)
        {
            mutate(&mut inner, &path, Some(json!(null)));
            decode_everything(&inner.to_string());
        }
    }
}

// ------------------------------------------------------------------ handler-level

#[derive(Default)]
struct MemoryPublisher(Mutex<Vec<Invalidation>>);
impl Publish for MemoryPublisher {
    fn publish_batch<'a>(&'a self, entries: &'a [Outbound]) -> BoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let mut out = self.0.lock().unwrap();
            for e in entries {
                out.push(Invalidation::decode(&e.body).unwrap());
            }
            Ok(entries.iter().map(|_| Ok(())).collect())
        })
    }
}

#[derive(Default)]
struct MemoryDeadLetter(Mutex<Vec<DeadLetterEntry>>);
impl DeadLetter for MemoryDeadLetter {
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            self.0.lock().unwrap().extend(entries);
            Ok(())
        })
    }
}

/// Accepts every alert (the embedded rules may report generated items).
struct AcceptAlerts;
impl crate::ports::Alerts for AcceptAlerts {
    fn send<'a>(
        &'a self,
        alerts: &'a [crate::ports::Alert],
    ) -> BoxFuture<'a, Vec<Result<(), PortError>>> {
        Box::pin(async move { alerts.iter().map(|_| Ok(())).collect() })
    }
}

struct Run {
    failed: Vec<String>,
    keys: std::collections::BTreeSet<String>,
    dead: Vec<DeadLetterEntry>,
}

fn run_stream(records: &[String]) -> Run {
    run_stream_with(records, crate::keyhash::KeyLabels::plain())
}

fn run_stream_with(records: &[String], labels: crate::keyhash::KeyLabels) -> Run {
    let publisher = Arc::new(MemoryPublisher::default());
    let dead_letter = Arc::new(MemoryDeadLetter::default());
    let processor = StreamProcessor {
        config: Config::embedded().unwrap(),
        region: "us-east-1".into(),
        ports: Ports {
            publisher: publisher.clone(),
            dead_letter: dead_letter.clone(),
            labels: Arc::new(labels),
            alerts: Arc::new(AcceptAlerts),
        },
        emf: crate::metrics::EmfOut::Captured(Arc::default()),
    };
    let event = format!(r#"{{"Records":[{}]}}"#, records.join(","));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let failed = rt.block_on(processor.handle(&event)).unwrap();
    let keys = publisher
        .0
        .lock()
        .unwrap()
        .iter()
        .flat_map(|m| m.keys.clone())
        .collect();
    let dead = std::mem::take(&mut *dead_letter.0.lock().unwrap());
    Run { failed, keys, dead }
}

fn good(i: usize) -> String {
    crate::samples::stream_record(i, "users")
}

fn good_keys(i: usize) -> [String; 3] {
    [
        format!("user:user#{i:06}"),
        format!("user-email:new{i}@example.com"),
        format!("user-email:old{i}@example.com"),
    ]
}

/// A value in a shape the DynamoDB wire format forbids, carrying `marker` somewhere.
fn corrupt(marker: &str, digits: &str, how: u8) -> Value {
    match how % 12 {
        0 => json!({"S": digits.parse::<u64>().unwrap()}),
        1 => json!({"N": digits.parse::<u64>().unwrap()}),
        2 => json!({"N": marker}),
        3 => json!({"B": format!("{marker}!")}),
        4 => json!(marker),
        5 => json!({"SS": [marker, 5]}),
        6 => json!({"NS": [marker]}),
        7 => json!({"BS": [format!("{marker}*")]}),
        8 => json!({"M": {"a": {"N": marker}}}),
        9 => json!({"L": [{"BOOL": marker}]}),
        10 => json!({"BOOL": marker}),
        _ => json!({"S": marker, "N": digits}),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_bad_record_is_rejected_alone_and_its_neighbours_are_unaffected(
        n in 1..6usize,
        at in any::<usize>(),
        path in prop::collection::vec(any::<usize>(), 1..7),
        with in prop::option::of(any_json()),
    ) {
        let at = at % (n + 1);
        let mut bad: Value = serde_json::from_str(&good(900)).unwrap();
        mutate(&mut bad, &path, with);
        let bad = bad.to_string();
        let alone = run_stream(std::slice::from_ref(&bad));

        let mut records: Vec<String> = (0..n).map(good).collect();
        records.insert(at, bad.clone());
        let batch = run_stream(&records);

        // The mutated record gets the same outcome in the batch as alone.
        prop_assert_eq!(batch.dead.len(), alone.dead.len());
        for d in &batch.dead {
            prop_assert_eq!(d.index, at);
            prop_assert_eq!(&d.record, &bad);
        }
        prop_assert_eq!(batch.failed.len(), alone.failed.len());
        // Every good neighbour's keys are published, whatever happened to it.
        for i in 0..n {
            for k in good_keys(i) {
                prop_assert!(batch.keys.contains(&k), "{} missing", k);
            }
        }
    }

    #[test]
    fn no_reason_contains_an_attribute_value(
        marker in "[a-z]{4}@[a-z]{6}\\.example",
        digits in "[1-9][0-9]{14}",
        how in any::<u8>(),
        in_keys in any::<bool>(),
    ) {
        let mut rec: Value = serde_json::from_str(&good(7)).unwrap();
        let target = if in_keys { "/dynamodb/Keys/pk" } else { "/dynamodb/NewImage/email" };
        *rec.pointer_mut(target).unwrap() = corrupt(&marker, &digits, how);
        // Put the marker in other attributes too, so a reason quoting any value shows.
        *rec.pointer_mut("/dynamodb/OldImage/email").unwrap() = json!({"S": marker.clone()});
        let raw = rec.to_string();

        let err = StreamRecord::decode(&raw).unwrap_err().to_string();
        prop_assert!(!err.contains(&marker) && !err.contains(&digits), "{}", err);

        let run = run_stream(&[raw]);
        prop_assert_eq!(run.dead.len(), 1, "the record is rejected");
        let reason = &run.dead[0].reason;
        prop_assert!(!reason.contains(&marker) && !reason.contains(&digits), "{}", reason);
    }
}

// ------------------------------------------------------------------ handler-level examples

#[test]
fn stream_items_named_like_the_heartbeat_prefix_are_invalidated() {
    let lookalike = good(1).replace("user#000001", "tidemark-heartbeat.png");
    let heartbeat = good(2).replace("user#000002", "tidemark-heartbeat#eu-west-1");
    let run = run_stream(&[lookalike, heartbeat]);
    assert!(run.dead.is_empty() && run.failed.is_empty());
    assert!(
        run.keys.contains("user:tidemark-heartbeat.png"),
        "{:?}",
        run.keys
    );
    assert!(
        !run.keys.iter().any(|k| k.contains("tidemark-heartbeat#")),
        "a heartbeat is measured, never invalidated: {:?}",
        run.keys
    );
}

#[test]
fn a_record_whose_keys_lack_the_partition_key_is_rejected() {
    let rec = good(1).replace(
        r#""Keys":{"pk":{"S":"user#000001"}}"#,
        r#""Keys":{"id":{"S":"user#000001"}}"#,
    );
    assert_ne!(rec, good(1));
    let run = run_stream(&[rec, good(2)]);
    assert_eq!(run.dead.len(), 1);
    assert_eq!(run.dead[0].index, 0);
    assert_eq!(
        run.dead[0].reason,
        "attribute `Keys.pk`: the partition key is missing"
    );
    assert!(!run.keys.contains("user:user#000001"));
    assert!(run.keys.contains("user:user#000002"));
}

#[test]
fn a_record_of_a_stream_without_old_images_is_rejected_naming_the_view_type() {
    let mut rec: Value = serde_json::from_str(&good(1)).unwrap();
    let body = rec
        .pointer_mut("/dynamodb")
        .unwrap()
        .as_object_mut()
        .unwrap();
    body.remove("OldImage");
    body.insert("StreamViewType".into(), json!("NEW_IMAGE"));
    let run = run_stream(&[rec.to_string()]);
    assert_eq!(run.dead.len(), 1);
    assert!(
        run.dead[0].reason.contains("stream view type NEW_IMAGE"),
        "{}",
        run.dead[0].reason
    );
    assert!(run.keys.is_empty(), "{:?}", run.keys);
}

struct Secret;
impl crate::ports::SecretSource for Secret {
    fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, PortError>> {
        Box::pin(async { Ok(b"shared-secret".to_vec()) })
    }
}

#[test]
fn with_hashed_keys_invalidation_messages_still_carry_the_real_keys() {
    let labels = crate::keyhash::KeyLabels::hashed(Arc::new(Secret));
    let run = run_stream_with(&[good(1)], labels);
    for k in good_keys(1) {
        assert!(run.keys.contains(&k), "{k} missing: {:?}", run.keys);
    }
    assert!(!run.keys.iter().any(|k| k.starts_with("hmac-sha256:")));
}
