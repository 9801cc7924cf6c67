//! S3 object events, in the two shapes that reach the object-processor through SQS:
//!
//! * **EventBridge** (`source: aws.s3`, `detail-type: Object Created | Object Deleted`):
//!   `detail.object.key` is the key as stored, *not* URL-encoded (AWS's sample events
//!   show `:` and `/` verbatim).
//! * **S3 event notifications** (`{"Records": [{"eventSource": "aws:s3", …}]}`), used for
//!   the replication events EventBridge does not carry: `s3.object.key` is form-encoded
//!   (`red flower.jpg` → `red+flower.jpg`, `+` → `%2B`), so `+` decodes to a space.

use std::borrow::Cow;

use serde::Deserialize;

use crate::ddb::Str;
use crate::error::DecodeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectEventKind {
    Created,
    /// A delete marker was created (versioned bucket) or the object was deleted.
    Deleted,
    /// `s3:Replication:*` events.
    Replication(ReplicationEvent),
}

impl ObjectEventKind {
    /// The event as logs and reasons name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "ObjectCreated",
            Self::Deleted => "ObjectRemoved",
            Self::Replication(r) => r.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationEvent {
    OperationFailedReplication,
    OperationMissedThreshold,
    OperationReplicatedAfterThreshold,
    OperationNotTracked,
}

impl ReplicationEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OperationFailedReplication => "OperationFailedReplication",
            Self::OperationMissedThreshold => "OperationMissedThreshold",
            Self::OperationReplicatedAfterThreshold => "OperationReplicatedAfterThreshold",
            Self::OperationNotTracked => "OperationNotTracked",
        }
    }
}

/// One object change, key already decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChange {
    pub event_id: String,
    pub region: String,
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
    pub kind: ObjectEventKind,
    /// Event time in epoch milliseconds (0 when absent or unparsable).
    pub event_time_ms: u64,
    /// `replicationEventData` of an `s3:Replication:*` notification.
    pub replication: Option<ReplicationDetail>,
}

/// What an S3 replication event says beyond the object: AWS's `replicationEventData`
/// (`replicationRuleId`, `destinationBucket` as an ARN, `s3Operation`, `requestTime`, and
/// `failureReason` on `OperationFailedReplication`). Codes and names only, no contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationDetail {
    pub rule_id: Option<String>,
    /// The destination bucket's name (the ARN's `arn:aws:s3:::` prefix removed).
    pub destination_bucket: Option<String>,
    pub operation: Option<String>,
    pub failure_reason: Option<String>,
}

/// What one SQS body held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectMessage {
    Changes(Vec<ObjectChange>),
    /// `s3:TestEvent`, sent once when a notification configuration is saved.
    TestEvent,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "detail-type", borrow)]
    detail_type: Option<Str<'a>>,
    #[serde(rename = "Records")]
    records: Option<serde::de::IgnoredAny>,
    #[serde(rename = "Event", borrow)]
    event: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct EbEvent {
    id: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    source: String,
    region: String,
    time: Option<String>,
    detail: EbDetail,
}

#[derive(Deserialize)]
struct EbDetail {
    bucket: EbBucket,
    object: EbObject,
    #[serde(rename = "deletion-type")]
    deletion_type: Option<String>,
}

#[derive(Deserialize)]
struct EbBucket {
    name: String,
}

#[derive(Deserialize)]
struct EbObject {
    key: String,
    #[serde(rename = "version-id")]
    version_id: Option<String>,
    sequencer: Option<String>,
}

#[derive(Deserialize)]
struct S3Notification {
    #[serde(rename = "Records")]
    records: Vec<S3Record>,
}

#[derive(Deserialize)]
struct S3Record {
    #[serde(rename = "eventName")]
    event_name: String,
    #[serde(rename = "awsRegion", default)]
    aws_region: String,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    #[serde(rename = "responseElements")]
    response_elements: Option<ResponseElements>,
    s3: S3Entity,
    #[serde(rename = "replicationEventData")]
    replication_event_data: Option<ReplicationEventData>,
}

/// `threshold` and `replicationTime` are not read (their documented types differ between
/// AWS's examples and SDKs), so they are not declared and serde skips them.
#[derive(Deserialize)]
struct ReplicationEventData {
    #[serde(rename = "replicationRuleId")]
    replication_rule_id: Option<String>,
    #[serde(rename = "destinationBucket")]
    destination_bucket: Option<String>,
    #[serde(rename = "s3Operation")]
    s3_operation: Option<String>,
    #[serde(rename = "failureReason")]
    failure_reason: Option<String>,
}

impl From<ReplicationEventData> for ReplicationDetail {
    fn from(d: ReplicationEventData) -> Self {
        Self {
            rule_id: d.replication_rule_id,
            destination_bucket: d.destination_bucket.map(|b| {
                b.rsplit_once(":::")
                    .map_or(b.as_str(), |(_, name)| name)
                    .to_owned()
            }),
            operation: d.s3_operation,
            failure_reason: d.failure_reason,
        }
    }
}

#[derive(Deserialize)]
struct ResponseElements {
    #[serde(rename = "x-amz-request-id")]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: EbBucket,
    object: S3Object,
}

#[derive(Deserialize)]
struct S3Object {
    key: String,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    sequencer: Option<String>,
}

impl ObjectMessage {
    /// Decodes one SQS body. Unknown shapes are errors (they go to the dead-letter queue).
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let probe: Probe<'_> =
            serde_json::from_str(body).map_err(|e| DecodeError::malformed("object event", &e))?;
        if probe.event.as_deref() == Some("s3:TestEvent") {
            return Ok(ObjectMessage::TestEvent);
        }
        if probe.detail_type.is_some() {
            return decode_eventbridge(body).map(|c| ObjectMessage::Changes(vec![c]));
        }
        if probe.records.is_some() {
            return decode_notification(body).map(ObjectMessage::Changes);
        }
        Err(DecodeError::Unsupported(
            "unknown object event shape: neither EventBridge nor S3 notification".into(),
        ))
    }
}

fn decode_eventbridge(body: &str) -> Result<ObjectChange, DecodeError> {
    let e: EbEvent = serde_json::from_str(body)
        .map_err(|e| DecodeError::malformed("EventBridge S3 event", &e))?;
    if e.source != "aws.s3" {
        return Err(DecodeError::Unsupported(
            "EventBridge event whose source is not aws.s3".into(),
        ));
    }
    let kind = match e.detail_type.as_str() {
        "Object Created" => ObjectEventKind::Created,
        "Object Deleted" => ObjectEventKind::Deleted,
        _ => {
            return Err(DecodeError::Unsupported(
                "EventBridge detail-type is not Object Created or Object Deleted".into(),
            ));
        }
    };
    let _ = e.detail.deletion_type; // "Permanently Deleted" vs "Delete Marker Created": both invalidate
    Ok(ObjectChange {
        event_id: e.id,
        region: e.region,
        bucket: e.detail.bucket.name,
        key: e.detail.object.key,
        version_id: e.detail.object.version_id,
        sequencer: e.detail.object.sequencer,
        kind,
        event_time_ms: e.time.as_deref().and_then(parse_rfc3339_ms).unwrap_or(0),
        replication: None,
    })
}

fn decode_notification(body: &str) -> Result<Vec<ObjectChange>, DecodeError> {
    let n: S3Notification =
        serde_json::from_str(body).map_err(|e| DecodeError::malformed("S3 notification", &e))?;
    n.records
        .into_iter()
        .map(|r| {
            let kind = notification_kind(&r.event_name)?;
            let key = decode_form_key(&r.s3.object.key).ok_or_else(|| {
                DecodeError::Unsupported(
                    "S3 notification key is not valid percent-encoded UTF-8".into(),
                )
            })?;
            let event_id = format!(
                "{}:{}:{}",
                r.response_elements
                    .and_then(|x| x.request_id)
                    .unwrap_or_default(),
                r.event_name,
                r.s3.object.sequencer.as_deref().unwrap_or("")
            );
            Ok(ObjectChange {
                event_id,
                region: r.aws_region,
                bucket: r.s3.bucket.name,
                key,
                version_id: r.s3.object.version_id,
                sequencer: r.s3.object.sequencer,
                kind,
                event_time_ms: r
                    .event_time
                    .as_deref()
                    .and_then(parse_rfc3339_ms)
                    .unwrap_or(0),
                replication: matches!(kind, ObjectEventKind::Replication(_))
                    .then(|| r.replication_event_data.map(Into::into).unwrap_or_default()),
            })
        })
        .collect()
}

fn notification_kind(name: &str) -> Result<ObjectEventKind, DecodeError> {
    let name = name.strip_prefix("s3:").unwrap_or(name);
    Ok(if name.starts_with("ObjectCreated:") {
        ObjectEventKind::Created
    } else if name.starts_with("ObjectRemoved:") {
        ObjectEventKind::Deleted
    } else if let Some(rep) = name.strip_prefix("Replication:") {
        ObjectEventKind::Replication(match rep {
            "OperationFailedReplication" => ReplicationEvent::OperationFailedReplication,
            "OperationMissedThreshold" => ReplicationEvent::OperationMissedThreshold,
            "OperationReplicatedAfterThreshold" => {
                ReplicationEvent::OperationReplicatedAfterThreshold
            }
            "OperationNotTracked" => ReplicationEvent::OperationNotTracked,
            _ => {
                return Err(DecodeError::Unsupported(
                    "unknown S3 Replication event".into(),
                ));
            }
        })
    } else {
        return Err(DecodeError::Unsupported(
            "S3 event is not ObjectCreated, ObjectRemoved or Replication".into(),
        ));
    })
}

/// Best-effort object keys of a raw SQS record for log lines: `s3://bucket/key` per object
/// change, space-separated; hashed by the pipeline when `hash_keys_in_alerts` is on.
pub fn salvage_keys(raw: &str) -> Option<String> {
    let record = crate::sqs::SqsRecord::decode(raw).ok()?;
    match ObjectMessage::decode(&record.body).ok()? {
        ObjectMessage::Changes(c) if !c.is_empty() => Some(
            c.iter()
                .map(|c| format!("s3://{}/{}", c.bucket, c.key))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

/// Decodes an S3 notification key: `application/x-www-form-urlencoded`, so `+` is a space
/// and `%2B` a plus. `None` when the escapes are malformed or the bytes are not UTF-8.
pub fn decode_form_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Exactly two hex digits: `from_str_radix` alone would take `%+1` as 0x01.
                let hex = encoded.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Encodes a key the way S3 notifications do (the inverse of [`decode_form_key`]); used by
/// tests and the harness to build notification events.
pub fn encode_form_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3 / 2);
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parses `2024-05-01T12:00:00.123Z` (UTC, as AWS sends) to epoch milliseconds. `None`
/// for anything else, including out-of-range fields and times before 1970; the arithmetic
/// is checked, so no input can overflow it.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let field = |p: &str, max: i64| -> Option<i64> {
        if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<i64>().ok().filter(|v| *v <= max)
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (
        field(d.next()?, 9999)?,
        field(d.next()?, 12)?,
        field(d.next()?, 31)?,
    );
    if m == 0 || day == 0 {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (hh, mm, ss) = (
        field(t.next()?, 23)?,
        field(t.next()?, 59)?,
        field(t.next()?, 60)?, // a leap second
    );
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era
        .checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add(hh * 3600 + mm * 60 + ss)?;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(ms).ok()
}

/// Template values of an object: `key`; `dir`, the key up to its last `/` (empty at the
/// root); `file`, what follows it; `version`, the version id (no key when the event has
/// none, e.g. an unversioned bucket).
pub fn object_placeholder<'k>(
    key: &'k str,
    version: Option<&'k str>,
    name: &str,
) -> Option<Cow<'k, str>> {
    let (dir, file) = key.rsplit_once('/').unwrap_or(("", key));
    match name {
        "key" => Some(Cow::Borrowed(key)),
        "dir" => Some(Cow::Borrowed(dir)),
        "file" => Some(Cow::Borrowed(file)),
        "version" => version.map(Cow::Borrowed),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn form_keys_round_trip_awkward_characters() {
        for key in [
            "red flower.jpg",
            "a+b",
            "100%/x",
            "dir/sub/é 日本.txt",
            "~tilde",
            "q?=&",
        ] {
            let enc = encode_form_key(key);
            assert_eq!(decode_form_key(&enc).unwrap(), key, "{enc}");
        }
        assert_eq!(decode_form_key("red+flower.jpg").unwrap(), "red flower.jpg");
        assert_eq!(decode_form_key("a%2Bb").unwrap(), "a+b");
        assert_eq!(decode_form_key("bad%zz"), None);
        assert_eq!(decode_form_key("trunc%2"), None);
    }

    #[test]
    fn eventbridge_keys_are_not_decoded() {
        let body = r#"{"version":"0","id":"ev-1","detail-type":"Object Created","source":"aws.s3","account":"1",
          "time":"2024-05-01T12:00:00Z","region":"eu-west-1","resources":[],
          "detail":{"version":"0","bucket":{"name":"b"},"object":{"key":"a+b c%2B.txt","size":1,"version-id":"v1","sequencer":"00A"},
          "request-id":"r","requester":"x","reason":"PutObject"}}"#;
        let ObjectMessage::Changes(c) = ObjectMessage::decode(body).unwrap() else {
            panic!()
        };
        assert_eq!(c[0].key, "a+b c%2B.txt");
        assert_eq!(c[0].version_id.as_deref(), Some("v1"));
        assert_eq!(c[0].kind, ObjectEventKind::Created);
        assert_eq!(c[0].event_time_ms, 1_714_564_800_000);
    }

    #[test]
    fn notification_keys_are_form_decoded() {
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
          "eventTime":"2024-05-01T12:00:00.250Z","eventName":"ObjectRemoved:DeleteMarkerCreated",
          "s3":{"bucket":{"name":"b"},"object":{"key":"red+flower%2B.jpg","versionId":"v9","sequencer":"01"}}}]}"#;
        let ObjectMessage::Changes(c) = ObjectMessage::decode(body).unwrap() else {
            panic!()
        };
        assert_eq!(c[0].key, "red flower+.jpg");
        assert_eq!(c[0].kind, ObjectEventKind::Deleted);
        assert_eq!(c[0].event_time_ms, 1_714_564_800_250);
    }

    #[test]
    fn replication_and_test_events() {
        let body = r#"{"Records":[{"eventName":"Replication:OperationFailedReplication","awsRegion":"us-east-1",
          "s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        let ObjectMessage::Changes(c) = ObjectMessage::decode(body).unwrap() else {
            panic!()
        };
        assert_eq!(
            c[0].kind,
            ObjectEventKind::Replication(ReplicationEvent::OperationFailedReplication)
        );
        assert_eq!(
            ObjectMessage::decode(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#)
                .unwrap(),
            ObjectMessage::TestEvent
        );
        assert!(ObjectMessage::decode(r#"{"hello":1}"#).is_err());
        assert!(ObjectMessage::decode("not json").is_err());
    }

    #[test]
    fn placeholders_split_keys() {
        assert_eq!(object_placeholder("a/b/c.txt", None, "dir").unwrap(), "a/b");
        assert_eq!(object_placeholder("c.txt", None, "dir").unwrap(), "");
        assert_eq!(
            object_placeholder("a/b/c.txt", None, "file").unwrap(),
            "c.txt"
        );
        assert_eq!(
            object_placeholder("a", Some("v1"), "version").unwrap(),
            "v1"
        );
        assert_eq!(object_placeholder("a", None, "version"), None);
    }

    #[test]
    fn percent_escapes_need_two_hex_digits() {
        // `u8::from_str_radix("+1", 16)` is Ok(1): a sign must not pass for a hex digit.
        assert_eq!(decode_form_key("a%+1b"), None);
        assert_eq!(decode_form_key("a%-1b"), None);
        assert_eq!(decode_form_key("a% 1b"), None);
        assert_eq!(decode_form_key("a%2fb").unwrap(), "a/b");
    }

    #[test]
    fn time_parsing_rejects_out_of_range_fields_without_overflow() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T23:59:60.5Z"),
            Some(1_709_251_200_500)
        );
        for bad in [
            "99999999999999999-01-01T00:00:00Z",
            "2024-01-01T00:00:99999999999999999Z",
            "2024-13-01T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.-5Z",
            "-2024-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
