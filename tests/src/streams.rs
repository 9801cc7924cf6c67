//! TEST CODE: what AWS does around DynamoDB Streams that moto does not.
//!
//! * [`StreamReader`] follows every shard of a stream (moto has one) in order.
//! * [`Replicator`] simulates global-table replication one way: each change in the source
//!   replica's stream is applied to the destination replica after a delay, last writer
//!   wins, and the direction can be paused. Writes it makes are remembered so the reverse
//!   replicator does not send them back.
//! * [`StreamMapping`] simulates a Lambda event source mapping on a stream: batches,
//!   `ReportBatchItemFailures` (retry from the lowest failed sequence number), bisect on
//!   function error, bounded retries, and an S3 on-failure destination holding the batch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_dynamodbstreams::types::{OperationType, Record, ShardIteratorType};
use serde_json::{Value, json};

use crate::aws::{RegionClients, image_json, to_table_attr};
use crate::runtime::{InvocationLog, Invoke, InvokeResult, failed_ids};

/// Follows a stream from TRIM_HORIZON.
pub struct StreamReader {
    clients: RegionClients,
    stream_arn: String,
    iterators: HashMap<String, Option<String>>,
}

impl StreamReader {
    pub fn new(clients: RegionClients, stream_arn: &str) -> Self {
        Self {
            clients,
            stream_arn: stream_arn.to_owned(),
            iterators: HashMap::new(),
        }
    }

    /// New records of every shard, in order.
    pub async fn poll(&mut self) -> Result<Vec<Record>> {
        let desc = self
            .clients
            .streams
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await?;
        let shards: Vec<String> = desc
            .stream_description()
            .map(|d| {
                d.shards()
                    .iter()
                    .filter_map(|s| s.shard_id().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for shard in shards {
            if !self.iterators.contains_key(&shard) {
                let it = self
                    .clients
                    .streams
                    .get_shard_iterator()
                    .stream_arn(&self.stream_arn)
                    .shard_id(&shard)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await?
                    .shard_iterator()
                    .map(str::to_owned);
                self.iterators.insert(shard.clone(), it);
            }
            let Some(Some(it)) = self.iterators.get(&shard).cloned() else {
                continue;
            };
            let r = self
                .clients
                .streams
                .get_records()
                .shard_iterator(&it)
                .limit(1000)
                .send()
                .await?;
            out.extend(r.records().iter().cloned());
            self.iterators.insert(
                shard,
                r.next_shard_iterator().map(str::to_owned).or(Some(it)),
            );
        }
        Ok(out)
    }
}

/// Canonical text of an item key (for maps and loop detection).
pub fn key_text(keys: &Value) -> String {
    keys.to_string() // serde_json maps are sorted: canonical
}

/// Writes the replicators made, per region: (table, key text, image text) → count.
#[derive(Default, Debug)]
pub struct EchoFilter(Mutex<HashMap<(String, String, String), usize>>);

impl EchoFilter {
    fn remember(&self, region: &str, key: &str, image: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((region.into(), key.into(), image.into()))
            .or_default() += 1;
    }
    /// True (and forgets it) when this record is the echo of a replicated write.
    pub fn is_echo(&self, region: &str, key: &str, image: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(&(region.into(), key.into(), image.into())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Per (region, table, item key): the write time of the version that region's replica
/// holds, from local writes and applied replications. An incoming write older than it
/// loses (last writer wins, decided by each replica as DynamoDB does).
#[derive(Default, Debug)]
pub struct Versions(Mutex<HashMap<(String, String, String), u64>>);

/// Text of a record's image for echo detection.
pub fn image_text(r: &Record) -> (String, String) {
    let d = r.dynamodb();
    let keys = d
        .and_then(|d| d.keys())
        .map(image_json)
        .unwrap_or(Value::Null);
    let image = match r.event_name() {
        Some(OperationType::Remove) => json!("REMOVE"),
        _ => d
            .and_then(|d| d.new_image())
            .map(image_json)
            .unwrap_or(Value::Null),
    };
    (key_text(&keys), image.to_string())
}

/// One direction of global-table replication.
pub struct Replicator {
    pub from: String,
    pub to: String,
    table: String,
    reader: StreamReader,
    dest: RegionClients,
    delay: Duration,
    pub paused: Arc<AtomicBool>,
    pending: VecDeque<(Instant, Record)>,
    echoes: Arc<EchoFilter>,
    versions: Arc<Versions>,
    /// Attribute holding the application's write time (ms), for last-writer-wins.
    written_at: Option<String>,
    /// Every write this direction applied, in order: what the replica's ACDT can be.
    pub applied: Vec<Applied>,
}

/// One write a replicator applied: its write time, and the wall clock just before and just
/// after the destination accepted it (the destination's ACDT lies in between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub written_at_ms: u64,
    pub before_ms: u64,
    pub after_ms: u64,
}

impl Replicator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: &str,
        source: RegionClients,
        source_stream: &str,
        dest: RegionClients,
        delay: Duration,
        echoes: Arc<EchoFilter>,
        versions: Arc<Versions>,
        written_at: Option<String>,
    ) -> Self {
        Self {
            from: source.region.clone(),
            to: dest.region.clone(),
            table: table.to_owned(),
            reader: StreamReader::new(source, source_stream),
            dest,
            delay,
            paused: Arc::new(AtomicBool::new(false)),
            pending: VecDeque::new(),
            echoes,
            versions,
            written_at,
            applied: Vec::new(),
        }
    }

    /// Replication delay of this direction from now on.
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// Pulls new changes and applies those whose delay has passed. Returns how many are
    /// still waiting (paused ones included).
    pub async fn step(&mut self) -> Result<usize> {
        for r in self.reader.poll().await? {
            let (key, image) = image_text(&r);
            if self.echoes.is_echo(&self.from, &key, &image) {
                continue; // a write this harness replicated into `from`: never send it back
            }
            // A local write in `from`: remember the time of the version `from` now holds,
            // so an older write from another region that arrives later loses there.
            let t = self.write_time(&r);
            {
                let mut v = self.versions.0.lock().unwrap_or_else(|e| e.into_inner());
                v.insert((self.from.clone(), self.table.clone(), key), t);
            }
            self.pending.push_back((Instant::now(), r));
        }
        if self.paused.load(Ordering::SeqCst) {
            return Ok(self.pending.len());
        }
        while let Some((seen, _)) = self.pending.front() {
            if seen.elapsed() < self.delay {
                break;
            }
            let Some((_, r)) = self.pending.pop_front() else {
                break;
            };
            self.apply(&r).await?;
        }
        Ok(self.pending.len())
    }

    fn write_time(&self, r: &Record) -> u64 {
        let d = r.dynamodb();
        let app = self.written_at.as_ref().and_then(|a| {
            d.and_then(|d| d.new_image())
                .and_then(|i| i.get(a))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
        });
        app.unwrap_or_else(|| {
            d.and_then(|d| d.approximate_creation_date_time())
                .map_or(0, |t| {
                    u64::try_from(t.to_millis().unwrap_or(0)).unwrap_or(0)
                })
        })
    }

    async fn apply(&mut self, r: &Record) -> Result<()> {
        let (key, image) = image_text(r);
        let t = self.write_time(r);
        {
            let mut v = self.versions.0.lock().unwrap_or_else(|e| e.into_inner());
            let slot = v
                .entry((self.to.clone(), self.table.clone(), key.clone()))
                .or_insert(0);
            if t < *slot {
                return Ok(()); // an older write lost to a newer one (last writer wins)
            }
            *slot = t;
        }
        let d = r.dynamodb().context("record without body")?;
        self.echoes.remember(&self.to, &key, &image);
        match r.event_name() {
            Some(OperationType::Remove) => {
                let keys = d
                    .keys()
                    .context("no keys")?
                    .iter()
                    .map(|(k, v)| (k.clone(), to_table_attr(v)))
                    .collect();
                self.dest
                    .dynamodb
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(keys))
                    .send()
                    .await?;
            }
            _ => {
                let item = d
                    .new_image()
                    .context("no new image")?
                    .iter()
                    .map(|(k, v)| (k.clone(), to_table_attr(v)))
                    .collect();
                let before_ms = crate::now_ms();
                let mut put = self
                    .dest
                    .dynamodb
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item));
                if let Some(a) = &self.written_at {
                    // The destination decides, as DynamoDB does: a local write it took
                    // after this one (not yet seen on its stream) keeps its place.
                    put = put
                        .condition_expression("attribute_not_exists(#w) OR #w < :t")
                        .expression_attribute_names("#w", a)
                        .expression_attribute_values(
                            ":t",
                            aws_sdk_dynamodb::types::AttributeValue::N(t.to_string()),
                        );
                }
                match put.send().await {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                    {
                        return Ok(()); // lost to a newer local write
                    }
                    Err(e) => return Err(e.into()),
                }
                self.applied.push(Applied {
                    written_at_ms: t,
                    before_ms,
                    after_ms: crate::now_ms(),
                });
            }
        }
        Ok(())
    }
}

/// Settings of a stream mapping, as the deployed template defines them.
#[derive(Debug, Clone)]
pub struct MappingSettings {
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`: a batch below `batch_size` waits this long.
    pub window: Duration,
    pub max_retries: u32,
    pub bisect: bool,
    /// `ReportBatchItemFailures`: without it Lambda ignores the response's failures.
    pub report_failures: bool,
    /// `FilterCriteria`: records no filter keeps are skipped without an invocation.
    pub filters: crate::filter::Filters,
}

impl MappingSettings {
    /// The settings of a stream mapping of the deployed stack.
    pub fn from_template(m: &crate::rehearsal::Mapping) -> anyhow::Result<Self> {
        Ok(Self {
            batch_size: m.batch_size(),
            window: Duration::from_secs(m.window_seconds()),
            // -1 (the default) is "until the record expires": bounded here by the test.
            max_retries: m
                .number("MaximumRetryAttempts")
                .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            bisect: m.flag("BisectBatchOnFunctionError"),
            report_failures: m.reports_item_failures(),
            filters: crate::filter::Filters::from_properties(&m.logical, &m.properties)?,
        })
    }
}

/// TTL expiries the harness performed: (region, table, key text) → record carries the
/// service principal in that region only.
pub type TtlMarks = Arc<Mutex<HashSet<(String, String, String)>>>;

/// A Lambda event source mapping on one stream.
pub struct StreamMapping {
    region: String,
    table: String,
    stream_arn: String,
    reader: StreamReader,
    function: Arc<dyn Invoke>,
    settings: MappingSettings,
    buffer: VecDeque<Value>,
    attempts: u32,
    limit: usize,
    on_failure: Option<(aws_sdk_s3::Client, String)>,
    ttl: TtlMarks,
    /// When the batching window of the buffered records opened.
    window_open: Option<Instant>,
    /// Every invocation's outcome, for tests: (batch sequence numbers, failed ids or error).
    pub log: InvocationLog,
    /// What Lambda publishes as `AWS/Lambda` `IteratorAge` for the function, one value per
    /// invocation: (invoke time ms, now − the batch's last record's
    /// `ApproximateCreationDateTime`, which the stream gives to the second, in ms).
    pub iterator_ages: IteratorAges,
}

/// (invoke time ms, iterator age ms) per invocation of a stream mapping.
pub type IteratorAges = Arc<Mutex<Vec<(u64, f64)>>>;

impl StreamMapping {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clients: RegionClients,
        table: &str,
        stream_arn: &str,
        function: Arc<dyn Invoke>,
        settings: MappingSettings,
        on_failure: Option<(aws_sdk_s3::Client, String)>,
        ttl: TtlMarks,
    ) -> Self {
        let limit = settings.batch_size;
        Self {
            region: clients.region.clone(),
            table: table.to_owned(),
            stream_arn: stream_arn.to_owned(),
            reader: StreamReader::new(clients, stream_arn),
            function,
            settings,
            buffer: VecDeque::new(),
            attempts: 0,
            limit,
            on_failure,
            ttl,
            window_open: None,
            log: Arc::default(),
            iterator_ages: Arc::default(),
        }
    }

    /// The record as Lambda delivers it (moto's GetRecords lacks the ARN and identity).
    fn lambda_record(&self, r: &Record) -> Value {
        let d = r.dynamodb();
        let mut body = serde_json::Map::new();
        if let Some(t) = d.and_then(|d| d.approximate_creation_date_time()) {
            body.insert("ApproximateCreationDateTime".into(), json!(t.secs()));
        }
        if let Some(k) = d.and_then(|d| d.keys()) {
            body.insert("Keys".into(), image_json(k));
        }
        if let Some(i) = d.and_then(|d| d.new_image()) {
            body.insert("NewImage".into(), image_json(i));
        }
        if let Some(i) = d.and_then(|d| d.old_image()) {
            body.insert("OldImage".into(), image_json(i));
        }
        body.insert(
            "SequenceNumber".into(),
            json!(d.and_then(|d| d.sequence_number()).unwrap_or("")),
        );
        body.insert(
            "SizeBytes".into(),
            json!(d.and_then(|d| d.size_bytes()).unwrap_or(0)),
        );
        body.insert("StreamViewType".into(), json!("NEW_AND_OLD_IMAGES"));
        let mut rec = json!({
            "eventID": r.event_id().unwrap_or(""),
            "eventName": r.event_name().map(|e| e.as_str()).unwrap_or(""),
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "dynamodb": Value::Object(body),
            "eventSourceARN": self.stream_arn,
        });
        if r.event_name() == Some(&OperationType::Remove) {
            let (key, _) = image_text(r);
            let mut ttl = self.ttl.lock().unwrap_or_else(|e| e.into_inner());
            if ttl.remove(&(self.region.clone(), self.table.clone(), key)) {
                rec["userIdentity"] =
                    json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
            }
        }
        rec
    }

    /// Appends a raw record (a poison record in tests) as if the stream had carried it.
    pub fn inject(&mut self, record: Value) {
        self.buffer.push_back(record);
    }

    /// Reads new records into the buffer without invoking the function.
    pub async fn pull(&mut self) -> Result<usize> {
        for r in self.reader.poll().await? {
            let rec = self.lambda_record(&r);
            // Lambda filters before batching: a dropped record never reaches the function.
            if self.settings.filters.keeps(&rec) {
                self.buffer.push_back(rec);
            }
        }
        Ok(self.buffer.len())
    }

    /// The records read but not yet delivered (tests rewrite one into a poison record that
    /// keeps its place and sequence number).
    pub fn buffered_mut(&mut self) -> &mut VecDeque<Value> {
        &mut self.buffer
    }

    /// Reads new records and invokes until the buffer is empty or a batch must wait for a
    /// retry, waiting out the batching window first. Returns the records still buffered.
    pub async fn step(&mut self) -> Result<usize> {
        loop {
            let left = self.tick().await?;
            if self.window_open.is_none() {
                return Ok(left); // delivered, or nothing to deliver
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`StreamMapping::step`], without waiting: a batch below the batch size waits
    /// for the batching window across ticks (Lambda's poller does the same), so the rest
    /// of the world keeps moving meanwhile.
    pub async fn tick(&mut self) -> Result<usize> {
        self.pull().await?;
        if self.buffer.is_empty() {
            self.window_open = None;
            return Ok(0);
        }
        // Lambda waits up to the batching window for a full batch (not before a retry).
        if self.attempts == 0 && !self.settings.window.is_zero() && self.buffer.len() < self.limit {
            let opened = *self.window_open.get_or_insert_with(Instant::now);
            if opened.elapsed() < self.settings.window {
                return Ok(self.buffer.len());
            }
        }
        self.window_open = None;
        let mut invocations = 0;
        while !self.buffer.is_empty() && invocations < 20 {
            invocations += 1;
            let n = self.limit.min(self.buffer.len());
            let batch: Vec<Value> = self.buffer.iter().take(n).cloned().collect();
            let seqs: Vec<String> = batch
                .iter()
                .map(|r| {
                    r["dynamodb"]["SequenceNumber"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect();
            if let Some(t) = batch
                .last()
                .and_then(|r| r["dynamodb"]["ApproximateCreationDateTime"].as_f64())
            {
                let now = crate::now_ms();
                self.iterator_ages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((now, (now as f64 - t * 1000.0).max(0.0)));
            }
            let payload = json!({"Records": batch}).to_string();
            let result = self.function.invoke(payload).await?;
            match result {
                InvokeResult::Ok(v) => {
                    let failed = if self.settings.report_failures {
                        failed_ids(&v)
                    } else {
                        Vec::new() // the response is not read: the batch succeeded
                    };
                    self.log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((seqs.clone(), Ok(failed.clone())));
                    // Checkpoint up to the lowest failed sequence number.
                    let lowest = seqs.iter().position(|s| failed.contains(s));
                    match lowest {
                        None => {
                            self.buffer.drain(..n);
                            self.attempts = 0;
                            self.limit = self.settings.batch_size;
                        }
                        Some(pos) => {
                            self.buffer.drain(..pos);
                            if !self.retry_or_give_up(n - pos).await? {
                                return Ok(self.buffer.len());
                            }
                        }
                    }
                }
                InvokeResult::Error(e) => {
                    self.log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((seqs, Err(e)));
                    if self.settings.bisect && n > 1 {
                        self.limit = n.div_ceil(2);
                    }
                    if !self.retry_or_give_up(self.limit.min(n)).await? {
                        return Ok(self.buffer.len());
                    }
                }
            }
        }
        Ok(self.buffer.len())
    }

    /// Counts an attempt; after `max_retries` sends the head batch to the on-failure
    /// destination and skips it. `false` = wait for the next step before retrying.
    async fn retry_or_give_up(&mut self, batch: usize) -> Result<bool> {
        self.attempts += 1;
        if self.attempts <= self.settings.max_retries {
            return Ok(false);
        }
        let n = batch.min(self.buffer.len()).max(1).min(self.buffer.len());
        let dropped: Vec<Value> = self.buffer.drain(..n).collect();
        if let Some((s3, bucket)) = &self.on_failure {
            let seq = |r: Option<&Value>| {
                r.map(|r| r["dynamodb"]["SequenceNumber"].clone())
                    .unwrap_or(Value::Null)
            };
            let (first, last) = (seq(dropped.first()), seq(dropped.last()));
            let now = crate::now_ms();
            // Lambda's invocation record for an S3 on-failure destination (AWS Lambda
            // Developer Guide, "Retain discarded records for a DynamoDB event source"): the
            // SQS/SNS fields plus `payload`, the original invocation event as an escaped
            // JSON string.
            let doc = json!({
                "requestContext": {
                    "requestId": format!("harness-{now}"),
                    "functionArn": format!("arn:aws:lambda:{}:123456789012:function:stream-processor", self.region),
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": self.attempts,
                },
                "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                "version": "1.0",
                "timestamp": format!("{}Z", utc(now, "-", "T", ":")),
                "DDBStreamBatchInfo": {
                    "shardId": SHARD,
                    "startSequenceNumber": first,
                    "endSequenceNumber": last,
                    "batchSize": dropped.len(),
                    "streamArn": self.stream_arn,
                },
                "payload": json!({"Records": dropped}).to_string(),
            });
            // The documented naming:
            // aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<Random UUID>.
            let date = utc(now, "/", "", "");
            let key = format!(
                "aws/lambda/{}/{SHARD}/{}/{}-{}-{}",
                self.table,
                &date[..10],
                utc(now, "-", "T", "."),
                first.as_str().unwrap_or("unknown"),
                now % 1_000_000
            );
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(doc.to_string().into_bytes().into())
                .send()
                .await?;
        }
        self.attempts = 0;
        self.limit = self.settings.batch_size;
        Ok(true)
    }
}

/// The one shard moto's streams have, as the on-failure record names it.
const SHARD: &str = "shardId-00000001-harness";

/// `ms` as UTC `YYYY<d>MM<d>DD<t>HH<c>MM<c>SS` (civil date from days, Hinnant's algorithm);
/// with an empty `t` only the date.
fn utc(ms: u64, d: &str, t: &str, c: &str) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{d}{month:02}{d}{day:02}");
    if t.is_empty() {
        return date;
    }
    let s = secs % 86_400;
    format!(
        "{date}{t}{:02}{c}{:02}{c}{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}
