//! The one per-record pipeline every processor runs:
//!
//! raw records → decode each on its own → stages observe (pure) → stages flush (I/O, once
//! per batch) → an outcome per record (done / retry / reject) → dead-letter the rejects →
//! the ids to report in the partial batch response.
//!
//! Every failure is typed and classed ([`crate::error`]): a permanent one (a record that
//! cannot be decoded, a key above the size limit, a port's "this request is wrong") rejects
//! that record alone, which is dead-lettered with its reason and never retried; a transient
//! one (throttling, an outage) retries it. A rejected record whose dead-letter write fails
//! is retried too, so nothing is lost silently.

use futures::future::BoxFuture;
use serde_json::value::RawValue;
use tracing::{Instrument, debug_span, info_span, warn};

use crate::error::{Class, DecodeError, StageError};
use crate::keyhash::KeyLabels;
use crate::metrics::{Dim, Metric, Metrics};
use crate::ports::{DeadLetter, DeadLetterEntry};

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Transient: report as a batch item failure so Lambda delivers it again.
    Retry(String),
    /// Permanent: can never be processed; dead-lettered and not retried.
    Reject(String),
    /// Deliberately ignored (e.g. `s3:TestEvent`).
    Skipped(&'static str),
}

impl Outcome {
    /// The outcome of a failure of class `class`, with its reason.
    pub fn failed(class: Class, reason: String) -> Self {
        match class {
            Class::Transient => Outcome::Retry(reason),
            Class::Permanent => Outcome::Reject(reason),
        }
    }
}

/// Result of decoding one raw record.
#[derive(Debug)]
pub enum Decoded<C> {
    Ok {
        id: String,
        change: C,
    },
    /// Nothing to do, not an error.
    Skip {
        id: Option<String>,
        why: &'static str,
    },
    /// The record can never be interpreted (decode errors are permanent).
    Reject {
        id: Option<String>,
        error: DecodeError,
    },
}

/// One step of work over a batch. `observe` is pure planning; `flush` does the batch's I/O
/// and returns the records (by index) it could not finish, with a classed error.
pub trait Stage<C>: Send {
    fn name(&self) -> &'static str;
    /// `Err` fails this record by the error's class (permanent: reject; transient: retry);
    /// later stages do not see it.
    fn observe(&mut self, index: usize, change: &C) -> Result<(), StageError>;
    fn flush<'s>(&'s mut self, metrics: &'s mut Metrics)
    -> BoxFuture<'s, Vec<(usize, StageError)>>;
}

/// The per-record result of a batch, in input order.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub ids: Vec<Option<String>>,
    pub outcomes: Vec<Outcome>,
}

impl BatchReport {
    /// Ids to return as `batchItemFailures`. `Err` when a record to retry has no usable id:
    /// then the whole invocation must fail so Lambda retries the batch.
    pub fn failed_ids(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for (id, outcome) in self.ids.iter().zip(&self.outcomes) {
            if let Outcome::Retry(why) = outcome {
                match id {
                    Some(id) => out.push(id.clone()),
                    None => {
                        return Err(format!(
                            "a record without an identifier must be retried: {why}"
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(o)).count()
    }
}

/// Pins a decoder closure's signature so the records it returns may borrow from the input.
pub fn decoder<'r, C, F: Fn(&'r str) -> Decoded<C>>(f: F) -> F {
    f
}

/// Identifies the function and record kind in dead-letter entries.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub function: &'a str,
    pub source: &'a str,
    /// How a record's key appears in log lines: as it is, or HMAC-hashed
    /// (`residency.hash_keys_in_alerts`).
    pub labels: &'a KeyLabels,
    /// The item or object key of a raw record, for log lines (best effort: `None` when the
    /// record names none, or is too broken to tell).
    pub key_of: fn(&str) -> Option<String>,
}

/// What a log line about `raw` carries as its key: empty when there is none, a marker when
/// the hash key cannot be read (never the plain key then).
async fn key_label(ctx: &Context<'_>, raw: &str) -> String {
    let Some(key) = (ctx.key_of)(raw) else {
        return String::new();
    };
    match ctx.labels.label(&key).await {
        Ok(label) => label,
        Err(e) => {
            warn!(error = %e, "cannot read the key-hash secret; the key is left out of the log");
            "(hash unavailable)".to_owned()
        }
    }
}

/// Runs one batch through `stages`. `decode` turns one raw record into a change.
pub async fn run<'r, C, D>(
    ctx: Context<'_>,
    raws: &'r [&'r RawValue],
    decode: D,
    stages: &mut [&mut dyn Stage<C>],
    dead_letter: &dyn DeadLetter,
    metrics: &mut Metrics,
) -> BatchReport
where
    D: Fn(&'r str) -> Decoded<C>,
{
    let mut report = BatchReport {
        ids: Vec::with_capacity(raws.len()),
        outcomes: Vec::with_capacity(raws.len()),
    };

    for (index, raw) in raws.iter().enumerate() {
        let (id, outcome, change) = match decode(raw.get()) {
            Decoded::Ok { id, change } => (Some(id), Outcome::Done, Some(change)),
            Decoded::Skip { id, why } => (id, Outcome::Skipped(why), None),
            Decoded::Reject { id, error } => {
                (id, Outcome::failed(error.class(), error.to_string()), None)
            }
        };
        let mut outcome = outcome;
        if let Some(c) = &change {
            // A span per record, at debug level: at INFO (the default) it costs nothing on the
            // hot path; warnings about a record carry its id themselves.
            let span = debug_span!("record", id = id.as_deref().unwrap_or(""), index);
            let _guard = span.enter();
            for stage in stages.iter_mut() {
                if let Err(e) = stage.observe(index, c) {
                    outcome = Outcome::failed(e.class(), format!("{}: {e}", stage.name()));
                    break;
                }
            }
        }
        report.ids.push(id);
        report.outcomes.push(outcome);
        // The change is dropped here: stages copy what they need in `observe`, so the
        // decoded records never pile up (peak memory) and their buffers are reused while
        // still in cache by the next record.
        drop(change);
    }

    for stage in stages.iter_mut() {
        let name = stage.name();
        let failures = stage
            .flush(metrics)
            .instrument(info_span!("flush", stage = name))
            .await;
        for (index, e) in failures {
            let Some(o) = report.outcomes.get_mut(index) else {
                continue;
            };
            // A permanent failure wins over a retry (retrying cannot help); a reject stays.
            match (&*o, e.class()) {
                (Outcome::Done, class) | (Outcome::Retry(_), class @ Class::Permanent) => {
                    *o = Outcome::failed(class, format!("{name}: {e}"));
                }
                _ => {}
            }
        }
    }

    dead_letter_rejects(ctx, raws, &mut report, dead_letter).await;

    let processed = report.count(|o| matches!(o, Outcome::Done | Outcome::Skipped(_)));
    let retried = report.count(|o| matches!(o, Outcome::Retry(_)));
    let rejected = report.count(|o| matches!(o, Outcome::Reject(_)));
    let f = [(Dim::Function, ctx.function)];
    metrics.put(Metric::RecordsProcessed, &f, processed as f64);
    metrics.put(Metric::RecordsFailed, &f, retried as f64);
    metrics.put(Metric::RecordsRejected, &f, rejected as f64);
    // Ids and keys only (hashed when configured); the dead-letter store keeps contents.
    for (i, (id, o)) in report.ids.iter().zip(&report.outcomes).enumerate() {
        let (message, why) = match o {
            Outcome::Retry(why) => ("record will be retried", why),
            Outcome::Reject(why) => ("record rejected", why),
            _ => continue,
        };
        let key = key_label(&ctx, raws[i].get()).await;
        warn!(id = id.as_deref().unwrap_or("(none)"), index = i, key = %key, reason = %why, "{message}");
    }
    report
}

async fn dead_letter_rejects(
    ctx: Context<'_>,
    raws: &[&RawValue],
    report: &mut BatchReport,
    dl: &dyn DeadLetter,
) {
    let rejects: Vec<usize> = (0..report.outcomes.len())
        .filter(|i| matches!(report.outcomes[*i], Outcome::Reject(_)))
        .collect();
    if rejects.is_empty() {
        return;
    }
    let entries: Vec<DeadLetterEntry> = rejects
        .iter()
        .map(|&i| {
            let reason = match &report.outcomes[i] {
                Outcome::Reject(r) => r.clone(),
                _ => String::new(),
            };
            DeadLetterEntry {
                function: ctx.function.to_owned(),
                source: ctx.source.to_owned(),
                id: report.ids[i].clone(),
                index: i,
                reason,
                record: raws[i].get().to_owned(),
            }
        })
        .collect();
    if let Err(e) = dl.put(entries).await {
        warn!(error = %e, count = rejects.len(), "dead-letter write failed; rejected records will be retried");
        for i in rejects {
            report.outcomes[i] = Outcome::Retry(format!("dead-letter write failed: {e}"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ddb::{StreamRecord, split_batch};
    use crate::error::PortError;
    use std::sync::Mutex;

    #[derive(Default)]
    struct MemoryDeadLetter(Mutex<Vec<DeadLetterEntry>>, bool);
    impl DeadLetter for MemoryDeadLetter {
        fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
            Box::pin(async move {
                if self.1 {
                    return Err(PortError::Transient("store down".into()));
                }
                self.0.lock().unwrap().extend(entries);
                Ok(())
            })
        }
    }

    /// Fails records whose key is `pk = fail` (transient) or `pk = bad` (permanent) in
    /// flush, counts the rest.
    struct FlakyStage(Vec<(usize, Class)>, usize);
    impl<'a> Stage<StreamRecord<'a>> for FlakyStage {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn observe(&mut self, index: usize, c: &StreamRecord<'a>) -> Result<(), StageError> {
            match c.keys.scalar("pk").as_deref() {
                Some("fail") => self.0.push((index, Class::Transient)),
                Some("bad") => self.0.push((index, Class::Permanent)),
                _ => {}
            }
            self.1 += 1;
            Ok(())
        }
        fn flush<'s>(&'s mut self, _: &'s mut Metrics) -> BoxFuture<'s, Vec<(usize, StageError)>> {
            Box::pin(async move {
                self.0
                    .iter()
                    .map(|(i, class)| {
                        let e = match class {
                            Class::Transient => PortError::Transient("down".into()),
                            Class::Permanent => PortError::Permanent("refused".into()),
                        };
                        (*i, StageError::Port(e))
                    })
                    .collect()
            })
        }
    }

    fn rec(seq: u32, pk: &str) -> String {
        format!(
            r#"{{"eventID":"e{seq}","eventSource":"aws:dynamodb","eventName":"INSERT","awsRegion":"us-east-1","dynamodb":{{"Keys":{{"pk":{{"S":"{pk}"}}}},"SequenceNumber":"{seq}"}}}}"#
        )
    }

    fn decode(raw: &str) -> Decoded<StreamRecord<'_>> {
        match StreamRecord::decode(raw) {
            Ok(r) => Decoded::Ok {
                id: r.sequence_number.to_string(),
                change: r,
            },
            Err(error) => Decoded::Reject {
                id: StreamRecord::salvage_id(raw),
                error,
            },
        }
    }

    static PLAIN: std::sync::LazyLock<KeyLabels> = std::sync::LazyLock::new(KeyLabels::plain);

    fn ctx() -> Context<'static> {
        Context {
            function: "test",
            source: "users",
            labels: &PLAIN,
            key_of: StreamRecord::salvage_key,
        }
    }
    #[tokio::test]
    async fn poison_record_is_rejected_alone_and_failures_are_reported() {
        let poison = r#"{"eventID":"p","eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{"Keys":{"pk":{"Q":"x"}},"SequenceNumber":"3"}}"#;
        let batch = format!(
            r#"{{"Records":[{},{},{poison},{}]}}"#,
            rec(1, "a"),
            rec(2, "fail"),
            rec(4, "b")
        );
        let raws = split_batch(&batch).unwrap();
        let dl = MemoryDeadLetter::default();
        let mut stage = FlakyStage(vec![], 0);
        let mut metrics = Metrics::new("Tidemark");
        let report = run(ctx(), &raws, decode, &mut [&mut stage], &dl, &mut metrics).await;

        assert_eq!(stage.1, 3, "the stage saw every decodable record");
        assert_eq!(report.outcomes[0], Outcome::Done);
        assert!(matches!(report.outcomes[1], Outcome::Retry(_)));
        assert!(
            matches!(&report.outcomes[2], Outcome::Reject(r) if r.contains("unknown attribute type tag `Q`"))
        );
        assert_eq!(report.outcomes[3], Outcome::Done);
        assert_eq!(report.failed_ids().unwrap(), ["2"]);
        let dead = dl.0.lock().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id.as_deref(), Some("3"));
        assert_eq!(dead[0].record, poison);
    }

    #[tokio::test]
    async fn permanent_stage_failure_is_dead_lettered_and_transient_one_retried() {
        let batch = format!(
            r#"{{"Records":[{},{},{}]}}"#,
            rec(1, "bad"),
            rec(2, "fail"),
            rec(3, "ok")
        );
        let raws = split_batch(&batch).unwrap();
        let dl = MemoryDeadLetter::default();
        let mut stage = FlakyStage(vec![], 0);
        let mut metrics = Metrics::new("Tidemark");
        let report = run(ctx(), &raws, decode, &mut [&mut stage], &dl, &mut metrics).await;

        assert!(
            matches!(&report.outcomes[0], Outcome::Reject(r) if r == "flaky: refused"),
            "{:?}",
            report.outcomes[0]
        );
        assert!(matches!(report.outcomes[1], Outcome::Retry(_)));
        assert_eq!(report.outcomes[2], Outcome::Done);
        // Only the transient failure goes back to Lambda; the permanent one is in the store.
        assert_eq!(report.failed_ids().unwrap(), ["2"]);
        let dead = dl.0.lock().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id.as_deref(), Some("1"));
        assert_eq!(dead[0].reason, "flaky: refused");
    }

    #[tokio::test]
    async fn failed_dead_letter_write_turns_rejects_into_retries() {
        let batch = format!(
            r#"{{"Records":[{},{{"dynamodb":{{"SequenceNumber":"9"}}}}]}}"#,
            rec(1, "a")
        );
        let raws = split_batch(&batch).unwrap();
        let dl = MemoryDeadLetter(Mutex::default(), true);
        let mut metrics = Metrics::new("Tidemark");
        let report = run(ctx(), &raws, decode, &mut [], &dl, &mut metrics).await;
        assert_eq!(report.failed_ids().unwrap(), ["9"]);
    }

    #[tokio::test]
    async fn retry_without_id_fails_the_whole_batch() {
        let raws = split_batch(r#"{"Records":[{"nothing":true}]}"#).unwrap();
        let dl = MemoryDeadLetter(Mutex::default(), true);
        let mut metrics = Metrics::new("Tidemark");
        let report = run(ctx(), &raws, decode, &mut [], &dl, &mut metrics).await;
        assert!(report.failed_ids().is_err());
    }

    /// Log lines of `f`, as the function would print them.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    struct Secret;
    impl crate::ports::SecretSource for Secret {
        fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, PortError>> {
            Box::pin(async { Ok(b"shared-secret".to_vec()) })
        }
    }

    #[test]
    fn logs_carry_the_hmac_of_a_rejected_records_key_never_the_key() {
        let poison = r#"{"eventID":"p","eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{"Keys":{"pk":{"S":"plain@example.com"}},"NewImage":{"pk":{"S":12}},"SequenceNumber":"3"}}"#;
        let batch = format!(r#"{{"Records":[{poison}]}}"#);
        let raws = split_batch(&batch).unwrap();
        let dl = MemoryDeadLetter::default();
        let labels = KeyLabels::hashed(std::sync::Arc::new(Secret));
        let logs = logs_of(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut metrics = Metrics::new("Tidemark");
                let ctx = Context {
                    labels: &labels,
                    ..ctx()
                };
                run(ctx, &raws, decode, &mut [], &dl, &mut metrics).await;
            });
        });
        let hash = crate::keyhash::hmac_sha256_hex(b"shared-secret", b"pk=plain@example.com");
        assert!(logs.contains("record rejected"), "{logs}");
        assert!(logs.contains(&format!("key=hmac-sha256:{hash}")), "{logs}");
        assert!(!logs.contains("plain@example.com"), "{logs}");
        // The dead-letter store keeps the record itself.
        assert_eq!(dl.0.lock().unwrap()[0].record, poison);

        // Without hashing, the key (not the item) is logged as it is.
        let logs = logs_of(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut metrics = Metrics::new("Tidemark");
                run(ctx(), &raws, decode, &mut [], &dl, &mut metrics).await;
            });
        });
        assert!(logs.contains("key=pk=plain@example.com"), "{logs}");
    }
}
