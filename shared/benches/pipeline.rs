//! Throughput of the stream-processor's per-batch work: split → decode each record →
//! derive keys on old and new images → coalesce → pack into SNS messages, through the real
//! handler (`StreamProcessor::handle`) with in-memory ports (no network).
//!
//! Batches: 4,000 NEW_AND_OLD_IMAGES records of ~1.4 KiB (~5.7 MB), and 10,000 of ~560 bytes
//! (event source mappings cap a payload at 6 MB). Beside each figure: the scan limit (a
//! validating `serde_json` pass over the same bytes into `IgnoredAny`), the least any decoder
//! of this input must do. Each batch is also written to `target/bench/` for the Python peer
//! (`scripts/bench.sh` runs it on the same file).
//! `cargo bench -p tidemark --bench pipeline`

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tidemark::app::Ports;
use tidemark::app::stream::StreamProcessor;
use tidemark::config::Config;
use tidemark::lambda::BatchHandler;
use tidemark::ports::{
    Alert, Alerts, DeadLetter, DeadLetterEntry, Outbound, PortError, Publish, PublishResult,
};

struct NullPublisher;
impl Publish for NullPublisher {
    fn publish_batch<'a>(&'a self, entries: &'a [Outbound]) -> BoxFuture<'a, PublishResult> {
        Box::pin(async move { Ok(entries.iter().map(|_| Ok(())).collect()) })
    }
}

struct NullDeadLetter;
impl DeadLetter for NullDeadLetter {
    fn put(&self, _: Vec<DeadLetterEntry>) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}

struct NullAlerts;
impl Alerts for NullAlerts {
    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, Vec<Result<(), PortError>>> {
        Box::pin(async move { alerts.iter().map(|_| Ok(())).collect() })
    }
}

fn processor() -> StreamProcessor {
    StreamProcessor {
        config: Config::embedded().expect("embedded config"),
        region: "us-east-1".into(),
        ports: Ports {
            publisher: Arc::new(NullPublisher),
            dead_letter: Arc::new(NullDeadLetter),
            labels: Arc::new(tidemark::keyhash::KeyLabels::plain()),
            alerts: Arc::new(NullAlerts),
        },
        // The figures measure the work, not the stdout write of one EMF line per batch.
        emf: tidemark::metrics::EmfOut::Captured(Arc::default()),
    }
}

/// Median and best seconds per call of `f` over `iterations` runs (after 3 warm-ups): on a
/// shared machine the median and the best say more than the mean.
fn time(iterations: u32, mut f: impl FnMut()) -> (f64, f64) {
    let mut all = Vec::with_capacity(iterations as usize);
    for i in 0..iterations + 3 {
        let start = Instant::now();
        f();
        let secs = start.elapsed().as_secs_f64();
        if i >= 3 {
            all.push(secs);
        }
    }
    all.sort_by(f64::total_cmp);
    (all[all.len() / 2], all[0])
}

fn measure(label: &str, file: &str, n: usize, bio_words: usize, iterations: u32) {
    let batch = tidemark::samples::stream_batch_with_bio(n, "users", bio_words);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(dir.join(file), &batch).expect("write the batch for the peer");
    println!(
        "{label}: {n} records, {:.2} MB, {:.0} bytes/record (target/bench/{file})",
        batch.len() as f64 / 1e6,
        batch.len() as f64 / n as f64
    );
    let processor = processor();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (median, best) = time(iterations, || {
        let failed = rt.block_on(processor.handle(&batch)).expect("batch");
        assert!(failed.is_empty());
    });
    let (scan, scan_best) = time(iterations, || {
        std::hint::black_box(
            serde_json::from_str::<serde::de::IgnoredAny>(&batch).expect("valid JSON"),
        );
    });
    let rate = |secs: f64| n as f64 / secs;
    println!(
        "  tidemark (StreamProcessor::handle: decode, invalidation, lag, residency, pack): median {:.2} ms → {:.0} records/s (best {:.0}/s, {:.0} MB/s)",
        median * 1e3,
        rate(median),
        rate(best),
        batch.len() as f64 / median / 1e6
    );
    println!(
        "  scan limit (serde_json into IgnoredAny): median {:.2} ms → {:.0} records/s (best {:.0}/s); tidemark is {:.2}× the scan time",
        scan * 1e3,
        rate(scan),
        rate(scan_best),
        median / scan
    );
    println!(
        "  {{\"bench\":\"{file}\",\"records\":{n},\"records_per_s\":{:.0},\"best_records_per_s\":{:.0},\"scan_records_per_s\":{:.0}}}",
        rate(median),
        rate(best),
        rate(scan)
    );
}

fn phases(iterations: u32) {
    let batch = tidemark::samples::stream_batch(4000, "users");
    let config = Config::embedded().expect("embedded config");
    let phase = |name: &str, f: &dyn Fn()| {
        let (median, _) = time(iterations, f);
        println!("  phase {name:<32} median {:.2} ms/batch", median * 1e3);
    };
    phase("split batch (RawValue)", &|| {
        std::hint::black_box(tidemark::ddb::split_batch(&batch).expect("split"));
    });

    let raws = tidemark::ddb::split_batch(&batch).expect("split");
    phase("decode records (all attributes)", &|| {
        for r in &raws {
            std::hint::black_box(tidemark::ddb::StreamRecord::decode(r.get()).expect("decode"));
        }
    });
    let table = &config.tables[0];
    let wanted: Vec<String> = table.declared().map(str::to_owned).collect();
    phase("decode records (declared only)", &|| {
        for r in &raws {
            std::hint::black_box(
                tidemark::ddb::StreamRecord::decode_only(r.get(), Some(&wanted)).expect("decode"),
            );
        }
    });
    let decoded: Vec<_> = raws
        .iter()
        .map(|r| tidemark::ddb::StreamRecord::decode(r.get()).expect("decode"))
        .collect();
    phase("derive keys", &|| {
        for r in &decoded {
            tidemark::invalidation::table_keys(table, r, |k| {
                std::hint::black_box(k);
            });
        }
    });
    phase("derive + coalesce + pack", &|| {
        let mut co = tidemark::invalidation::Coalescer::default();
        let g = co.group("users", "us-east-1", true);
        for (i, r) in decoded.iter().enumerate() {
            tidemark::invalidation::table_keys(table, r, |k| co.add_to(g, k, i, 1));
        }
        std::hint::black_box(co.pack(tidemark::invalidation::BODY_BUDGET));
    });
}

/// `TIDEMARK_BENCH_ONLY=handle`: only the large batch through `handle`, for a profiler.
fn handle_only(iterations: u32) {
    let batch = tidemark::samples::stream_batch(4000, "users");
    let processor = processor();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (median, best) = time(iterations, || {
        let failed = rt.block_on(processor.handle(&batch)).expect("batch");
        assert!(failed.is_empty());
    });
    println!(
        "handle only: median {:.2} ms, best {:.2} ms per 4,000-record batch",
        median * 1e3,
        best * 1e3
    );
}

fn main() {
    let iterations = std::env::var("TIDEMARK_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if std::env::var("TIDEMARK_BENCH_ONLY").as_deref() == Ok("handle") {
        handle_only(iterations);
        return;
    }
    measure(
        "large records",
        "stream-4000x1400.json",
        4000,
        10,
        iterations,
    );
    measure(
        "small records",
        "stream-10000x560.json",
        10_000,
        0,
        iterations,
    );
    println!("phases of the 4,000-record batch (one core, {iterations} runs):");
    phases(iterations);
}
