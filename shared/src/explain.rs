//! `tidemark explain`: what the functions would decide for one item, stream record or
//! object, computed with the functions' own code (the stream decoder, the key templates,
//! heartbeat detection, residency rule evaluation). Pure: text in, an explanation out.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::config::{self, Bucket, Config, Table};
use crate::ddb::{EventName, Image, StreamRecord};
use crate::invalidation::{object_keys, render_key, table_keys};
use crate::objects::{ObjectEventKind, ObjectMessage, decode_form_key, object_placeholder};
use crate::residency::{self, Decision};

/// Why an input cannot be explained: what was expected, what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExplainError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, ExplainError> {
    Err(ExplainError(msg.into()))
}

/// One template and the key it renders (`None`: an attribute it names is missing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    pub template: String,
    pub key: Option<String>,
}

/// The residency decision, flattened for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResidencyView {
    pub region: String,
    /// Which image was judged (`new`, or `old` for a REMOVE); `object` for objects.
    pub evaluated: &'static str,
    /// The matching rule; `None` when no rule matched and `residency.unmatched` applies.
    pub rule: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    pub allowed_regions: Option<Vec<String>>,
    pub allowed: bool,
    /// `allowed`, or `violation`.
    pub decision: &'static str,
    /// What enforcement does on a violation.
    pub action: Option<&'static str>,
    /// Only objects S3 marked `REPLICA` are acted on (`replicas_only`).
    pub replicas_only: Option<bool>,
}

impl ResidencyView {
    fn new(d: &Decision<'_>, evaluated: &'static str, object: bool) -> Self {
        Self {
            region: d.region.clone(),
            evaluated,
            rule: d.rule.map(|r| r.name.clone()),
            matcher: d.rule.map(|r| r.matcher.to_string()),
            allowed_regions: d.rule.map(|r| r.allowed_regions.clone()),
            allowed: d.allowed,
            decision: if d.allowed { "allowed" } else { "violation" },
            action: d.action.map(config::Action::as_str),
            replicas_only: d.rule.filter(|_| object).map(|r| r.replicas_only),
        }
    }
}

/// What the stream-processor would do with one table change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemExplanation {
    pub table: String,
    pub region: String,
    pub event: &'static str,
    pub old_image: Vec<Rendered>,
    pub new_image: Vec<Rendered>,
    /// The keys the stream-processor publishes (old image, new image and key attributes,
    /// deduplicated); empty for a heartbeat.
    pub invalidated: Vec<String>,
    pub heartbeat: bool,
    pub residency: Option<ResidencyView>,
}

/// What the object-processor would do with one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectExplanation {
    /// Logical name in the configuration.
    pub source: String,
    pub bucket: String,
    pub region: String,
    /// The key as stored (decoded when the input was form-encoded).
    pub key: String,
    /// The key as given, when it was form-encoded (S3 event notifications).
    pub encoded_key: Option<String>,
    pub version: Option<String>,
    pub cache_keys: Vec<Rendered>,
    /// The keys the object-processor publishes; empty for a heartbeat.
    pub invalidated: Vec<String>,
    pub heartbeat: bool,
    pub residency: ResidencyView,
}

/// Resolves the table: the one named, the record's own, or the only one configured.
fn pick_table<'c>(config: &'c Config, named: Option<&str>) -> Result<&'c Table, ExplainError> {
    match named {
        Some(n) => config.table(n).ok_or_else(|| {
            ExplainError(format!(
                "table `{n}` is not in the configuration (tables: {})",
                names(config.tables.iter().map(|t| t.name.as_str()))
            ))
        }),
        None => match config.tables.as_slice() {
            [only] => Ok(only),
            [] => fail("the configuration has no tables"),
            many => fail(format!(
                "several tables are configured: name one with --table ({})",
                names(many.iter().map(|t| t.name.as_str()))
            )),
        },
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Explains every record of `text`: one stream record, or a Lambda batch `{"Records": […]}`.
pub fn explain_records(
    config: &Config,
    region: &str,
    table: Option<&str>,
    text: &str,
) -> Result<Vec<ItemExplanation>, ExplainError> {
    let trimmed = text.trim();
    let is_batch = serde_json::from_str::<serde_json::Value>(trimmed)
        .ok()
        .is_some_and(|v| v.get("Records").is_some_and(serde_json::Value::is_array));
    if is_batch {
        let raws = crate::ddb::split_batch(trimmed).map_err(|e| ExplainError(e.to_string()))?;
        if raws.is_empty() {
            return fail("the batch holds no record (`Records` is empty)");
        }
        raws.iter()
            .enumerate()
            .map(|(i, r)| {
                explain_record(config, region, table, r.get())
                    .map_err(|e| ExplainError(format!("record {i}: {e}")))
            })
            .collect()
    } else {
        explain_record(config, region, table, trimmed).map(|e| vec![e])
    }
}

/// Explains one stream record, decoded by the stream-processor's decoder.
pub fn explain_record(
    config: &Config,
    region: &str,
    table: Option<&str>,
    raw: &str,
) -> Result<ItemExplanation, ExplainError> {
    let record = StreamRecord::decode(raw)
        .map_err(|e| ExplainError(format!("not a DynamoDB stream record: {e}")))?;
    let named = table.or(record.table.as_deref());
    let table = pick_table(config, named)?;
    Ok(explain_decoded(config, region, table, &record))
}

/// Explains an item in DynamoDB JSON (`{"pk": {"S": "…"}, …}`, or `aws dynamodb get-item`
/// output `{"Item": {…}}`) as the new image of a change; `old` is the image before it.
pub fn explain_item(
    config: &Config,
    region: &str,
    table: Option<&str>,
    new: &str,
    old: Option<&str>,
) -> Result<ItemExplanation, ExplainError> {
    let table = pick_table(config, table)?;
    let record = item_record(table, region, new, old)?;
    let decoded =
        StreamRecord::decode(&record).map_err(|e| ExplainError(item_error(&e.to_string())))?;
    Ok(explain_decoded(config, region, table, &decoded))
}

/// A decode error of the record built from `--item`/`--old`, in the items' terms: attribute
/// paths without the record's `NewImage.`/`OldImage.`/`Keys.` prefix, and no line/column of
/// a record the operator never wrote.
fn item_error(e: &str) -> String {
    let e = e.strip_prefix("malformed stream record: ").unwrap_or(e);
    let e = e.rfind(" at line ").map_or(e, |i| &e[..i]);
    let which = if e.contains("`OldImage.") {
        "old item"
    } else {
        "item"
    };
    let e = e
        .replace("`NewImage.", "`")
        .replace("`OldImage.", "`")
        .replace("`Keys.", "`");
    format!("{which}: not valid DynamoDB JSON: {e}")
}

/// The stream record a change to this item produces (NEW_AND_OLD_IMAGES), so the item goes
/// through the same decoder as a record.
fn item_record(
    table: &Table,
    region: &str,
    new: &str,
    old: Option<&str>,
) -> Result<String, ExplainError> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    type Item = BTreeMap<String, Box<RawValue>>;
    let parse = |text: &str, what: &str| -> Result<(Item, String), ExplainError> {
        let item: Item = serde_json::from_str(text).map_err(|e| {
            ExplainError(format!(
                "{what}: expected an item in DynamoDB JSON ({{\"attr\": {{\"S\": \"…\"}}}}): {e}"
            ))
        })?;
        // `aws dynamodb get-item` output wraps the item in `Item`.
        if item.len() == 1
            && let Some(inner) = item.get("Item")
            && let Ok(unwrapped) = serde_json::from_str::<Item>(inner.get())
            && !unwrapped.keys().any(|k| TYPE_TAGS.contains(&k.as_str()))
        {
            return Ok((unwrapped, inner.get().to_owned()));
        }
        Ok((item, text.to_owned()))
    };
    let (new_item, new_text) = parse(new, "item")?;
    let old_text = old.map(|o| parse(o, "old item")).transpose()?;
    let mut keys = serde_json::Map::new();
    for k in std::iter::once(&table.partition_key).chain(table.sort_key.as_ref()) {
        let value = new_item.get(&k.name).ok_or_else(|| {
            ExplainError(format!(
                "item: table `{}` is keyed by `{}` ({}), which the item lacks",
                table.name, k.name, k.kind
            ))
        })?;
        let value: serde_json::Value = serde_json::from_str(value.get())
            .map_err(|e| ExplainError(format!("item: key `{}`: {e}", k.name)))?;
        keys.insert(k.name.clone(), value);
    }
    let keys = serde_json::Value::Object(keys).to_string();
    let event = if old_text.is_some() {
        "MODIFY"
    } else {
        "INSERT"
    };
    let old_part = old_text
        .map(|(_, t)| format!(r#","OldImage":{t}"#))
        .unwrap_or_default();
    Ok(format!(
        r#"{{"eventID":"explain","eventName":"{event}","eventSource":"aws:dynamodb","awsRegion":{region},"eventSourceARN":{arn},"dynamodb":{{"Keys":{keys},"NewImage":{new_text}{old_part},"SequenceNumber":"0","StreamViewType":"NEW_AND_OLD_IMAGES"}}}}"#,
        region = serde_json::Value::from(region),
        arn = serde_json::Value::from(format!(
            "arn:aws:dynamodb:{region}:000000000000:table/{}/stream/explain",
            table.name
        )),
    ))
}

const TYPE_TAGS: &[&str] = &["S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS"];

fn render_all(table: &Table, image: Option<&Image<'_>>) -> Vec<Rendered> {
    match image {
        None => Vec::new(),
        Some(img) => table
            .cache_keys
            .iter()
            .map(|t| Rendered {
                template: t.source().to_owned(),
                key: render_key(t, img),
            })
            .collect(),
    }
}

fn explain_decoded(
    config: &Config,
    region: &str,
    table: &Table,
    record: &StreamRecord<'_>,
) -> ItemExplanation {
    let heartbeat = record
        .keys
        .scalar(&table.partition_key.name)
        .is_some_and(|pk| config::is_heartbeat_item(&config.deployment.heartbeat_prefix, &pk));
    let mut invalidated = Vec::new();
    if !heartbeat {
        table_keys(table, record, |k| invalidated.push(k));
    }
    // The image that lands in this region: the new one; a REMOVE leaves only the old one.
    let judged = match (&record.new, &record.old) {
        (Some(new), _) => Some((new, "new")),
        (None, Some(old)) => Some((old, "old")),
        (None, None) => None,
    };
    let residency = judged.map(|(image, which)| {
        let subject = residency::Item { table, image };
        let d = residency::decide(
            &table.residency,
            &config.residency.unmatched,
            region,
            &subject,
        );
        ResidencyView::new(&d, which, false)
    });
    ItemExplanation {
        table: table.name.clone(),
        region: region.to_owned(),
        event: match record.event_name {
            EventName::Insert => "INSERT",
            EventName::Modify => "MODIFY",
            EventName::Remove => "REMOVE",
        },
        old_image: render_all(table, record.old.as_ref()),
        new_image: render_all(table, record.new.as_ref()),
        invalidated,
        heartbeat,
        residency,
    }
}

/// An object as the operator describes it.
#[derive(Debug, Clone, Default)]
pub struct ObjectInput {
    /// Logical name or the bucket's name in the region; default: the only bucket.
    pub bucket: Option<String>,
    pub key: String,
    /// `key` is form-encoded as in S3 event notifications (`red+flower.jpg`).
    pub encoded: bool,
    pub version: Option<String>,
    pub tags: Vec<(String, String)>,
    pub metadata: Vec<(String, String)>,
}

fn pick_bucket<'c>(
    config: &'c Config,
    region: &str,
    named: Option<&str>,
) -> Result<&'c Bucket, ExplainError> {
    match named {
        Some(n) => config
            .buckets
            .iter()
            .find(|b| b.name == n)
            .or_else(|| config.bucket_by_name(region, n))
            .ok_or_else(|| {
                ExplainError(format!(
                    "bucket `{n}` is not in the configuration, by name or as its name in {region} (buckets: {})",
                    names(config.buckets.iter().map(|b| b.name.as_str()))
                ))
            }),
        None => match config.buckets.as_slice() {
            [only] => Ok(only),
            [] => fail("the configuration has no buckets"),
            many => fail(format!(
                "several buckets are configured: name one with --bucket ({})",
                names(many.iter().map(|b| b.name.as_str()))
            )),
        },
    }
}

/// Explains one object.
pub fn explain_object(
    config: &Config,
    region: &str,
    input: &ObjectInput,
) -> Result<ObjectExplanation, ExplainError> {
    let bucket = pick_bucket(config, region, input.bucket.as_deref())?;
    let key = if input.encoded {
        decode_form_key(&input.key).ok_or_else(|| {
            ExplainError(format!(
                "key `{}` is not valid form-encoding (`+` for a space, `%XX` escapes of UTF-8)",
                input.key
            ))
        })?
    } else {
        input.key.clone()
    };
    if key.is_empty() {
        return fail("the object key is empty (S3 keys have at least one character)");
    }
    Ok(object_explanation(config, region, bucket, key, input))
}

fn object_explanation(
    config: &Config,
    region: &str,
    bucket: &Bucket,
    key: String,
    input: &ObjectInput,
) -> ObjectExplanation {
    let version = input.version.as_deref();
    let heartbeat = config::is_heartbeat_object(&config.deployment.heartbeat_prefix, &key);
    let mut invalidated = Vec::new();
    if !heartbeat {
        object_keys(bucket, &key, version, |k| invalidated.push(k));
    }
    let cache_keys = bucket
        .cache_keys
        .iter()
        .map(|t| Rendered {
            template: t.source().to_owned(),
            key: t.render(|name| object_placeholder(&key, version, name)),
        })
        .collect();
    let subject = residency::Object {
        key: &key,
        tags: &input.tags,
        metadata: &input.metadata,
    };
    let d = residency::decide(
        &bucket.residency,
        &config.residency.unmatched,
        region,
        &subject,
    );
    ObjectExplanation {
        source: bucket.name.clone(),
        bucket: bucket.bucket_in(region),
        region: region.to_owned(),
        encoded_key: input.encoded.then(|| input.key.clone()),
        key,
        version: input.version.clone(),
        cache_keys,
        invalidated,
        heartbeat,
        residency: ResidencyView::new(&d, "object", true),
    }
}

/// Explains the objects of an S3 event (EventBridge, or an S3 notification whose keys are
/// form-encoded), decoded by the object-processor's decoder. Events carry no tags or
/// metadata: those of `extra` apply to every object.
pub fn explain_s3_event(
    config: &Config,
    region: &str,
    text: &str,
    extra: &ObjectInput,
) -> Result<Vec<ObjectExplanation>, ExplainError> {
    let changes = match ObjectMessage::decode(text.trim()) {
        Ok(ObjectMessage::Changes(c)) => c,
        Ok(ObjectMessage::TestEvent) => return fail("s3:TestEvent carries no object"),
        Err(e) => return fail(format!("not an S3 event: {e}")),
    };
    changes
        .into_iter()
        .filter(|c| matches!(c.kind, ObjectEventKind::Created | ObjectEventKind::Deleted))
        .map(|c| {
            let in_region = if c.region.is_empty() {
                region
            } else {
                c.region.as_str()
            };
            let bucket = config.bucket_by_name(in_region, &c.bucket).ok_or_else(|| {
                ExplainError(format!(
                    "bucket `{}` is not in the configuration (as its name in {in_region})",
                    c.bucket
                ))
            })?;
            // The decoder already decoded a notification's form-encoded key.
            let input = ObjectInput {
                encoded: false,
                key: c.key.clone(),
                version: c.version_id.clone(),
                ..extra.clone()
            };
            Ok(object_explanation(config, region, bucket, c.key, &input))
        })
        .collect()
}

// ------------------------------------------------------------------ human-readable form

fn or_none(k: &Option<String>) -> &str {
    k.as_deref()
        .unwrap_or("(no key: an attribute it names is missing)")
}

impl fmt::Display for ResidencyView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let judged = match self.evaluated {
            "object" => String::new(),
            which => format!("{which} image, "),
        };
        write!(f, "residency ({judged}in {}): ", self.region)?;
        match (&self.rule, &self.matcher, &self.allowed_regions) {
            (Some(rule), Some(m), Some(regions)) => write!(
                f,
                "rule \"{rule}\" ({m}; allowed in {})",
                regions.join(", ")
            )?,
            _ => f.write_str("no rule matches; `residency.unmatched` applies")?,
        }
        if self.allowed {
            return f.write_str(" → allowed");
        }
        write!(f, " → VIOLATION, action `{}`", self.action.unwrap_or("?"))?;
        if self.replicas_only == Some(true) {
            f.write_str(" (only on objects S3 marked REPLICA)")?;
        }
        Ok(())
    }
}

impl fmt::Display for ItemExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {} in {}: {}", self.table, self.region, self.event)?;
        let mut out = String::new();
        for (label, rendered) in [
            ("old image", &self.old_image),
            ("new image", &self.new_image),
        ] {
            if rendered.is_empty() {
                let _ = writeln!(out, "  {label}: none in this record");
                continue;
            }
            let _ = writeln!(out, "  {label}:");
            for r in rendered {
                let _ = writeln!(out, "    {:<24} {}", r.template, or_none(&r.key));
            }
        }
        f.write_str(&out)?;
        if self.heartbeat {
            writeln!(
                f,
                "  heartbeat: yes (canary item: measured, never invalidated)"
            )?;
        } else {
            writeln!(f, "  heartbeat: no")?;
        }
        if self.invalidated.is_empty() {
            writeln!(f, "  invalidated: nothing")?;
        } else {
            writeln!(f, "  invalidated: {}", self.invalidated.join(", "))?;
        }
        match &self.residency {
            Some(r) => writeln!(f, "  {r}"),
            None => writeln!(f, "  residency: no image to judge"),
        }
    }
}

impl fmt::Display for ObjectExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bucket {} ({}) in {}: key `{}`",
            self.source, self.bucket, self.region, self.key
        )?;
        if let Some(e) = &self.encoded_key {
            write!(f, " (decoded from `{e}`)")?;
        }
        if let Some(v) = &self.version {
            write!(f, ", version {v}")?;
        }
        writeln!(f)?;
        writeln!(f, "  cache keys:")?;
        for r in &self.cache_keys {
            writeln!(
                f,
                "    {:<24} {}",
                r.template,
                r.key.as_deref().unwrap_or("(no key: no version id)")
            )?;
        }
        if self.heartbeat {
            writeln!(
                f,
                "  heartbeat: yes (canary object: measured, never invalidated)"
            )?;
        } else {
            writeln!(f, "  heartbeat: no")?;
        }
        if self.invalidated.is_empty() {
            writeln!(f, "  invalidated: nothing")?;
        } else {
            writeln!(f, "  invalidated: {}", self.invalidated.join(", "))?;
        }
        writeln!(f, "  {}", self.residency)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::embedded().unwrap()
    }

    #[test]
    fn changed_email_shows_old_and_new_keys_and_the_residency_decision() {
        let c = cfg();
        let e = explain_item(
            &c,
            "us-east-1",
            None,
            r#"{"pk":{"S":"u1"},"email":{"S":"b@x"},"home_region":{"S":"eu"}}"#,
            Some(r#"{"pk":{"S":"u1"},"email":{"S":"a@x"},"home_region":{"S":"eu"}}"#),
        )
        .unwrap();
        assert_eq!(e.event, "MODIFY");
        assert_eq!(e.old_image[1].key.as_deref(), Some("user-email:a@x"));
        assert_eq!(e.new_image[1].key.as_deref(), Some("user-email:b@x"));
        assert_eq!(
            e.invalidated,
            ["user:u1", "user-email:a@x", "user-email:b@x"]
        );
        let r = e.residency.unwrap();
        assert_eq!(r.rule.as_deref(), Some("eu-residents"));
        assert_eq!((r.decision, r.action), ("violation", Some("report")));
    }

    #[test]
    fn bad_items_are_reported_in_the_items_terms_without_their_values() {
        let c = cfg();
        let err = explain_item(
            &c,
            "eu-west-1",
            None,
            r#"{"pk":{"S":"u1"},"email":{"N":"secret-value"}}"#,
            None,
        )
        .unwrap_err();
        assert!(err.0.starts_with("item: "), "{err}");
        assert!(err.0.contains("attribute `email`"), "{err}");
        assert!(
            !err.0.contains("NewImage") && !err.0.contains("column"),
            "{err}"
        );
        assert!(!err.0.contains("secret-value"), "{err}");
        let err = explain_item(
            &c,
            "eu-west-1",
            None,
            r#"{"pk":{"S":"u1"}}"#,
            Some(r#"{"pk":{"S":"u1"},"email":{"N":"x"}}"#),
        )
        .unwrap_err();
        assert!(err.0.starts_with("old item: "), "{err}");
        assert!(err.0.contains("attribute `email`"), "{err}");
    }

    #[test]
    fn empty_keys_and_empty_batches_are_rejected() {
        let c = cfg();
        let input = ObjectInput {
            key: String::new(),
            ..ObjectInput::default()
        };
        let err = explain_object(&c, "eu-west-1", &input).unwrap_err();
        assert!(err.0.contains("key is empty"), "{err}");
        let err = explain_records(&c, "eu-west-1", None, r#"{"Records":[]}"#).unwrap_err();
        assert!(err.0.contains("no record"), "{err}");
    }

    #[test]
    fn get_item_output_is_unwrapped_and_a_missing_key_is_named() {
        let c = cfg();
        let e = explain_item(
            &c,
            "eu-west-1",
            None,
            r#"{"Item":{"pk":{"S":"u1"},"home_region":{"S":"eu"}}}"#,
            None,
        )
        .unwrap();
        assert_eq!(e.new_image[1].key, None);
        assert!(e.residency.unwrap().allowed);
        let err =
            explain_item(&c, "eu-west-1", None, r#"{"email":{"S":"a@x"}}"#, None).unwrap_err();
        assert!(err.0.contains("keyed by `pk`"), "{err}");
    }

    #[test]
    fn heartbeat_items_and_objects_are_never_invalidated() {
        let c = cfg();
        let e = explain_item(
            &c,
            "us-east-1",
            None,
            r#"{"pk":{"S":"tidemark-heartbeat#eu-west-1"}}"#,
            None,
        )
        .unwrap();
        assert!(e.heartbeat);
        assert!(e.invalidated.is_empty());
        let o = explain_object(
            &c,
            "us-east-1",
            &ObjectInput {
                key: "tidemark-heartbeat/eu-west-1".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(o.heartbeat);
        assert!(o.invalidated.is_empty());
    }

    #[test]
    fn encoded_object_keys_are_decoded_like_notifications() {
        let c = cfg();
        let o = explain_object(
            &c,
            "us-east-1",
            &ObjectInput {
                bucket: Some("tidemark-assets-us-east-1".into()),
                key: "eu/red+flower%2B.jpg".into(),
                encoded: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(o.key, "eu/red flower+.jpg");
        assert_eq!(o.invalidated, ["asset:eu/red flower+.jpg", "asset-dir:eu"]);
        assert_eq!(o.residency.rule.as_deref(), Some("eu-only"));
        assert_eq!(o.residency.action, Some("delete-replica"));
        assert_eq!(o.residency.replicas_only, Some(true));
    }
}
