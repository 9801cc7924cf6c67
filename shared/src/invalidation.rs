//! Invalidation: derive cache keys per change, coalesce them per batch, pack them into as
//! few SNS messages as the size limits allow, publish, and map failures back to records.
//!
//! Size model. An SNS message (body + String attributes) is at most 256 KiB, and an SQS
//! subscriber without raw delivery receives it JSON-escaped inside the SNS envelope, which
//! also carries the attributes, signature and URLs. So a body is packed until its
//! *escaped-twice* size (non-ASCII counted as `\uXXXX`) reaches [`BODY_BUDGET`], leaving
//! [`ENVELOPE_HEADROOM`] for the envelope. A PublishBatch request holds ≤ 10 entries and
//! ≤ 256 KiB in total, so full messages go one per call and small ones share a call:
//! calls ≈ ceil(total key bytes / BODY_BUDGET).

use std::collections::HashMap;

use futures::StreamExt;
use futures::future::BoxFuture;

use crate::config::DEFAULT_MAX_CACHE_KEY_BYTES;
use crate::config::{Bucket, Table};
use crate::ddb::{EventName, Image, StreamRecord, ViewType};
use crate::error::DecodeError;
use crate::error::{PortError, StageError};
use crate::message::{self, Invalidation};
use crate::metrics::{Dim, Metric, Metrics};
use crate::objects::{ObjectChange, ObjectEventKind, object_placeholder};
use crate::pipeline::Stage;
use crate::ports::{Outbound, Publish, PublishResult};
use crate::template::Template;

/// SNS: maximum message (body + attributes) and PublishBatch request size.
pub const SNS_MAX_BYTES: usize = 262_144;
/// SNS: entries per PublishBatch request.
pub const SNS_MAX_BATCH_ENTRIES: usize = 10;
/// Room left for the SNS → SQS envelope (~1.5 KiB: type, ids, topic ARN, timestamp,
/// signature, URLs) and the attributes it repeats.
pub const ENVELOPE_HEADROOM: usize = 8 * 1024;
/// Budget for a body's escaped-twice size.
pub const BODY_BUDGET: usize = SNS_MAX_BYTES - ENVELOPE_HEADROOM;

/// Bytes `s` takes once JSON-escaped (as a string value inside another JSON document),
/// counting non-ASCII as `\uXXXX` escapes in case a hop escapes them.
pub fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            '\u{0}'..='\u{1f}' => 6,
            c if c.is_ascii() => 1,
            c if (c as u32) < 0x10000 => 6,
            _ => 12,
        })
        .sum()
}

/// Bytes a key adds to a body once the SNS → SQS envelope escapes the body again: its JSON
/// string form (quotes, escapes), escaped a second time, plus the separating comma. Same
/// conservative rule as [`escaped_len`] for non-ASCII. One pass, no allocation.
pub fn key_cost(key: &str) -> usize {
    let body: usize = key
        .chars()
        .map(|c| match c {
            '"' | '\\' => 4,                             // \" → \\\"
            '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 3, // \n → \\n
            '\u{0}'..='\u{1f}' => 7,                     // \u0001 → \\u0001
            c if c.is_ascii() => 1,
            c if (c as u32) < 0x10000 => 6,
            _ => 12,
        })
        .sum();
    body + 4 + 1 // the two quotes (\" each) and a comma
}

/// The attribute-independent part of a message: which source, from where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Group {
    pub source: String,
    pub origin_region: String,
    pub replicated: bool,
}

#[derive(Debug)]
struct KeyEntry {
    key: String,
    group: usize,
    changed_at_ms: u64,
    first_record: usize,
    more_records: Vec<usize>,
    /// The next entry whose (group, key) hashes alike, or [`NONE`].
    next: usize,
}

const NONE: usize = usize::MAX;

/// Keys of one batch, deduplicated, each remembering the records that asked for it.
/// FNV-1a: keys are short and trusted-shape (rendered by our templates), so a simple fast
/// hash beats SipHash here; the map is per batch and never exposed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The map from a (group, key) hash to its first entry: the hash is already well mixed.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for safety.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn key_hash(group: usize, key: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = Fnv::default();
    h.write(&(group as u64).to_le_bytes());
    h.write(key.as_bytes());
    h.finish()
}

#[derive(Debug, Default)]
pub struct Coalescer {
    groups: Vec<Group>,
    entries: Vec<KeyEntry>,
    /// (group, key) hash → first entry with that hash; collisions chain through
    /// `KeyEntry::next`. The key text lives once, in its entry (no copy per key).
    index: HashMap<u64, usize, std::hash::BuildHasherDefault<Prehashed>>,
}

/// One message ready to publish and the records it speaks for.
#[derive(Debug, Clone)]
pub struct Packed {
    pub outbound: Outbound,
    pub records: Vec<usize>,
    pub keys: usize,
}

impl Coalescer {
    /// The index of a group, created on first use (no allocation when it exists).
    pub fn group(&mut self, source: &str, origin_region: &str, replicated: bool) -> usize {
        let found = self.groups.iter().position(|x| {
            x.replicated == replicated && x.source == source && x.origin_region == origin_region
        });
        found.unwrap_or_else(|| {
            self.groups.push(Group {
                source: source.to_owned(),
                origin_region: origin_region.to_owned(),
                replicated,
            });
            self.groups.len() - 1
        })
    }

    pub fn add(&mut self, group: &Group, key: String, record: usize, changed_at_ms: u64) {
        let g = self.group(&group.source, &group.origin_region, group.replicated);
        self.add_key(g, &key, record, changed_at_ms);
    }

    /// Adds a key to group `g` (from [`Coalescer::group`]).
    pub fn add_to(&mut self, g: usize, key: String, record: usize, changed_at_ms: u64) {
        self.add_key(g, &key, record, changed_at_ms);
    }

    /// [`Coalescer::add_to`] from borrowed text: the key is copied only when it is new to
    /// the batch.
    pub fn add_key(&mut self, g: usize, key: &str, record: usize, changed_at_ms: u64) {
        let h = key_hash(g, key);
        let head = self.index.get(&h).copied().unwrap_or(NONE);
        let mut i = head;
        while i != NONE {
            let e = &mut self.entries[i];
            if e.group == g && e.key == key {
                e.changed_at_ms = e.changed_at_ms.min(changed_at_ms);
                if e.first_record != record && e.more_records.last() != Some(&record) {
                    e.more_records.push(record);
                }
                return;
            }
            i = e.next;
        }
        self.index.insert(h, self.entries.len());
        self.entries.push(KeyEntry {
            key: key.to_owned(),
            group: g,
            changed_at_ms,
            first_record: record,
            more_records: Vec::new(),
            next: head,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Packs keys into messages within [`BODY_BUDGET`] (see the module docs).
    pub fn pack(&self, budget: usize) -> Vec<Packed> {
        let mut out = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            let header_template = Invalidation {
                v: message::VERSION,
                source: group.source.clone(),
                origin_region: group.origin_region.clone(),
                replicated: group.replicated,
                changed_at_ms: u64::MAX, // widest number: the real one is never longer
                keys: Vec::new(),
            };
            let base = serde_json::to_string(&header_template)
                .map(|s| escaped_len(&s))
                .unwrap_or(512);
            let mut current: Vec<&KeyEntry> = Vec::new();
            let mut cost = base;
            for e in self.entries.iter().filter(|e| e.group == g) {
                let key_cost = key_cost(&e.key);
                if !current.is_empty() && cost + key_cost > budget {
                    out.push(finish(group, &current, out.len()));
                    current.clear();
                    cost = base;
                }
                current.push(e);
                cost += key_cost;
            }
            if !current.is_empty() {
                out.push(finish(group, &current, out.len()));
            }
        }
        out
    }
}

fn finish(group: &Group, entries: &[&KeyEntry], n: usize) -> Packed {
    let changed_at_ms = entries.iter().map(|e| e.changed_at_ms).min().unwrap_or(0);
    let msg = message::InvalidationRef {
        v: message::VERSION,
        source: &group.source,
        origin_region: &group.origin_region,
        replicated: group.replicated,
        changed_at_ms,
        keys: entries.iter().map(|e| e.key.as_str()).collect(),
    };
    let mut records: Vec<usize> = entries
        .iter()
        .flat_map(|e| std::iter::once(e.first_record).chain(e.more_records.iter().copied()))
        .collect();
    records.sort_unstable();
    records.dedup();
    Packed {
        outbound: Outbound {
            id: format!("m{n}"),
            body: serde_json::to_string(&msg).unwrap_or_default(),
            attributes: vec![
                (message::ATTR_ORIGIN_REGION, group.origin_region.clone()),
                (message::ATTR_SOURCE, group.source.clone()),
                (message::ATTR_REPLICATED, group.replicated.to_string()),
                (message::ATTR_CHANGED_AT, changed_at_ms.to_string()),
            ],
        },
        records,
        keys: entries.len(),
    }
}

/// Groups packed messages into PublishBatch requests (≤ 10 entries, ≤ 256 KiB).
pub fn batch_requests(packed: &[Packed]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, p) in packed.iter().enumerate() {
        let s = p.outbound.sns_size();
        if i > start && (i - start >= SNS_MAX_BATCH_ENTRIES || size + s > SNS_MAX_BYTES) {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += s;
    }
    if start < packed.len() {
        out.push(start..packed.len());
    }
    out
}

/// Publishes everything; returns the records whose keys were not published, each with the
/// classed error of its message (a permanent one dead-letters the record).
pub async fn publish_all(
    publisher: &dyn Publish,
    packed: &[Packed],
    function: &str,
    metrics: &mut Metrics,
) -> Vec<(usize, StageError)> {
    let requests = batch_requests(packed);
    let calls = requests.len();
    let results: Vec<(std::ops::Range<usize>, PublishResult)> =
        futures::stream::iter(requests.into_iter().map(|range| {
            let entries: Vec<Outbound> = packed[range.clone()]
                .iter()
                .map(|p| p.outbound.clone())
                .collect();
            async move {
                let r = publisher.publish_batch(&entries).await;
                (range, r)
            }
        }))
        .buffer_unordered(4)
        .collect()
        .await;

    let mut failed = Vec::new();
    let mut failures = 0usize;
    let mut sent: HashMap<&str, (usize, usize, usize)> = HashMap::new();
    for (range, result) in results {
        for (offset, p) in packed[range.clone()].iter().enumerate() {
            let outcome = match &result {
                Err(e) => Err(e.clone()),
                Ok(per_entry) => per_entry.get(offset).cloned().unwrap_or_else(|| {
                    Err(PortError::Transient(format!(
                        "no PublishBatch result for entry {}",
                        p.outbound.id
                    )))
                }),
            };
            match outcome {
                Ok(()) => {
                    let source = p
                        .outbound
                        .attributes
                        .iter()
                        .find(|(k, _)| *k == message::ATTR_SOURCE);
                    let e = sent
                        .entry(source.map_or("", |(_, v)| v.as_str()))
                        .or_default();
                    e.0 += p.keys;
                    e.1 += 1;
                    e.2 += p.outbound.body.len();
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(message = %p.outbound.id, keys = p.keys, class = %e.class(), error = %e, "invalidation publish failed");
                    failed.extend(p.records.iter().map(|r| (*r, StageError::Port(e.clone()))));
                }
            }
        }
    }
    let f = [(Dim::Function, function)];
    metrics.put(Metric::PublishCalls, &f, calls as f64);
    metrics.put(Metric::PublishFailures, &f, failures as f64);
    for (source, (keys, messages, bytes)) in sent {
        let d = [(Dim::Function, function), (Dim::Source, source)];
        metrics.put(Metric::InvalidationKeys, &d, keys as f64);
        metrics.put(Metric::InvalidationMessages, &d, messages as f64);
        metrics.put(Metric::InvalidationBytes, &d, bytes as f64);
    }
    failed
}

// ------------------------------------------------------------------ key derivation

/// Cache keys of one table change: every template on the old image, the new image and the
/// key attributes, so a changed templated attribute invalidates the old and the new key,
/// and a REMOVE (or TTL delete) uses what the stream still carries.
pub fn table_keys(table: &Table, record: &StreamRecord<'_>, mut emit: impl FnMut(String)) {
    table_keys_by_template(table, record, |_, k| emit(k));
}

/// [`table_keys`], each key with the template that rendered it.
pub fn table_keys_by_template<'t>(
    table: &'t Table,
    record: &StreamRecord<'_>,
    mut emit: impl FnMut(&'t Template, String),
) {
    let mut keys = RenderedKeys::default();
    keys.render(table, record);
    for (t, k) in keys.iter(table) {
        emit(t, k.to_owned());
    }
}

/// The distinct cache keys of one change, rendered into one reusable buffer (no allocation
/// per key once warm): every template on the old image, the new image and the keys.
#[derive(Debug, Default)]
pub struct RenderedKeys {
    text: String,
    /// (template index, end of the key in `text`); each key starts where the last ended.
    ends: Vec<(usize, usize)>,
}

impl RenderedKeys {
    /// Renders `record`'s keys, replacing the previous record's.
    pub fn render(&mut self, table: &Table, record: &StreamRecord<'_>) {
        self.text.clear();
        self.ends.clear();
        let images = [record.old.as_ref(), record.new.as_ref(), Some(&record.keys)];
        for (ti, t) in table.cache_keys.iter().enumerate() {
            for img in images.iter().flatten() {
                let start = self.text.len();
                if !t.render_into(&mut self.text, |name| img.scalar(name)) {
                    continue;
                }
                let new = &self.text[start..];
                let mut s = 0;
                let dup = self.ends.iter().any(|&(_, e)| {
                    let seen = &self.text[s..e];
                    s = e;
                    seen == new
                });
                if dup {
                    self.text.truncate(start);
                } else {
                    self.ends.push((ti, self.text.len()));
                }
            }
        }
    }

    /// Each distinct key with its template, in rendering order.
    pub fn iter<'s, 't>(
        &'s self,
        table: &'t Table,
    ) -> impl Iterator<Item = (&'t Template, &'s str)> + 's
    where
        't: 's,
    {
        let mut start = 0;
        self.ends.iter().map(move |&(ti, end)| {
            let k = &self.text[start..end];
            start = end;
            (&table.cache_keys[ti], k)
        })
    }
}

/// Whether `table`'s templates name an attribute that is not a key: then a record must
/// carry the item images (old for the previous value's key, new for the current one's).
pub fn needs_images(table: &Table) -> bool {
    table.cache_keys.iter().any(|t| {
        t.placeholders().any(|p| {
            p != table.partition_key.name && table.sort_key.as_ref().is_none_or(|s| s.name != p)
        })
    })
}

/// Rejects a record whose stream cannot serve `table`'s templates. On a `KEYS_ONLY`,
/// `NEW_IMAGE` or `OLD_IMAGE` stream the keys of the image it lacks (the old e-mail after
/// a change) would never be invalidated, and nothing would say so: such records are
/// dead-lettered with the reason, so the RecordsRejected alarm fires at the first one. A
/// record without the view type is checked by the images its event must carry.
pub fn check_view(table: &Table, record: &StreamRecord<'_>) -> Result<(), DecodeError> {
    if !needs_images(table) {
        return Ok(());
    }
    if let Some(v) = record.view_type
        && v != ViewType::NewAndOldImages
    {
        return Err(DecodeError::Unsupported(format!(
            "stream view type {} cannot serve the cache-key templates of table `{}` (they name \
             non-key attributes): the stream must be NEW_AND_OLD_IMAGES",
            v.as_str(),
            table.name
        )));
    }
    let missing = match record.event_name {
        EventName::Insert if record.new.is_none() => Some("NewImage"),
        EventName::Modify if record.old.is_none() => Some("OldImage"),
        EventName::Modify if record.new.is_none() => Some("NewImage"),
        EventName::Remove if record.old.is_none() => Some("OldImage"),
        _ => None,
    };
    match missing {
        Some(image) => Err(DecodeError::Unsupported(format!(
            "{:?} record has no {image}, which the cache-key templates of table `{}` need: the \
             stream must be NEW_AND_OLD_IMAGES",
            record.event_name, table.name
        ))),
        None => Ok(()),
    }
}

/// One template on one image: `None` when an attribute it names is missing or not scalar.
pub fn render_key(template: &Template, image: &Image<'_>) -> Option<String> {
    template.render(|name| image.scalar(name))
}

/// Cache keys of one object change (`{key}`, `{dir}`, `{file}`, `{version}`).
pub fn object_keys(
    bucket: &Bucket,
    key: &str,
    version: Option<&str>,
    mut emit: impl FnMut(String),
) {
    object_keys_by_template(bucket, key, version, |_, k| emit(k));
}

/// [`object_keys`], each key with the template that rendered it.
pub fn object_keys_by_template<'t>(
    bucket: &'t Bucket,
    key: &str,
    version: Option<&str>,
    mut emit: impl FnMut(&'t Template, String),
) {
    for t in &bucket.cache_keys {
        if let Some(k) = t.render(|name| object_placeholder(key, version, name)) {
            emit(t, k);
        }
    }
}

/// A permanent failure when `key` is longer than `max` bytes. The reason names the source
/// and the template, never the key (it may carry personal data).
fn check_key_size(
    source: &str,
    template: &Template,
    key: &str,
    max: usize,
) -> Result<(), StageError> {
    if key.len() > max {
        return Err(StageError::Invalid(format!(
            "source `{source}`: template `{template}` rendered a cache key of {} bytes, above \
             deployment.max_cache_key_bytes ({max})",
            key.len()
        )));
    }
    Ok(())
}

/// A table change with its configuration resolved.
#[derive(Debug)]
pub struct TableChange<'c, 'r> {
    pub table: &'c Table,
    pub record: StreamRecord<'r>,
    /// A canary heartbeat item (reserved key prefix): measured, never invalidated.
    pub heartbeat: bool,
}

/// An object change with its configuration resolved.
#[derive(Debug)]
pub struct ObjectEvent<'c> {
    pub bucket: &'c Bucket,
    pub changes: Vec<ObjectChange>,
    /// `deployment.heartbeat_prefix`: objects under `<prefix>/` are heartbeats.
    pub heartbeat_prefix: &'c str,
}

/// The invalidation stage, for either kind of change.
pub struct InvalidationStage<'p> {
    publisher: &'p dyn Publish,
    function: &'p str,
    region: &'p str,
    max_key_bytes: usize,
    coalescer: Coalescer,
    /// The current record's keys (a buffer reused across records).
    keys: RenderedKeys,
}

impl<'p> InvalidationStage<'p> {
    pub fn new(publisher: &'p dyn Publish, function: &'p str, region: &'p str) -> Self {
        Self {
            publisher,
            function,
            region,
            max_key_bytes: DEFAULT_MAX_CACHE_KEY_BYTES,
            coalescer: Coalescer::default(),
            keys: RenderedKeys::default(),
        }
    }

    /// Keys longer than `max` bytes reject their record (`deployment.max_cache_key_bytes`).
    pub fn with_max_key_bytes(mut self, max: usize) -> Self {
        self.max_key_bytes = max;
        self
    }

    pub fn coalescer(&self) -> &Coalescer {
        &self.coalescer
    }
}

impl<'c, 'r> Stage<TableChange<'c, 'r>> for InvalidationStage<'_> {
    fn name(&self) -> &'static str {
        "invalidation"
    }

    fn observe(&mut self, index: usize, c: &TableChange<'c, 'r>) -> Result<(), StageError> {
        if c.heartbeat {
            return Ok(());
        }
        let t = c.table;
        // The image that describes the item as of this change: a REMOVE has only the old.
        let current = match c.record.event_name {
            EventName::Remove => c.record.old.as_ref(),
            _ => c.record.new.as_ref(),
        };
        // Borrowed: no copy per record (the group is found by comparison).
        let origin: std::borrow::Cow<'_, str> = t
            .app_attributes
            .origin_region
            .as_deref()
            .and_then(|a| current.and_then(|i| i.scalar(a)))
            .unwrap_or(std::borrow::Cow::Borrowed(if c.record.region.is_empty() {
                self.region
            } else {
                &c.record.region
            }));
        let changed_at = t
            .app_attributes
            .written_at_ms
            .as_deref()
            .filter(|_| c.record.new.is_some())
            .and_then(|a| c.record.new.as_ref().and_then(|i| i.scalar(a)))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(c.record.approx_created_ms, |ms| ms as u64);
        self.keys.render(t, &c.record);
        // Check every key before adding any: a rejected record publishes nothing.
        for (tpl, k) in self.keys.iter(t) {
            check_key_size(&t.name, tpl, k, self.max_key_bytes)?;
        }
        let g = self.coalescer.group(&t.name, &origin, t.replicated);
        for (_, k) in self.keys.iter(t) {
            self.coalescer.add_key(g, k, index, changed_at);
        }
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            let packed = self.coalescer.pack(BODY_BUDGET);
            publish_all(self.publisher, &packed, self.function, metrics).await
        })
    }
}

impl<'c> Stage<ObjectEvent<'c>> for InvalidationStage<'_> {
    fn name(&self) -> &'static str {
        "invalidation"
    }

    fn observe(&mut self, index: usize, ev: &ObjectEvent<'c>) -> Result<(), StageError> {
        let b = ev.bucket;
        let mut planned = Vec::new();
        for c in &ev.changes {
            if !matches!(c.kind, ObjectEventKind::Created | ObjectEventKind::Deleted)
                || crate::config::is_heartbeat_object(ev.heartbeat_prefix, &c.key)
            {
                continue;
            }
            let region = if c.region.is_empty() {
                self.region.to_owned()
            } else {
                c.region.clone()
            };
            let group = Group {
                source: b.name.clone(),
                origin_region: region,
                replicated: b.replicated,
            };
            let mut keys = Vec::with_capacity(b.cache_keys.len());
            object_keys_by_template(b, &c.key, c.version_id.as_deref(), |tpl, k| {
                keys.push((tpl, k))
            });
            for (tpl, k) in &keys {
                check_key_size(&b.name, tpl, k, self.max_key_bytes)?;
            }
            planned.push((group, keys, c.event_time_ms));
        }
        for (group, keys, at) in planned {
            for (_, k) in keys {
                self.coalescer.add(&group, k, index, at);
            }
        }
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            let packed = self.coalescer.pack(BODY_BUDGET);
            publish_all(self.publisher, &packed, self.function, metrics).await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn users() -> Config {
        Config::parse(
            "t.toml",
            r#"
[deployment]
regions = ["us-east-1", "eu-west-1"]
[residency]
unmatched = "anywhere"
[[tables]]
name = "users"
partition_key = { name = "pk", type = "S" }
attributes = ["email"]
cache_keys = ["user:{pk}", "user-email:{email}"]
"#,
        )
        .unwrap()
    }

    fn keys_of(raw: &str) -> Vec<String> {
        let cfg = users();
        let rec = StreamRecord::decode(raw).unwrap();
        let mut out = Vec::new();
        table_keys(&cfg.tables[0], &rec, |k| out.push(k));
        out.sort();
        out
    }

    #[test]
    fn modify_with_changed_email_invalidates_old_and_new_key() {
        let raw = r#"{"eventSource":"aws:dynamodb","eventName":"MODIFY","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1",
          "OldImage":{"pk":{"S":"1"},"email":{"S":"a@x"}},"NewImage":{"pk":{"S":"1"},"email":{"S":"b@x"}}}}"#;
        assert_eq!(keys_of(raw), ["user-email:a@x", "user-email:b@x", "user:1"]);
    }

    #[test]
    fn remove_uses_old_image_and_keys_only_streams_still_invalidate_key_templates() {
        let raw = r#"{"eventSource":"aws:dynamodb","eventName":"REMOVE","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1",
          "OldImage":{"pk":{"S":"1"},"email":{"S":"a@x"}}}}"#;
        assert_eq!(keys_of(raw), ["user-email:a@x", "user:1"]);
        let keys_only = r#"{"eventSource":"aws:dynamodb","eventName":"REMOVE","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1"}}"#;
        assert_eq!(keys_of(keys_only), ["user:1"]);
    }

    fn group() -> Group {
        Group {
            source: "users".into(),
            origin_region: "us-east-1".into(),
            replicated: true,
        }
    }

    #[test]
    fn coalescer_dedupes_and_remembers_records() {
        let mut c = Coalescer::default();
        c.add(&group(), "k1".into(), 0, 50);
        c.add(&group(), "k1".into(), 3, 20);
        c.add(&group(), "k2".into(), 3, 30);
        assert_eq!(c.len(), 2);
        let packed = c.pack(BODY_BUDGET);
        assert_eq!(packed.len(), 1);
        assert_eq!(packed[0].records, [0, 3]);
        let m = Invalidation::decode(&packed[0].outbound.body).unwrap();
        assert_eq!(m.keys, ["k1", "k2"]);
        assert_eq!(m.changed_at_ms, 20);
    }

    #[test]
    fn packing_respects_the_budget_even_for_escaping_heavy_keys() {
        let mut c = Coalescer::default();
        for i in 0..20_000 {
            // quotes, backslashes and non-ASCII all grow when escaped
            c.add(
                &group(),
                format!("user:\"{i}\"\\é日本:{}", "x".repeat(20)),
                i,
                1,
            );
        }
        let packed = c.pack(BODY_BUDGET);
        assert!(packed.len() > 1);
        let total: usize = packed.iter().map(|p| p.keys).sum();
        assert_eq!(total, 20_000);
        for p in &packed {
            // Simulate the SNS → SQS envelope: the body as a JSON string inside another document.
            let enveloped = serde_json::to_string(
                &serde_json::json!({"Type": "Notification", "Message": p.outbound.body}),
            )
            .unwrap();
            assert!(escaped_len(&p.outbound.body) <= BODY_BUDGET);
            assert!(
                enveloped.len() + ENVELOPE_HEADROOM / 2 < SNS_MAX_BYTES,
                "{}",
                enveloped.len()
            );
            assert!(p.outbound.sns_size() <= SNS_MAX_BYTES);
        }
        // Nearly full messages: ceil(total cost / budget) messages, not more.
        let total_cost: usize = packed.iter().map(|p| escaped_len(&p.outbound.body)).sum();
        assert!(packed.len() <= total_cost.div_ceil(BODY_BUDGET) + 1);
    }

    #[test]
    fn key_cost_is_the_double_escaped_size_and_never_less() {
        for key in [
            "user:1",
            "q\"uote",
            "back\\slash",
            "tab\tnl\n",
            "ctl\u{1}",
            "é",
            "日本",
            "🦀",
            "",
        ] {
            // The key as an element of the body's array, then the body inside the envelope.
            let once = serde_json::to_string(key).unwrap();
            let twice = serde_json::to_string(&once).unwrap();
            let real = twice.len() - 2 + 1; // minus the envelope's own quotes, plus a comma
            if key.is_ascii() {
                assert_eq!(key_cost(key), real, "{key:?}");
            } else {
                assert!(key_cost(key) >= real, "{key:?}");
            }
        }
    }

    #[test]
    fn requests_hold_at_most_ten_entries_and_256_kib() {
        let mk = |n: usize, size: usize| Packed {
            outbound: Outbound {
                id: format!("m{n}"),
                body: "x".repeat(size),
                attributes: vec![],
            },
            records: vec![],
            keys: 1,
        };
        let small: Vec<Packed> = (0..25).map(|i| mk(i, 100)).collect();
        assert_eq!(batch_requests(&small), vec![0..10, 10..20, 20..25]);
        let big: Vec<Packed> = (0..3).map(|i| mk(i, 200_000)).collect();
        assert_eq!(batch_requests(&big), vec![0..1, 1..2, 2..3]);
    }

    struct Refusing(Option<PortError>);
    impl Publish for Refusing {
        fn publish_batch<'a>(&'a self, entries: &'a [Outbound]) -> BoxFuture<'a, PublishResult> {
            Box::pin(async move {
                Ok(entries
                    .iter()
                    .map(|_| self.0.clone().map_or(Ok(()), Err))
                    .collect())
            })
        }
    }

    fn change<'c, 'r>(cfg: &'c Config, raw: &'r str) -> TableChange<'c, 'r> {
        TableChange {
            table: &cfg.tables[0],
            record: StreamRecord::decode(raw).unwrap(),
            heartbeat: false,
        }
    }

    fn origins(stage: &InvalidationStage<'_>) -> Vec<String> {
        stage
            .coalescer()
            .pack(BODY_BUDGET)
            .iter()
            .map(|p| {
                Invalidation::decode(&p.outbound.body)
                    .unwrap()
                    .origin_region
            })
            .collect()
    }

    #[test]
    fn remove_takes_its_origin_region_from_the_old_image() {
        let cfg = Config::parse(
            "t.toml",
            r#"
[deployment]
regions = ["us-east-1", "eu-west-1"]
[residency]
unmatched = "anywhere"
[[tables]]
name = "users"
partition_key = { name = "pk", type = "S" }
attributes = ["email", "origin"]
cache_keys = ["user:{pk}"]
app_attributes = { origin_region = "origin" }
"#,
        )
        .unwrap();
        // Deleted in eu-west-1; this is us-east-1's replica stream.
        let raw = r#"{"eventSource":"aws:dynamodb","eventName":"REMOVE","awsRegion":"us-east-1","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1",
          "OldImage":{"pk":{"S":"1"},"origin":{"S":"eu-west-1"}}}}"#;
        let p = Refusing(None);
        let mut stage = InvalidationStage::new(&p, "sp", "us-east-1");
        stage.observe(0, &change(&cfg, raw)).unwrap();
        assert_eq!(origins(&stage), ["eu-west-1"]);
    }

    #[test]
    fn a_key_above_the_limit_rejects_its_record_and_publishes_nothing() {
        let cfg = users();
        let email = format!("{}@example.com", "x".repeat(300 * 1024));
        let raw = format!(
            r#"{{"eventSource":"aws:dynamodb","eventName":"MODIFY","dynamodb":{{"Keys":{{"pk":{{"S":"1"}}}},"SequenceNumber":"1",
              "OldImage":{{"pk":{{"S":"1"}},"email":{{"S":"a@x"}}}},"NewImage":{{"pk":{{"S":"1"}},"email":{{"S":"{email}"}}}}}}}}"#
        );
        let p = Refusing(None);
        let mut stage = InvalidationStage::new(&p, "sp", "us-east-1");
        let e = stage.observe(0, &change(&cfg, &raw)).unwrap_err();
        assert_eq!(e.class(), crate::error::Class::Permanent);
        let why = e.to_string();
        assert!(
            why.contains("template `user-email:{email}`")
                && why.contains(&format!("{} bytes", "user-email:".len() + email.len()))
                && why.contains("max_cache_key_bytes (1024)"),
            "{why}"
        );
        assert!(!why.contains("xxxxxxxx"), "the reason quotes the key");
        assert!(
            stage.coalescer().is_empty(),
            "none of the record's keys is published"
        );

        // A configured larger limit lets it through.
        let mut stage =
            InvalidationStage::new(&p, "sp", "us-east-1").with_max_key_bytes(400 * 1024);
        assert!(stage.observe(0, &change(&cfg, &raw)).is_ok());
    }

    #[test]
    fn the_largest_allowed_key_fits_one_message_even_escaped_twice() {
        let worst = "\u{1}".repeat(crate::config::MAX_CACHE_KEY_BYTES);
        let mut c = Coalescer::default();
        c.add(&group(), worst, 0, u64::MAX);
        let packed = c.pack(BODY_BUDGET);
        assert_eq!(packed.len(), 1);
        assert!(escaped_len(&packed[0].outbound.body) <= BODY_BUDGET);
    }

    #[test]
    fn objects_named_like_the_heartbeat_prefix_are_invalidated() {
        let cfg = Config::parse(
            "t.toml",
            r#"
[deployment]
regions = ["us-east-1", "eu-west-1"]
[residency]
unmatched = "anywhere"
[[buckets]]
name = "assets"
bucket = "assets-{region}"
cache_keys = ["asset:{key}"]
"#,
        )
        .unwrap();
        let p = Refusing(None);
        let mut stage = InvalidationStage::new(&p, "op", "us-east-1");
        let obj = |key: &str| ObjectChange {
            event_id: "e".into(),
            region: "us-east-1".into(),
            bucket: "assets-us-east-1".into(),
            key: key.into(),
            version_id: None,
            sequencer: None,
            kind: ObjectEventKind::Created,
            event_time_ms: 1,
            replication: None,
        };
        let ev = ObjectEvent {
            bucket: &cfg.buckets[0],
            changes: vec![
                obj("tidemark-heartbeat.png"),
                obj("tidemark-heartbeat/us-east-1"),
                obj("tidemark-heartbeats/x"),
            ],
            heartbeat_prefix: "tidemark-heartbeat",
        };
        stage.observe(0, &ev).unwrap();
        let keys: Vec<String> = stage
            .coalescer()
            .pack(BODY_BUDGET)
            .iter()
            .flat_map(|p| Invalidation::decode(&p.outbound.body).unwrap().keys)
            .collect();
        assert_eq!(
            keys,
            [
                "asset:tidemark-heartbeat.png",
                "asset:tidemark-heartbeats/x"
            ]
        );
    }

    #[test]
    fn a_view_type_without_the_needed_images_is_rejected() {
        let cfg = users();
        let t = &cfg.tables[0];
        let modify = |view: &str, old: bool| {
            let old = if old {
                r#""OldImage":{"pk":{"S":"1"},"email":{"S":"a@x"}},"#
            } else {
                ""
            };
            format!(
                r#"{{"eventSource":"aws:dynamodb","eventName":"MODIFY","dynamodb":{{"Keys":{{"pk":{{"S":"1"}}}},"SequenceNumber":"1",{old}
                  "NewImage":{{"pk":{{"S":"1"}},"email":{{"S":"b@x"}}}}{view}}}}}"#
            )
        };
        let ok = modify(r#","StreamViewType":"NEW_AND_OLD_IMAGES""#, true);
        assert!(check_view(t, &StreamRecord::decode(&ok).unwrap()).is_ok());
        let new_only = modify(r#","StreamViewType":"NEW_IMAGE""#, false);
        let e = check_view(t, &StreamRecord::decode(&new_only).unwrap()).unwrap_err();
        assert!(e.to_string().contains("stream view type NEW_IMAGE"), "{e}");
        // Without the field, the images the event must carry decide.
        let unlabelled = modify("", false);
        let e = check_view(t, &StreamRecord::decode(&unlabelled).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("Modify record has no OldImage"),
            "{e}"
        );
        let keys_only = r#"{"eventSource":"aws:dynamodb","eventName":"REMOVE","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1","StreamViewType":"KEYS_ONLY"}}"#;
        assert!(check_view(t, &StreamRecord::decode(keys_only).unwrap()).is_err());

        // Templates over key attributes only work on any view type.
        let mut key_only_table = t.clone();
        key_only_table.cache_keys.truncate(1);
        assert!(!needs_images(&key_only_table));
        assert!(check_view(&key_only_table, &StreamRecord::decode(keys_only).unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_refused_publish_entry_is_permanent_and_an_outage_transient() {
        let mut c = Coalescer::default();
        c.add(&group(), "k".into(), 4, 1);
        let packed = c.pack(BODY_BUDGET);
        let mut metrics = Metrics::new("T");
        for (e, class) in [
            (
                PortError::Permanent("InvalidParameter".into()),
                crate::error::Class::Permanent,
            ),
            (
                PortError::Transient("Throttled".into()),
                crate::error::Class::Transient,
            ),
        ] {
            let p = Refusing(Some(e));
            let failed = publish_all(&p, &packed, "sp", &mut metrics).await;
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, 4);
            assert_eq!(failed[0].1.class(), class);
        }
    }
}
