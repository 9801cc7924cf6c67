//! DynamoDB Streams records, decoded one at a time and borrowing from the raw JSON.
//!
//! Attribute values are kept as raw JSON slices with their type tag checked; a value is
//! decoded only when a template or rule asks for it. An unknown type tag anywhere in an
//! image, or a missing `dynamodb` body, makes that one record undecodable.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A string that borrows from the input unless JSON escapes force a copy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Str<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// DynamoDB attribute type tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    S,
    N,
    B,
    Bool,
    Null,
    M,
    L,
    Ss,
    Ns,
    Bs,
}

impl Tag {
    fn from_str(s: &str) -> Option<Self> {
        Some(match s {
            "S" => Tag::S,
            "N" => Tag::N,
            "B" => Tag::B,
            "BOOL" => Tag::Bool,
            "NULL" => Tag::Null,
            "M" => Tag::M,
            "L" => Tag::L,
            "SS" => Tag::Ss,
            "NS" => Tag::Ns,
            "BS" => Tag::Bs,
            _ => return None,
        })
    }
}

/// One attribute value: its checked tag and the raw JSON of its payload.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub tag: Tag,
    pub raw: &'a RawValue,
}

impl<'a> Attr<'a> {
    /// The value as text for templates and rules: S, N and B (base64 as sent) and BOOL.
    /// Maps, lists, sets and NULL have no single text form.
    pub fn scalar(&self) -> Option<Cow<'a, str>> {
        match self.tag {
            Tag::S | Tag::N | Tag::B => serde_json::from_str::<Str<'a>>(self.raw.get())
                .ok()
                .map(|s| s.0),
            Tag::Bool => match self.raw.get().trim() {
                "true" => Some(Cow::Borrowed("true")),
                "false" => Some(Cow::Borrowed("false")),
                _ => None,
            },
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Attr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Attr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute value like {\"S\": \"text\"}")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Attr<'a>, M::Error> {
                let tag: Str<'de> = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("attribute value with no type tag"))?;
                let kind = Tag::from_str(&tag).ok_or_else(|| {
                    de::Error::custom(format!("unknown attribute type tag `{}`", &*tag))
                })?;
                let raw: &'de RawValue = map.next_value()?;
                if map.next_key::<Str<'de>>()?.is_some() {
                    return Err(de::Error::custom(
                        "attribute value with more than one type tag",
                    ));
                }
                Ok(Attr { tag: kind, raw })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An item image (or the `Keys` map): attribute name → value, in wire order.
#[derive(Debug, Clone, Default)]
pub struct Image<'a>(pub Vec<(Cow<'a, str>, Attr<'a>)>);

impl<'a> Image<'a> {
    pub fn get(&self, name: &str) -> Option<&Attr<'a>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    pub fn scalar(&self, name: &str) -> Option<Cow<'a, str>> {
        self.get(name).and_then(Attr::scalar)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Image<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Image<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of attribute names to values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Image<'a>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<Str<'de>, Attr<'de>>()? {
                    out.push((k.0, v));
                }
                Ok(Image(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Decodes an image keeping only the `wanted` attributes (all when `None`); the others are
/// skipped without building values. Unknown type tags are errors in kept attributes.
#[derive(Debug, Clone, Copy)]
pub struct ImageSeed<'w> {
    pub wanted: Option<&'w [String]>,
}

impl<'de, 'w> serde::de::DeserializeSeed<'de> for ImageSeed<'w> {
    type Value = Image<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Image<'de>, D::Error> {
        struct V<'w>(Option<&'w [String]>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = Image<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of attribute names to values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Image<'de>, M::Error> {
                let mut out = Vec::with_capacity(self.0.map_or(8, <[String]>::len));
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    if self.0.is_none_or(|w| w.iter().any(|x| *x == *k)) {
                        out.push((k.0, map.next_value::<Attr<'de>>()?));
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(Image(out))
            }
        }
        d.deserialize_map(V(self.wanted))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    Insert,
    Modify,
    Remove,
}

/// One decoded stream record.
#[derive(Debug, Clone)]
pub struct StreamRecord<'a> {
    pub event_id: Cow<'a, str>,
    pub event_name: EventName,
    /// Region of the replica whose stream carried the record (`awsRegion`).
    pub region: Cow<'a, str>,
    /// Table name from `eventSourceARN`, when present.
    pub table: Option<Cow<'a, str>>,
    pub sequence_number: Cow<'a, str>,
    /// `ApproximateCreationDateTime`, converted to epoch milliseconds (second resolution).
    pub approx_created_ms: u64,
    pub keys: Image<'a>,
    pub old: Option<Image<'a>>,
    pub new: Option<Image<'a>>,
    /// A TTL expiry: a REMOVE by the DynamoDB service principal (only in the deleting region).
    pub ttl_delete: bool,
}

#[derive(Default)]
struct WireRecord<'a> {
    event_id: Option<Str<'a>>,
    event_name: Option<Str<'a>>,
    aws_region: Option<Str<'a>>,
    event_source_arn: Option<Str<'a>>,
    dynamodb: Option<WireBody<'a>>,
    user_identity: Option<WireIdentity<'a>>,
}

#[derive(Default)]
struct WireBody<'a> {
    approx: Option<f64>,
    keys: Option<Image<'a>>,
    new_image: Option<Image<'a>>,
    old_image: Option<Image<'a>>,
    sequence_number: Option<Str<'a>>,
}

/// Reads a stream record, decoding images through an [`ImageSeed`].
struct RecordSeed<'w>(ImageSeed<'w>);

impl<'de> serde::de::DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = WireRecord<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireRecord<'de>, D::Error> {
        struct V<'w>(ImageSeed<'w>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = WireRecord<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DynamoDB stream record")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<WireRecord<'de>, M::Error> {
                let mut w = WireRecord::default();
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    match &*k {
                        "eventID" => w.event_id = Some(map.next_value()?),
                        "eventName" => w.event_name = Some(map.next_value()?),
                        "awsRegion" => w.aws_region = Some(map.next_value()?),
                        "eventSourceARN" => w.event_source_arn = Some(map.next_value()?),
                        "userIdentity" => w.user_identity = Some(map.next_value()?),
                        "dynamodb" => w.dynamodb = Some(map.next_value_seed(BodySeed(self.0))?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

struct BodySeed<'w>(ImageSeed<'w>);

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_> {
    type Value = WireBody<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireBody<'de>, D::Error> {
        struct V<'w>(ImageSeed<'w>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = WireBody<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `dynamodb` body")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<WireBody<'de>, M::Error> {
                let mut b = WireBody::default();
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    match &*k {
                        "ApproximateCreationDateTime" => b.approx = Some(map.next_value()?),
                        // Keys are always decoded whole: they identify the record.
                        "Keys" => b.keys = Some(map.next_value_seed(ImageSeed { wanted: None })?),
                        "NewImage" => b.new_image = Some(map.next_value_seed(self.0)?),
                        "OldImage" => b.old_image = Some(map.next_value_seed(self.0)?),
                        "SequenceNumber" => b.sequence_number = Some(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(b)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

#[derive(Deserialize)]
struct WireIdentity<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(rename = "principalId", borrow)]
    principal_id: Option<Str<'a>>,
}

pub use crate::error::DecodeError;

const RECORD: &str = "stream record";

impl<'a> StreamRecord<'a> {
    /// Decodes a record, every attribute of its images included.
    pub fn decode(raw: &'a str) -> Result<Self, DecodeError> {
        Self::decode_only(raw, None)
    }

    /// Decodes a record keeping only `wanted` image attributes (keys are always kept).
    pub fn decode_only(raw: &'a str, wanted: Option<&[String]>) -> Result<Self, DecodeError> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(raw);
        let w = RecordSeed(ImageSeed { wanted })
            .deserialize(&mut de)
            .and_then(|w| de.end().map(|()| w))
            .map_err(|e| DecodeError::malformed(RECORD, &e))?;
        let body = w.dynamodb.ok_or(DecodeError::Missing {
            what: RECORD,
            field: "`dynamodb` body",
        })?;
        let event_name = match w.event_name.as_deref() {
            Some("INSERT") => EventName::Insert,
            Some("MODIFY") => EventName::Modify,
            Some("REMOVE") => EventName::Remove,
            Some(_) => {
                return Err(DecodeError::Unsupported(
                    "eventName is not INSERT, MODIFY or REMOVE".into(),
                ));
            }
            None => {
                return Err(DecodeError::Missing {
                    what: RECORD,
                    field: "eventName",
                });
            }
        };
        let sequence_number = body
            .sequence_number
            .ok_or(DecodeError::Missing {
                what: RECORD,
                field: "SequenceNumber",
            })?
            .0;
        let keys = body.keys.ok_or(DecodeError::Missing {
            what: RECORD,
            field: "Keys",
        })?;
        if keys.0.is_empty() {
            return Err(DecodeError::Missing {
                what: RECORD,
                field: "key attribute in Keys",
            });
        }
        let ttl_delete = event_name == EventName::Remove
            && w.user_identity.as_ref().is_some_and(|u| {
                u.kind.as_deref() == Some("Service")
                    && u.principal_id.as_deref() == Some("dynamodb.amazonaws.com")
            });
        let table = w
            .event_source_arn
            .as_ref()
            .and_then(|arn| table_from_arn(arn))
            .map(|t| Cow::Owned(t.to_owned()));
        let approx_created_ms = body
            .approx
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(0, |s| (s * 1000.0) as u64);
        Ok(StreamRecord {
            event_id: w.event_id.map(|s| s.0).unwrap_or(Cow::Borrowed("")),
            event_name,
            region: w.aws_region.map(|s| s.0).unwrap_or(Cow::Borrowed("")),
            table,
            sequence_number,
            approx_created_ms,
            keys,
            old: body.old_image,
            new: body.new_image,
            ttl_delete,
        })
    }

    /// Best-effort sequence number of a record that failed to decode, for the DLQ entry name.
    pub fn salvage_id(raw: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Partial {
            dynamodb: Option<PartialBody>,
            #[serde(rename = "eventID")]
            event_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct PartialBody {
            #[serde(rename = "SequenceNumber")]
            sequence_number: Option<String>,
        }
        let p: Partial = serde_json::from_str(raw).ok()?;
        p.dynamodb.and_then(|b| b.sequence_number).or(p.event_id)
    }

    /// A value by attribute name: the new image, then the old, then the keys.
    pub fn latest(&self, name: &str) -> Option<Cow<'a, str>> {
        self.new
            .as_ref()
            .and_then(|i| i.scalar(name))
            .or_else(|| self.old.as_ref().and_then(|i| i.scalar(name)))
            .or_else(|| self.keys.scalar(name))
    }
}

/// `arn:aws:dynamodb:us-east-1:123456789012:table/users/stream/2024-…` → `users`.
pub fn table_from_arn(arn: &str) -> Option<&str> {
    let rest = arn.split_once(":table/")?.1;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|t| !t.is_empty())
}

/// Splits a Lambda batch (`{"Records": [...]}`) into raw records without decoding them.
pub fn split_batch(event: &str) -> Result<Vec<&RawValue>, DecodeError> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(rename = "Records", borrow)]
        records: Vec<&'a RawValue>,
    }
    serde_json::from_str::<Batch<'_>>(event)
        .map(|b| b.records)
        .map_err(|e| DecodeError::malformed("batch (expected {\"Records\": [...]})", &e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MODIFY: &str = r#"{"eventID":"e1","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"eu-west-1",
      "dynamodb":{"ApproximateCreationDateTime":1700000000,"Keys":{"pk":{"S":"u#1"}},
        "NewImage":{"pk":{"S":"u#1"},"email":{"S":"new@x"},"n":{"N":"12.5"},"flag":{"BOOL":true},"tags":{"SS":["a"]}},
        "OldImage":{"pk":{"S":"u#1"},"email":{"S":"old\u0040x"}},
        "SequenceNumber":"111","SizeBytes":10,"StreamViewType":"NEW_AND_OLD_IMAGES"},
      "eventSourceARN":"arn:aws:dynamodb:eu-west-1:123456789012:table/users/stream/2024-01-01T00:00:00.000"}"#;

    #[test]
    fn decodes_modify_with_both_images() {
        let r = StreamRecord::decode(MODIFY).unwrap();
        assert_eq!(r.event_name, EventName::Modify);
        assert_eq!(r.table.as_deref(), Some("users"));
        assert_eq!(r.sequence_number, "111");
        assert_eq!(r.approx_created_ms, 1_700_000_000_000);
        assert_eq!(r.new.as_ref().unwrap().scalar("email").unwrap(), "new@x");
        // Escaped text decodes (and is copied rather than borrowed).
        assert_eq!(r.old.as_ref().unwrap().scalar("email").unwrap(), "old@x");
        assert_eq!(r.new.as_ref().unwrap().scalar("n").unwrap(), "12.5");
        assert_eq!(r.new.as_ref().unwrap().scalar("flag").unwrap(), "true");
        assert_eq!(r.new.as_ref().unwrap().scalar("tags"), None);
        assert!(!r.ttl_delete);
    }

    #[test]
    fn unknown_type_tag_is_a_decode_error() {
        let bad = MODIFY.replace(r#""n":{"N":"12.5"}"#, r#""n":{"X":"12.5"}"#);
        let e = StreamRecord::decode(&bad).unwrap_err();
        assert!(
            e.to_string().contains("unknown attribute type tag `X`"),
            "{e}"
        );
    }

    #[test]
    fn missing_body_is_a_decode_error() {
        let e = StreamRecord::decode(r#"{"eventID":"x","eventName":"INSERT"}"#).unwrap_err();
        assert!(e.to_string().contains("no `dynamodb` body"), "{e}");
    }

    #[test]
    fn decode_only_keeps_wanted_attributes_and_checks_their_tags() {
        let wanted = vec!["email".to_owned()];
        let r = StreamRecord::decode_only(MODIFY, Some(&wanted)).unwrap();
        assert_eq!(r.new.as_ref().unwrap().0.len(), 1);
        assert_eq!(r.new.as_ref().unwrap().scalar("email").unwrap(), "new@x");
        assert_eq!(r.keys.scalar("pk").unwrap(), "u#1");
        let bad = MODIFY.replace(r#""email":{"S":"new@x"}"#, r#""email":{"Z":"new@x"}"#);
        assert!(StreamRecord::decode_only(&bad, Some(&wanted)).is_err());
    }

    #[test]
    fn ttl_delete_is_recognised() {
        let ttl = r#"{"eventID":"e","eventName":"REMOVE","awsRegion":"us-east-1",
          "dynamodb":{"Keys":{"pk":{"S":"a"}},"SequenceNumber":"5"},
          "userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"}}"#;
        assert!(StreamRecord::decode(ttl).unwrap().ttl_delete);
    }

    #[test]
    fn splits_batches_without_decoding_records() {
        let batch = format!(r#"{{"Records":[{MODIFY},{{"junk":1}}]}}"#);
        assert_eq!(split_batch(&batch).unwrap().len(), 2);
        assert!(split_batch("[]").is_err());
    }
}
