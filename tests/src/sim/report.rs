//! End-of-run recovery (the runbook), the checks against the ledger, and the report.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::args::Args;
use super::ledger::Ledger;
use super::run::object_body;
use crate::alarms::{self, State};
use crate::world::{REGIONS, World};

#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub fault: String,
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    /// What the fault did, as the run measured it (a fault that did nothing tested
    /// nothing: the report says so).
    pub evidence: Option<String>,
}

/// What `tidemark replay --apply` did in a region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    /// Records run through the functions' handlers again (their invalidations published).
    pub records: usize,
    /// Cache keys in the invalidations published.
    pub keys: usize,
    /// Invalidation messages sent back to the invalidation queue.
    pub requeued: usize,
    /// Records rejected again: they stay in their store, with their reason.
    pub still_rejected: usize,
    /// Kept things that failed for a transient reason or were skipped: they stay.
    pub left: usize,
}

/// What the runbook's recovery did after the faults ended: `tidemark replay` in each
/// region, a dry run (what the dead-letter stores hold) and then `--apply`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Per region: the dry run's verdicts, `<store>: <verdict>[: <reason>]` → records.
    pub dead_letters: BTreeMap<String, BTreeMap<String, usize>>,
    /// Per region: what `--apply` did (absent: nothing to replay).
    pub replays: BTreeMap<String, Replayed>,
    /// Object versions that had failed to replicate, replicated again by S3 Batch
    /// Replication (all directions).
    pub batch_replicated: usize,
    /// What the dead-letter stores still keep after the runbook (a last dry run): only
    /// the injected malformed records may be left.
    pub remaining: Vec<Remaining>,
    pub lines: Vec<String>,
}

/// One entry a dead-letter store keeps after the runbook.
#[derive(Debug, Clone, Serialize)]
pub struct Remaining {
    pub region: String,
    /// The record's id (sequence number, message id) when the store names it.
    pub id: Option<String>,
    /// `<store>: <verdict>[: <reason>]`, and the count when not one record.
    pub what: String,
}

pub struct Outcome {
    pub args: Args,
    pub mode: String,
    pub run_start_ms: u64,
    pub run_end_ms: u64,
    pub elapsed_s: f64,
    pub reads: super::readers::Counts,
    pub fault_windows: Vec<FaultWindow>,
    pub recovery: Recovery,
    pub conflict_window_ms: u64,
    pub injected_poison: Vec<(String, String)>,
    pub injected_garbage: Vec<(String, String)>,
    /// Invocations that crashed, per function and region.
    pub crashes: BTreeMap<String, usize>,
}

/// The runbook after an outage longer than the retries: `tidemark replay --region R`
/// (a dry run: what every dead-letter store keeps, and whether it would go through), then
/// `--apply` when something would be replayed (given-up stream batches run through the
/// stream-processor again, given-up invalidation messages go back to their queue; records
/// rejected again stay where they are, with their reason).
pub async fn recover(w: &mut World, config: &tidemark::config::Config) -> Result<Recovery> {
    use tidemark::replay::{Options, Store, Verdict};
    // The ReplicationFailures runbook: S3 Batch Replication of the failed versions (S3
    // does not retry them).
    let mut rec = Recovery {
        batch_replicated: w.replicate_failed().await?,
        ..Recovery::default()
    };
    if rec.batch_replicated > 0 {
        w.settle().await?;
        rec.lines.push(format!(
            "S3 Batch Replication of the {} object version(s) that failed to replicate (ReplicationFailures)",
            rec.batch_replicated
        ));
    }
    let mut replayed_any = false;
    for r in REGIONS {
        let dry = dry_run(w, r, config).await;
        let held = rec.dead_letters.entry(r.to_owned()).or_default();
        for item in &dry.items {
            let store = item.store.name();
            match &item.verdict {
                Verdict::Replayed => {
                    *held.entry(format!("{store}: would replay")).or_default() += item.records;
                }
                Verdict::StillRejected { records } => {
                    for x in records {
                        *held
                            .entry(format!("{store}: rejected: {}", short(&x.reason)))
                            .or_default() += 1;
                    }
                }
                Verdict::Failed { reason } | Verdict::Skipped { reason } => {
                    *held
                        .entry(format!("{store}: left: {}", short(reason)))
                        .or_default() += item.records;
                }
            }
        }
        if dry.replayed() == 0 {
            continue;
        }
        rec.lines.push(format!(
            "{r}: tidemark replay --region {r}: {} record(s) would be replayed, {} rejected again",
            dry.replayed(),
            dry.still_rejected()
        ));
        let applied = w
            .replay(r, config.clone())
            .run(
                &Options {
                    apply: true,
                    from: Store::ALL.to_vec(),
                    limit: None,
                },
                &|_, _, _| {},
            )
            .await;
        let done = Replayed {
            records: applied.replayed(),
            keys: applied.keys,
            requeued: applied.requeued,
            still_rejected: applied.still_rejected(),
            left: applied.failed() + applied.skipped(),
        };
        rec.lines.push(format!(
            "{r}: tidemark replay --region {r} --apply: replayed {} record(s) ({} cache keys published, {} invalidation message(s) back on their queue); {} rejected again stay with their reason; {} left for a second run",
            done.records, done.keys, done.requeued, done.still_rejected, done.left
        ));
        replayed_any |= done.records > 0;
        rec.replays.insert(r.to_owned(), done);
    }
    if replayed_any {
        w.settle().await?;
    }
    // What is left: a last dry run in each region.
    for r in REGIONS {
        let dry = dry_run(w, r, config).await;
        for item in &dry.items {
            let store = item.store.name();
            match &item.verdict {
                Verdict::StillRejected { records } => {
                    rec.remaining.extend(records.iter().map(|x| Remaining {
                        region: r.to_owned(),
                        id: Some(x.id.clone()),
                        what: format!("{store}: rejected: {}", short(&x.reason)),
                    }));
                }
                Verdict::Replayed => rec.remaining.push(Remaining {
                    region: r.to_owned(),
                    id: None,
                    what: format!("{store}: {} record(s) would replay", item.records),
                }),
                Verdict::Failed { reason } | Verdict::Skipped { reason } => {
                    rec.remaining.push(Remaining {
                        region: r.to_owned(),
                        id: None,
                        what: format!(
                            "{store}: {} record(s) left: {}",
                            item.records,
                            short(reason)
                        ),
                    });
                }
            }
        }
    }
    Ok(rec)
}

/// `tidemark replay --region R` without `--apply`, over every store.
async fn dry_run(
    w: &World,
    region: &str,
    config: &tidemark::config::Config,
) -> tidemark::replay::Summary {
    use tidemark::replay::{Options, Store};
    w.replay(region, config.clone())
        .run(
            &Options {
                apply: false,
                from: Store::ALL.to_vec(),
                limit: None,
            },
            &|_, _, _| {},
        )
        .await
}

/// A reason without digits-heavy detail, for grouping (reasons name keys and attribute
/// types, never values).
fn short(reason: &str) -> String {
    reason.chars().take(120).collect()
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        (!v.is_empty()).then(|| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
    };
    Percentiles {
        count: v.len(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

#[derive(Debug, Serialize)]
pub struct AlarmReport {
    pub alarm: String,
    pub fired: bool,
    /// (timestamp ms, state) from the start of the run.
    pub transitions: Vec<(i64, String)>,
}

#[derive(Debug, Serialize)]
pub struct RegionReport {
    pub region: String,
    pub changes: usize,
    pub reads: u64,
    pub cache_hits: u64,
    /// Reads whose `SET` came 1–4 s after the replica read (what the delayed second delete
    /// is for).
    pub late_sets: u64,
    pub invalidations_published: f64,
    pub invalidations_applied: f64,
    /// Keys in the cache at the end (each checked against the replica).
    pub cached_keys: usize,
    pub stale_keys: usize,
    pub stale_examples: Vec<String>,
    pub lost_records: usize,
    pub lost_examples: Vec<String>,
    pub invalidation_age_ms: Percentiles,
    pub residency_violations: f64,
    pub residency_actions: BTreeMap<String, f64>,
    /// What the dead-letter stores held at the end (`tidemark replay`'s dry run).
    pub dead_letters: BTreeMap<String, usize>,
    /// What `tidemark replay --apply` did (absent: nothing to replay).
    pub replayed: Option<Replayed>,
    pub alarms_fired: Vec<AlarmReport>,
    pub alarms_evaluated: usize,
    /// Alarms on metrics AWS publishes (Lambda, SQS, S3, Route 53), which the emulators do
    /// not: metric → alarms.
    pub alarms_not_evaluated: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct PairReport {
    pub source: String,
    pub destination: String,
    pub replication_lag_ms: Percentiles,
    pub invalidation_age_ms: Percentiles,
    pub staleness_max_s: Option<f64>,
    pub peer_down_ticks: f64,
    pub conflicts_won_by_source: f64,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub region: String,
    pub metric: String,
    /// (timestamp ms, value): per 5 s, Sum for counts, Maximum for times.
    pub points: Vec<(u64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub pass: bool,
    pub seed: u64,
    pub mode: String,
    pub duration_s: u64,
    pub rate: f64,
    pub items: usize,
    pub elapsed_s: f64,
    pub run_start_ms: u64,
    pub run_end_ms: u64,
    pub changes: usize,
    pub stale_keys: usize,
    pub lost_records: usize,
    pub faults: Vec<FaultWindow>,
    /// Invocations that crashed mid-batch (the function-crash fault), per function and region.
    pub crashes: BTreeMap<String, usize>,
    pub malformed_injected: usize,
    pub malformed_dead_lettered: usize,
    pub runbook: Vec<String>,
    pub regions: Vec<RegionReport>,
    pub pairs: Vec<PairReport>,
    pub series: Vec<Series>,
    /// The template's dashboard widgets with the run's series (the dashboard page's data).
    pub dashboard: super::page::Dashboard,
}

/// Every value of `metric` in an EMF document (a number or an array of them).
fn values(doc: &Value, metric: &str) -> Vec<f64> {
    match doc.get(metric) {
        Some(Value::Number(n)) => n.as_f64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
        _ => Vec::new(),
    }
}

fn sum(docs: &[Value], metric: &str) -> f64 {
    // + 0.0: an empty f64 sum is -0.0.
    docs.iter().flat_map(|d| values(d, metric)).sum::<f64>() + 0.0
}

const COUNTS: [&str; 8] = [
    "InvalidationKeys",
    "KeysInvalidated",
    "RecordsRejected",
    "RecordsFailed",
    "ConcurrentWriteConflict",
    "ResidencyViolations",
    "PeerDown",
    "CacheFailures",
];
const TIMES: [&str; 4] = [
    "ReplicationLag",
    "InvalidationAge",
    "Staleness",
    "WorstStaleness",
];

fn series(region: &str, docs: &[Value]) -> Vec<Series> {
    let mut out = Vec::new();
    for (metric, is_count) in COUNTS
        .iter()
        .map(|m| (*m, true))
        .chain(TIMES.iter().map(|m| (*m, false)))
    {
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
        for d in docs {
            let t = d["_aws"]["Timestamp"].as_u64().unwrap_or(0) / 5000 * 5000;
            for v in values(d, metric) {
                let b = buckets
                    .entry(t)
                    .or_insert(if is_count { 0.0 } else { f64::MIN });
                *b = if is_count { *b + v } else { b.max(v) };
            }
        }
        if !buckets.is_empty() {
            out.push(Series {
                region: region.to_owned(),
                metric: metric.to_owned(),
                points: buckets.into_iter().collect(),
            });
        }
    }
    out
}

/// The alarm's state changes over the run, evaluated every 10 s with the samples
/// published by then (CloudWatch never sees a later sample early).
fn transitions(
    a: &alarms::Alarm,
    samples: &[alarms::Sample],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, State)>> {
    let mut out: Vec<(i64, State)> = Vec::new();
    let mut state = State::InsufficientData;
    let mut at = from_ms;
    loop {
        let seen: Vec<alarms::Sample> = samples
            .iter()
            .filter(|s| s.timestamp_ms <= at)
            .cloned()
            .collect();
        state = a.evaluate_from(&seen, at, state)?.state;
        if out.last().is_none_or(|(_, s)| *s != state) {
            out.push((at, state));
        }
        if at >= to_ms {
            return Ok(out);
        }
        at = (at + 10_000).min(to_ms);
    }
}

/// Keys of `region`'s cache whose value is not what a reader would compute from the
/// region's replica now.
async fn stale(w: &World, region: &str) -> Result<(usize, Vec<String>)> {
    let mut c = w.cache(region).await?;
    let mut out = Vec::new();
    let keys = w.cached(region).await?;
    for key in keys.iter().cloned() {
        let full = format!("{}{key}", w.key_prefix);
        let Some(value): Option<String> = redis::cmd("GET").arg(&full).query_async(&mut c).await?
        else {
            continue;
        };
        let ok = if let Some(pk) = key.strip_prefix("user:") {
            w.get_user(region, pk).await?.as_deref() == Some(value.as_str())
        } else if let Some(email) = key.strip_prefix("user-email:") {
            w.get_user(region, &value).await?.as_deref() == Some(email)
        } else if let Some(k) = key.strip_prefix("asset:") {
            object_body(w, region, k).await?.as_deref() == Some(value.as_str())
        } else {
            true // not the readers' (heartbeats)
        };
        if !ok {
            out.push(key);
        }
    }
    Ok((keys.len(), out))
}

pub async fn build(
    w: &World,
    ledger: &Ledger,
    canary_docs: &HashMap<String, Vec<Value>>,
    mut o: Outcome,
) -> Result<Report> {
    // Records lost: every change applied in both replicas (or dead-lettered).
    let mut lost: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pk, ok) in ledger.expected_items(o.conflict_window_ms) {
        let us = w.get_user(REGIONS[0], &pk).await?;
        let eu = w.get_user(REGIONS[1], &pk).await?;
        for (r, got) in [(REGIONS[0], &us), (REGIONS[1], &eu)] {
            if us != eu || !ok.contains(got) {
                lost.entry(r.to_owned())
                    .or_default()
                    .push(format!("item {pk}"));
            }
        }
    }
    for (key, (origin, body)) in ledger.expected_objects() {
        for r in REGIONS {
            let want = if r == "us-east-1" && super::run::is_eu_object(&key) {
                None // residency: delete-replica outside eu-west-1
            } else {
                body.clone()
            };
            if object_body(w, r, &key).await? != want {
                lost.entry(r.to_owned())
                    .or_default()
                    .push(format!("object {key} (origin {origin})"));
            }
        }
    }
    // Injected malformed records must each sit in a dead-letter store, and nothing else
    // may: the workload writes only valid changes, so any other entry left after the
    // runbook is a change the pipeline gave up on.
    let kept = |id: &str| {
        o.recovery
            .remaining
            .iter()
            .any(|x| x.id.as_deref() == Some(id))
    };
    let mut malformed_found = 0;
    let injected = o
        .injected_poison
        .iter()
        .map(|(r, seq)| (r, seq, "poison record seq"))
        .chain(
            o.injected_garbage
                .iter()
                .map(|(r, id)| (r, id, "garbage message")),
        );
    for (r, id, what) in injected.clone() {
        if kept(id) {
            malformed_found += 1;
        } else {
            lost.entry(r.clone())
                .or_default()
                .push(format!("{what} {id} not in a dead-letter store"));
        }
    }
    for x in &o.recovery.remaining {
        let id = x.id.as_deref();
        if !injected.clone().any(|(_, i, _)| Some(i.as_str()) == id) {
            lost.entry(x.region.clone()).or_default().push(format!(
                "dead letter left after the runbook: {}{}",
                x.what,
                id.map(|i| format!(" (id {i})")).unwrap_or_default()
            ));
        }
    }

    let mut regions = Vec::new();
    let mut pairs = Vec::new();
    let mut all_series = Vec::new();
    let mut page_docs = Vec::new();
    let mut total_stale = 0;
    let mut total_lost = 0;
    for r in REGIONS {
        let mut docs = w.emf(r, "");
        docs.extend(canary_docs.get(r).cloned().unwrap_or_default());
        let (cached_keys, stale_keys) = stale(w, r).await?;
        let lost_here = lost.get(r).cloned().unwrap_or_default();
        total_stale += stale_keys.len();
        total_lost += lost_here.len();
        let mut actions: BTreeMap<String, f64> = BTreeMap::new();
        for d in &docs {
            for v in values(d, "ResidencyActions") {
                *actions
                    .entry(format!(
                        "{} {}",
                        d["Source"].as_str().unwrap_or("-"),
                        d["Action"].as_str().unwrap_or("-")
                    ))
                    .or_default() += v;
            }
        }
        // Alarms: the evaluator over the run, for every EMF alarm of the region.
        let samples = alarms::samples(&docs)?;
        let mut fired = Vec::new();
        let mut evaluated = 0;
        let mut not_evaluated: BTreeMap<String, usize> = BTreeMap::new();
        for a in alarms::alarms(&w.region(r).wiring)? {
            if !a.is_emf() {
                *not_evaluated
                    .entry(format!("{} {}", a.query.namespace(), a.query.metric()))
                    .or_default() += 1;
                continue;
            }
            evaluated += 1;
            let t = transitions(&a, &samples, o.run_start_ms as i64, o.run_end_ms as i64)?;
            if t.iter().any(|(_, s)| *s == State::Alarm) {
                fired.push(AlarmReport {
                    alarm: a.name.clone(),
                    fired: true,
                    transitions: t
                        .into_iter()
                        .map(|(at, s)| (at, format!("{s:?}")))
                        .collect(),
                });
            }
        }
        let ages: Vec<f64> = docs
            .iter()
            .flat_map(|d| values(d, "InvalidationAge"))
            .collect();
        let (reads, hits, late_sets) = o.reads.get(r).copied().unwrap_or_default();
        regions.push(RegionReport {
            region: r.to_owned(),
            changes: ledger.count(r),
            reads,
            cache_hits: hits,
            late_sets,
            invalidations_published: sum(&docs, "InvalidationKeys"),
            invalidations_applied: sum(&docs, "KeysInvalidated"),
            cached_keys,
            stale_keys: stale_keys.len(),
            stale_examples: stale_keys.into_iter().take(10).collect(),
            lost_records: lost_here.len(),
            lost_examples: lost_here.into_iter().take(10).collect(),
            invalidation_age_ms: percentiles(ages),
            residency_violations: sum(&docs, "ResidencyViolations"),
            residency_actions: actions,
            dead_letters: o.recovery.dead_letters.get(r).cloned().unwrap_or_default(),
            replayed: o.recovery.replays.get(r).cloned(),
            alarms_fired: fired,
            alarms_evaluated: evaluated,
            alarms_not_evaluated: not_evaluated,
        });
        for src in REGIONS.iter().filter(|s| **s != r) {
            let pair = |d: &&Value| d["SourceRegion"] == *src && d["DestinationRegion"] == r;
            let of = |m: &str| -> Vec<f64> {
                docs.iter()
                    .filter(pair)
                    .flat_map(|d| values(d, m))
                    .collect()
            };
            // InvalidationAge names the origin only (the destination is this region).
            let ages: Vec<f64> = docs
                .iter()
                .filter(|d| d["SourceRegion"] == *src)
                .flat_map(|d| values(d, "InvalidationAge"))
                .collect();
            let conflicts: f64 = docs
                .iter()
                .filter(|d| d["WinningRegion"] == *src)
                .flat_map(|d| values(d, "ConcurrentWriteConflict"))
                .sum::<f64>()
                + 0.0;
            pairs.push(PairReport {
                source: (*src).to_owned(),
                destination: r.to_owned(),
                replication_lag_ms: percentiles(of("ReplicationLag")),
                invalidation_age_ms: percentiles(ages),
                staleness_max_s: of("Staleness").into_iter().reduce(f64::max),
                peer_down_ticks: of("PeerDown").into_iter().sum::<f64>() + 0.0,
                conflicts_won_by_source: conflicts,
            });
        }
        all_series.extend(series(r, &docs));
        page_docs.push((r.to_owned(), docs));
    }
    let mut faults = std::mem::take(&mut o.fault_windows);
    for f in &mut faults {
        f.evidence = Some(evidence(&f.fault, &page_docs, &o, malformed_found));
    }
    Ok(Report {
        pass: total_stale == 0 && total_lost == 0,
        seed: o.args.seed,
        mode: o.mode,
        duration_s: o.args.duration_s,
        rate: o.args.rate,
        items: o.args.items,
        elapsed_s: o.elapsed_s,
        run_start_ms: o.run_start_ms,
        run_end_ms: o.run_end_ms,
        changes: ledger.entries.len(),
        stale_keys: total_stale,
        lost_records: total_lost,
        faults,
        crashes: o.crashes,
        malformed_injected: o.injected_poison.len() + o.injected_garbage.len(),
        malformed_dead_lettered: malformed_found,
        runbook: o.recovery.lines,
        regions,
        pairs,
        series: all_series,
        dashboard: super::page::Dashboard::build(w, &page_docs)?,
    })
}

/// What a fault did, from the functions' metrics and the harness: one count, and "left no
/// trace" when it is zero (a window too short to meet any traffic).
fn evidence(
    fault: &str,
    docs: &[(String, Vec<Value>)],
    o: &Outcome,
    malformed_found: usize,
) -> String {
    let of = |region: Option<&str>, metric: &str| -> f64 {
        docs.iter()
            .filter(|(r, _)| region.is_none_or(|x| x == r))
            .map(|(_, d)| sum(d, metric))
            .sum::<f64>()
            + 0.0
    };
    let (n, what) = match fault {
        "cache-refused" => (
            of(Some(REGIONS[0]), "CacheFailures"),
            "failed cache calls in us-east-1 (CacheFailures)".to_owned(),
        ),
        "sns-refused" => (
            of(None, "PublishFailures"),
            "refused publishes (PublishFailures)".to_owned(),
        ),
        "replication-paused" => {
            let max = docs
                .iter()
                .filter(|(r, _)| r == REGIONS[1])
                .flat_map(|(_, d)| d.iter())
                .filter(|d| d["SourceRegion"] == REGIONS[0])
                .flat_map(|d| values(d, "ReplicationLag"))
                .fold(0.0, f64::max);
            (
                max,
                "ms of replication lag us-east-1 → eu-west-1 at most".to_owned(),
            )
        }
        "malformed" => (
            malformed_found as f64,
            "malformed records dead-lettered".to_owned(),
        ),
        "function-crash" => (
            o.crashes.values().sum::<usize>() as f64,
            "invocations crashed".to_owned(),
        ),
        "s3-replication-failed" => (
            of(None, "ReplicationFailures"),
            format!(
                "OperationFailedReplication events counted (ReplicationFailures); {} version(s) replicated again by S3 Batch Replication",
                o.recovery.batch_replicated
            ),
        ),
        _ => return "-".to_owned(),
    };
    if n > 0.0 {
        format!("{n:.0} {what}")
    } else {
        format!("left no trace: 0 {what}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.0}"))
}

/// The report a person reads.
pub fn print(r: &Report) {
    let secs = |ms: u64| (ms.saturating_sub(r.run_start_ms)) as f64 / 1000.0;
    println!(
        "\n== report (seed {}, {} functions, {} changes in {}s, {:.0}s in all) ==",
        r.seed, r.mode, r.changes, r.duration_s, r.elapsed_s
    );
    println!("faults:");
    if r.faults.is_empty() {
        println!("  none");
    }
    for f in &r.faults {
        println!(
            "  {:<19} {:>6.1}s → {:>6.1}s  {}",
            f.fault,
            secs(f.start_ms),
            f.end_ms.map_or(f64::NAN, secs),
            f.detail
        );
        if let Some(e) = &f.evidence {
            println!("  {:<19} {:>17}  → {e}", "", "");
        }
    }
    for (f, n) in r.crashes.iter().filter(|(_, n)| **n > 0) {
        println!("  {f}: {n} invocation(s) crashed mid-batch, each retried in a fresh process");
    }
    for g in &r.regions {
        println!("{}:", g.region);
        println!(
            "  changes {}; reads {} ({} cache hits, {} late SETs); invalidation keys published {}, applied {}",
            g.changes,
            g.reads,
            g.cache_hits,
            g.late_sets,
            g.invalidations_published,
            g.invalidations_applied
        );
        println!(
            "  cached keys {}, stale keys {}{}; lost records {}{}",
            g.cached_keys,
            g.stale_keys,
            if g.stale_examples.is_empty() {
                String::new()
            } else {
                format!(" {:?}", g.stale_examples)
            },
            g.lost_records,
            if g.lost_examples.is_empty() {
                String::new()
            } else {
                format!(" {:?}", g.lost_examples)
            },
        );
        println!(
            "  invalidation age p50 {} ms, p99 {} ms ({} samples)",
            opt(g.invalidation_age_ms.p50),
            opt(g.invalidation_age_ms.p99),
            g.invalidation_age_ms.count
        );
        println!(
            "  residency violations {}; actions {:?}",
            g.residency_violations, g.residency_actions
        );
        if g.dead_letters.is_empty() {
            println!("  dead-letter stores: empty");
        } else {
            println!("  dead-letter stores (tidemark replay, dry run):");
            for (what, n) in &g.dead_letters {
                println!("    {n:>4} {what}");
            }
        }
        if let Some(x) = &g.replayed {
            println!(
                "  replayed {} record(s) ({} keys published, {} messages requeued); {} rejected again; {} left",
                x.records, x.keys, x.requeued, x.still_rejected, x.left
            );
        }
        if g.alarms_fired.is_empty() {
            println!("  alarms: none of {} fired", g.alarms_evaluated);
        }
        if !g.alarms_not_evaluated.is_empty() {
            println!(
                "  alarms evaluated: {} on the functions' metrics; not evaluated: {} on AWS metrics the emulators do not publish ({})",
                g.alarms_evaluated,
                g.alarms_not_evaluated.values().sum::<usize>(),
                g.alarms_not_evaluated
                    .iter()
                    .map(|(m, n)| if *n > 1 {
                        format!("{m} ×{n}")
                    } else {
                        m.clone()
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for a in &g.alarms_fired {
            let t: Vec<String> = a
                .transitions
                .iter()
                .map(|(at, s)| format!("{s}@{:.0}s", secs(*at as u64)))
                .collect();
            println!("  alarm {}: {}", a.alarm, t.join(" → "));
        }
    }
    for p in &r.pairs {
        println!(
            "{} → {}: replication lag p50 {} ms, p99 {} ms ({} samples); invalidation age p50 {} ms, p99 {} ms; staleness max {} s; peer-down ticks {}; conflicts won by {} {}",
            p.source,
            p.destination,
            opt(p.replication_lag_ms.p50),
            opt(p.replication_lag_ms.p99),
            p.replication_lag_ms.count,
            opt(p.invalidation_age_ms.p50),
            opt(p.invalidation_age_ms.p99),
            p.staleness_max_s
                .map_or("-".to_owned(), |v| format!("{v:.1}")),
            p.peer_down_ticks,
            p.source,
            p.conflicts_won_by_source
        );
    }
    println!(
        "malformed records injected {}, found in dead-letter stores {}",
        r.malformed_injected, r.malformed_dead_lettered
    );
    for l in &r.runbook {
        println!("runbook: {l}");
    }
    println!(
        "\nstale keys {}, lost records {}: {}",
        r.stale_keys,
        r.lost_records,
        if r.pass { "PASS" } else { "FAIL" }
    );
}
