//! Replication lag, delivery delay, end-to-end lag and last-writer-wins conflicts, measured
//! from one region's stream: the lag stage of the stream-processor.
//!
//! Terms, for region R's stream (the README's "Replication lag" section says the same):
//!
//! * ACDT, `ApproximateCreationDateTime`: when R's replica applied the write, rounded down
//!   to the second.
//! * `written_at`: the write time in ms, from the application's attribute
//!   (`app_attributes.written_at_ms`) or the heartbeat's own time.
//! * replication lag (origin → R) = ACDT − written_at; for writes made in R itself it is the
//!   local write-to-stream delay (reported as the pair R → R);
//! * delivery delay = processing time − ACDT (the stream mapping's polling);
//! * end-to-end = processing time − written_at (ms precision, no ACDT involved).
//!
//! The maths is pure; the stage collects per batch and emits once per (source, origin).

use futures::future::BoxFuture;

use crate::config::Table;
use crate::ddb::{EventName, Image, StreamRecord};
use crate::error::StageError;
use crate::invalidation::TableChange;
use crate::keyhash::KeyLabels;
use crate::metrics::{Dim, Metric, Metrics};
use crate::pipeline::Stage;

/// Attribute holding a heartbeat item's write time (epoch ms), written by the canary.
pub const HEARTBEAT_WRITTEN_AT: &str = "tidemark_written_at_ms";

/// ACDT resolution: DynamoDB Streams round it down to the second.
pub const ACDT_RESOLUTION_MS: u64 = 1000;

/// Earliest plausible write time in ms (2001-09-09): smaller values are taken for seconds
/// (a common unit mistake) and not measured.
pub const MIN_WRITTEN_AT_MS: u64 = 1_000_000_000_000;

/// Write times further than this in the future (clock skew beyond reason) are not measured.
pub const MAX_FUTURE_MS: u64 = 24 * 3600 * 1000;

/// The three figures of one write seen in one region's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lags {
    /// ACDT − written_at; `None` when the record carries no ACDT.
    pub replication_ms: Option<u64>,
    /// now − ACDT; `None` when the record carries no ACDT.
    pub delivery_ms: Option<u64>,
    /// now − written_at.
    pub end_to_end_ms: u64,
}

/// The figures of a write made at `written_at_ms`, applied (ACDT) at `applied_at_ms`,
/// processed at `now_ms`. A negative difference (ACDT rounded down below written_at, or
/// clock skew) reads 0: CloudWatch computes no percentile for a metric with any negative
/// value.
pub fn lags(written_at_ms: u64, applied_at_ms: Option<u64>, now_ms: u64) -> Lags {
    Lags {
        replication_ms: applied_at_ms.map(|a| a.saturating_sub(written_at_ms)),
        delivery_ms: applied_at_ms.map(|a| now_ms.saturating_sub(a)),
        end_to_end_ms: now_ms.saturating_sub(written_at_ms),
    }
}

/// The most the replication of this write can have taken: the replica applied it before
/// ACDT + 1 s (ACDT is rounded down) and before it was processed.
pub fn lag_upper_bound(written_at_ms: u64, applied_at_ms: Option<u64>, now_ms: u64) -> u64 {
    let applied_before =
        applied_at_ms.map_or(now_ms, |a| a.saturating_add(ACDT_RESOLUTION_MS).min(now_ms));
    applied_before.saturating_sub(written_at_ms)
}

/// Two writes from different regions are concurrent (a conflict that last writer wins
/// resolved by discarding one) when they are closer in time than replication between the
/// two regions takes: the later writer could not have seen the earlier write. `lag_ms` is
/// the lag observed on the winning write's arrival here, taken as the lag of the pair
/// either way.
pub fn concurrent(loser_written_at_ms: u64, winner_written_at_ms: u64, lag_ms: u64) -> bool {
    loser_written_at_ms.abs_diff(winner_written_at_ms) < lag_ms
}

/// A write time in epoch ms as an attribute holds it (`N`, possibly with a fraction).
/// `None` for text that is not a number, for seconds, and for times more than a day ahead.
pub fn parse_written_at(text: &str, now_ms: u64) -> Option<u64> {
    let v: f64 = text.trim().parse().ok()?;
    if !v.is_finite() || v < MIN_WRITTEN_AT_MS as f64 {
        return None;
    }
    let ms = v as u64;
    (ms <= now_ms.saturating_add(MAX_FUTURE_MS)).then_some(ms)
}

/// An item key as the stream-processor's log lines name it before labelling: `name=value`
/// per key attribute, in name order (`pk=user#1,sk=2`), the same text as the pipeline's
/// (`StreamRecord::salvage_key`), so a hashed key joins across log lines.
pub fn key_text(keys: &Image<'_>) -> String {
    let mut parts: Vec<String> = keys
        .0
        .iter()
        .map(|(name, attr)| format!("{name}={}", attr.scalar().as_deref().unwrap_or("?")))
        .collect();
    parts.sort();
    parts.join(",")
}

/// One conflict found in the losing region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub source: String,
    pub winner: String,
    pub loser: String,
    /// The item's key ([`key_text`]); logged through [`KeyLabels`] (hashed when
    /// `hash_keys_in_alerts` is on).
    pub key: String,
    pub gap_ms: u64,
    pub lag_ms: u64,
}

#[derive(Debug)]
struct PairSamples {
    source: String,
    origin: String,
    lag: Vec<f64>,
    end_to_end: Vec<f64>,
}

/// One batch's lag samples, per (source, origin) and per source: the one place that turns
/// [`Lags`] into `ReplicationLag`, `EndToEndLag` and `DeliveryDelay` with the catalog's
/// dimension sets (the stream-processor's items and the object-processor's objects alike).
#[derive(Debug, Default)]
pub struct LagSamples {
    pairs: Vec<PairSamples>,
    delivery: Vec<(String, Vec<f64>)>,
}

impl LagSamples {
    /// The figures of one write of `source` made in `origin`, seen here.
    pub fn record(&mut self, source: &str, origin: &str, l: Lags) {
        let i = match self
            .pairs
            .iter()
            .position(|p| p.origin == origin && p.source == source)
        {
            Some(i) => i,
            None => {
                self.pairs.push(PairSamples {
                    source: source.to_owned(),
                    origin: origin.to_owned(),
                    lag: Vec::new(),
                    end_to_end: Vec::new(),
                });
                self.pairs.len() - 1
            }
        };
        let p = &mut self.pairs[i];
        if let Some(r) = l.replication_ms {
            p.lag.push(r as f64);
        }
        p.end_to_end.push(l.end_to_end_ms as f64);
        if let Some(d) = l.delivery_ms {
            match self.delivery.iter_mut().find(|(s, _)| s == source) {
                Some((_, v)) => v.push(d as f64),
                None => self.delivery.push((source.to_owned(), vec![d as f64])),
            }
        }
    }

    /// Emits every sample, `here` being the destination region (one EMF value array per
    /// dimension set).
    pub fn emit(&self, metrics: &mut Metrics, here: &str) {
        for p in &self.pairs {
            let d = [
                (Dim::Source, p.source.as_str()),
                (Dim::SourceRegion, p.origin.as_str()),
                (Dim::DestinationRegion, here),
            ];
            metrics.put_many(Metric::ReplicationLag, &d, p.lag.iter().copied());
            metrics.put_many(Metric::EndToEndLag, &d, p.end_to_end.iter().copied());
        }
        for (source, values) in &self.delivery {
            let d = [
                (Dim::Source, source.as_str()),
                (Dim::DestinationRegion, here),
            ];
            metrics.put_many(Metric::DeliveryDelay, &d, values.iter().copied());
        }
    }
}

/// The lag stage: measures every heartbeat item, and every application item whose table
/// names both `app_attributes`, and finds conflicts. It never fails a record: a value it
/// cannot read is not measured (and counted in a warning), since invalidation of that
/// record does not depend on it.
#[derive(Debug)]
pub struct LagStage<'c> {
    regions: &'c [String],
    region: &'c str,
    heartbeat_prefix: &'c str,
    labels: &'c KeyLabels,
    now_ms: u64,
    samples: LagSamples,
    conflicts: Vec<Conflict>,
    unmeasured: usize,
}

impl<'c> LagStage<'c> {
    /// `region` is this region; `regions` the deployment's (origin values outside it are
    /// not measured, which keeps dimension values bounded); `now_ms` the processing time;
    /// `labels` how conflict logs name the item's key.
    pub fn new(
        config: &'c crate::config::Config,
        region: &'c str,
        labels: &'c KeyLabels,
        now_ms: u64,
    ) -> Self {
        Self {
            regions: &config.deployment.regions,
            region,
            heartbeat_prefix: &config.deployment.heartbeat_prefix,
            labels,
            now_ms,
            samples: LagSamples::default(),
            conflicts: Vec::new(),
            unmeasured: 0,
        }
    }

    /// Conflicts found so far (flush logs and counts them).
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    fn known_region(&self, text: &str) -> Option<&'c str> {
        self.regions
            .iter()
            .find(|r| r.as_str() == text)
            .map(String::as_str)
    }

    /// (origin, written_at) of an application image, when the table names both attributes.
    /// `Err(())` when they are named and present but unusable.
    fn app_write(&self, table: &Table, image: &Image<'_>) -> Result<Option<(&'c str, u64)>, ()> {
        let (Some(o), Some(w)) = (
            table.app_attributes.origin_region.as_deref(),
            table.app_attributes.written_at_ms.as_deref(),
        ) else {
            return Ok(None);
        };
        let (Some(origin), Some(written)) = (image.scalar(o), image.scalar(w)) else {
            return Ok(None);
        };
        match (
            self.known_region(&origin),
            parse_written_at(&written, self.now_ms),
        ) {
            (Some(r), Some(t)) => Ok(Some((r, t))),
            _ => Err(()),
        }
    }

    /// (origin, written_at) of a heartbeat item: the region from its key
    /// (`<prefix>#<region>`), the time from the canary's attribute.
    fn heartbeat_write(
        &self,
        table: &Table,
        record: &StreamRecord<'_>,
        image: &Image<'_>,
    ) -> Result<Option<(&'c str, u64)>, ()> {
        let Some(pk) = record.keys.scalar(&table.partition_key.name) else {
            return Ok(None);
        };
        let origin = pk
            .strip_prefix(self.heartbeat_prefix)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|r| self.known_region(r));
        let written = image
            .scalar(HEARTBEAT_WRITTEN_AT)
            .and_then(|w| parse_written_at(&w, self.now_ms));
        match (origin, written) {
            (Some(r), Some(t)) => Ok(Some((r, t))),
            _ => Err(()),
        }
    }
}

impl<'c, 'r> Stage<TableChange<'c, 'r>> for LagStage<'_> {
    fn name(&self) -> &'static str {
        "lag"
    }

    fn observe(&mut self, _index: usize, c: &TableChange<'c, 'r>) -> Result<(), StageError> {
        // A REMOVE carries no write time of its own.
        let (EventName::Insert | EventName::Modify) = c.record.event_name else {
            return Ok(());
        };
        let Some(new) = c.record.new.as_ref() else {
            return Ok(());
        };
        let t = c.table;
        let write = if c.heartbeat {
            self.heartbeat_write(t, &c.record, new)
        } else {
            self.app_write(t, new)
        };
        let (origin, written_at) = match write {
            Ok(Some(w)) => w,
            Ok(None) => return Ok(()),
            Err(()) => {
                self.unmeasured += 1;
                return Ok(());
            }
        };
        let applied = (c.record.approx_created_ms > 0).then_some(c.record.approx_created_ms);
        self.samples
            .record(&t.name, origin, lags(written_at, applied, self.now_ms));

        // Only the region whose write lost sees a MODIFY from its own write (old image) to
        // another region's (new image): the winner's region never applies the older write.
        if c.heartbeat || c.record.event_name != EventName::Modify || origin == self.region {
            return Ok(());
        }
        let Some(old) = c.record.old.as_ref() else {
            return Ok(());
        };
        if let Ok(Some((old_origin, old_written))) = self.app_write(t, old)
            && old_origin == self.region
        {
            let lag = lag_upper_bound(written_at, applied, self.now_ms);
            if concurrent(old_written, written_at, lag) {
                self.conflicts.push(Conflict {
                    source: t.name.clone(),
                    winner: origin.to_owned(),
                    loser: old_origin.to_owned(),
                    key: key_text(&c.record.keys),
                    gap_ms: old_written.abs_diff(written_at),
                    lag_ms: lag,
                });
            }
        }
        Ok(())
    }

    fn flush<'s>(
        &'s mut self,
        metrics: &'s mut Metrics,
    ) -> BoxFuture<'s, Vec<(usize, StageError)>> {
        Box::pin(async move {
            self.samples.emit(metrics, self.region);
            let mut counts: Vec<(&str, &str, &str, usize)> = Vec::new();
            for c in &self.conflicts {
                // The key as every stage logs it: plain, or its HMAC when configured (never
                // the plain key when the secret cannot be read).
                let key = match self.labels.label(&c.key).await {
                    Ok(label) => label,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the key-hash secret; the key is left out of the log");
                        "(hash unavailable)".to_owned()
                    }
                };
                tracing::warn!(
                    source = %c.source,
                    winning_region = %c.winner,
                    losing_region = %c.loser,
                    key = %key,
                    gap_ms = c.gap_ms,
                    lag_ms = c.lag_ms,
                    "concurrent writes from two regions: last writer wins, this region's write was overwritten"
                );
                match counts
                    .iter_mut()
                    .find(|(s, w, l, _)| *s == c.source && *w == c.winner && *l == c.loser)
                {
                    Some(e) => e.3 += 1,
                    None => counts.push((&c.source, &c.winner, &c.loser, 1)),
                }
            }
            for (source, winner, loser, n) in counts {
                let d = [
                    (Dim::Source, source),
                    (Dim::WinningRegion, winner),
                    (Dim::LosingRegion, loser),
                ];
                metrics.put(Metric::ConcurrentWriteConflict, &d, n as f64);
            }
            if self.unmeasured > 0 {
                tracing::warn!(
                    records = self.unmeasured,
                    "origin region or write time unusable (expected a deployment region and epoch milliseconds): not measured"
                );
            }
            Vec::new()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn lag_arithmetic_is_exact_on_injected_timestamps() {
        // Written at …000_250, applied (ACDT, seconds) at …001, processed at …001_730.
        let l = lags(
            1_700_000_000_250,
            Some(1_700_000_001_000),
            1_700_000_001_730,
        );
        assert_eq!(l.replication_ms, Some(750));
        assert_eq!(l.delivery_ms, Some(730));
        assert_eq!(l.end_to_end_ms, 1_480);
        // End-to-end is exactly replication + delivery.
        assert_eq!(
            l.replication_ms.unwrap() + l.delivery_ms.unwrap(),
            l.end_to_end_ms
        );
    }

    #[test]
    fn acdt_rounded_below_the_write_time_reads_zero_not_negative() {
        // Applied 200 ms after the write, in the same second: ACDT (rounded down) is before it.
        let l = lags(
            1_700_000_000_300,
            Some(1_700_000_000_000),
            1_700_000_000_900,
        );
        assert_eq!(l.replication_ms, Some(0));
        assert_eq!(l.end_to_end_ms, 600);
        // Without ACDT, only end-to-end is known.
        let l = lags(1_700_000_000_300, None, 1_700_000_000_900);
        assert_eq!((l.replication_ms, l.delivery_ms), (None, None));
    }

    #[test]
    fn upper_bound_is_acdt_plus_a_second_capped_by_processing_time() {
        assert_eq!(
            lag_upper_bound(1_000_250, Some(1_001_000), 1_005_000),
            1_750
        );
        assert_eq!(
            lag_upper_bound(1_000_250, Some(1_001_000), 1_001_400),
            1_150
        );
        assert_eq!(lag_upper_bound(1_000_250, None, 1_001_400), 1_150);
    }

    #[test]
    fn writes_closer_than_the_lag_are_concurrent() {
        assert!(concurrent(1_000, 1_010, 200));
        assert!(concurrent(1_010, 1_000, 200));
        assert!(!concurrent(1_000, 1_300, 200));
        assert!(!concurrent(1_000, 1_200, 200));
    }

    #[test]
    fn written_at_must_be_plausible_epoch_milliseconds() {
        let now = 1_700_000_000_000;
        assert_eq!(
            parse_written_at("1699999999123", now),
            Some(1_699_999_999_123)
        );
        assert_eq!(
            parse_written_at("1699999999123.9", now),
            Some(1_699_999_999_123)
        );
        assert_eq!(parse_written_at("1699999999", now), None, "seconds");
        assert_eq!(parse_written_at("soon", now), None);
        assert_eq!(parse_written_at("1800000000000", now), None, "far future");
    }

    const CONFIG: &str = r#"
[deployment]
regions = ["us-east-1", "eu-west-1", "ap-southeast-2"]
[residency]
unmatched = "anywhere"
[[tables]]
name = "users"
partition_key = { name = "pk", type = "S" }
attributes = ["at", "origin"]
cache_keys = ["user:{pk}"]
canary = { enabled = true }
app_attributes = { origin_region = "origin", written_at_ms = "at" }
"#;

    fn image(origin: &str, at: u64) -> String {
        format!(r#"{{"pk":{{"S":"u1"}},"origin":{{"S":"{origin}"}},"at":{{"N":"{at}"}}}}"#)
    }

    fn record(region: &str, acdt_s: u64, new: &str, old: Option<&str>) -> String {
        let old = old.map_or(String::new(), |o| format!(r#","OldImage":{o}"#));
        let name = if old.is_empty() { "INSERT" } else { "MODIFY" };
        format!(
            r#"{{"eventID":"e","eventName":"{name}","eventSource":"aws:dynamodb","awsRegion":"{region}","dynamodb":{{"ApproximateCreationDateTime":{acdt_s},"Keys":{{"pk":{{"S":"u1"}}}},"NewImage":{new}{old},"SequenceNumber":"1"}}}}"#
        )
    }

    async fn run(
        config: &Config,
        region: &str,
        now: u64,
        raws: &[String],
    ) -> (Metrics, Vec<Conflict>) {
        run_with(config, region, now, raws, &KeyLabels::plain()).await
    }

    async fn run_with(
        config: &Config,
        region: &str,
        now: u64,
        raws: &[String],
        labels: &KeyLabels,
    ) -> (Metrics, Vec<Conflict>) {
        let table = config.table("users").unwrap();
        let mut stage = LagStage::new(config, region, labels, now);
        for (i, raw) in raws.iter().enumerate() {
            let record = StreamRecord::decode(raw).unwrap();
            let heartbeat = record
                .keys
                .scalar("pk")
                .is_some_and(|p| p.starts_with(&config.deployment.heartbeat_prefix));
            let change = TableChange {
                table,
                record,
                heartbeat,
            };
            stage.observe(i, &change).unwrap();
        }
        let conflicts = stage.conflicts().to_vec();
        let mut metrics = Metrics::new("T");
        let failed = stage.flush(&mut metrics).await;
        assert!(failed.is_empty());
        (metrics, conflicts)
    }

    fn values(m: &mut Metrics, name: &str, dims: &[(&str, &str)]) -> Vec<f64> {
        m.drain_documents(0)
            .into_iter()
            .filter(|d| dims.iter().all(|(k, v)| d[*k] == *v))
            .filter_map(|d| d.get(name).cloned())
            .flat_map(|v| match v {
                serde_json::Value::Array(a) => a,
                v => vec![v],
            })
            .filter_map(|v| v.as_f64())
            .collect()
    }

    #[tokio::test]
    async fn app_item_and_heartbeat_are_measured_per_origin() {
        let config = Config::parse("t", CONFIG).unwrap();
        let hb = r#"{"pk":{"S":"tidemark-heartbeat#us-east-1"},"tidemark_written_at_ms":{"N":"1700000000600"}}"#;
        let hb_record = format!(
            r#"{{"eventID":"h","eventSource":"aws:dynamodb","eventName":"MODIFY","awsRegion":"eu-west-1","dynamodb":{{"ApproximateCreationDateTime":1700000002,"Keys":{{"pk":{{"S":"tidemark-heartbeat#us-east-1"}}}},"NewImage":{hb},"SequenceNumber":"2"}}}}"#
        );
        let raws = vec![
            record(
                "eu-west-1",
                1_700_000_001,
                &image("us-east-1", 1_700_000_000_250),
                None,
            ),
            hb_record,
            record(
                "eu-west-1",
                1_700_000_003,
                &image("eu-west-1", 1_700_000_002_900),
                None,
            ),
        ];
        let (mut m, conflicts) = run(&config, "eu-west-1", 1_700_000_003_500, &raws).await;
        assert!(conflicts.is_empty());
        let docs = m.drain_documents(0);
        let pick = |name: &str, origin: &str| -> Vec<f64> {
            docs.iter()
                .filter(|d| d["SourceRegion"] == origin && d["DestinationRegion"] == "eu-west-1")
                .filter_map(|d| d.get(name).cloned())
                .flat_map(|v| match v {
                    serde_json::Value::Array(a) => a,
                    v => vec![v],
                })
                .filter_map(|v| v.as_f64())
                .collect()
        };
        assert_eq!(pick("ReplicationLag", "us-east-1"), [750.0, 1_400.0]);
        assert_eq!(pick("EndToEndLag", "us-east-1"), [3_250.0, 2_900.0]);
        // A local write is its own pair (SourceRegion = DestinationRegion).
        assert_eq!(pick("ReplicationLag", "eu-west-1"), [100.0]);
        assert_eq!(pick("EndToEndLag", "eu-west-1"), [600.0]);
        let delivery: Vec<f64> = docs
            .iter()
            .filter_map(|d| d.get("DeliveryDelay").cloned())
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_f64())
            .collect();
        assert_eq!(delivery, [2_500.0, 1_500.0, 500.0]);
    }

    #[tokio::test]
    async fn unknown_origin_or_seconds_are_not_measured() {
        let config = Config::parse("t", CONFIG).unwrap();
        let raws = vec![
            record(
                "eu-west-1",
                1_700_000_001,
                &image("mars-1", 1_700_000_000_250),
                None,
            ),
            record(
                "eu-west-1",
                1_700_000_001,
                &image("us-east-1", 1_700_000_000),
                None,
            ),
        ];
        let (mut m, _) = run(&config, "eu-west-1", 1_700_000_003_500, &raws).await;
        assert!(values(&mut m, "ReplicationLag", &[]).is_empty());
    }

    #[tokio::test]
    async fn overwritten_local_write_close_in_time_is_a_conflict_in_this_region_only() {
        let config = Config::parse("t", CONFIG).unwrap();
        // us-east-1 wrote at .000, eu-west-1 at .040 (won); eu-west-1's write arrived in
        // us-east-1 one second later.
        let loser = image("us-east-1", 1_700_000_000_000);
        let winner = image("eu-west-1", 1_700_000_000_040);
        let raws = vec![record("us-east-1", 1_700_000_001, &winner, Some(&loser))];
        let (mut m, conflicts) = run(&config, "us-east-1", 1_700_000_001_300, &raws).await;
        assert_eq!(
            conflicts,
            [Conflict {
                source: "users".into(),
                winner: "eu-west-1".into(),
                loser: "us-east-1".into(),
                key: "pk=u1".into(),
                gap_ms: 40,
                lag_ms: 1_260,
            }]
        );
        assert_eq!(
            values(
                &mut m,
                "ConcurrentWriteConflict",
                &[
                    ("WinningRegion", "eu-west-1"),
                    ("LosingRegion", "us-east-1")
                ]
            ),
            [1.0]
        );
        // The same MODIFY in a third region is no conflict of its own (its write did not
        // lose), nor in the winner's region (a local write over a replicated one).
        for region in ["ap-southeast-2", "eu-west-1"] {
            let (_, c) = run(&config, region, 1_700_000_001_300, &raws).await;
            assert!(c.is_empty(), "{region}");
        }
    }

    #[tokio::test]
    async fn sequential_writes_from_two_regions_are_not_conflicts() {
        let config = Config::parse("t", CONFIG).unwrap();
        // eu-west-1 wrote 5 s after us-east-1's write; its write took ~1 s to arrive.
        let first = image("us-east-1", 1_700_000_000_000);
        let second = image("eu-west-1", 1_700_000_005_000);
        let raws = vec![record("us-east-1", 1_700_000_006, &second, Some(&first))];
        let (mut m, conflicts) = run(&config, "us-east-1", 1_700_000_006_200, &raws).await;
        assert!(conflicts.is_empty());
        assert!(values(&mut m, "ConcurrentWriteConflict", &[]).is_empty());
    }

    struct Secret;
    impl crate::ports::SecretSource for Secret {
        fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, crate::error::PortError>> {
            Box::pin(async { Ok(b"shared-secret".to_vec()) })
        }
    }

    /// Log lines of the conflict found in us-east-1, with `labels`.
    fn conflict_logs(labels: KeyLabels) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
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
        let config = Config::parse("t", CONFIG).unwrap();
        let raws = vec![record(
            "us-east-1",
            1_700_000_001,
            &image("eu-west-1", 1_700_000_000_040),
            Some(&image("us-east-1", 1_700_000_000_000)),
        )];
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let (_, c) = rt.block_on(run_with(
                &config,
                "us-east-1",
                1_700_000_001_300,
                &raws,
                &labels,
            ));
            assert_eq!(c.len(), 1, "{c:?}");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn conflict_logs_carry_the_keys_label_hashed_when_configured() {
        let logs = conflict_logs(KeyLabels::hashed(std::sync::Arc::new(Secret)));
        let hash = crate::keyhash::hmac_sha256_hex(b"shared-secret", b"pk=u1");
        assert!(logs.contains("concurrent writes"), "{logs}");
        assert!(logs.contains(&format!("key=hmac-sha256:{hash}")), "{logs}");
        assert!(!logs.contains("u1"), "{logs}");

        let logs = conflict_logs(KeyLabels::plain());
        assert!(logs.contains("key=pk=u1"), "{logs}");
    }

    #[test]
    fn key_text_is_the_pipelines_in_name_order() {
        let raw = record("r", 1, &image("us-east-1", 1), None).replace(
            r#""Keys":{"pk":{"S":"u1"}}"#,
            r#""Keys":{"sk":{"N":"2"},"pk":{"S":"u1"}}"#,
        );
        let keys = StreamRecord::decode(&raw).unwrap().keys;
        assert_eq!(key_text(&keys), "pk=u1,sk=2");
        assert_eq!(
            StreamRecord::salvage_key(&raw).as_deref(),
            Some("pk=u1,sk=2")
        );
    }
}
