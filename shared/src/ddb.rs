//! DynamoDB Streams records, decoded one at a time and borrowing from the raw JSON.
//!
//! Only the attributes a table declares (keys, template and rule attributes) are decoded;
//! the others are skipped unread. A decoded attribute is checked against the wire format
//! (`N` a number in a JSON string, `B` base64, `S` a string without lone surrogates, sets
//! and nested values likewise), so a malformed value makes that one record undecodable
//! instead of silently yielding no key or a wrong one. Errors name the attribute path and
//! the JSON kind found, never the value.

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

/// One attribute value, its type tag and payload checked against the DynamoDB JSON wire
/// format when it is decoded: a value that breaks it makes the record undecodable instead
/// of silently yielding no key (or a wrong one) later.
#[derive(Debug, Clone)]
pub struct Attr<'a> {
    pub tag: Tag,
    pub value: AttrValue<'a>,
}

/// The payload of an [`Attr`]: text for `S`, `N` and `B` (base64 as sent), a boolean for
/// `BOOL` and `NULL`, the raw (checked) JSON of sets, maps and lists.
#[derive(Debug, Clone)]
pub enum AttrValue<'a> {
    Text(Cow<'a, str>),
    Bool(bool),
    Nested(&'a RawValue),
}

impl<'a> Attr<'a> {
    /// The value as text for templates and rules: S, N and B (base64 as sent) and BOOL.
    /// Maps, lists, sets and NULL have no single text form.
    pub fn scalar(&self) -> Option<Cow<'a, str>> {
        match (&self.value, self.tag) {
            (AttrValue::Text(t), _) => Some(t.clone()),
            (AttrValue::Bool(b), Tag::Bool) => {
                Some(Cow::Borrowed(if *b { "true" } else { "false" }))
            }
            _ => None,
        }
    }

    /// Checks `raw` as the payload of a `tag` value. Errors name the tag and the JSON kind
    /// found, never the value.
    pub fn check(tag: Tag, raw: &'a RawValue) -> Result<Self, String> {
        let value = match tag {
            Tag::S => AttrValue::Text(text(raw, "S")?),
            Tag::N => {
                let t = text(raw, "N")?;
                if !is_number(&t) {
                    return Err("`N` value is not a number".into());
                }
                AttrValue::Text(t)
            }
            Tag::B => {
                let t = text(raw, "B")?;
                if !is_base64(&t) {
                    return Err("`B` value is not base64".into());
                }
                AttrValue::Text(t)
            }
            Tag::Bool => AttrValue::Bool(boolean(raw, "BOOL")?),
            Tag::Null => {
                if !boolean(raw, "NULL")? {
                    return Err("`NULL` value is false, expected true".into());
                }
                AttrValue::Bool(true)
            }
            Tag::Ss | Tag::Ns | Tag::Bs => {
                let name = match tag {
                    Tag::Ss => "SS",
                    Tag::Ns => "NS",
                    _ => "BS",
                };
                for (i, el) in array(raw, name)?.into_iter().enumerate() {
                    let t = text(el, name).map_err(|e| format!("[{i}]: {e}"))?;
                    let ok = match tag {
                        Tag::Ns => is_number(&t),
                        Tag::Bs => is_base64(&t),
                        _ => true,
                    };
                    if !ok {
                        return Err(format!(
                            "[{i}]: `{name}` element is not a {}",
                            if tag == Tag::Ns {
                                "number"
                            } else {
                                "base64 string"
                            }
                        ));
                    }
                }
                AttrValue::Nested(raw)
            }
            Tag::M | Tag::L => {
                check_nested(tag, raw, 1)?;
                AttrValue::Nested(raw)
            }
        };
        Ok(Attr { tag, value })
    }
}

/// DynamoDB nests maps and lists at most 32 levels deep.
const MAX_DEPTH: usize = 32;

fn check_nested(tag: Tag, raw: &RawValue, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let one = |path: String, v: &RawValue| -> Result<(), String> {
        let (tag, payload) = tagged(v).map_err(|e| format!("{path}: {e}"))?;
        match tag {
            Tag::M | Tag::L => check_nested(tag, payload, depth + 1),
            _ => Attr::check(tag, payload).map(drop),
        }
        .map_err(|e| format!("{path}: {e}"))
    };
    if tag == Tag::M {
        if kind(raw) != "object" {
            return Err(format!(
                "`M` value is a JSON {}, expected an object",
                kind(raw)
            ));
        }
        let m: Vec<(Str<'_>, &RawValue)> = serde_json::from_str::<MapEntries<'_>>(raw.get())
            .map_err(|e| format!("`M` value: {}", crate::error::redact_serde(&e)))?
            .0;
        for (name, v) in m {
            one(format!(".{}", &*name), v)?;
        }
    } else {
        for (i, v) in array(raw, "L")?.into_iter().enumerate() {
            one(format!("[{i}]"), v)?;
        }
    }
    Ok(())
}

/// A map's entries in wire order, values left raw.
struct MapEntries<'a>(Vec<(Str<'a>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for MapEntries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MapEntries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<MapEntries<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some(e) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                    out.push(e);
                }
                Ok(MapEntries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A nested `{"<tag>": payload}` value: its tag and raw payload.
fn tagged(raw: &RawValue) -> Result<(Tag, &RawValue), String> {
    if kind(raw) != "object" {
        return Err(format!(
            "attribute value is a JSON {}, expected an object like {{\"S\": \"text\"}}",
            kind(raw)
        ));
    }
    let entries = serde_json::from_str::<MapEntries<'_>>(raw.get())
        .map_err(|e| crate::error::redact_serde(&e))?
        .0;
    match entries.as_slice() {
        [(t, v)] => Tag::from_str(t)
            .map(|tag| (tag, *v))
            .ok_or_else(|| format!("unknown attribute type tag `{}`", &**t)),
        [] => Err("attribute value with no type tag".into()),
        _ => Err("attribute value with more than one type tag".into()),
    }
}

/// The JSON kind of a raw value, from its first byte (RawValue has no leading space).
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

fn text<'a>(raw: &'a RawValue, tag: &str) -> Result<Cow<'a, str>, String> {
    if kind(raw) != "string" {
        return Err(format!(
            "`{tag}` value is a JSON {}, expected a string",
            kind(raw)
        ));
    }
    // The raw value was checked when it was read (a JSON string: no control characters,
    // valid escapes' syntax): without a backslash, the text between the quotes is the value,
    // borrowed as the parser would.
    let quoted = raw.get();
    if let Some(inner) = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .filter(|inner| !inner.as_bytes().contains(&b'\\'))
    {
        return Ok(Cow::Borrowed(inner));
    }
    // Only escapes can fail here (a lone surrogate): the parser names the escape, not the text.
    serde_json::from_str::<Str<'a>>(quoted)
        .map(|s| s.0)
        .map_err(|e| format!("`{tag}` value: {}", crate::error::redact_serde(&e)))
}

fn boolean(raw: &RawValue, tag: &str) -> Result<bool, String> {
    match raw.get() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!(
            "`{tag}` value is a JSON {}, expected a boolean",
            kind(raw)
        )),
    }
}

fn array<'a>(raw: &'a RawValue, tag: &str) -> Result<Vec<&'a RawValue>, String> {
    if kind(raw) != "array" {
        return Err(format!(
            "`{tag}` value is a JSON {}, expected an array",
            kind(raw)
        ));
    }
    serde_json::from_str(raw.get())
        .map_err(|e| format!("`{tag}` value: {}", crate::error::redact_serde(&e)))
}

/// DynamoDB's number syntax: an optional sign, digits with an optional fraction, an
/// optional exponent, and at most 38 significant digits. No `NaN`, `Infinity` or hex.
pub fn is_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    let significant = s[int_start..]
        .bytes()
        .take_while(|c| *c != b'e' && *c != b'E')
        .filter(u8::is_ascii_digit)
        .skip_while(|c| *c == b'0')
        .count();
    i == b.len() && significant <= 38
}

/// Standard base64 with padding (what DynamoDB Streams send for `B`).
pub fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
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
                Attr::check(kind, raw).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Removes serde_json's trailing ` at line L column C` (the outer error adds its own).
fn bare(e: &dyn fmt::Display) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if s[i..].contains(" column ") => s[..i].to_owned(),
        _ => s,
    }
}

/// Reads one attribute of image `image`, naming `image.name` in any error.
fn next_attr<'de, M: MapAccess<'de>>(
    map: &mut M,
    image: &str,
    name: &str,
) -> Result<Attr<'de>, M::Error> {
    map.next_value::<Attr<'de>>().map_err(|e| {
        let why = crate::error::redact_message(&bare(&e));
        de::Error::custom(format!("attribute `{image}.{name}`: {why}"))
    })
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
        de::DeserializeSeed::deserialize(
            ImageSeed {
                wanted: None,
                image: "image",
            },
            d,
        )
    }
}

/// Decodes an image keeping only the `wanted` attributes (all when `None`); the others are
/// skipped without building values. Kept attributes are checked (tag and payload); errors
/// name `image.attribute`.
#[derive(Debug, Clone, Copy)]
pub struct ImageSeed<'w> {
    pub wanted: Option<&'w [String]>,
    /// `Keys`, `NewImage` or `OldImage`, for error messages.
    pub image: &'static str,
}

impl<'de, 'w> serde::de::DeserializeSeed<'de> for ImageSeed<'w> {
    type Value = Image<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Image<'de>, D::Error> {
        struct V<'w>(ImageSeed<'w>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = Image<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "`{}` as a map of attribute names to values",
                    self.0.image
                )
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Image<'de>, M::Error> {
                // `Keys` (all wanted) holds one or two attributes.
                let mut out = Vec::with_capacity(self.0.wanted.map_or(2, <[String]>::len));
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    if self.0.wanted.is_none_or(|w| w.iter().any(|x| *x == *k)) {
                        let v = next_attr(&mut map, self.0.image, &k)?;
                        out.push((k.0, v));
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(Image(out))
            }
        }
        d.deserialize_map(V(self))
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
    /// `dynamodb.StreamViewType`, when the record carries it.
    pub view_type: Option<ViewType>,
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

/// What a stream writes into each record (fixed per stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewType {
    KeysOnly,
    NewImage,
    OldImage,
    NewAndOldImages,
}

impl ViewType {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewType::KeysOnly => "KEYS_ONLY",
            ViewType::NewImage => "NEW_IMAGE",
            ViewType::OldImage => "OLD_IMAGE",
            ViewType::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }
}

#[derive(Default)]
struct WireRecord<'a> {
    event_id: Option<Str<'a>>,
    event_source: Option<Str<'a>>,
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
    view_type: Option<Str<'a>>,
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
                        "eventSource" => w.event_source = Some(map.next_value()?),
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
                        "Keys" => {
                            b.keys = Some(map.next_value_seed(ImageSeed {
                                wanted: None,
                                image: "Keys",
                            })?)
                        }
                        "NewImage" => {
                            b.new_image = Some(map.next_value_seed(ImageSeed {
                                image: "NewImage",
                                ..self.0
                            })?)
                        }
                        "OldImage" => {
                            b.old_image = Some(map.next_value_seed(ImageSeed {
                                image: "OldImage",
                                ..self.0
                            })?)
                        }
                        "SequenceNumber" => b.sequence_number = Some(map.next_value()?),
                        "StreamViewType" => b.view_type = Some(map.next_value()?),
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
        let w = RecordSeed(ImageSeed {
            wanted,
            image: "image",
        })
        .deserialize(&mut de)
        .and_then(|w| de.end().map(|()| w))
        .map_err(|e| DecodeError::malformed(RECORD, &e))?;
        // Lambda always sets it: a record without it, or from another source, is not ours
        // to interpret.
        match w.event_source.as_deref() {
            Some("aws:dynamodb") => {}
            Some(_) => {
                return Err(DecodeError::Unsupported(
                    "eventSource is not aws:dynamodb".into(),
                ));
            }
            None => {
                return Err(DecodeError::Missing {
                    what: RECORD,
                    field: "eventSource (expected aws:dynamodb)",
                });
            }
        }
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
        // Borrowed from the record unless the ARN had escapes (no copy per record).
        let table = w.event_source_arn.and_then(|arn| match arn.0 {
            Cow::Borrowed(a) => table_from_arn(a).map(Cow::Borrowed),
            Cow::Owned(a) => table_from_arn(&a).map(|t| Cow::Owned(t.to_owned())),
        });
        let approx_created_ms = body
            .approx
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(0, |s| (s * 1000.0) as u64);
        let view_type = match body.view_type.as_deref() {
            None => None,
            Some("KEYS_ONLY") => Some(ViewType::KeysOnly),
            Some("NEW_IMAGE") => Some(ViewType::NewImage),
            Some("OLD_IMAGE") => Some(ViewType::OldImage),
            Some("NEW_AND_OLD_IMAGES") => Some(ViewType::NewAndOldImages),
            Some(_) => {
                return Err(DecodeError::Unsupported(
                    "StreamViewType is not KEYS_ONLY, NEW_IMAGE, OLD_IMAGE or NEW_AND_OLD_IMAGES"
                        .into(),
                ));
            }
        };
        Ok(StreamRecord {
            event_id: w.event_id.map(|s| s.0).unwrap_or(Cow::Borrowed("")),
            view_type,
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

    /// Checks that `Keys` holds the table's key attributes with their declared types: a
    /// record without them identifies no item, so no cache key can be trusted.
    pub fn check_keys(
        &self,
        partition: &crate::config::KeyAttribute,
        sort: Option<&crate::config::KeyAttribute>,
    ) -> Result<(), DecodeError> {
        for (role, k) in std::iter::once(("partition", partition)).chain(sort.map(|s| ("sort", s)))
        {
            let expected = match k.kind {
                crate::config::KeyType::S => Tag::S,
                crate::config::KeyType::N => Tag::N,
                crate::config::KeyType::B => Tag::B,
            };
            match self.keys.get(&k.name) {
                None => {
                    return Err(DecodeError::Value {
                        path: format!("Keys.{}", k.name),
                        problem: format!("the {role} key is missing"),
                    });
                }
                Some(a) if a.tag != expected => {
                    return Err(DecodeError::Value {
                        path: format!("Keys.{}", k.name),
                        problem: format!(
                            "the {role} key has type {:?}, the table declares {:?}",
                            a.tag, k.kind
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Best-effort item key of a raw record for log lines: `name=value` per key attribute,
    /// in name order (`pk=user#1,sk=2`). Keys only, never other attributes; hashed by the
    /// pipeline when `hash_keys_in_alerts` is on.
    pub fn salvage_key(raw: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(raw).ok()?;
        let keys = v.get("dynamodb")?.get("Keys")?.as_object()?;
        let mut parts: Vec<String> = keys
            .iter()
            .filter_map(|(name, attr)| {
                let (_, value) = attr.as_object()?.iter().next()?;
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some(format!("{name}={text}"))
            })
            .collect();
        parts.sort();
        (!parts.is_empty()).then(|| parts.join(","))
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
        let e = StreamRecord::decode(
            r#"{"eventID":"x","eventName":"INSERT","eventSource":"aws:dynamodb"}"#,
        )
        .unwrap_err();
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
        let ttl = r#"{"eventID":"e","eventSource":"aws:dynamodb","eventName":"REMOVE","awsRegion":"us-east-1",
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

    fn with_new_email(value: &str) -> String {
        let out = MODIFY.replace(r#""email":{"S":"new@x"}"#, &format!(r#""email":{value}"#));
        assert_ne!(out, MODIFY);
        out
    }

    #[test]
    fn malformed_values_reject_the_record_naming_path_and_kind_never_the_value() {
        for (value, secret, expect) in [
            (
                r#"{"N":12345678901}"#,
                "12345678901",
                "`N` value is a JSON number, expected a string",
            ),
            (
                r#"{"S":98765432109}"#,
                "98765432109",
                "`S` value is a JSON number, expected a string",
            ),
            (
                r#"{"S":"plain\ud800@example.com"}"#,
                "plain",
                "`S` value: unexpected end of hex escape",
            ),
            (
                r#"{"S":"plain\udc00"}"#,
                "plain",
                "`S` value: lone leading surrogate in hex escape",
            ),
            (r#"{"N":"twelve"}"#, "twelve", "`N` value is not a number"),
            (r#"{"N":"NaN"}"#, "NaN", "`N` value is not a number"),
            (r#"{"N":"0x1F"}"#, "0x1F", "`N` value is not a number"),
            (
                r#"{"B":"plain@example.com"}"#,
                "plain@example.com",
                "`B` value is not base64",
            ),
            (
                r#"{"BOOL":"plain@example.com"}"#,
                "plain@example.com",
                "`BOOL` value is a JSON string",
            ),
            (
                r#"{"NS":["plain@example.com"]}"#,
                "plain@example.com",
                "[0]: `NS` element is not a number",
            ),
            (
                r#"{"SS":["a",123456789012]}"#,
                "123456789012",
                "[1]: `SS` value is a JSON number",
            ),
            (
                r#"{"M":{"a":{"N":"plain@example.com"}}}"#,
                "plain@example.com",
                ".a: `N` value is not a number",
            ),
            (
                r#"{"L":[{"S":"x"},{"Q":"plain@example.com"}]}"#,
                "plain@example.com",
                "[1]: unknown attribute type tag `Q`",
            ),
            (
                r#""plain@example.com""#,
                "plain@example.com",
                "invalid type: string, expected an attribute value",
            ),
            (
                r#"{"S":"plain@example.com","N":"1"}"#,
                "plain@example.com",
                "more than one type tag",
            ),
        ] {
            let e = StreamRecord::decode(&with_new_email(value))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains("attribute `NewImage.email`"), "{value}: {e}");
            assert!(e.contains(expect), "{value}: {e}");
            assert!(
                !e.contains(secret),
                "{value}: the reason quotes the value: {e}"
            );
            // The same with only the templates' attributes decoded.
            let wanted = vec!["email".to_owned()];
            assert!(StreamRecord::decode_only(&with_new_email(value), Some(&wanted)).is_err());
        }
    }

    #[test]
    fn well_formed_values_of_every_type_decode() {
        for value in [
            r#"{"N":"-1.5E+10"}"#,
            r#"{"N":"0.000123"}"#,
            r#"{"B":"aGVsbG8="}"#,
            r#"{"B":""}"#,
            r#"{"NULL":true}"#,
            r#"{"BS":["aGk=","AA=="]}"#,
            r#"{"M":{"a":{"L":[{"N":"1"},{"SS":["x"]}]}}}"#,
            r#"{"S":"caf\u00e9 \ud83e\udd80"}"#,
        ] {
            assert!(
                StreamRecord::decode(&with_new_email(value)).is_ok(),
                "{value}"
            );
        }
    }

    #[test]
    fn numbers_and_base64_follow_the_dynamodb_syntax() {
        for ok in ["0", "-0", "12.5", ".5", "5.", "1e5", "1E-130", "+3"] {
            assert!(is_number(ok), "{ok}");
        }
        for bad in [
            "", "-", ".", "1e", "e5", "NaN", "inf", "0x10", "1 ", " 1", "1,5", "1e+",
        ] {
            assert!(!is_number(bad), "{bad}");
        }
        assert!(!is_number(&"1".repeat(39)), "39 significant digits");
        assert!(is_number(&format!("0.{}", "1".repeat(38))));
        for ok in ["", "AA==", "AAA=", "AAAA", "a+/9"] {
            assert!(is_base64(ok), "{ok}");
        }
        for bad in ["A", "A===", "AA=A", "AA-_", "AAAA====", "plain@example.com"] {
            assert!(!is_base64(bad), "{bad}");
        }
    }

    #[test]
    fn keys_must_hold_the_declared_key_attributes() {
        use crate::config::{KeyAttribute, KeyType};
        let pk = KeyAttribute {
            name: "pk".into(),
            kind: KeyType::S,
        };
        let r = StreamRecord::decode(MODIFY).unwrap();
        assert!(r.check_keys(&pk, None).is_ok());
        let other = KeyAttribute {
            name: "id".into(),
            kind: KeyType::S,
        };
        let e = r.check_keys(&other, None).unwrap_err().to_string();
        assert_eq!(e, "attribute `Keys.id`: the partition key is missing");
        let sk = KeyAttribute {
            name: "sk".into(),
            kind: KeyType::N,
        };
        assert!(r.check_keys(&pk, Some(&sk)).is_err());
        let numeric = KeyAttribute {
            name: "pk".into(),
            kind: KeyType::N,
        };
        let e = r.check_keys(&numeric, None).unwrap_err().to_string();
        assert!(e.contains("has type S, the table declares N"), "{e}");
    }

    #[test]
    fn records_of_another_event_source_are_rejected() {
        let other = MODIFY.replace(
            r#""eventSource":"aws:dynamodb""#,
            r#""eventSource":"aws:kinesis""#,
        );
        assert_ne!(other, MODIFY);
        let e = StreamRecord::decode(&other).unwrap_err();
        assert_eq!(e.to_string(), "eventSource is not aws:dynamodb");
    }

    #[test]
    fn records_without_an_event_source_are_rejected() {
        let none = MODIFY.replace(r#""eventSource":"aws:dynamodb","#, "");
        assert_ne!(none, MODIFY);
        let e = StreamRecord::decode(&none).unwrap_err();
        assert_eq!(e.class(), crate::error::Class::Permanent);
        assert_eq!(
            e.to_string(),
            "stream record has no eventSource (expected aws:dynamodb)"
        );
    }

    #[test]
    fn view_type_is_read() {
        let r = StreamRecord::decode(MODIFY).unwrap();
        assert_eq!(r.view_type, Some(ViewType::NewAndOldImages));
        let bad = MODIFY.replace("NEW_AND_OLD_IMAGES", "EVERYTHING");
        assert!(StreamRecord::decode(&bad).is_err());
    }

    #[test]
    fn unknown_event_names_are_rejected_without_echoing_them() {
        let bad = MODIFY.replace(
            r#""eventName":"MODIFY""#,
            r#""eventName":"plain@example.com""#,
        );
        let e = StreamRecord::decode(&bad).unwrap_err().to_string();
        assert_eq!(e, "eventName is not INSERT, MODIFY or REMOVE");
    }
}
