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

use crate::config::{Bucket, Table};
use crate::ddb::{Image, StreamRecord};
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
}

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

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

#[derive(Debug, Default)]
pub struct Coalescer {
    groups: Vec<Group>,
    entries: Vec<KeyEntry>,
    /// Per group: key → position in `entries`.
    index: Vec<FnvMap<String, usize>>,
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
            self.index.push(FnvMap::default());
            self.groups.len() - 1
        })
    }

    pub fn add(&mut self, group: &Group, key: String, record: usize, changed_at_ms: u64) {
        let g = self.group(&group.source, &group.origin_region, group.replicated);
        self.add_to(g, key, record, changed_at_ms);
    }

    /// Adds a key to group `g` (from [`Coalescer::group`]).
    pub fn add_to(&mut self, g: usize, key: String, record: usize, changed_at_ms: u64) {
        match self.index[g].get(key.as_str()) {
            Some(&i) => {
                let e = &mut self.entries[i];
                e.changed_at_ms = e.changed_at_ms.min(changed_at_ms);
                if e.first_record != record && e.more_records.last() != Some(&record) {
                    e.more_records.push(record);
                }
            }
            None => {
                self.index[g].insert(key.clone(), self.entries.len());
                self.entries.push(KeyEntry {
                    key,
                    group: g,
                    changed_at_ms,
                    first_record: record,
                    more_records: Vec::new(),
                });
            }
        }
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
    let images = [record.old.as_ref(), record.new.as_ref(), Some(&record.keys)];
    let mut keys: Vec<String> = Vec::with_capacity(table.cache_keys.len() * 2);
    for t in &table.cache_keys {
        for img in images.iter().flatten() {
            if let Some(k) = render_key(t, img)
                && !keys.contains(&k)
            {
                keys.push(k);
            }
        }
    }
    keys.into_iter().for_each(&mut emit);
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
    for t in &bucket.cache_keys {
        if let Some(k) = t.render(|name| object_placeholder(key, version, name)) {
            emit(k);
        }
    }
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
    pub heartbeat_prefix: &'c str,
}

/// The invalidation stage, for either kind of change.
pub struct InvalidationStage<'p> {
    publisher: &'p dyn Publish,
    function: &'p str,
    region: &'p str,
    coalescer: Coalescer,
}

impl<'p> InvalidationStage<'p> {
    pub fn new(publisher: &'p dyn Publish, function: &'p str, region: &'p str) -> Self {
        Self {
            publisher,
            function,
            region,
            coalescer: Coalescer::default(),
        }
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
        let origin = t
            .app_attributes
            .origin_region
            .as_deref()
            .and_then(|a| c.record.new.as_ref().and_then(|i| i.scalar(a)))
            .map_or_else(
                || {
                    if c.record.region.is_empty() {
                        self.region.to_owned()
                    } else {
                        c.record.region.to_string()
                    }
                },
                |s| s.into_owned(),
            );
        let changed_at = t
            .app_attributes
            .written_at_ms
            .as_deref()
            .filter(|_| c.record.new.is_some())
            .and_then(|a| c.record.new.as_ref().and_then(|i| i.scalar(a)))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(c.record.approx_created_ms, |ms| ms as u64);
        let group = Group {
            source: t.name.clone(),
            origin_region: origin,
            replicated: t.replicated,
        };
        let co = &mut self.coalescer;
        table_keys(t, &c.record, |k| co.add(&group, k, index, changed_at));
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
            let co = &mut self.coalescer;
            object_keys(b, &c.key, c.version_id.as_deref(), |k| {
                co.add(&group, k, index, c.event_time_ms)
            });
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
        let raw = r#"{"eventName":"MODIFY","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1",
          "OldImage":{"pk":{"S":"1"},"email":{"S":"a@x"}},"NewImage":{"pk":{"S":"1"},"email":{"S":"b@x"}}}}"#;
        assert_eq!(keys_of(raw), ["user-email:a@x", "user-email:b@x", "user:1"]);
    }

    #[test]
    fn remove_uses_old_image_and_keys_only_streams_still_invalidate_key_templates() {
        let raw = r#"{"eventName":"REMOVE","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1",
          "OldImage":{"pk":{"S":"1"},"email":{"S":"a@x"}}}}"#;
        assert_eq!(keys_of(raw), ["user-email:a@x", "user:1"]);
        let keys_only =
            r#"{"eventName":"REMOVE","dynamodb":{"Keys":{"pk":{"S":"1"}},"SequenceNumber":"1"}}"#;
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
}
