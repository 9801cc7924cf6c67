//! Dead-letter stores: S3 for stream functions (the stream forgets records after 24 h, and
//! SQS/SNS on-failure destinations keep only shard and sequence numbers), SQS for queue
//! consumers. Both keep whole records: encrypted, in-region, restricted by IAM.
//!
//! They keep exactly what they are given:
//! - S3 object names are unique per record (its sequence number, or its position plus a
//!   hash of its content) and written with `If-None-Match: *`, so nothing is overwritten;
//!   a write that finds its name taken finds the same record already kept.
//! - SQS messages are batched by the real limits (10 entries, 1 MiB per message and per
//!   request); an entry too large for a message goes to S3 with a pointer message in the
//!   queue.
//! - Writes run concurrently, with a bound.

use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::adapters::aws::port_error;
use crate::error::PortError;
use crate::ports::{DeadLetter, DeadLetterEntry, Kept, KeptRecords};

/// SQS: largest message body, and largest sum of bodies in one SendMessageBatch (1 MiB
/// each since 2025; moto enforces the same).
pub const SQS_MESSAGE_LIMIT: usize = 1_048_576;
pub const SQS_BATCH_LIMIT: usize = 1_048_576;
/// SQS: entries per SendMessageBatch.
pub const SQS_BATCH_ENTRIES: usize = 10;
/// Concurrent PutObject calls of one batch's rejects.
pub const CONCURRENT_PUTS: usize = 16;
/// Concurrent SendMessageBatch calls.
const CONCURRENT_BATCHES: usize = 4;

/// Where S3 dead letters live: `dead-letter/<function>/<source>/<name>.json`.
pub const S3_PREFIX: &str = "dead-letter/";

/// One object per rejected record under `dead-letter/<function>/<source>/<name>.json`.
#[derive(Debug, Clone)]
pub struct S3DeadLetter {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// Keeps only `[A-Za-z0-9._-]` (S3 key segments without surprises).
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A sequence number: digits only (DynamoDB Streams and Kinesis).
pub fn is_sequence_number(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_digit())
}

impl S3DeadLetter {
    pub fn new(client: aws_sdk_s3::Client, bucket: String) -> Self {
        Self { client, bucket }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Unique per record: `seq-<sequence number>` when the record has one (unique within
    /// its stream, and the source names the stream's table), else
    /// `at-<position>-<sha256 of the record>` — the same name only for the same content.
    pub fn object_key(e: &DeadLetterEntry) -> String {
        let name = match e.id.as_deref() {
            Some(id) if is_sequence_number(id) => format!("seq-{id}"),
            _ => {
                let digest = sha2::Sha256::digest(e.record.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("at-{}-{hex}", e.index)
            }
        };
        format!(
            "{S3_PREFIX}{}/{}/{name}.json",
            safe(&e.function),
            safe(&e.source)
        )
    }

    /// Writes one entry unless its name is taken (then the same record is already kept).
    /// Returns the object key.
    pub async fn put_one(&self, e: &DeadLetterEntry) -> Result<String, PortError> {
        let key = Self::object_key(e);
        let body = serde_json::to_vec(e)
            .map_err(|err| PortError::Permanent(format!("dead-letter entry {key}: {err}")))?;
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_none_match("*")
            .content_type("application/json")
            .body(body.into())
            .send()
            .await
        {
            Ok(_) => Ok(key),
            // 412: an object of this name exists, i.e. this very record (same sequence
            // number, or same position and content) was kept by an earlier attempt.
            Err(err) if err.raw_response().map(|r| r.status().as_u16()) == Some(412) => Ok(key),
            Err(err) => Err(port_error(
                &format!("PutObject s3://{}/{key}", self.bucket),
                err,
            )),
        }
    }
}

impl DeadLetter for S3DeadLetter {
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            // The futures are made up front (not yet polled): a stream of borrowed entries
            // would not be `Send` for every lifetime.
            let puts: Vec<_> = entries.iter().map(|e| self.put_one(e)).collect();
            let results: Vec<Result<String, PortError>> = futures::stream::iter(puts)
                .buffer_unordered(CONCURRENT_PUTS)
                .collect()
                .await;
            let failed: Vec<PortError> = results.into_iter().filter_map(Result::err).collect();
            let count = failed.len();
            match failed.into_iter().next() {
                None => Ok(()),
                Some(first) => Err(first_of(first, count, entries.len())),
            }
        })
    }
}

/// The queue message for an entry kept in S3 because it is too large for a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub function: String,
    pub source: String,
    pub id: Option<String>,
    pub index: usize,
    pub reason: String,
    /// Where the whole entry is: `{"bucket": …, "key": …}`.
    pub stored_in_s3: S3Location,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

/// A message of a dead-letter queue, as replay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuedDeadLetter {
    /// A whole entry written by [`SqsDeadLetter`].
    Entry(DeadLetterEntry),
    /// An entry kept in S3, named by a pointer message.
    Pointer(Pointer),
    /// Anything else: a message the queue's redrive policy moved there unchanged.
    Redriven(String),
}

impl QueuedDeadLetter {
    pub fn parse(body: &str) -> Self {
        if let Ok(p) = serde_json::from_str::<Pointer>(body) {
            return Self::Pointer(p);
        }
        match serde_json::from_str::<DeadLetterEntry>(body) {
            Ok(e) => Self::Entry(e),
            Err(_) => Self::Redriven(body.to_owned()),
        }
    }
}

/// SendMessageBatch of the entries (JSON) to the consumer's dead-letter queue; entries too
/// large for a message go to the overflow bucket, with a [`Pointer`] in the queue.
#[derive(Debug, Clone)]
pub struct SqsDeadLetter {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    overflow: Option<S3DeadLetter>,
    message_limit: usize,
}

impl SqsDeadLetter {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: String,
        overflow: Option<S3DeadLetter>,
    ) -> Self {
        Self {
            client,
            queue_url,
            overflow,
            message_limit: SQS_MESSAGE_LIMIT,
        }
    }

    /// A smaller message limit (a queue whose `MaximumMessageSize` is below 1 MiB).
    pub fn with_message_limit(mut self, limit: usize) -> Self {
        self.message_limit = limit.min(SQS_MESSAGE_LIMIT);
        self
    }

    /// The message body for one entry: the entry itself, or a pointer to its S3 copy.
    async fn body(&self, e: &DeadLetterEntry) -> Result<String, PortError> {
        let what = || {
            format!(
                "dead-letter entry (id {})",
                e.id.as_deref().unwrap_or("none")
            )
        };
        let body = serde_json::to_string(e)
            .map_err(|err| PortError::Permanent(format!("{}: {err}", what())))?;
        if body.len() <= self.message_limit {
            return Ok(body);
        }
        let Some(s3) = &self.overflow else {
            return Err(PortError::Permanent(format!(
                "{} is {} bytes, over the SQS message limit of {} bytes, and no overflow bucket is set (TIDEMARK_DEAD_LETTER_BUCKET)",
                what(),
                body.len(),
                self.message_limit
            )));
        };
        let key = s3.put_one(e).await?;
        let pointer = Pointer {
            function: e.function.clone(),
            source: e.source.clone(),
            id: e.id.clone(),
            index: e.index,
            reason: e.reason.clone(),
            stored_in_s3: S3Location {
                bucket: s3.bucket.clone(),
                key,
            },
        };
        serde_json::to_string(&pointer)
            .map_err(|err| PortError::Permanent(format!("{}: {err}", what())))
    }

    async fn send(&self, batch: Vec<String>) -> Result<(), PortError> {
        let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
        for (i, body) in batch.into_iter().enumerate() {
            let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(format!("d{i}"))
                .message_body(body)
                .build()
                .map_err(|e| PortError::Permanent(format!("dead-letter entry: {e}")))?;
            req = req.entries(entry);
        }
        let out = req
            .send()
            .await
            .map_err(|e| port_error(&format!("SendMessageBatch {}", self.queue_url), e))?;
        if let Some(f) = out.failed().first() {
            let text = format!(
                "SendMessageBatch {}: {} of the entries failed, first {}: {} {}",
                self.queue_url,
                out.failed().len(),
                f.id(),
                f.code(),
                f.message().unwrap_or_default()
            );
            return Err(if f.sender_fault() {
                PortError::Permanent(text)
            } else {
                PortError::Transient(text)
            });
        }
        Ok(())
    }
}

/// The first of `count` failed writes (of `total`), keeping its class.
fn first_of(first: PortError, count: usize, total: usize) -> PortError {
    let text = |t: String| format!("{count} of {total} dead-letter writes failed, first: {t}");
    match first {
        PortError::Transient(t) => PortError::Transient(text(t)),
        PortError::Permanent(t) => PortError::Permanent(text(t)),
    }
}

/// Packs message bodies into SendMessageBatch requests: at most
/// [`SQS_BATCH_ENTRIES`] entries and `batch_limit` bytes of bodies per request.
pub fn pack(bodies: Vec<String>, batch_limit: usize) -> Vec<Vec<String>> {
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for body in bodies {
        let fits = batches
            .last()
            .is_some_and(|b| b.len() < SQS_BATCH_ENTRIES && size + body.len() <= batch_limit);
        if !fits {
            batches.push(Vec::new());
            size = 0;
        }
        size += body.len();
        if let Some(b) = batches.last_mut() {
            b.push(body);
        }
    }
    batches
}

impl DeadLetter for SqsDeadLetter {
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            let bodies: Vec<_> = entries.iter().map(|e| self.body(e)).collect();
            let bodies: Vec<Result<String, PortError>> = futures::stream::iter(bodies)
                .buffered(CONCURRENT_PUTS)
                .collect()
                .await;
            let bodies: Vec<String> = bodies.into_iter().collect::<Result<_, _>>()?;
            let results: Vec<Result<(), PortError>> = futures::stream::iter(
                pack(bodies, SQS_BATCH_LIMIT)
                    .into_iter()
                    .map(|b| self.send(b))
                    .collect::<Vec<_>>(),
            )
            .buffer_unordered(CONCURRENT_BATCHES)
            .collect()
            .await;
            results.into_iter().collect()
        })
    }
}

// ------------------------------------------------------------------ reading them back (replay)

/// Reads one object's text; `None` when it does not exist (any more).
async fn get_text(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<String>, PortError> {
    let out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => o,
        Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
        Err(err) => return Err(port_error(&format!("GetObject s3://{bucket}/{key}"), err)),
    };
    let bytes = out.body.collect().await.map_err(|e| {
        PortError::Transient(format!(
            "GetObject s3://{bucket}/{key}: reading the body: {e}"
        ))
    })?;
    String::from_utf8(bytes.into_bytes().to_vec())
        .map(Some)
        .map_err(|_| PortError::Permanent(format!("s3://{bucket}/{key} is not UTF-8 text")))
}

async fn delete_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<(), PortError> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map(drop)
        .map_err(|e| port_error(&format!("DeleteObject s3://{bucket}/{key}"), e))
}

impl crate::ports::Overflow for S3DeadLetter {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>> {
        Box::pin(get_text(&self.client, bucket, key))
    }

    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(delete_object(&self.client, bucket, key))
    }
}

/// The objects under one prefix of a bucket, in key order: the stream-processor's dead
/// letters (`dead-letter/stream-processor/`) or the batches its mapping gave up
/// (`aws/lambda/`, the S3 on-failure destination). Removing one deletes it (in a versioned
/// bucket the deleted version stays until the lifecycle rule expires it).
#[derive(Debug)]
pub struct S3Kept {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// Where the listing goes on: `None` before the first page.
    cursor: tokio::sync::Mutex<Option<Option<String>>>,
}

impl S3Kept {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, prefix: String) -> Self {
        Self {
            client,
            bucket,
            prefix,
            cursor: tokio::sync::Mutex::new(None),
        }
    }
}

impl KeptRecords for S3Kept {
    fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn read(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Kept>, PortError>> {
        Box::pin(async move {
            let mut cursor = self.cursor.lock().await;
            let token = match &*cursor {
                Some(None) => return Ok(Vec::new()), // listed to the end
                Some(Some(t)) => Some(t.clone()),
                None => None,
            };
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .max_keys(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| port_error(&format!("ListObjectsV2 {}", self.name()), e))?;
            *cursor = Some(page.next_continuation_token().map(str::to_owned));
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            let reads: Vec<_> = keys
                .iter()
                .map(|k| get_text(&self.client, &self.bucket, k))
                .collect();
            let bodies: Vec<Result<Option<String>, PortError>> = futures::stream::iter(reads)
                .buffered(CONCURRENT_PUTS)
                .collect()
                .await;
            let mut out = Vec::new();
            for (key, body) in keys.into_iter().zip(bodies) {
                let (body, unreadable) = match body {
                    Ok(Some(body)) => (body, None),
                    // Gone since the listing (another replay removed it): nothing to do.
                    Ok(None) => continue,
                    // This object's failure, not the page's: the others are still read.
                    Err(e) => (String::new(), Some(e)),
                };
                out.push(Kept {
                    location: format!("s3://{}/{key}", self.bucket),
                    id: key.clone(),
                    handle: key,
                    body,
                    unreadable,
                });
            }
            Ok(out)
        })
    }

    fn remove<'a>(&'a self, kept: &'a Kept) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(delete_object(&self.client, &self.bucket, &kept.handle))
    }

    fn release<'a>(&'a self, _: &'a [Kept]) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A queue as replay uses it: a dead-letter queue read (messages received stay hidden for
/// [`READ_VISIBILITY_S`] until deleted or released), or the invalidation queue written to.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// How long a message replay read stays hidden from other readers if replay stops before
/// deleting or releasing it.
pub const READ_VISIBILITY_S: i32 = 300;

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self { client, url }
    }
}

impl KeptRecords for SqsQueue {
    fn name(&self) -> String {
        self.url.clone()
    }

    fn read(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Kept>, PortError>> {
        Box::pin(async move {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(i32::try_from(limit.clamp(1, 10)).unwrap_or(10))
                .visibility_timeout(READ_VISIBILITY_S)
                // Long polling asks every server: a short poll can answer empty while
                // messages remain.
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| port_error(&format!("ReceiveMessage {}", self.url), e))?;
            Ok(out
                .messages()
                .iter()
                .map(|m| {
                    let id = m.message_id().unwrap_or_default().to_owned();
                    Kept {
                        location: format!("{} message {id}", self.url),
                        id,
                        handle: m.receipt_handle().unwrap_or_default().to_owned(),
                        body: m.body().unwrap_or_default().to_owned(),
                        unreadable: None,
                    }
                })
                .collect())
        })
    }

    fn remove<'a>(&'a self, kept: &'a Kept) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(&kept.handle)
                .send()
                .await
                .map(drop)
                .map_err(|e| port_error(&format!("DeleteMessage {}", kept.location), e))
        })
    }

    fn release<'a>(&'a self, kept: &'a [Kept]) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            // Every message is released even when one fails: the others need not wait
            // for their hiding to run out.
            let mut failed: Vec<PortError> = Vec::new();
            for k in kept {
                if let Err(e) = self
                    .client
                    .change_message_visibility()
                    .queue_url(&self.url)
                    .receipt_handle(&k.handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                {
                    failed.push(port_error(
                        &format!("ChangeMessageVisibility {}", k.location),
                        e,
                    ));
                }
            }
            let count = failed.len();
            match failed.into_iter().next() {
                None => Ok(()),
                Some(first) => {
                    let text = |t: String| {
                        format!("{count} of {} releases failed, first: {t}", kept.len())
                    };
                    Err(match first {
                        PortError::Transient(t) => PortError::Transient(text(t)),
                        PortError::Permanent(t) => PortError::Permanent(text(t)),
                    })
                }
            }
        })
    }
}

impl crate::ports::Requeue for SqsQueue {
    fn name(&self) -> String {
        self.url.clone()
    }

    fn send<'a>(&'a self, body: &'a str) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.client
                .send_message()
                .queue_url(&self.url)
                .message_body(body)
                .send()
                .await
                .map(drop)
                .map_err(|e| port_error(&format!("SendMessage {}", self.url), e))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: Option<&str>, index: usize, record: &str) -> DeadLetterEntry {
        DeadLetterEntry {
            function: "stream-processor".into(),
            source: "users".into(),
            id: id.map(str::to_owned),
            index,
            reason: "r".into(),
            record: record.into(),
        }
    }

    #[test]
    fn names_are_unique_per_record() {
        let seq = S3DeadLetter::object_key(&entry(Some("123"), 0, "a"));
        assert_eq!(seq, "dead-letter/stream-processor/users/seq-123.json");
        // Same eventID, no sequence number: different content → different names.
        let a = S3DeadLetter::object_key(&entry(Some("ev/1"), 0, "a"));
        let b = S3DeadLetter::object_key(&entry(Some("ev/1"), 0, "b"));
        assert_ne!(a, b);
        // Ids that sanitise alike do not collide either.
        let c = S3DeadLetter::object_key(&entry(Some("x:1"), 1, "c"));
        let d = S3DeadLetter::object_key(&entry(Some("x/1"), 1, "d"));
        assert_ne!(c, d);
        // Same content at another position: another name.
        assert_ne!(a, S3DeadLetter::object_key(&entry(None, 1, "a")));
        // The same record again: the same name (idempotent).
        assert_eq!(a, S3DeadLetter::object_key(&entry(None, 0, "a")));
    }

    #[test]
    fn packing_respects_entries_and_bytes() {
        let bodies: Vec<String> = (0..10).map(|_| "x".repeat(150_000)).collect();
        let batches = pack(bodies, SQS_BATCH_LIMIT);
        assert!(
            batches
                .iter()
                .all(|b| b.iter().map(String::len).sum::<usize>() <= SQS_BATCH_LIMIT)
        );
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10);
        assert_eq!(batches.len(), 2);
        let small: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        let batches = pack(small, SQS_BATCH_LIMIT);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert!(pack(Vec::new(), SQS_BATCH_LIMIT).is_empty());
    }

    #[test]
    fn queued_dead_letters_are_told_apart() {
        let e = entry(Some("m1"), 0, "{}");
        let body = serde_json::to_string(&e).unwrap();
        assert_eq!(QueuedDeadLetter::parse(&body), QueuedDeadLetter::Entry(e));
        let p = Pointer {
            function: "f".into(),
            source: "s".into(),
            id: None,
            index: 3,
            reason: "r".into(),
            stored_in_s3: S3Location {
                bucket: "b".into(),
                key: "k".into(),
            },
        };
        let body = serde_json::to_string(&p).unwrap();
        assert_eq!(QueuedDeadLetter::parse(&body), QueuedDeadLetter::Pointer(p));
        assert!(matches!(
            QueuedDeadLetter::parse(r#"{"v":1,"keys":[]}"#),
            QueuedDeadLetter::Redriven(_)
        ));
    }
}
