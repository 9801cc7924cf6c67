//! The metric catalog (one place for names, units and dimensions, used by the code, the
//! dashboard and the alarms) and an Embedded Metric Format emitter.
//!
//! Functions never call PutMetricData: they print EMF documents to stdout and CloudWatch
//! Logs extracts the metrics. Each document holds at most [`MAX_METRICS`] metrics, each
//! metric at most [`MAX_VALUES`] values, and one dimension set (≤ 30 dimensions).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Map, Value, json};

pub const MAX_METRICS: usize = 100;
pub const MAX_VALUES: usize = 100;
pub const MAX_DIMENSIONS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dim {
    Function,
    /// Table or bucket (the configured source name).
    Source,
    SourceRegion,
    DestinationRegion,
    Rule,
    Action,
    Event,
    /// Origin region of the write that won a last-writer-wins conflict.
    WinningRegion,
    /// Origin region of the write that was overwritten.
    LosingRegion,
}

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Function => "Function",
            Dim::Source => "Source",
            Dim::SourceRegion => "SourceRegion",
            Dim::DestinationRegion => "DestinationRegion",
            Dim::Rule => "Rule",
            Dim::Action => "Action",
            Dim::Event => "Event",
            Dim::WinningRegion => "WinningRegion",
            Dim::LosingRegion => "LosingRegion",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
    Bytes,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::Bytes => "Bytes",
        }
    }
}

/// Every metric Tidemark emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    RecordsProcessed,
    RecordsFailed,
    RecordsRejected,
    InvalidationKeys,
    InvalidationMessages,
    InvalidationBytes,
    PublishCalls,
    PublishFailures,
    KeysInvalidated,
    InvalidationAge,
    CacheFailures,
    KeysFlushed,
    ReplicationLag,
    DeliveryDelay,
    EndToEndLag,
    ConcurrentWriteConflict,
    HeartbeatAge,
    HeartbeatsWritten,
    ResidencyViolations,
    ResidencyActions,
    ReplicationFailures,
    Staleness,
    PeerDown,
    WorstStaleness,
}

/// The catalog entry of a metric.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub metric: Metric,
    pub name: &'static str,
    pub unit: Unit,
    pub dimensions: &'static [Dim],
    /// One-second storage resolution (costs more; only where alarms need it).
    pub high_resolution: bool,
    pub help: &'static str,
}

use Dim::*;

/// The catalog. The dashboard and alarms in `template.yaml` use these names and dimensions;
/// `tidemark metrics` prints this table.
pub const CATALOG: &[Spec] = &[
    Spec {
        metric: Metric::RecordsProcessed,
        name: "RecordsProcessed",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "records finished (done or deliberately skipped)",
    },
    Spec {
        metric: Metric::RecordsFailed,
        name: "RecordsFailed",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "records reported as batch item failures (retried by Lambda)",
    },
    Spec {
        metric: Metric::RecordsRejected,
        name: "RecordsRejected",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "records that can never be interpreted, sent to the dead-letter store",
    },
    Spec {
        metric: Metric::InvalidationKeys,
        name: "InvalidationKeys",
        unit: Unit::Count,
        dimensions: &[Function, Source],
        high_resolution: false,
        help: "distinct cache keys published per batch",
    },
    Spec {
        metric: Metric::InvalidationMessages,
        name: "InvalidationMessages",
        unit: Unit::Count,
        dimensions: &[Function, Source],
        high_resolution: false,
        help: "SNS messages published",
    },
    Spec {
        metric: Metric::InvalidationBytes,
        name: "InvalidationBytes",
        unit: Unit::Bytes,
        dimensions: &[Function, Source],
        high_resolution: false,
        help: "bytes of invalidation message bodies published",
    },
    Spec {
        metric: Metric::PublishCalls,
        name: "PublishCalls",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "SNS PublishBatch calls",
    },
    Spec {
        metric: Metric::PublishFailures,
        name: "PublishFailures",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "SNS entries or calls that failed (their records are retried)",
    },
    Spec {
        metric: Metric::KeysInvalidated,
        name: "KeysInvalidated",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "keys UNLINKed in the regional cache",
    },
    Spec {
        metric: Metric::InvalidationAge,
        name: "InvalidationAge",
        unit: Unit::Milliseconds,
        dimensions: &[Source, SourceRegion],
        high_resolution: false,
        help: "change time in the origin region (SourceRegion) → cache delete here",
    },
    Spec {
        metric: Metric::CacheFailures,
        name: "CacheFailures",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "cache round trips that failed (their messages are retried)",
    },
    Spec {
        metric: Metric::KeysFlushed,
        name: "KeysFlushed",
        unit: Unit::Count,
        dimensions: &[Function],
        high_resolution: false,
        help: "keys a flush command removed (SCAN by template prefix, then UNLINK)",
    },
    Spec {
        metric: Metric::ReplicationLag,
        name: "ReplicationLag",
        unit: Unit::Milliseconds,
        dimensions: &[Source, SourceRegion, DestinationRegion],
        high_resolution: false,
        help: "write in the source region (written_at) → applied by this region's replica (tables: the stream's ApproximateCreationDateTime, 1 s resolution; buckets: the replica's Object Created event time); SourceRegion = DestinationRegion is a table's local write-to-stream delay",
    },
    Spec {
        metric: Metric::DeliveryDelay,
        name: "DeliveryDelay",
        unit: Unit::Milliseconds,
        dimensions: &[Source, DestinationRegion],
        high_resolution: false,
        help: "applied by this region's replica (ApproximateCreationDateTime, or a replica object's event time) → processed by the stream- or object-processor",
    },
    Spec {
        metric: Metric::EndToEndLag,
        name: "EndToEndLag",
        unit: Unit::Milliseconds,
        dimensions: &[Source, SourceRegion, DestinationRegion],
        high_resolution: false,
        help: "write in the source region (written_at) → processed by this region's stream- or object-processor (ms precision)",
    },
    Spec {
        metric: Metric::ConcurrentWriteConflict,
        name: "ConcurrentWriteConflict",
        unit: Unit::Count,
        dimensions: &[Source, WinningRegion, LosingRegion],
        high_resolution: false,
        help: "writes from two regions closer in time than the replication lag between them; counted in the losing region",
    },
    Spec {
        metric: Metric::HeartbeatAge,
        name: "HeartbeatAge",
        unit: Unit::Seconds,
        dimensions: &[Source, SourceRegion, DestinationRegion],
        high_resolution: false,
        help: "age of the newest peer heartbeat seen in this region (stall detector; alarm on Maximum)",
    },
    Spec {
        metric: Metric::HeartbeatsWritten,
        name: "HeartbeatsWritten",
        unit: Unit::Count,
        dimensions: &[Source],
        high_resolution: false,
        help: "heartbeats written by the canary",
    },
    Spec {
        metric: Metric::ResidencyViolations,
        name: "ResidencyViolations",
        unit: Unit::Count,
        dimensions: &[Source, Rule],
        high_resolution: false,
        help: "items or objects found in a region their rule does not allow",
    },
    Spec {
        metric: Metric::ResidencyActions,
        name: "ResidencyActions",
        unit: Unit::Count,
        dimensions: &[Source, Action],
        high_resolution: false,
        help: "residency actions taken (delete-replica, hold, alert, report)",
    },
    Spec {
        metric: Metric::ReplicationFailures,
        name: "ReplicationFailures",
        unit: Unit::Count,
        dimensions: &[Source, Event],
        high_resolution: false,
        help: "S3 replication events of the bucket, counted in its (source) region; Event: OperationFailedReplication, OperationMissedThreshold, OperationReplicatedAfterThreshold or OperationNotTracked",
    },
    Spec {
        metric: Metric::Staleness,
        name: "Staleness",
        unit: Unit::Seconds,
        dimensions: &[Source, SourceRegion, DestinationRegion],
        high_resolution: false,
        help: "live peer's own newest heartbeat − its copy in this region (how far this region is behind)",
    },
    Spec {
        metric: Metric::PeerDown,
        name: "PeerDown",
        unit: Unit::Count,
        dimensions: &[Source, SourceRegion, DestinationRegion],
        high_resolution: false,
        help: "1 per tick in which the peer's own heartbeat was old or unreadable (no staleness then)",
    },
    Spec {
        metric: Metric::WorstStaleness,
        name: "WorstStaleness",
        unit: Unit::Seconds,
        dimensions: &[DestinationRegion],
        high_resolution: false,
        help: "worst Staleness of this region against live peers, 0 when none is behind (Route 53 health-check alarm)",
    },
];

impl Metric {
    pub fn spec(self) -> &'static Spec {
        // The catalog is ordered like the enum; a unit test keeps it so.
        &CATALOG[self as usize]
    }
}

type DimKey = Vec<(Dim, String)>;

/// Collects values during an invocation and writes them as EMF documents.
#[derive(Debug)]
pub struct Metrics {
    namespace: String,
    /// dimension values → metric → values
    groups: BTreeMap<DimKey, BTreeMap<Metric, Vec<f64>>>,
}

impl Metrics {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            groups: BTreeMap::new(),
        }
    }

    /// Records one value. The dimensions must be exactly the catalog's for this metric;
    /// a mismatch is a programming error caught by tests, and is dropped in release.
    pub fn put(&mut self, metric: Metric, dims: &[(Dim, &str)], value: f64) {
        self.put_many(metric, dims, std::iter::once(value));
    }

    /// Records several values of one metric under one set of dimension values (a value
    /// array in EMF, so CloudWatch keeps every sample and percentiles work). One lookup for
    /// all of them: stages that measure every record collect per batch and call this once.
    pub fn put_many(
        &mut self,
        metric: Metric,
        dims: &[(Dim, &str)],
        values: impl IntoIterator<Item = f64>,
    ) {
        let spec = metric.spec();
        let ok = dims.len() == spec.dimensions.len()
            && dims.iter().zip(spec.dimensions).all(|((d, _), s)| d == s);
        debug_assert!(
            ok,
            "dimensions of {} must be {:?}",
            spec.name, spec.dimensions
        );
        if !ok {
            return;
        }
        let mut values = values.into_iter().filter(|v| v.is_finite()).peekable();
        if values.peek().is_none() {
            return;
        }
        let key: DimKey = dims.iter().map(|(d, v)| (*d, (*v).to_owned())).collect();
        self.groups
            .entry(key)
            .or_default()
            .entry(metric)
            .or_default()
            .extend(values);
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Renders the EMF documents (one JSON object each) and clears the collector.
    pub fn drain_documents(&mut self, timestamp_ms: u64) -> Vec<Value> {
        let mut docs = Vec::new();
        for (dims, metrics) in std::mem::take(&mut self.groups) {
            // Split so no document exceeds MAX_METRICS metrics or MAX_VALUES values each.
            let mut chunks: Vec<Vec<(Metric, &[f64])>> = vec![Vec::new()];
            for (metric, values) in &metrics {
                for part in values.chunks(MAX_VALUES) {
                    let needs_new = chunks.last().is_some_and(|c| {
                        c.len() >= MAX_METRICS || c.iter().any(|(m, _)| m == metric)
                    });
                    if needs_new {
                        chunks.push(Vec::new());
                    }
                    if let Some(last) = chunks.last_mut() {
                        last.push((*metric, part));
                    }
                }
            }
            for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                let mut doc = Map::new();
                let dim_names: Vec<&str> = dims.iter().map(|(d, _)| d.name()).collect();
                let defs: Vec<Value> = chunk
                    .iter()
                    .map(|(m, _)| {
                        let s = m.spec();
                        let mut def = json!({"Name": s.name, "Unit": s.unit.name()});
                        if s.high_resolution {
                            def["StorageResolution"] = json!(1);
                        }
                        def
                    })
                    .collect();
                doc.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{"Namespace": self.namespace, "Dimensions": [dim_names], "Metrics": defs}],
                    }),
                );
                for (d, v) in &dims {
                    doc.insert(d.name().into(), json!(v));
                }
                for (m, values) in chunk {
                    let v = if values.len() == 1 {
                        json!(values[0])
                    } else {
                        json!(values)
                    };
                    doc.insert(m.spec().name.into(), v);
                }
                docs.push(Value::Object(doc));
            }
        }
        docs
    }

    /// Writes every document as one line to `out` (stdout in Lambda).
    pub fn flush_to(&mut self, out: &mut impl Write, timestamp_ms: u64) -> std::io::Result<()> {
        for doc in self.drain_documents(timestamp_ms) {
            writeln!(out, "{doc}")?;
        }
        out.flush()
    }

    pub fn flush_stdout(&mut self) {
        let now = crate::now_ms();
        let stdout = std::io::stdout();
        if let Err(e) = self.flush_to(&mut stdout.lock(), now) {
            tracing::error!(error = %e, "cannot write metrics");
        }
    }

    /// Writes every document where `out` says (stdout in Lambda).
    pub fn flush_into(&mut self, out: &EmfOut) {
        match out {
            EmfOut::Stdout => self.flush_stdout(),
            EmfOut::Captured(docs) => {
                let now = crate::now_ms();
                let new = self.drain_documents(now);
                docs.lock().unwrap_or_else(|e| e.into_inner()).extend(new);
            }
        }
    }
}

/// Where a handler's EMF documents go. In Lambda: stdout, from which CloudWatch Logs
/// extracts the metrics. `Captured` keeps them in memory instead, for a caller that runs
/// handlers in-process and reads their metrics back (the test harness does).
#[derive(Debug, Clone, Default)]
pub enum EmfOut {
    #[default]
    Stdout,
    Captured(std::sync::Arc<std::sync::Mutex<Vec<Value>>>),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn catalog_matches_enum_order_and_limits() {
        for (i, s) in CATALOG.iter().enumerate() {
            assert_eq!(s.metric as usize, i, "{} out of order", s.name);
            assert!(s.dimensions.len() <= MAX_DIMENSIONS);
        }
    }

    #[test]
    fn documents_are_valid_emf() {
        let mut m = Metrics::new("Tidemark");
        m.put(Metric::RecordsProcessed, &[(Dim::Function, "sp")], 3.0);
        m.put(Metric::RecordsFailed, &[(Dim::Function, "sp")], 1.0);
        let lag = [
            (Dim::Source, "users"),
            (Dim::SourceRegion, "us-east-1"),
            (Dim::DestinationRegion, "eu-west-1"),
        ];
        m.put(Metric::ReplicationLag, &lag, 120.0);
        m.put(Metric::ReplicationLag, &lag, 80.0);
        let mut out = Vec::new();
        m.flush_to(&mut out, 1000).unwrap();
        let docs: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let sp = docs.iter().find(|d| d["Function"] == "sp").unwrap();
        assert_eq!(sp["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Tidemark");
        assert_eq!(
            sp["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Function"
        );
        assert_eq!(sp["RecordsProcessed"], 3.0);
        let lag = docs
            .iter()
            .find(|d| d.get("ReplicationLag").is_some())
            .unwrap();
        assert_eq!(lag["ReplicationLag"], json!([120.0, 80.0]));
        assert_eq!(
            lag["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
            "Milliseconds"
        );
        assert!(m.is_empty());
    }

    #[test]
    fn more_than_100_values_split_documents() {
        let mut m = Metrics::new("T");
        let d = [(Dim::Source, "users"), (Dim::SourceRegion, "us-east-1")];
        m.put_many(Metric::InvalidationAge, &d, (0..200).map(f64::from));
        for i in 200..250 {
            m.put(Metric::InvalidationAge, &d, f64::from(i));
        }
        let docs = m.drain_documents(0);
        assert_eq!(docs.len(), 3);
        assert!(
            docs.iter()
                .all(|d| d["InvalidationAge"].as_array().unwrap().len() <= MAX_VALUES)
        );
        // Every value is kept, in order (percentiles need every sample).
        let all: Vec<f64> = docs
            .iter()
            .flat_map(|d| d["InvalidationAge"].as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(all, (0..250).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn non_finite_values_are_dropped_and_an_empty_put_emits_nothing() {
        let mut m = Metrics::new("T");
        let d = [
            (Dim::Source, "users"),
            (Dim::DestinationRegion, "eu-west-1"),
        ];
        m.put_many(Metric::DeliveryDelay, &d, [f64::NAN, f64::INFINITY]);
        m.put_many(Metric::DeliveryDelay, &d, []);
        assert!(m.is_empty());
        m.put_many(Metric::DeliveryDelay, &d, [f64::NAN, 5.0]);
        assert_eq!(m.drain_documents(0)[0]["DeliveryDelay"], 5.0);
    }
}
