//! TEST CODE: a Lambda SQS event source mapping. Receives a batch, invokes the function,
//! deletes what succeeded and leaves the failed messages to come back (moto's redrive
//! policy moves a message to the dead-letter queue after maxReceiveCount receives).
//!
//! Time is scaled: on AWS a failed message comes back when the queue's visibility timeout
//! ends (the template's 361 s); here it comes back after [`SqsMapping::retry_after`]
//! (default 0: tests order retries by state, not by timers; the simulation sets 1 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};

use crate::aws::RegionClients;
use crate::runtime::{InvocationLog, Invoke, InvokeResult, failed_ids};

pub struct SqsMapping {
    clients: RegionClients,
    pub queue_url: String,
    queue_arn: String,
    function: Arc<dyn Invoke>,
    batch_size: usize,
    window: Duration,
    report_failures: bool,
    /// `FilterCriteria`: messages no filter keeps are deleted without an invocation.
    filters: crate::filter::Filters,
    /// Messages received (in flight) while the batching window is open.
    held: std::sync::Mutex<Vec<aws_sdk_sqs::types::Message>>,
    window_open: std::sync::Mutex<Option<Instant>>,
    /// (message ids of the batch, failed ids or error) per invocation, for tests.
    pub log: InvocationLog,
    /// While set, the mapping receives nothing (a test orders deliveries by state, not by
    /// timers: see [`SqsMapping::pause`]).
    paused: std::sync::atomic::AtomicBool,
    /// The scaled visibility timeout: a failed message is received again after it.
    retry_after: std::sync::atomic::AtomicU32,
}

impl SqsMapping {
    /// A mapping a test wires itself (batch size given, no batching window, partial
    /// batch responses read); the world's mappings come from the stack
    /// ([`SqsMapping::from_template`]).
    pub fn new(
        clients: RegionClients,
        queue_url: &str,
        queue_arn: &str,
        function: Arc<dyn Invoke>,
        batch_size: usize,
    ) -> Self {
        Self {
            clients,
            queue_url: queue_url.to_owned(),
            queue_arn: queue_arn.to_owned(),
            function,
            batch_size,
            window: Duration::ZERO,
            report_failures: true,
            filters: crate::filter::Filters::default(),
            held: std::sync::Mutex::default(),
            window_open: std::sync::Mutex::default(),
            log: Arc::default(),
            paused: std::sync::atomic::AtomicBool::new(false),
            retry_after: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The mapping `m` of the deployed stack, on the queue at `queue_url`.
    pub fn from_template(
        clients: RegionClients,
        m: &crate::rehearsal::Mapping,
        queue_url: &str,
        function: Arc<dyn Invoke>,
    ) -> Result<Self> {
        Ok(Self {
            clients,
            queue_url: queue_url.to_owned(),
            queue_arn: m.source_arn().to_owned(),
            function,
            batch_size: m.batch_size(),
            window: Duration::from_secs(m.window_seconds()),
            report_failures: m.reports_item_failures(),
            filters: crate::filter::Filters::from_properties(&m.logical, &m.properties)?,
            held: std::sync::Mutex::default(),
            window_open: std::sync::Mutex::default(),
            log: Arc::default(),
            paused: std::sync::atomic::AtomicBool::new(false),
            retry_after: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Stops (or resumes) receiving: the messages wait in the queue, as behind a disabled
    /// mapping. Lets a test deliver a message after some other event whatever the timers.
    /// The visibility timeout, scaled: a failed message is received again `seconds`
    /// after its failure (on AWS: the queue's `VisibilityTimeout`).
    pub fn retry_after(&self, seconds: u32) {
        self.retry_after
            .store(seconds, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn pause(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// The same mapping delivering without waiting for its batching window.
    pub fn without_window(mut self) -> Self {
        self.window = Duration::ZERO;
        self
    }

    /// One receive → invoke → delete / release cycle, waiting out the batching window.
    /// Returns how many messages it saw.
    pub async fn step(&self) -> Result<usize> {
        loop {
            let (seen, invoked) = self.poll().await?;
            if invoked || seen == 0 {
                return Ok(seen);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`SqsMapping::step`], without waiting: messages below the batch size are held
    /// (in flight) until the batching window closes, across ticks, as Lambda's poller does.
    /// Returns how many messages it holds or delivered.
    pub async fn tick(&self) -> Result<usize> {
        Ok(self.poll().await?.0)
    }

    async fn poll(&self) -> Result<(usize, bool)> {
        if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((0, false));
        }
        let mut msgs = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        while msgs.len() < self.batch_size {
            let r = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(
                    10.min(i32::try_from(self.batch_size - msgs.len()).unwrap_or(10)),
                )
                .wait_time_seconds(0)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await?;
            let got = r.messages().to_vec();
            if got.is_empty() {
                break;
            }
            msgs.extend(got);
        }
        let wait = {
            let mut opened = self.window_open.lock().unwrap_or_else(|e| e.into_inner());
            // Lambda waits up to the batching window for a full batch.
            let wait = !msgs.is_empty()
                && msgs.len() < self.batch_size
                && !self.window.is_zero()
                && opened.get_or_insert_with(Instant::now).elapsed() < self.window;
            if !wait {
                *opened = None;
            }
            wait
        };
        if msgs.is_empty() {
            return Ok((0, false));
        }
        if wait {
            let n = msgs.len();
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = msgs;
            return Ok((n, false));
        }
        self.deliver(msgs).await.map(|n| (n, true))
    }

    async fn deliver(&self, msgs: Vec<aws_sdk_sqs::types::Message>) -> Result<usize> {
        let seen = msgs.len();
        let (msgs, records) = self.filtered(msgs).await?;
        if msgs.is_empty() {
            return Ok(seen);
        }
        let ids: Vec<String> = msgs
            .iter()
            .map(|m| m.message_id().unwrap_or("").to_owned())
            .collect();
        let result = self
            .function
            .invoke(json!({"Records": records}).to_string())
            .await?;
        let failed: Vec<String> = match &result {
            InvokeResult::Ok(v) if self.report_failures => failed_ids(v),
            InvokeResult::Ok(_) => Vec::new(), // the response is not read: all succeeded
            InvokeResult::Error(_) => ids.clone(),
        };
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push((
            ids.clone(),
            match result {
                InvokeResult::Ok(_) => Ok(failed.clone()),
                InvokeResult::Error(e) => Err(e),
            },
        ));
        for m in &msgs {
            let id = m.message_id().unwrap_or("");
            let Some(handle) = m.receipt_handle() else {
                continue;
            };
            if failed.iter().any(|f| f == id) {
                self.clients
                    .sqs
                    .change_message_visibility()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .visibility_timeout(
                        i32::try_from(self.retry_after.load(std::sync::atomic::Ordering::SeqCst))
                            .unwrap_or(i32::MAX),
                    )
                    .send()
                    .await?;
            } else {
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
        Ok(seen)
    }

    /// The messages the mapping's filters keep, with their Lambda records; the others are
    /// deleted, as Lambda deletes the messages its filters drop.
    async fn filtered(
        &self,
        msgs: Vec<aws_sdk_sqs::types::Message>,
    ) -> Result<(Vec<aws_sdk_sqs::types::Message>, Vec<Value>)> {
        let mut kept = (Vec::new(), Vec::new());
        for m in msgs {
            let attrs: serde_json::Map<String, Value> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                        .collect()
                })
                .unwrap_or_default();
            let record = json!({
                "messageId": m.message_id().unwrap_or(""),
                "receiptHandle": m.receipt_handle().unwrap_or(""),
                "body": m.body().unwrap_or(""),
                "attributes": attrs,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body().unwrap_or(""),
                "eventSource": "aws:sqs",
                "eventSourceARN": self.queue_arn,
                "awsRegion": self.clients.region,
            });
            if self.filters.keeps(&record) {
                kept.0.push(m);
                kept.1.push(record);
            } else if let Some(handle) = m.receipt_handle() {
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
        Ok(kept)
    }

    /// Messages visible plus in flight.
    pub async fn depth(&self) -> Result<usize> {
        let a = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        let get = |n: QueueAttributeName| {
            a.attributes()
                .and_then(|m| m.get(&n))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        Ok(get(QueueAttributeName::ApproximateNumberOfMessages)
            + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }
}
