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
}

/// What the runbook's recovery did after the faults ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Per region: messages redriven from the invalidation / object-events DLQs to their
    /// source queues ("DlqDepth": invalidations are idempotent).
    pub redriven: BTreeMap<String, usize>,
    /// Per region: whether the table's cache keys were flushed ("StreamBatchGivenUp").
    pub flushed: BTreeMap<String, usize>,
    /// Stream batches Lambda gave up (objects under `aws/lambda/`), per region.
    pub given_up_batches: BTreeMap<String, usize>,
    /// Entries the functions dead-lettered with a reason, per region and reason.
    pub dead_letters: BTreeMap<String, BTreeMap<String, usize>>,
    /// Dead-letter entries' ids (sequence numbers / message ids / injected markers found).
    #[serde(skip)]
    pub found: Vec<String>,
    pub lines: Vec<String>,
}

pub struct Outcome {
    pub args: Args,
    pub mode: String,
    pub run_start_ms: u64,
    pub run_end_ms: u64,
    pub elapsed_s: f64,
    pub reads: BTreeMap<String, (u64, u64)>,
    pub fault_windows: Vec<FaultWindow>,
    pub recovery: Recovery,
    pub conflict_window_ms: u64,
    pub injected_poison: Vec<(String, String)>,
    pub injected_garbage: Vec<(String, String)>,
}

/// Reads every dead-letter store, redrives what the DLQs hold without a reason (given up
/// after 5 receives) and flushes a region's table keys when Lambda gave a stream batch up.
pub async fn recover(w: &mut World) -> Result<Recovery> {
    let mut rec = Recovery::default();
    for r in REGIONS {
        let region = w.region(r);
        let dl = w.dead_letters(r).await?;
        let reasons = rec.dead_letters.entry(r.to_owned()).or_default();
        for body in &dl {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            *reasons
                .entry(format!(
                    "stream: {}",
                    short(v["reason"].as_str().unwrap_or("(no reason)"))
                ))
                .or_default() += 1;
            if let Some(id) = v["id"].as_str() {
                rec.found.push(id.to_owned());
            }
        }
        let given_up = region
            .clients
            .s3
            .list_objects_v2()
            .bucket(&region.dead_letter_bucket)
            .prefix("aws/lambda/")
            .send()
            .await?
            .contents()
            .len();
        rec.given_up_batches.insert(r.to_owned(), given_up);
        let mut redriven = 0;
        for (dlq, source, what) in [
            (&region.queue_dlq_url, &region.queue_url, "invalidation"),
            (
                &region.object_dlq_url,
                &region.object_queue_url,
                "object-events",
            ),
        ] {
            for body in region.clients.drain(dlq).await? {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if let Some(reason) = v["reason"].as_str() {
                    *reasons
                        .entry(format!("{what}: {}", short(reason)))
                        .or_default() += 1;
                    let record = v["record"].as_str().unwrap_or_default();
                    rec.found.push(record.to_owned());
                } else {
                    // Given up after 5 receives: the runbook redrives it.
                    region
                        .clients
                        .sqs
                        .send_message()
                        .queue_url(source)
                        .message_body(body)
                        .send()
                        .await?;
                    redriven += 1;
                }
            }
        }
        rec.redriven.insert(r.to_owned(), redriven);
        if redriven > 0 {
            rec.lines.push(format!(
                "{r}: redrove {redriven} message(s) from the dead-letter queues to their source queues (DlqDepth)"
            ));
        }
    }
    if rec.redriven.values().sum::<usize>() > 0 {
        w.settle().await?;
    }
    for r in REGIONS {
        if rec.given_up_batches[r] > 0 {
            // `tidemark flush <table> --region r`: every key under the table's literal
            // prefixes.
            let mut c = w.cache(r).await?;
            let mut n = 0;
            for p in ["user:", "user-email:"] {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}{p}*", w.key_prefix))
                    .query_async(&mut c)
                    .await?;
                for k in keys {
                    redis::cmd("UNLINK")
                        .arg(&k)
                        .query_async::<()>(&mut c)
                        .await?;
                    n += 1;
                }
            }
            rec.flushed.insert(r.to_owned(), n);
            rec.lines.push(format!(
                "{r}: {} stream batch(es) given up: flushed the table's {n} cache keys (StreamBatchGivenUp)",
                rec.given_up_batches[r]
            ));
        }
    }
    Ok(rec)
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
    pub dead_letters: BTreeMap<String, usize>,
    pub redriven: usize,
    pub flushed_keys: usize,
    pub given_up_batches: usize,
    pub alarms_fired: Vec<AlarmReport>,
    pub alarms_evaluated: usize,
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
    pub faults_not_simulated: Vec<String>,
    pub malformed_injected: usize,
    pub malformed_dead_lettered: usize,
    pub runbook: Vec<String>,
    pub regions: Vec<RegionReport>,
    pub pairs: Vec<PairReport>,
    pub series: Vec<Series>,
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
    o: Outcome,
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
    // Injected malformed records must each sit in a dead-letter store.
    let mut malformed_found = 0;
    let mut missing_malformed = Vec::new();
    for (r, seq) in &o.injected_poison {
        if o.recovery.found.iter().any(|f| f == seq) {
            malformed_found += 1;
        } else {
            missing_malformed.push((r.clone(), format!("poison record seq {seq}")));
        }
    }
    for (r, marker) in &o.injected_garbage {
        if o.recovery.found.iter().any(|f| f.contains(marker.as_str())) {
            malformed_found += 1;
        } else {
            missing_malformed.push((r.clone(), format!("garbage message {marker}")));
        }
    }
    for (r, what) in missing_malformed {
        lost.entry(r).or_default().push(what);
    }

    let mut regions = Vec::new();
    let mut pairs = Vec::new();
    let mut all_series = Vec::new();
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
        for a in alarms::alarms(&w.region(r).wiring)? {
            if !a.is_emf() {
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
        let (reads, hits) = o.reads.get(r).copied().unwrap_or_default();
        regions.push(RegionReport {
            region: r.to_owned(),
            changes: ledger.count(r),
            reads,
            cache_hits: hits,
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
            redriven: o.recovery.redriven.get(r).copied().unwrap_or_default(),
            flushed_keys: o.recovery.flushed.get(r).copied().unwrap_or_default(),
            given_up_batches: o
                .recovery
                .given_up_batches
                .get(r)
                .copied()
                .unwrap_or_default(),
            alarms_fired: fired,
            alarms_evaluated: evaluated,
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
        faults: o.fault_windows,
        faults_not_simulated: vec![
            "function-crash (a function crashing mid-batch): not simulated yet".to_owned(),
        ],
        malformed_injected: o.injected_poison.len() + o.injected_garbage.len(),
        malformed_dead_lettered: malformed_found,
        runbook: o.recovery.lines,
        regions,
        pairs,
        series: all_series,
    })
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
    }
    for n in &r.faults_not_simulated {
        println!("  ({n})");
    }
    for g in &r.regions {
        println!("{}:", g.region);
        println!(
            "  changes {}; reads {} ({} cache hits); invalidation keys published {}, applied {}",
            g.changes, g.reads, g.cache_hits, g.invalidations_published, g.invalidations_applied
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
        println!(
            "  dead letters {:?}; stream batches given up {}; redriven {}; flushed keys {}",
            g.dead_letters, g.given_up_batches, g.redriven, g.flushed_keys
        );
        if g.alarms_fired.is_empty() {
            println!("  alarms: none of {} fired", g.alarms_evaluated);
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
