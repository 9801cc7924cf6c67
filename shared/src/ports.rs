//! Small I/O ports. Each has one real adapter in [`crate::adapters`] (SNS, S3/SQS, Redis),
//! tested against moto and redis-server; the decision core only sees these traits.

use futures::future::BoxFuture;

pub use crate::error::PortError;

/// One message for PublishBatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Unique within the request (SNS batch entry id).
    pub id: String,
    pub body: String,
    /// String message attributes.
    pub attributes: Vec<(&'static str, String)>,
}

impl Outbound {
    /// Bytes SNS counts against the 256 KiB limit: body plus attribute names, types, values.
    pub fn sns_size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// Result of one PublishBatch call: per entry, or the whole call failed.
pub type PublishResult = Result<Vec<Result<(), PortError>>, PortError>;

/// Publishes invalidation messages (SNS in production).
pub trait Publish: Send + Sync {
    /// One PublishBatch call (≤ 10 entries, ≤ 256 KiB). `Ok` holds one result per entry,
    /// in order: a successful call can still fail single entries. `Err` = the call failed.
    /// Each error is classed: a permanent one dead-letters the records behind the entry.
    fn publish_batch<'a>(&'a self, entries: &'a [Outbound]) -> BoxFuture<'a, PublishResult>;
}

/// A rejected record with everything needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterEntry {
    pub function: String,
    pub source: String,
    pub id: Option<String>,
    pub index: usize,
    pub reason: String,
    /// The raw record, whole: dead-letter stores are encrypted, in-region and restricted.
    pub record: String,
}

/// Stores rejected records (S3 for stream functions, SQS for queue consumers).
pub trait DeadLetter: Send + Sync {
    /// Any failure turns the entries' rejects into retries (a reject must land somewhere).
    fn put(&self, entries: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>>;
}

/// Deletes keys from the regional cache.
pub trait Cache: Send + Sync {
    /// Deletes every key in as few round trips as the topology allows (one for a single
    /// node). Returns how many existed.
    fn unlink<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, PortError>>;

    /// Deletes every key starting with `prefix` (`""`: every key) on every node: SCAN, then
    /// UNLINK in batches with a pause between them; `progress` gets the running count.
    /// Returns how many keys were removed.
    fn flush_prefix<'a>(
        &'a self,
        prefix: &'a str,
        plan: FlushPlan,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, PortError>> {
        let _ = (prefix, plan, progress);
        Box::pin(async {
            Err(PortError::Permanent(
                "this cache adapter cannot flush by prefix".into(),
            ))
        })
    }
}

/// How fast a flush goes: keys per SCAN/UNLINK round, and the pause between rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPlan {
    pub batch: usize,
    pub pause: std::time::Duration,
}

impl Default for FlushPlan {
    /// 500 keys per round, 10 ms apart: at most ~50,000 UNLINKs a second per node.
    fn default() -> Self {
        Self {
            batch: 500,
            pause: std::time::Duration::from_millis(10),
        }
    }
}

/// A scalar DynamoDB value of a heartbeat item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemValue {
    S(String),
    N(String),
    B(Vec<u8>),
}

/// The replication canary's reads and writes (DynamoDB and S3 in production).
pub trait Heartbeats: Send + Sync {
    /// PutItem of `item` (key attributes included) into `table`.
    fn put_item<'a>(
        &'a self,
        table: &'a str,
        item: Vec<(String, ItemValue)>,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Strongly consistent GetItem of `key`: the number in `attribute`, `None` when the
    /// item or the attribute does not exist.
    fn item_written_at<'a>(
        &'a self,
        table: &'a str,
        key: Vec<(String, ItemValue)>,
        attribute: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, PortError>>;
    /// PutObject of `key`, with user metadata `metadata` = `written_at_ms` (also the body).
    fn put_object<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        metadata: &'a str,
        written_at_ms: u64,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// HeadObject: the number in user metadata `metadata`, `None` when the object does not
    /// exist.
    fn object_written_at<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        metadata: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, PortError>>;
}

/// A secret read through a port (Secrets Manager in production), at first use.
pub trait SecretSource: Send + Sync {
    fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, PortError>>;
}

/// One alert on the alert topic. Keys and ids only, never item or object contents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// What happened, e.g. `residency-violation`.
    pub kind: String,
    /// Stable across redeliveries of the same change (object version, or item key plus
    /// stream sequence number): delivery is at least once, consumers deduplicate on it.
    pub event_id: String,
    /// Configured table or bucket name.
    pub source: String,
    /// The item or object key (hashed when `residency.hash_keys_in_alerts` is set).
    pub key: String,
    /// Object version id or stream sequence number.
    pub version: Option<String>,
    /// Region the data was found in.
    pub region: String,
    pub rule: Option<String>,
    /// What enforcement does: `delete-replica`, `hold`, `alert` or `report`.
    pub action: String,
    /// Why the action is not the rule's (e.g. an origin copy is reported, not deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Sends alerts (SNS PublishBatch on the alert topic in production).
pub trait Alerts: Send + Sync {
    /// Sends every alert; one result per alert, in order.
    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, Vec<Result<(), PortError>>>;
}

/// What a HEAD of one object version tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionHead {
    /// `x-amz-replication-status: REPLICA`: S3 replication wrote this version here.
    pub replica: bool,
    pub size: u64,
    /// User metadata (names without `x-amz-meta-`, as S3 returns them: lower-case).
    pub metadata: Vec<(String, String)>,
}

/// Reads and removes single object versions (S3 in production). Every call names the
/// version, so a later overwrite of the key cannot change what is read or removed.
pub trait ObjectStore: Send + Sync {
    /// `Ok(None)`: that version no longer exists.
    fn head_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionHead>, PortError>>;
    fn version_tags<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, PortError>>;
    /// DeleteObject with VersionId: never replicated, so other regions' copies stay.
    /// Deleting a version that is already gone succeeds.
    fn delete_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Copies one version (metadata and tags included) to `to_bucket`/`to_key`, with a
    /// multipart copy when `size` is above the 5 GB CopyObject limit.
    fn copy_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
        size: u64,
        to_bucket: &'a str,
        to_key: &'a str,
    ) -> BoxFuture<'a, Result<(), PortError>>;
}

/// Queues the canary's ticks between two scheduled minutes (SQS delay queue in production).
pub trait TickQueue: Send + Sync {
    /// One message per entry of `delays_s`, each delivered after that many seconds.
    fn send_delayed<'a>(&'a self, delays_s: &'a [u32]) -> BoxFuture<'a, Result<(), PortError>>;
}

/// One thing a dead-letter store keeps, as `tidemark replay` reads it: a dead-letter entry,
/// a stream batch the mapping gave up, or a dead-letter queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Where it is, for the summary: `s3://bucket/key`, or `<queue url> message <id>`.
    pub location: String,
    /// Its name in the store: the S3 key, or the message id.
    pub id: String,
    /// What removes or releases it: the S3 key, or the message's receipt handle.
    pub handle: String,
    pub body: String,
    /// Why its body could not be read (then `body` is empty): a permanent error skips this
    /// one thing, a transient one fails it; the store's other things go on.
    pub unreadable: Option<crate::error::PortError>,
}

/// A dead-letter store as replay reads it (an S3 prefix, or an SQS queue in production).
pub trait KeptRecords: Send + Sync {
    /// Where the store is, for messages (`s3://bucket/prefix`, or the queue URL).
    fn name(&self) -> String;
    /// The next `limit` kept things; empty when everything was read. Messages read stay
    /// hidden from other readers until removed or released.
    fn read(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Kept>, PortError>>;
    /// Removes one (after its replay succeeded).
    fn remove<'a>(&'a self, kept: &'a Kept) -> BoxFuture<'a, Result<(), PortError>>;
    /// Gives back what was read and not removed (messages: visible again at once).
    fn release<'a>(&'a self, kept: &'a [Kept]) -> BoxFuture<'a, Result<(), PortError>>;
}

/// Whole dead-letter entries kept in S3 behind a pointer message (S3 in production).
pub trait Overflow: Send + Sync {
    /// The region's dead-letter bucket: a pointer message may name only an object of it.
    fn bucket(&self) -> &str;
    /// The object's text; `None` when it no longer exists.
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>>;
    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), PortError>>;
}

/// Sends a message body to a queue as it is (SQS SendMessage in production).
pub trait Requeue: Send + Sync {
    /// The queue, for messages.
    fn name(&self) -> String;
    fn send<'a>(&'a self, body: &'a str) -> BoxFuture<'a, Result<(), PortError>>;
}
