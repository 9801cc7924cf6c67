//! Throughput of the stream-processor's per-batch work: split → decode each record →
//! derive keys on old and new images → coalesce → pack into SNS messages, through the real
//! handler (`StreamProcessor::handle`) with in-memory ports (no network).
//!
//! Batch: 4,000 NEW_AND_OLD_IMAGES records of ~1.4 KiB (~5.6 MB), the target shape.
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

fn main() {
    let n = 4000;
    let batch = tidemark::samples::stream_batch(n, "users");
    println!(
        "batch: {n} records, {:.2} MB, {:.0} bytes/record",
        batch.len() as f64 / 1e6,
        batch.len() as f64 / n as f64
    );

    let processor = StreamProcessor {
        config: Config::embedded().expect("embedded config"),
        region: "us-east-1".into(),
        ports: Ports {
            publisher: Arc::new(NullPublisher),
            dead_letter: Arc::new(NullDeadLetter),
            labels: Arc::new(tidemark::keyhash::KeyLabels::plain()),
            alerts: Arc::new(NullAlerts),
        },
        emf: tidemark::metrics::EmfOut::Stdout,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // EMF goes to stdout once per batch; keep it out of the figures' output.
    let iterations = 30;
    let mut best = f64::MAX;
    let mut total = 0.0;
    for i in 0..iterations + 3 {
        let start = Instant::now();
        let failed = rt.block_on(processor.handle(&batch)).expect("batch");
        let secs = start.elapsed().as_secs_f64();
        assert!(failed.is_empty());
        if i >= 3 {
            best = best.min(secs);
            total += secs;
        }
    }
    let mean = total / f64::from(iterations);
    let phase = |name: &str, f: &dyn Fn()| {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        let secs = start.elapsed().as_secs_f64() / f64::from(iterations);
        eprintln!("  phase {name:<28} {:.2} ms/batch", secs * 1e3);
    };
    eprintln!();
    phase("split batch (RawValue)", &|| {
        std::hint::black_box(tidemark::ddb::split_batch(&batch).expect("split"));
    });
    let raws = tidemark::ddb::split_batch(&batch).expect("split");
    phase("decode records", &|| {
        for r in &raws {
            std::hint::black_box(tidemark::ddb::StreamRecord::decode(r.get()).expect("decode"));
        }
    });
    let decoded: Vec<_> = raws
        .iter()
        .map(|r| tidemark::ddb::StreamRecord::decode(r.get()).expect("decode"))
        .collect();
    let table = &processor.config.tables[0];
    phase("derive keys", &|| {
        for r in &decoded {
            tidemark::invalidation::table_keys(table, r, |k| {
                std::hint::black_box(k);
            });
        }
    });
    eprintln!();
    eprintln!("decode + derive + pack, one core, {iterations} runs:");
    eprintln!(
        "  mean {:.2} ms/batch → {:.0} records/s ({:.0} MB/s)",
        mean * 1e3,
        4000.0 / mean,
        batch.len() as f64 / mean / 1e6
    );
    eprintln!(
        "  best {:.2} ms/batch → {:.0} records/s",
        best * 1e3,
        4000.0 / best
    );
    phase("derive + coalesce + pack", &|| {
        let mut co = tidemark::invalidation::Coalescer::default();
        let g = co.group("users", "us-east-1", true);
        for (i, r) in decoded.iter().enumerate() {
            tidemark::invalidation::table_keys(table, r, |k| co.add_to(g, k, i, 1));
        }
        std::hint::black_box(co.pack(tidemark::invalidation::BODY_BUDGET));
    });
}
