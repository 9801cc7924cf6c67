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
}
