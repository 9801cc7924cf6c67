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
