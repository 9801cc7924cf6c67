//! The simulation itself: world, workload, readers, faults, the end-of-run recovery and
//! the checks against the ledger.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue as A;
use serde_json::{Value, json};

use super::args::Args;
use super::canary::{tick_all, tick_settled, world_canaries};
use super::faults::{self, Fault, Planned};
use super::ledger::{Change, Ledger};
use super::report::{self, FaultWindow, Outcome};
use super::rng::Rng;
use crate::world::{Mode, Options, REGIONS, Stages, World};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
/// Replication delay per direction.
pub const DELAY_US_TO_EU: Duration = Duration::from_millis(300);
pub const DELAY_EU_TO_US: Duration = Duration::from_millis(700);
/// The queues' visibility timeout, scaled down from the template's 361 s.
pub const SQS_RETRY_AFTER_S: u32 = 1;
/// Poison records / garbage messages per malformed burst.
const MALFORMED_BURST: usize = 5;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The users the workload writes: some keys carry spaces, `+`, `%` and non-ASCII.
pub(super) fn pk_name(i: usize) -> String {
    match i % 5 {
        1 => format!("user {i}"),
        2 => format!("user+{i}"),
        3 => format!("user%{i}"),
        4 => format!("usér-{i}-ü"),
        _ => format!("user-{i}"),
    }
}

/// Every sixth user is EU-classified (`home_region = eu`: the residency rule reports
/// copies outside eu-west-1).
fn is_eu_item(i: usize) -> bool {
    i.is_multiple_of(6)
}

/// Objects: (key, origin region). `eu/` and `résidence eu+/%/` keys are EU-only
/// (delete-replica in us-east-1) and written in eu-west-1.
pub(super) fn object_key(i: usize) -> (String, &'static str) {
    match i % 6 {
        0 => (format!("eu/customer {i}.txt"), EU),
        1 => (format!("docs/report {i}.txt"), US),
        2 => (format!("a+b/{i}+plus.txt"), EU),
        3 => (format!("pct/100% {i}.txt"), US),
        4 => (format!("intl/résumé-{i}-日本.txt"), EU),
        _ => (format!("résidence eu+/%/{i}.txt"), EU),
    }
}

pub fn is_eu_object(key: &str) -> bool {
    key.starts_with("eu/") || key.starts_with("résidence eu+/%/")
}

struct Sim {
    w: World,
    rng: Rng,
    ledger: Ledger,
    items: usize,
    objects: usize,
    version: u64,
    /// The last `updated_at_ms` written.
    last_written_ms: u64,
    /// Changes to one key within this window stay in the region that made the last one
    /// (only the explicit concurrent pairs cross).
    sticky_ms: u64,
    injected_poison: Vec<(String, String)>,
    injected_garbage: Vec<(String, String)>,
}

impl Sim {
    async fn put_item(
        &mut self,
        region: &str,
        pk: &str,
        email: &str,
        eu: bool,
        concurrent: bool,
    ) -> Result<()> {
        // Write times strictly increase (the pair written in both regions at once never
        // ties, so last-writer-wins has one answer: the later write).
        let written_ms = crate::now_ms().max(self.last_written_ms + 1);
        self.last_written_ms = written_ms;
        let mut req = self
            .w
            .region(region)
            .clients
            .dynamodb
            .put_item()
            .table_name(&self.w.table)
            .item("pk", A::S(pk.to_owned()))
            .item("email", A::S(email.to_owned()))
            .item("updated_at_ms", A::N(written_ms.to_string()))
            .item("origin_region", A::S(region.to_owned()));
        if eu {
            req = req.item("home_region", A::S("eu".to_owned()));
        }
        req.send()
            .await
            .with_context(|| format!("put item {pk} in {region}"))?;
        self.ledger.record_at(
            written_ms,
            region,
            concurrent,
            Change::Put {
                pk: pk.to_owned(),
                email: email.to_owned(),
                eu,
            },
        );
        Ok(())
    }

    fn new_email(&mut self, i: usize) -> String {
        self.version += 1;
        format!("u{i}.v{}@example.com", self.version)
    }

    /// One change of the workload.
    async fn change(&mut self) -> Result<()> {
        let now = crate::now_ms();
        let roll = self.rng.unit();
        if roll < 0.7 {
            let i = self.rng.below(self.items);
            let pk = pk_name(i);
            let eu = is_eu_item(i);
            let last = self.ledger.last_item(&pk).cloned();
            let recent = last
                .as_ref()
                .is_some_and(|e| now.saturating_sub(e.at_ms) < self.sticky_ms);
            let region = match &last {
                Some(e) if recent => e.region.clone(),
                _ => REGIONS[self.rng.below(2)].to_owned(),
            };
            let exists = matches!(last.as_ref().map(|e| &e.change), Some(Change::Put { .. }));
            let op = self.rng.unit();
            if op < 0.12 && !recent {
                // The same key written in both regions at once: last-writer-wins.
                let (a, b) = (self.new_email(i), self.new_email(i));
                self.put_item(US, &pk, &a, eu, true).await?;
                self.put_item(EU, &pk, &b, eu, true).await?;
            } else if op < 0.22 && exists {
                self.w.delete_user(&region, &pk).await?;
                self.ledger.record(&region, false, Change::Delete { pk });
            } else if op < 0.28 && exists {
                self.w.ttl_expire(&region, &pk).await?;
                self.ledger.record(&region, false, Change::TtlExpire { pk });
            } else if op < 0.4 && exists {
                // A rewrite: same e-mail, new timestamp.
                let email = match last.map(|e| e.change) {
                    Some(Change::Put { email, .. }) => email,
                    _ => self.new_email(i),
                };
                self.put_item(&region, &pk, &email, eu, false).await?;
            } else {
                // A new item, or a secondary-key change (the old and new e-mail keys go).
                let email = self.new_email(i);
                self.put_item(&region, &pk, &email, eu, false).await?;
            }
        } else {
            let i = self.rng.below(self.objects);
            let (key, region) = object_key(i);
            let exists = matches!(self.ledger.expected_objects().get(&key), Some((_, Some(_))));
            let r = self.w.region(region);
            if exists && self.rng.chance(0.25) {
                r.clients
                    .s3
                    .delete_object()
                    .bucket(&r.bucket)
                    .key(&key)
                    .send()
                    .await
                    .with_context(|| format!("delete object {key} in {region}"))?;
                self.ledger
                    .record(region, false, Change::ObjectDelete { key });
            } else {
                self.put_object(i).await?;
            }
        }
        Ok(())
    }

    /// Writes a new body of object `i` in its origin region.
    async fn put_object(&mut self, i: usize) -> Result<()> {
        let (key, region) = object_key(i);
        let r = self.w.region(region);
        self.version += 1;
        let body = format!("body-{}", self.version);
        r.clients
            .s3
            .put_object()
            .bucket(&r.bucket)
            .key(&key)
            .body(body.clone().into_bytes().into())
            .send()
            .await
            .with_context(|| format!("put object {key} in {region}"))?;
        self.ledger
            .record(region, false, Change::ObjectPut { key, body });
        Ok(())
    }
}

/// The current body of `key` in `region`'s watched bucket (None: absent).
pub async fn object_body(w: &World, region: &str, key: &str) -> Result<Option<String>> {
    let r = w.region(region);
    super::readers::object_body_in(&r.clients, &r.bucket, key).await
}

/// Starts and ends the planned faults as the run passes their windows.
struct FaultRunner {
    plan: Vec<Planned>,
    state: Vec<u8>, // 0 planned, 1 started, 2 second phase, 3 ended
    /// When each fault actually started (a slow round can start it late: it still lasts
    /// its planned length).
    started_s: Vec<f64>,
    windows: Vec<FaultWindow>,
    /// When the function-crash fault last armed a crash.
    last_crash_s: f64,
}

/// The functions the function-crash fault kills mid-invocation.
pub const CRASHING: [(&str, &str); 2] = [(US, "stream-processor"), (EU, "cache-invalidator")];
/// How far into an invocation a crash lands, at most (drawn from the seed).
const CRASH_WITHIN_MS: usize = 4;

/// Arms one crash per function: the stream-processor 0–4 ms into its next invocation (it
/// decodes and publishes for longer than that); the cache-invalidator, which answers within
/// a millisecond, as soon as it holds the invocation.
fn arm_crashes(sim: &mut Sim) {
    for (r, f) in CRASHING {
        let after = if f == "stream-processor" {
            Duration::from_millis(sim.rng.below(CRASH_WITHIN_MS + 1) as u64)
        } else {
            Duration::ZERO
        };
        sim.w.region(r).functions[f].crash_next(Some(after));
    }
}

impl FaultRunner {
    fn active(&self) -> Vec<&'static str> {
        self.plan
            .iter()
            .zip(&self.state)
            .filter(|(_, s)| (1..=2).contains(*s))
            .map(|(p, _)| p.fault.name())
            .collect()
    }

    async fn advance(&mut self, sim: &mut Sim, elapsed_s: f64, end_all: bool) -> Result<()> {
        for i in 0..self.plan.len() {
            let p = self.plan[i].clone();
            let len = p.end_s - p.start_s;
            // One fault at a time: a fault that started late (a slow round) delays the next.
            let previous_ended = self.state[..i].iter().all(|s| *s == 3);
            if self.state[i] == 0 && elapsed_s >= p.start_s && previous_ended && !end_all {
                self.state[i] = 1;
                self.started_s[i] = elapsed_s;
                let detail = start(sim, p.fault).await?;
                println!(
                    "  [{elapsed_s:6.1}s] fault {} starts: {detail}",
                    p.fault.name()
                );
                self.windows.push(FaultWindow {
                    fault: p.fault.name().to_owned(),
                    detail,
                    start_ms: crate::now_ms(),
                    end_ms: None,
                    evidence: None,
                });
            }
            if self.state[i] == 1
                && p.fault == Fault::CacheRefused
                && elapsed_s >= self.started_s[i] + len / 2.0
                && !end_all
            {
                self.state[i] = 2;
                sim.w.region(US).cache_gate.black_hole();
                println!(
                    "  [{elapsed_s:6.1}s] fault cache-refused: us-east-1's cache now black-holed"
                );
            }
            if self.state[i] == 1
                && p.fault == Fault::FunctionCrash
                && elapsed_s >= self.last_crash_s + 1.0
                && !end_all
            {
                self.last_crash_s = elapsed_s;
                arm_crashes(sim);
            }
            if (1..=2).contains(&self.state[i]) && (elapsed_s >= self.started_s[i] + len || end_all)
            {
                self.state[i] = 3;
                end(sim, p.fault);
                println!("  [{elapsed_s:6.1}s] fault {} ends", p.fault.name());
                if let Some(w) = self
                    .windows
                    .iter_mut()
                    .rev()
                    .find(|w| w.fault == p.fault.name())
                {
                    w.end_ms = Some(crate::now_ms());
                }
            }
        }
        Ok(())
    }
}

async fn start(sim: &mut Sim, fault: Fault) -> Result<String> {
    Ok(match fault {
        Fault::CacheRefused => {
            sim.w.region(US).cache_gate.set_open(false);
            "us-east-1's cache refuses the invalidator, then black-holes it (readers still reach it)".to_owned()
        }
        Fault::SnsRefused => {
            sim.w.proxy.fail("PublishBatch", 500, Some(6));
            "SNS answers 500 to the next 6 PublishBatch calls".to_owned()
        }
        Fault::ReplicationPaused => {
            sim.w.pause(US, EU, true);
            "replication us-east-1 -> eu-west-1 paused (table and bucket)".to_owned()
        }
        Fault::S3ReplicationFailed => {
            sim.w.fail_s3_replication(US, EU, true);
            // One object written in us-east-1 now, so the window has a failure to show.
            let i = (0..sim.objects)
                .map(|_| sim.rng.below(sim.objects))
                .find(|i| object_key(*i).1 == US)
                .unwrap_or(1);
            sim.put_object(i).await?;
            "object replication us-east-1 -> eu-west-1 fails (DstPutObjectNotPermitted): OperationFailedReplication, no retry".to_owned()
        }
        Fault::FunctionCrash => {
            arm_crashes(sim);
            format!(
                "us-east-1's stream-processor and eu-west-1's cache-invalidator killed mid-invocation (the stream-processor 0-{CRASH_WITHIN_MS} ms in, the invalidator as it starts), about once a second (Runtime.ExitError, a fresh process for the retry)"
            )
        }
        Fault::Malformed => {
            let arn = sim.w.region(US).stream_arn.clone();
            let base = crate::now_ms();
            for i in 0..MALFORMED_BURST {
                let seq = format!("9{base}{i:03}");
                let id = format!("sim-poison-{i}");
                sim.w.region_mut(US).stream_mapping.inject(json!({
                    "eventID": id, "eventName": "MODIFY", "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb", "awsRegion": US, "eventSourceARN": arn,
                    "dynamodb": {"Keys": {"pk": {"Q": "x"}}, "NewImage": {"pk": {"Q": "x"}},
                                 "SequenceNumber": seq, "SizeBytes": 1,
                                 "StreamViewType": "NEW_AND_OLD_IMAGES"}
                }));
                sim.injected_poison.push((US.to_owned(), seq));
            }
            let r = sim.w.region(EU);
            for i in 0..MALFORMED_BURST {
                let sent = r
                    .clients
                    .sqs
                    .send_message()
                    .queue_url(&r.object_queue_url)
                    .message_body(format!("sim-garbage-{base}-{i}: not an event"))
                    .send()
                    .await?;
                let id = sent.message_id().unwrap_or_default().to_owned();
                sim.injected_garbage.push((EU.to_owned(), id));
            }
            format!(
                "{MALFORMED_BURST} poison records into us-east-1's stream mapping, {MALFORMED_BURST} garbage messages onto eu-west-1's object-events queue"
            )
        }
    })
}

fn end(sim: &mut Sim, fault: Fault) {
    match fault {
        Fault::CacheRefused => sim.w.region(US).cache_gate.set_open(true),
        Fault::SnsRefused => sim.w.proxy.clear_faults(),
        Fault::ReplicationPaused => sim.w.pause(US, EU, false),
        Fault::Malformed => {}
        Fault::S3ReplicationFailed => sim.w.fail_s3_replication(US, EU, false),
        Fault::FunctionCrash => {
            // A crash armed and not reached yet is disarmed.
            for (r, f) in CRASHING {
                sim.w.region(r).functions[f].crash_next(None);
            }
        }
    }
}

pub async fn run(args: &Args) -> Result<report::Report> {
    let started = Instant::now();
    let mode = if args.in_process {
        Mode::InProcess
    } else {
        Mode::Binary
    };
    println!(
        "== starting two regions ({mode:?} functions, seed {}) ==",
        args.seed
    );
    let mut w = World::start(Options {
        mode,
        residency: true,
        second_delete_delay: (args.second_delete_s > 0).then_some(args.second_delete_s),
        ..Options::default()
    })
    .await?;
    w.set_replication_delay(US, EU, DELAY_US_TO_EU);
    w.set_replication_delay(EU, US, DELAY_EU_TO_US);
    // On AWS a failed message returns after the queue's visibility timeout (361 s);
    // scaled down here so that a fault's window spans a message's five receives.
    w.set_sqs_retry_after(SQS_RETRY_AFTER_S);
    let config = tidemark::config::Config::load(&w.config_path)?;
    let canaries = world_canaries(&w, &config, None).await;
    println!(
        "  world {} deployed in {:.1}s; replication delay us-east-1->eu-west-1 {:?}, eu-west-1->us-east-1 {:?}; delayed second delete {}",
        w.id,
        started.elapsed().as_secs_f64(),
        DELAY_US_TO_EU,
        DELAY_EU_TO_US,
        if args.second_delete_s > 0 {
            format!("{} s", args.second_delete_s)
        } else {
            "off".to_owned()
        }
    );

    let mut rng = Rng::new(args.seed);
    let plan = faults::plan(&args.faults, args.duration_s as f64, &mut rng);
    let pause_s = plan
        .iter()
        .filter(|p| p.fault == Fault::ReplicationPaused)
        .map(|p| p.end_s - p.start_s)
        .fold(0.0, f64::max);
    let mut sim = Sim {
        w,
        rng,
        ledger: Ledger::default(),
        items: args.items,
        objects: (args.items / 2).max(6),
        version: 0,
        last_written_ms: 0,
        sticky_ms: 3_000 + DELAY_EU_TO_US.as_millis() as u64 + (pause_s * 1000.0) as u64,
        injected_poison: Vec::new(),
        injected_garbage: Vec::new(),
    };
    let mut faults = FaultRunner {
        state: vec![0; plan.len()],
        started_s: vec![0.0; plan.len()],
        plan,
        windows: Vec::new(),
        last_crash_s: 0.0,
    };
    for p in &faults.plan {
        println!(
            "  planned: {} from {:.0}s to {:.0}s",
            p.fault.name(),
            p.start_s,
            p.end_s
        );
    }

    // A first heartbeat in each region before the clock of the report starts.
    let mut canary_docs: HashMap<String, Vec<Value>> = HashMap::new();
    tick_settled(&mut sim.w, &canaries, &mut canary_docs).await?;
    let run_start_ms = crate::now_ms();
    let readers = super::readers::Readers::start(&sim.w, sim.items, sim.objects, args.seed).await?;
    let workload = Instant::now();
    let mut owed = 0.0;
    let mut last_round = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_canary = Some(Instant::now());
    println!(
        "\n== workload: {}s at {} changes/s over {} items and {} objects ==",
        args.duration_s, args.rate, sim.items, sim.objects
    );
    while workload.elapsed().as_secs() < args.duration_s {
        let elapsed = workload.elapsed().as_secs_f64();
        faults.advance(&mut sim, elapsed, false).await?;
        owed += args.rate * last_round.elapsed().as_secs_f64();
        last_round = Instant::now();
        // A slow round (a black-holed cache makes an invocation wait 2 s) does not turn
        // into a burst of changes afterwards.
        owed = owed.min(args.rate.max(1.0) * 2.0);
        while owed >= 1.0 {
            sim.change().await?;
            owed -= 1.0;
        }
        sim.w.step(Stages::ALL).await?;
        if last_canary.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            last_canary = Some(Instant::now());
            tick_all(&canaries, &mut canary_docs).await?;
            sim.w.sample_dlq_depths().await?;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let active = faults.active();
            let reads = readers.counts();
            println!(
                "  [{elapsed:6.1}s] changes {} (us-east-1 {}, eu-west-1 {}), reads {}, cache hits {}, late SETs {}, faults: {}",
                sim.ledger.entries.len(),
                sim.ledger.count(US),
                sim.ledger.count(EU),
                reads.values().map(|c| c.0).sum::<u64>(),
                reads.values().map(|c| c.1).sum::<u64>(),
                reads.values().map(|c| c.2).sum::<u64>(),
                if active.is_empty() {
                    "none".to_owned()
                } else {
                    active.join(", ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reads = readers.stop().await?;
    println!("\n== ending faults, letting replication and invalidation converge ==");
    let elapsed = workload.elapsed().as_secs_f64();
    faults.advance(&mut sim, elapsed, true).await?;
    for (p, _) in faults
        .plan
        .iter()
        .zip(&faults.state)
        .filter(|(_, s)| **s == 0)
    {
        println!(
            "  fault {} did not start: the faults before it ran late and the workload ended first",
            p.fault.name()
        );
    }
    sim.w
        .settle_with(Stages::ALL, Duration::from_secs(180))
        .await?;
    let recovery = report::recover(&mut sim.w, &config).await?;
    for line in &recovery.lines {
        println!("  runbook: {line}");
    }
    // The delayed second deletes of the last changes, then quiet.
    tokio::time::sleep(Duration::from_secs(u64::from(args.second_delete_s) + 1)).await;
    sim.w
        .settle_with(Stages::ALL, Duration::from_secs(120))
        .await?;
    tick_settled(&mut sim.w, &canaries, &mut canary_docs).await?;
    sim.w.sample_dlq_depths().await?;
    let run_end_ms = crate::now_ms();

    println!("\n== checking caches and replicas against the ledger ==");
    let outcome = Outcome {
        args: args.clone(),
        mode: format!("{mode:?}"),
        run_start_ms,
        run_end_ms,
        elapsed_s: started.elapsed().as_secs_f64(),
        reads,
        fault_windows: faults.windows.clone(),
        recovery,
        conflict_window_ms: sim.sticky_ms,
        injected_poison: sim.injected_poison.clone(),
        injected_garbage: sim.injected_garbage.clone(),
        crashes: CRASHING
            .iter()
            .map(|(r, f)| (format!("{f} {r}"), sim.w.region(r).functions[*f].crashes()))
            .collect(),
    };
    report::build(&sim.w, &sim.ledger, &canary_docs, outcome).await
}
