//! `tidemark replay`: re-runs what the dead-letter stores keep through the functions' own
//! handlers (the stream-processor's and the object-processor's pipeline, with the real SNS
//! publisher), so the invalidations that were lost are published after all.
//!
//! Stores, per region:
//! - `dead-letters`: records the stream-processor rejected (`dead-letter/stream-processor/`
//!   in the dead-letter bucket, one [`DeadLetterEntry`] each);
//! - `given-up`: stream batches the mapping gave up (`aws/lambda/`, Lambda's S3 on-failure
//!   destination: the invocation record with the whole batch in `payload`), which outlive
//!   the stream's 24 h;
//! - `object-dlq`: the object-processor's dead-letter queue (its rejects, pointers to
//!   entries kept in S3, and messages the queue's redrive policy moved there);
//! - `invalidation-dlq`: invalidation messages the cache-invalidator gave up. The cache is
//!   reachable only inside its VPC, so these are checked with the invalidator's decoder and
//!   sent back to the region's invalidation queue, where the invalidator deletes their keys.
//!
//! Rules: a dry run (the default) runs the same handlers with a publisher, alert sender and
//! object store that change nothing, and reports what would happen. With `apply`, a kept
//! thing is removed from its store only after every record in it went through (its
//! invalidations published); one with a record rejected again, or failed for a transient
//! reason, stays where it is, whole. Replaying twice is harmless: invalidations are deletes,
//! alerts carry stable event ids, residency actions are idempotent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::adapters::dead_letter::QueuedDeadLetter;
use crate::app::Ports;
use crate::app::object::ObjectProcessor;
use crate::app::stream::StreamProcessor;
use crate::config::Config;
use crate::ddb::{StreamRecord, split_batch};
use crate::error::PortError;
use crate::keyhash::KeyLabels;
use crate::lambda::BatchHandler;
use crate::metrics::EmfOut;
use crate::ports::{
    Alert, Alerts, DeadLetter, DeadLetterEntry, Kept, KeptRecords, ObjectStore, Outbound, Overflow,
    Publish, PublishResult, Requeue, VersionHead,
};
use crate::sqs::SqsRecord;

/// One dead-letter store of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Store {
    DeadLetters,
    GivenUp,
    ObjectDlq,
    InvalidationDlq,
}

impl Store {
    pub const ALL: [Store; 4] = [
        Store::DeadLetters,
        Store::GivenUp,
        Store::ObjectDlq,
        Store::InvalidationDlq,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Store::DeadLetters => "dead-letters",
            Store::GivenUp => "given-up",
            Store::ObjectDlq => "object-dlq",
            Store::InvalidationDlq => "invalidation-dlq",
        }
    }

    pub fn parse(s: &str) -> Option<Store> {
        Store::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Kept things read per round.
    fn chunk(self) -> usize {
        match self {
            Store::DeadLetters => 100,
            Store::GivenUp => 10,
            Store::ObjectDlq | Store::InvalidationDlq => 10,
        }
    }
}

/// Where the region's stores are (each `None` is not replayed).
#[derive(Clone, Default)]
pub struct Stores {
    /// `dead-letter/stream-processor/` of the dead-letter bucket.
    pub dead_letters: Option<Arc<dyn KeptRecords>>,
    /// `aws/lambda/` of the dead-letter bucket (the stream mapping's on-failure destination).
    pub given_up: Option<Arc<dyn KeptRecords>>,
    pub object_dlq: Option<Arc<dyn KeptRecords>>,
    pub invalidation_dlq: Option<Arc<dyn KeptRecords>>,
    /// Where replayed invalidation messages go: the region's invalidation queue.
    pub invalidation_queue: Option<Arc<dyn Requeue>>,
    /// Entries kept in S3 behind a pointer message.
    pub overflow: Option<Arc<dyn Overflow>>,
}

impl Stores {
    fn of(&self, store: Store) -> Option<&Arc<dyn KeptRecords>> {
        match store {
            Store::DeadLetters => self.dead_letters.as_ref(),
            Store::GivenUp => self.given_up.as_ref(),
            Store::ObjectDlq => self.object_dlq.as_ref(),
            Store::InvalidationDlq => self.invalidation_dlq.as_ref(),
        }
    }
}

/// What replay needs: the configuration, the region, the functions' ports (publisher, alert
/// sender, key labels; the dead-letter port is replay's own) and the stores.
pub struct Replay {
    pub config: Config,
    pub region: String,
    pub publisher: Arc<dyn Publish>,
    pub alerts: Arc<dyn Alerts>,
    pub labels: Arc<KeyLabels>,
    /// Object versions, for the object-processor's residency stage.
    pub objects: Arc<dyn ObjectStore>,
    pub stores: Stores,
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Publish and remove; `false` (a dry run) changes nothing.
    pub apply: bool,
    /// Which stores, in this order.
    pub from: Vec<Store>,
    /// At most this many kept things per store.
    pub limit: Option<usize>,
}

/// A record rejected again: its id (sequence number or message id) and the reason (keys,
/// attribute names and types; never values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub id: String,
    pub reason: String,
}

/// What became of one kept thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every record went through (a dry run: would go through); removed with `apply`.
    Replayed,
    /// A record was rejected again: the thing stays in its store, whole.
    StillRejected { records: Vec<Rejected> },
    /// A transient failure (an outage, a throttle): it stays; run replay again.
    Failed { reason: String },
    /// Not replayable by this command (named why); it stays.
    Skipped { reason: String },
}

/// One kept thing and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub store: Store,
    pub location: String,
    /// Records it holds (a given-up batch holds several).
    pub records: usize,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The run's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub applied: bool,
    pub items: Vec<Item>,
    /// Cache keys in the invalidations published (a dry run: that would be published).
    pub keys: usize,
    /// Invalidation messages sent back to the invalidation queue (would be, in a dry run).
    pub requeued: usize,
}

impl Summary {
    fn records(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.items
            .iter()
            .filter(|i| f(&i.verdict))
            .map(|i| i.records)
            .sum()
    }

    /// Records replayed (would be, in a dry run).
    pub fn replayed(&self) -> usize {
        self.records(|v| matches!(v, Verdict::Replayed))
    }

    /// Records rejected again.
    pub fn still_rejected(&self) -> usize {
        self.items
            .iter()
            .map(|i| match &i.verdict {
                Verdict::StillRejected { records } => records.len(),
                _ => 0,
            })
            .sum()
    }

    /// Kept things that failed for a transient reason.
    pub fn failed(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Failed { .. }))
            .count()
    }

    /// Kept things skipped.
    pub fn skipped(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Skipped { .. }))
            .count()
    }

    /// Nothing left to do: everything replayed (or nothing kept).
    pub fn is_clean(&self) -> bool {
        self.items
            .iter()
            .all(|i| matches!(i.verdict, Verdict::Replayed))
    }
}

fn records(n: usize) -> String {
    if n == 1 {
        "1 record".to_owned()
    } else {
        format!("{n} records")
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = if self.applied {
            "replayed"
        } else {
            "would replay"
        };
        for i in &self.items {
            let (store, at, n) = (i.store.name(), &i.location, records(i.records));
            match &i.verdict {
                Verdict::Replayed => writeln!(f, "{done}\t{store}\t{at} ({n})")?,
                Verdict::StillRejected { records: bad } => {
                    writeln!(
                        f,
                        "rejected\t{store}\t{at} ({n}, {} rejected again; kept)",
                        bad.len()
                    )?;
                    for r in bad {
                        writeln!(f, "\t\t{}: {}", r.id, r.reason)?;
                    }
                }
                Verdict::Failed { reason } => writeln!(
                    f,
                    "failed\t{store}\t{at} ({n}; kept, run replay again): {reason}"
                )?,
                Verdict::Skipped { reason } => writeln!(f, "skipped\t{store}\t{at}: {reason}")?,
            }
        }
        let (verb, keys, sent) = if self.applied {
            (
                "replayed",
                "published",
                "sent back to the invalidation queue",
            )
        } else {
            (
                "to replay",
                "to publish",
                "to send back to the invalidation queue",
            )
        };
        let requeued = match self.requeued {
            0 => String::new(),
            1 => format!(", 1 invalidation message {sent}"),
            n => format!(", {n} invalidation messages {sent}"),
        };
        writeln!(
            f,
            "{}: {} {verb} ({} cache keys {keys}{requeued}), {} still rejected, {} failed (transient: run again), {} skipped{}",
            if self.applied { "summary" } else { "dry run" },
            records(self.replayed()),
            self.keys,
            self.still_rejected(),
            self.failed(),
            self.skipped(),
            if self.applied {
                ""
            } else {
                "; nothing was changed (--apply to replay)"
            }
        )
    }
}

/// Progress after each kept thing: the store, things done in it, records done in it.
pub type Progress<'a> = &'a (dyn Fn(Store, usize, usize) + Send + Sync);

// ------------------------------------------------------------------ replay's own ports

/// The handlers' dead-letter port during replay: a record rejected again stays where it is
/// kept, so its entry is only collected (with its reason) and nothing is written.
#[derive(Default)]
struct KeepInPlace(Mutex<Vec<DeadLetterEntry>>);

impl KeepInPlace {
    fn take(&self) -> Vec<DeadLetterEntry> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl DeadLetter for KeepInPlace {
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(entries);
        Box::pin(async { Ok(()) })
    }
}

/// Counts the cache keys of what goes out; a dry run (`inner: None`) sends nothing.
struct Counting {
    inner: Option<Arc<dyn Publish>>,
    keys: Arc<AtomicUsize>,
}

impl Publish for Counting {
    fn publish_batch<'a>(&'a self, entries: &'a [Outbound]) -> BoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let result = match &self.inner {
                Some(p) => p.publish_batch(entries).await?,
                None => entries.iter().map(|_| Ok(())).collect(),
            };
            for (e, r) in entries.iter().zip(&result) {
                if r.is_ok()
                    && let Ok(m) = crate::message::Invalidation::decode(&e.body)
                {
                    self.keys.fetch_add(m.keys.len(), Ordering::Relaxed);
                }
            }
            Ok(result)
        })
    }
}

/// A dry run's alert sender: sends nothing.
struct NoAlerts;

impl Alerts for NoAlerts {
    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, Vec<Result<(), PortError>>> {
        Box::pin(async move { alerts.iter().map(|_| Ok(())).collect() })
    }
}

/// A dry run's object store: reads what residency decides on, removes and copies nothing.
struct ReadOnly(Arc<dyn ObjectStore>);

impl ObjectStore for ReadOnly {
    fn head_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionHead>, PortError>> {
        self.0.head_version(bucket, key, version)
    }
    fn version_tags<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, PortError>> {
        self.0.version_tags(bucket, key, version)
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

// ------------------------------------------------------------------ running records

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    Rejected(String),
    Retry(String),
}

/// The functions' handlers, wired for replay.
struct Handlers {
    stream: StreamProcessor,
    object: ObjectProcessor,
    rejects: Arc<KeepInPlace>,
    emf: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Handlers {
    /// Runs `records` (raw Lambda records) as one batch of `handler`; `id_of` names a record
    /// as the handler reports failures (sequence number, message id).
    async fn run<H: BatchHandler>(
        &self,
        handler: &H,
        records: &[String],
        id_of: fn(&str) -> Option<String>,
    ) -> Vec<Outcome> {
        let event = format!("{{\"Records\":[{}]}}", records.join(","));
        // The handler's outcomes are matched to the records by position: if the batch does
        // not hold exactly these records, no outcome can be trusted.
        if split_batch(&event).map(|b| b.len()).ok() != Some(records.len()) {
            return records
                .iter()
                .map(|_| {
                    Outcome::Retry(format!(
                        "the batch did not hold exactly its {} records",
                        records.len()
                    ))
                })
                .collect();
        }
        self.rejects.take();
        let result = handler.handle(&event).await;
        let rejects = self.rejects.take();
        // Replay's metrics (lag of old records, counts) are not the functions' metrics.
        self.emf.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let failed: HashSet<String> = match result {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                let why = format!("the whole batch failed: {e}");
                return records
                    .iter()
                    .map(|_| Outcome::Retry(why.clone()))
                    .collect();
            }
        };
        let rejected: HashMap<usize, String> =
            rejects.into_iter().map(|e| (e.index, e.reason)).collect();
        records
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                if let Some(reason) = rejected.get(&i) {
                    Outcome::Rejected(reason.clone())
                } else if id_of(raw).is_some_and(|id| failed.contains(&id)) {
                    Outcome::Retry(
                        "a transient failure (the warning above names it); run replay again".into(),
                    )
                } else {
                    Outcome::Done
                }
            })
            .collect()
    }
}

/// The verdict of a kept thing from its records' outcomes (`ids` name them).
fn verdict(outcomes: &[(String, Outcome)]) -> Verdict {
    let rejected: Vec<Rejected> = outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            Outcome::Rejected(r) => Some(Rejected {
                id: id.clone(),
                reason: r.clone(),
            }),
            _ => None,
        })
        .collect();
    if !rejected.is_empty() {
        return Verdict::StillRejected { records: rejected };
    }
    match outcomes.iter().find_map(|(id, o)| match o {
        Outcome::Retry(r) => Some(format!("{id}: {r}")),
        _ => None,
    }) {
        Some(reason) => Verdict::Failed { reason },
        None => Verdict::Replayed,
    }
}

/// The records of a given-up stream batch: the `payload` of Lambda's invocation record,
/// which an S3 on-failure destination keeps as an escaped JSON string (an object is taken
/// as well).
pub fn given_up_records(body: &str) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Invocation<'a> {
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
    }
    let inv: Invocation<'_> = serde_json::from_str(body).map_err(|e| {
        format!(
            "not a Lambda invocation record: {}",
            crate::error::redact_serde(&e)
        )
    })?;
    let payload = inv.payload.ok_or(
        "the invocation record has no `payload` (only shard and sequence numbers): flush the table's keys instead",
    )?;
    let text: std::borrow::Cow<'_, str> = if payload.get().starts_with('"') {
        serde_json::from_str::<String>(payload.get())
            .map_err(|e| format!("`payload`: {}", crate::error::redact_serde(&e)))?
            .into()
    } else {
        payload.get().into()
    };
    let raws = split_batch(&text).map_err(|e| format!("`payload`: {e}"))?;
    Ok(raws.iter().map(|r| r.get().to_owned()).collect())
}

/// Why a given-up flush command is not sent again: what it was, and when it was asked for.
fn flush_skipped(command: &crate::flush::FlushCommand) -> String {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let at = i64::try_from(command.requested_at_ms)
        .ok()
        .and_then(|ms| DateTime::from_millis(ms).fmt(DateTimeFormat::DateTime).ok())
        .unwrap_or_else(|| format!("{} ms", command.requested_at_ms));
    let what = if command.all {
        "every key".to_owned()
    } else {
        format!("{} prefixes", command.prefixes.len())
    };
    format!(
        "a flush command of {} ({what}) requested at {at}, left in its queue: run `tidemark flush` again if still wanted",
        command.source
    )
}

/// Exactly one JSON object (whitespace around it allowed).
fn one_object(raw: &str) -> bool {
    serde_json::from_str::<&RawValue>(raw).is_ok_and(|v| v.get().starts_with('{'))
}

fn stream_id(raw: &str) -> Option<String> {
    StreamRecord::salvage_id(raw)
}

fn message_id(raw: &str) -> Option<String> {
    SqsRecord::salvage_id(raw)
}

fn skip<T>(reason: String) -> Result<T, Verdict> {
    Err(Verdict::Skipped { reason })
}

/// One thing read from a store, ready to run: its records, or why it cannot run.
struct Prepared {
    kept: Kept,
    /// The dead-letter entry's S3 copy behind a pointer message (removed with the message).
    pointer: Option<(String, String)>,
    records: Result<Vec<String>, Verdict>,
}

impl Replay {
    /// Replays the stores `options.from`, in that order.
    pub async fn run(&self, options: &Options, progress: Progress<'_>) -> Summary {
        let keys = Arc::new(AtomicUsize::new(0));
        let rejects = Arc::new(KeepInPlace::default());
        let emf = Arc::new(Mutex::new(Vec::new()));
        let (alerts, objects): (Arc<dyn Alerts>, Arc<dyn ObjectStore>) = if options.apply {
            (self.alerts.clone(), self.objects.clone())
        } else {
            (Arc::new(NoAlerts), Arc::new(ReadOnly(self.objects.clone())))
        };
        let ports = Ports {
            publisher: Arc::new(Counting {
                inner: options.apply.then(|| self.publisher.clone()),
                keys: keys.clone(),
            }),
            dead_letter: rejects.clone(),
            labels: self.labels.clone(),
            alerts,
        };
        let handlers = Handlers {
            stream: StreamProcessor {
                config: self.config.clone(),
                region: self.region.clone(),
                ports: ports.clone(),
                emf: EmfOut::Captured(emf.clone()),
            },
            object: ObjectProcessor {
                config: self.config.clone(),
                region: self.region.clone(),
                ports,
                objects,
                emf: EmfOut::Captured(emf.clone()),
            },
            rejects,
            emf,
        };
        let mut summary = Summary {
            applied: options.apply,
            ..Summary::default()
        };
        for &store in &options.from {
            let Some(kept) = self.stores.of(store) else {
                continue;
            };
            self.replay_store(
                store,
                kept.as_ref(),
                &handlers,
                options,
                &mut summary,
                progress,
            )
            .await;
        }
        summary.keys = keys.load(Ordering::Relaxed);
        summary
    }

    async fn replay_store(
        &self,
        store: Store,
        kept: &dyn KeptRecords,
        handlers: &Handlers,
        options: &Options,
        summary: &mut Summary,
        progress: Progress<'_>,
    ) {
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut seen: HashSet<String> = HashSet::new();
        // Messages read and not removed stay hidden until the end of the run, so that the
        // next read finds the ones after them; then they are released together.
        let mut held: Vec<Kept> = Vec::new();
        let (mut items, mut records) = (0, 0);
        while items < limit {
            let chunk = match kept.read(store.chunk().min(limit - items)).await {
                Ok(c) => c,
                Err(e) => {
                    summary.items.push(Item {
                        store,
                        location: kept.name(),
                        records: 0,
                        verdict: Verdict::Failed {
                            reason: format!("reading the store: {e}"),
                        },
                    });
                    break;
                }
            };
            if chunk.is_empty() {
                break;
            }
            // A message seen before came back (its hiding ran out): every message was read.
            let (fresh, again): (Vec<Kept>, Vec<Kept>) =
                chunk.into_iter().partition(|k| seen.insert(k.id.clone()));
            let reappeared = !again.is_empty();
            held.extend(again);
            if fresh.is_empty() {
                // Only messages read earlier came back: their hiding ran out (the run is
                // longer than it), so messages not read yet may be behind them. Said, not
                // taken for the end of the queue.
                if reappeared {
                    summary.items.push(Item {
                        store,
                        location: kept.name(),
                        records: 0,
                        verdict: Verdict::Failed {
                            reason: format!(
                                "stopped early: messages reappeared (read more than {} s ago); messages not read yet may remain: run replay again, or use --limit",
                                crate::adapters::dead_letter::READ_VISIBILITY_S
                            ),
                        },
                    });
                }
                break;
            }
            let mut prepared = Vec::new();
            for k in fresh {
                prepared.push(self.prepare(store, k).await);
            }
            for (p, verdict, n) in self.execute(store, prepared, handlers, options).await {
                let mut verdict = verdict;
                if store == Store::InvalidationDlq && verdict == Verdict::Replayed {
                    summary.requeued += 1;
                }
                if options.apply
                    && verdict == Verdict::Replayed
                    && let Err(e) = self.remove(kept, &p).await
                {
                    verdict = Verdict::Failed {
                        reason: format!(
                            "replayed, but removing it failed (a later replay repeats it, harmlessly): {e}"
                        ),
                    };
                }
                let removed = options.apply && verdict == Verdict::Replayed;
                if !removed {
                    held.push(p.kept.clone());
                }
                items += 1;
                if verdict == Verdict::Replayed {
                    records += n;
                }
                summary.items.push(Item {
                    store,
                    location: p.kept.location.clone(),
                    records: n,
                    verdict,
                });
                progress(store, items, records);
            }
        }
        if let Err(e) = kept.release(&held).await {
            summary.items.push(Item {
                store,
                location: kept.name(),
                records: 0,
                verdict: Verdict::Failed {
                    reason: format!(
                        "releasing the {} messages read and kept: those not released reappear after {} s: {e}",
                        held.len(),
                        crate::adapters::dead_letter::READ_VISIBILITY_S
                    ),
                },
            });
        }
    }

    /// Removes a replayed thing: the message (or object), then a pointer's S3 copy (an
    /// orphaned copy is harmless; the bucket's lifecycle rule expires it).
    async fn remove(&self, kept: &dyn KeptRecords, p: &Prepared) -> Result<(), PortError> {
        kept.remove(&p.kept).await?;
        if let (Some((bucket, key)), Some(overflow)) = (&p.pointer, &self.stores.overflow) {
            overflow.delete(bucket, key).await?;
        }
        Ok(())
    }

    /// Reads a kept thing into the records to run.
    async fn prepare(&self, store: Store, kept: Kept) -> Prepared {
        let mut pointer = None;
        if let Some(e) = &kept.unreadable {
            // One unreadable object is that object's verdict, not the store's.
            let records = Err(match e {
                PortError::Permanent(why) => Verdict::Skipped {
                    reason: format!("unreadable: {why}"),
                },
                PortError::Transient(why) => Verdict::Failed {
                    reason: format!("reading it: {why}"),
                },
            });
            return Prepared {
                kept,
                pointer,
                records,
            };
        }
        let records = match store {
            Store::GivenUp => given_up_records(&kept.body).or_else(skip),
            Store::DeadLetters => match serde_json::from_str::<DeadLetterEntry>(&kept.body) {
                Ok(e) if e.function == crate::app::stream::FUNCTION => Ok(vec![e.record]),
                Ok(e) => skip(format!(
                    "an entry of the {} (replayed from its dead-letter queue)",
                    e.function
                )),
                Err(e) => skip(format!(
                    "not a dead-letter entry: {}",
                    crate::error::redact_serde(&e)
                )),
            },
            Store::ObjectDlq | Store::InvalidationDlq => {
                let function = if store == Store::ObjectDlq {
                    crate::app::object::FUNCTION
                } else {
                    crate::app::invalidator::FUNCTION
                };
                let entry = match QueuedDeadLetter::parse(&kept.body) {
                    QueuedDeadLetter::Entry(e) => Ok(Some(e)),
                    QueuedDeadLetter::Redriven(_) => Ok(None),
                    QueuedDeadLetter::Pointer(p) => {
                        let at = format!("s3://{}/{}", p.stored_in_s3.bucket, p.stored_in_s3.key);
                        pointer = Some((p.stored_in_s3.bucket.clone(), p.stored_in_s3.key.clone()));
                        match &self.stores.overflow {
                            None => {
                                skip(format!("a pointer to {at}, and no bucket to read it from"))
                            }
                            // A message can say anything: only the region's dead-letter
                            // bucket, under `dead-letter/`, is read (and later deleted).
                            Some(o)
                                if p.stored_in_s3.bucket != o.bucket()
                                    || !p
                                        .stored_in_s3
                                        .key
                                        .starts_with(crate::adapters::dead_letter::S3_PREFIX) =>
                            {
                                pointer = None;
                                skip(format!(
                                    "a pointer to {at}, outside the dead-letter bucket's `{}` (s3://{}/{}): not read",
                                    crate::adapters::dead_letter::S3_PREFIX,
                                    o.bucket(),
                                    crate::adapters::dead_letter::S3_PREFIX
                                ))
                            }
                            Some(o) => match o
                                .get(&p.stored_in_s3.bucket, &p.stored_in_s3.key)
                                .await
                            {
                                Ok(Some(text)) => serde_json::from_str::<DeadLetterEntry>(&text)
                                    .map(Some)
                                    .map_err(|e| Verdict::Skipped {
                                        reason: format!(
                                            "{at} is not a dead-letter entry: {}",
                                            crate::error::redact_serde(&e)
                                        ),
                                    }),
                                Ok(None) => {
                                    skip(format!("a pointer to {at}, which no longer exists"))
                                }
                                Err(e) => Err(Verdict::Failed {
                                    reason: format!("reading {at}: {e}"),
                                }),
                            },
                        }
                    }
                };
                match entry {
                    Err(v) => Err(v),
                    Ok(Some(e)) if e.function != function => skip(format!(
                        "an entry of the {}, not of the {function}",
                        e.function
                    )),
                    Ok(Some(e)) => Ok(vec![e.record]),
                    // Moved here whole by the queue's redrive policy: the message as the
                    // function received it.
                    Ok(None) => Ok(vec![
                        serde_json::json!({
                            "messageId": kept.id,
                            "body": kept.body,
                            "eventSource": "aws:sqs",
                        })
                        .to_string(),
                    ]),
                }
            }
        };
        // Records are joined as text into one batch: each must be exactly one JSON object,
        // or one stored text could smuggle several records in (or break the batch).
        let records = records.and_then(|rs| match rs.iter().position(|r| !one_object(r)) {
            None => Ok(rs),
            Some(i) => skip(format!("stored record {i} is not exactly one JSON object")),
        });
        Prepared {
            kept,
            pointer,
            records,
        }
    }

    /// Runs prepared things: their verdicts and record counts.
    async fn execute(
        &self,
        store: Store,
        prepared: Vec<Prepared>,
        handlers: &Handlers,
        options: &Options,
    ) -> Vec<(Prepared, Verdict, usize)> {
        let mut out = Vec::new();
        match store {
            // One batch per given-up object, as the mapping delivered it.
            Store::GivenUp => {
                for p in prepared {
                    let (verdict, n) = match &p.records {
                        Err(v) => (v.clone(), 0),
                        Ok(records) => {
                            let outcomes = handlers.run(&handlers.stream, records, stream_id).await;
                            let named: Vec<(String, Outcome)> = records
                                .iter()
                                .map(|r| stream_id(r).unwrap_or_else(|| "(no id)".into()))
                                .zip(outcomes)
                                .collect();
                            (verdict(&named), records.len())
                        }
                    };
                    out.push((p, verdict, n));
                }
            }
            // One batch of the chunk's single records.
            Store::DeadLetters | Store::ObjectDlq => {
                let runnable: Vec<String> = prepared
                    .iter()
                    .filter_map(|p| p.records.as_ref().ok())
                    .flatten()
                    .cloned()
                    .collect();
                let outcomes = if runnable.is_empty() {
                    Vec::new()
                } else if store == Store::DeadLetters {
                    handlers.run(&handlers.stream, &runnable, stream_id).await
                } else {
                    handlers.run(&handlers.object, &runnable, message_id).await
                };
                let id_of = if store == Store::DeadLetters {
                    stream_id
                } else {
                    message_id
                };
                let mut outcomes = outcomes.into_iter();
                for p in prepared {
                    let (verdict, n) = match &p.records {
                        Err(v) => (v.clone(), 0),
                        Ok(records) => {
                            let named: Vec<(String, Outcome)> = records
                                .iter()
                                .map(|r| {
                                    let o = outcomes.next().unwrap_or(Outcome::Retry(
                                        "no outcome for this record".into(),
                                    ));
                                    (id_of(r).unwrap_or_else(|| "(no id)".into()), o)
                                })
                                .collect();
                            (verdict(&named), records.len())
                        }
                    };
                    out.push((p, verdict, n));
                }
            }
            Store::InvalidationDlq => {
                for p in prepared {
                    let v = match &p.records {
                        Err(v) => v.clone(),
                        Ok(records) => self.requeue(records, options).await,
                    };
                    let n = usize::from(p.records.is_ok());
                    out.push((p, v, n));
                }
            }
        }
        out
    }

    /// An invalidation message given up by the cache-invalidator: checked with its decoder,
    /// then sent back to the invalidation queue as it is (the cache is reachable only from
    /// the invalidator).
    async fn requeue(&self, records: &[String], options: &Options) -> Verdict {
        let Some(raw) = records.first() else {
            return Verdict::Skipped {
                reason: "no record".into(),
            };
        };
        let id = message_id(raw).unwrap_or_else(|| "(no id)".into());
        let body = match SqsRecord::decode(raw) {
            Ok(r) => r.body.into_owned(),
            Err(e) => {
                return Verdict::StillRejected {
                    records: vec![Rejected {
                        id,
                        reason: e.to_string(),
                    }],
                };
            }
        };
        match crate::app::invalidator::decode_body(&body) {
            Err(e) => {
                return Verdict::StillRejected {
                    records: vec![Rejected {
                        id,
                        reason: e.to_string(),
                    }],
                };
            }
            // A flush the invalidator gave up may be old, and may empty the whole cache:
            // only the operator decides to run it again. It stays in its queue.
            Ok(crate::app::invalidator::Work::Flush(command)) => {
                return Verdict::Skipped {
                    reason: flush_skipped(&command),
                };
            }
            Ok(crate::app::invalidator::Work::Invalidate(_)) => {}
        }
        if !options.apply {
            return Verdict::Replayed;
        }
        let Some(queue) = &self.stores.invalidation_queue else {
            return Verdict::Skipped {
                reason: "no invalidation queue to send it back to".into(),
            };
        };
        match queue.send(&body).await {
            Ok(()) => Verdict::Replayed,
            Err(e) => Verdict::Failed {
                reason: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"eventID":"e1","eventName":"INSERT","dynamodb":{"Keys":{"pk":{"S":"u1"}},"SequenceNumber":"7"}}"#;

    #[test]
    fn given_up_records_come_from_the_escaped_payload() {
        // As an S3 on-failure destination keeps it: the event as an escaped JSON string.
        let batch = format!(r#"{{"Records":[{RECORD}]}}"#);
        let doc = serde_json::json!({
            "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 11},
            "DDBStreamBatchInfo": {"shardId": "shardId-1", "startSequenceNumber": "7", "endSequenceNumber": "7", "batchSize": 1},
            "payload": batch,
        });
        assert_eq!(given_up_records(&doc.to_string()).unwrap(), [RECORD]);
        // An object is taken as well.
        let doc = format!(r#"{{"payload":{{"Records":[{RECORD},{RECORD}]}}}}"#);
        assert_eq!(given_up_records(&doc).unwrap().len(), 2);
        // SQS/SNS destinations keep no records: named, not guessed.
        let e = given_up_records(r#"{"DDBStreamBatchInfo":{}}"#).unwrap_err();
        assert!(e.contains("no `payload`"), "{e}");
        // A reason never quotes the stored content.
        let e =
            given_up_records(r#"{"payload":"{\"Records\":\"secret@example.com\"}"}"#).unwrap_err();
        assert!(!e.contains("secret@example.com"), "{e}");
    }

    #[test]
    fn a_thing_is_replayed_only_when_every_record_went_through() {
        let done = ("1".to_owned(), Outcome::Done);
        let retry = ("2".to_owned(), Outcome::Retry("down".into()));
        let bad = ("3".to_owned(), Outcome::Rejected("r".into()));
        assert_eq!(verdict(std::slice::from_ref(&done)), Verdict::Replayed);
        assert!(matches!(
            verdict(&[done.clone(), retry.clone()]),
            Verdict::Failed { .. }
        ));
        assert_eq!(
            verdict(&[done, retry, bad]),
            Verdict::StillRejected {
                records: vec![Rejected {
                    id: "3".into(),
                    reason: "r".into()
                }]
            }
        );
    }

    #[test]
    fn store_names_round_trip() {
        for s in Store::ALL {
            assert_eq!(Store::parse(s.name()), Some(s));
        }
        assert_eq!(Store::parse("nope"), None);
    }
}
