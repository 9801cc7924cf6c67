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
use crate::app::invalidator::Invalidator;
use crate::app::object::ObjectProcessor;
use crate::app::stream::StreamProcessor;
use crate::config::Config;
use crate::ddb::{StreamRecord, split_batch};
use crate::error::PortError;
use crate::lambda::BatchHandler;
use crate::message::Invalidation;
use crate::objects::{ObjectMessage, decode_form_key, parse_rfc3339_ms};
use crate::ports::{
    Cache, DeadLetter, DeadLetterEntry, ObjectStore, Outbound, Publish, PublishResult, VersionHead,
};
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
    /// Every cache key the batch invalidated (published, or unlinked by the invalidator).
    keys: std::collections::BTreeSet<String>,
    dead: Vec<DeadLetterEntry>,
}

impl Run {
    fn handle(
        handler: &impl BatchHandler,
        records: &[String],
        keys: impl FnOnce() -> Vec<String>,
        dead_letter: &MemoryDeadLetter,
    ) -> Run {
        let event = format!(r#"{{"Records":[{}]}}"#, records.join(","));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let failed = rt.block_on(handler.handle(&event)).unwrap();
        let dead = std::mem::take(&mut *dead_letter.0.lock().unwrap());
        Run {
            failed,
            keys: keys().into_iter().collect(),
            dead,
        }
    }
}

fn queue_ports(
    labels: crate::keyhash::KeyLabels,
) -> (Ports, Arc<MemoryPublisher>, Arc<MemoryDeadLetter>) {
    let publisher = Arc::new(MemoryPublisher::default());
    let dead_letter = Arc::new(MemoryDeadLetter::default());
    let ports = Ports {
        publisher: publisher.clone(),
        dead_letter: dead_letter.clone(),
        labels: Arc::new(labels),
        alerts: Arc::new(AcceptAlerts),
    };
    (ports, publisher, dead_letter)
}

fn published(publisher: &MemoryPublisher) -> Vec<String> {
    let out = publisher.0.lock().unwrap();
    out.iter().flat_map(|m| m.keys.clone()).collect()
}

fn run_stream(records: &[String]) -> Run {
    run_stream_with(records, crate::keyhash::KeyLabels::plain())
}

fn run_stream_with(records: &[String], labels: crate::keyhash::KeyLabels) -> Run {
    let (ports, publisher, dead_letter) = queue_ports(labels);
    let processor = StreamProcessor {
        config: Config::embedded().unwrap(),
        region: "us-east-1".into(),
        ports,
        emf: crate::metrics::EmfOut::Captured(Arc::default()),
    };
    Run::handle(&processor, records, || published(&publisher), &dead_letter)
}

/// Object versions that no longer exist (the residency stage then has nothing to act on).
struct NoObjects;
impl ObjectStore for NoObjects {
    fn head_version<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionHead>, PortError>> {
        Box::pin(async { Ok(None) })
    }
    fn version_tags<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, PortError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn delete_version<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
    fn copy_version<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: u64,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}

fn run_objects(records: &[String]) -> Run {
    let (ports, publisher, dead_letter) = queue_ports(crate::keyhash::KeyLabels::plain());
    let processor = ObjectProcessor {
        config: Config::embedded().unwrap(),
        region: "us-east-1".into(),
        ports,
        objects: Arc::new(NoObjects),
        emf: crate::metrics::EmfOut::Captured(Arc::default()),
    };
    Run::handle(&processor, records, || published(&publisher), &dead_letter)
}

#[derive(Default)]
struct MemoryCache(Mutex<Vec<String>>);
impl Cache for MemoryCache {
    fn unlink<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, PortError>> {
        Box::pin(async move {
            self.0.lock().unwrap().extend(keys.iter().cloned());
            Ok(0)
        })
    }
}

fn run_invalidator(records: &[String]) -> Run {
    let cache = Arc::new(MemoryCache::default());
    let dead_letter = Arc::new(MemoryDeadLetter::default());
    let invalidator = Invalidator {
        namespace: "Tidemark".into(),
        cache: cache.clone(),
        dead_letter: dead_letter.clone(),
        emf: crate::metrics::EmfOut::Captured(Arc::default()),
    };
    let keys = || cache.0.lock().unwrap().clone();
    Run::handle(&invalidator, records, keys, &dead_letter)
}

/// `n` good records with `bad` inserted at `at`: `bad` gets the outcome it gets alone (same
/// dead letters, same retries), every dead letter is `bad`'s, and every key the good
/// records invalidate without it is still invalidated.
fn rejected_alone(
    run: fn(&[String]) -> Run,
    good: fn(usize) -> String,
    n: usize,
    at: usize,
    bad: &str,
) -> Result<(), TestCaseError> {
    let alone = run(&[bad.to_owned()]);
    let clean: Vec<String> = (0..n).map(good).collect();
    let neighbours = run(&clean);
    prop_assert!(neighbours.dead.is_empty(), "{:?}", neighbours.dead);
    prop_assert!(neighbours.failed.is_empty(), "{:?}", neighbours.failed);
    prop_assert!(
        !neighbours.keys.is_empty(),
        "the good records invalidate keys"
    );

    let mut records = clean;
    let at = at % (n + 1);
    records.insert(at, bad.to_owned());
    let batch = run(&records);
    prop_assert_eq!(batch.dead.len(), alone.dead.len());
    for d in &batch.dead {
        prop_assert_eq!(d.index, at);
        prop_assert_eq!(&d.record, bad);
    }
    prop_assert_eq!(&batch.failed, &alone.failed);
    for k in &neighbours.keys {
        prop_assert!(batch.keys.contains(k), "{} missing", k);
    }
    Ok(())
}

/// Neither the decoder's error nor the dead letter's reason (the record run alone) quotes
/// `secrets`; the record is dead-lettered.
fn reasons_hide(
    decoded: Result<(), String>,
    run: Run,
    secrets: &[&str],
) -> Result<(), TestCaseError> {
    let err = decoded.err();
    prop_assert!(err.is_some(), "the decoder rejects the record");
    prop_assert_eq!(run.dead.len(), 1, "the record is rejected");
    for text in [err.unwrap().as_str(), run.dead[0].reason.as_str()] {
        for s in secrets {
            prop_assert!(!text.contains(s), "{}", text);
        }
    }
    Ok(())
}

/// An SQS record (the object-events sample's first) carrying `body`.
fn sqs_record(id: &str, body: &str) -> String {
    let all: Value = serde_json::from_str(&sample("sqs-object-events.json")).unwrap();
    let mut r = all["Records"][0].clone();
    r["messageId"] = json!(id);
    r["body"] = json!(body);
    r.to_string()
}

/// Applies `edit` to the JSON body of an SQS record.
fn edit_body(record: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut r: Value = serde_json::from_str(record).unwrap();
    let mut body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    edit(&mut body);
    r["body"] = json!(body.to_string());
    r.to_string()
}

const OBJECT_SHAPES: [&str; 3] = [
    "eventbridge-object-created.json",
    "s3-notification-put.json",
    "s3-notification-replication.json",
];

/// An object event of each shape in turn (EventBridge, S3 notification, S3 replication),
/// for its own key, in an SQS record.
fn good_object(i: usize) -> String {
    let mut body: Value = serde_json::from_str(&sample(OBJECT_SHAPES[i % 3])).unwrap();
    let key = format!("images/n{i}.jpg");
    for p in ["/detail/object/key", "/Records/0/s3/object/key"] {
        if let Some(k) = body.pointer_mut(p) {
            *k = json!(key);
        }
    }
    sqs_record(&format!("object-{i}"), &body.to_string())
}

/// An invalidation message, raw (as `tidemark` sends) or in its SNS envelope, in turn.
fn good_invalidation(i: usize) -> String {
    let message = json!({
        "v": 1, "source": "users", "origin_region": "us-east-1", "replicated": false,
        "changed_at_ms": 1_763_812_800_123u64, "keys": [format!("user:user#{i}")],
    })
    .to_string();
    let body = if i.is_multiple_of(2) {
        message
    } else {
        let all: Value = serde_json::from_str(&sample("sqs-sns-invalidation.json")).unwrap();
        let mut envelope: Value =
            serde_json::from_str(all["Records"][0]["body"].as_str().unwrap()).unwrap();
        envelope["Message"] = json!(message);
        envelope.to_string()
    };
    sqs_record(&format!("invalidation-{i}"), &body)
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
        let mut bad: Value = serde_json::from_str(&good(900)).unwrap();
        mutate(&mut bad, &path, with);
        rejected_alone(run_stream, good, n, at, &bad.to_string())?;
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

        let decoded = StreamRecord::decode(&raw).map(drop).map_err(|e| e.to_string());
        reasons_hide(decoded, run_stream(&[raw]), &[&marker, &digits])?;
    }

    #[test]
    fn a_bad_object_event_is_rejected_alone_and_its_neighbours_are_unaffected(
        n in 1..5usize,
        at in any::<usize>(),
        in_body in any::<bool>(),
        path in prop::collection::vec(any::<usize>(), 1..7),
        with in prop::option::of(any_json()),
    ) {
        let bad = mutated(&good_object(900 + n), in_body, &path, with);
        rejected_alone(run_objects, good_object, n, at, &bad)?;
    }

    #[test]
    fn a_bad_invalidation_message_is_rejected_alone_and_its_neighbours_are_unaffected(
        n in 1..5usize,
        at in any::<usize>(),
        in_body in any::<bool>(),
        path in prop::collection::vec(any::<usize>(), 1..7),
        with in prop::option::of(any_json()),
    ) {
        let bad = mutated(&good_invalidation(900 + n), in_body, &path, with);
        rejected_alone(run_invalidator, good_invalidation, n, at, &bad)?;
    }

    #[test]
    fn no_object_event_reason_contains_a_value(
        marker in "[a-z]{4}@[a-z]{6}\\.example",
        digits in "[1-9][0-9]{14}",
        shape in 0..3usize,
        how in any::<u8>(),
    ) {
        let (s, m, d) = (json!(marker), json!(marker.clone() + "%zz"), json!(digits.parse::<u64>().unwrap()));
        // (field, value) pairs every shape rejects, per shape.
        let edits: &[(&str, &Value)] = if shape == 0 {
            &[
                ("/detail-type", &s),
                ("/source", &s),
                ("/detail/object/key", &d),
                ("/detail/object/version-id", &d),
                ("/detail/object/sequencer", &d),
                ("/detail/bucket/name", &d),
            ]
        } else {
            &[
                ("/Records/0/eventName", &s),
                ("/Records/0/eventName", &d),
                ("/Records/0/eventTime", &d),
                ("/Records/0/s3/object/key", &m),
                ("/Records/0/s3/object/key", &d),
                ("/Records/0/s3/object/versionId", &d),
                ("/Records/0/s3/object/sequencer", &d),
                ("/Records/0/s3/bucket/name", &d),
            ]
        };
        let (field, value) = edits[how as usize % edits.len()];
        let raw = edit_body(&good_object(shape), |b| {
            *b.pointer_mut(field).unwrap() = value.clone();
            // The marker in other values too, so a reason quoting any value shows.
            for other in ["/detail/requester", "/Records/0/requestParameters/sourceIPAddress"] {
                if let Some(v) = b.pointer_mut(other) {
                    *v = s.clone();
                }
            }
        });
        let body: Value = serde_json::from_str(&raw).unwrap();
        let decoded = ObjectMessage::decode(body["body"].as_str().unwrap()).map(drop).map_err(|e| e.to_string());
        reasons_hide(decoded, run_objects(&[raw]), &[&marker, &digits])?;
    }

    #[test]
    fn no_invalidation_reason_contains_a_value(
        marker in "[a-z]{4}@[a-z]{6}\\.example",
        digits in "[1-9][0-9]{14}",
        enveloped in any::<bool>(),
        how in any::<u8>(),
    ) {
        let (s, d) = (json!(marker), json!(digits.parse::<u64>().unwrap()));
        let edits: [(&str, &Value); 7] = [
            ("v", &s), ("keys", &s), ("keys", &json!([d.clone()])), ("changed_at_ms", &s),
            ("source", &d), ("origin_region", &d), ("replicated", &s),
        ];
        let (field, value) = edits[how as usize % edits.len()];
        let mut message: Value = json!({
            "v": 1, "source": "users", "origin_region": "us-east-1", "replicated": false,
            "changed_at_ms": 1, "keys": [marker.clone()],
        });
        message[field] = value.clone();
        let body = if enveloped {
            let all: Value = serde_json::from_str(&sample("sqs-sns-invalidation.json")).unwrap();
            let mut envelope: Value =
                serde_json::from_str(all["Records"][0]["body"].as_str().unwrap()).unwrap();
            envelope["Message"] = json!(message.to_string());
            envelope.to_string()
        } else {
            message.to_string()
        };
        let decoded = Invalidation::decode(&unwrap_sns(&body)).map(drop).map_err(|e| e.to_string());
        reasons_hide(decoded, run_invalidator(&[sqs_record("m", &body)]), &[&marker, &digits])?;
    }
}

/// `record` with the node at `path` replaced (or removed), in the SQS record itself or in
/// its JSON body.
fn mutated(record: &str, in_body: bool, path: &[usize], with: Option<Value>) -> String {
    if in_body {
        edit_body(record, |b| mutate(b, path, with))
    } else {
        let mut r: Value = serde_json::from_str(record).unwrap();
        mutate(&mut r, path, with);
        r.to_string()
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

/// An event that is not JSON, though its records nest and quote like records, fails whole,
/// publishing and dead-lettering nothing (no record is judged on its own).
#[test]
fn an_event_that_is_not_json_fails_whole_and_publishes_nothing() {
    let (ports, publisher, dead_letter) = queue_ports(crate::keyhash::KeyLabels::plain());
    let processor = StreamProcessor {
        config: Config::embedded().unwrap(),
        region: "us-east-1".into(),
        ports,
        emf: crate::metrics::EmfOut::Captured(Arc::default()),
    };
    let broken = good(2).replace(r#""eventVersion":"1.1""#, r#""eventVersion":1.1.1"#);
    assert_ne!(broken, good(2));
    let event = format!(r#"{{"Records":[{},{broken}]}}"#, good(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = rt.block_on(processor.handle(&event)).unwrap_err();
    assert!(e.contains("batch (expected"), "{e}");
    assert!(published(&publisher).is_empty());
    assert!(dead_letter.0.lock().unwrap().is_empty());
}
