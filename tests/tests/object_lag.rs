//! S3 object replication lag end to end: application objects written with the metadata
//! the bucket's `lag` section names, replicated by the harness with a different delay per
//! direction, measured by each destination region's object-processor. Assertions read the
//! replicas themselves (REPLICA status, copied metadata), the replicator's own record of
//! when it wrote each replica, and the object-processor's EMF.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use tidemark_tests::s3sim::S3Applied;
use tidemark_tests::world::{OBJECT_WRITTEN_AT, Options, World};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
/// us-east-1 → eu-west-1.
const FAST: Duration = Duration::from_millis(200);
/// eu-west-1 → us-east-1: far enough from FAST that a loaded machine's extra seconds on
/// the fast path cannot reach it (its lag reads at least 4,001 ms, see below).
const SLOW: Duration = Duration::from_secs(5);

fn values(docs: &[Value], metric: &str, dims: &[(&str, &str)]) -> Vec<f64> {
    docs.iter()
        .filter(|d| dims.iter().all(|(k, v)| d[*k] == *v))
        .filter_map(|d| d.get(metric))
        .flat_map(|v| match v {
            Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        })
        .filter_map(|v| v.as_f64())
        .collect()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn applied(w: &World, from: &str, to: &str) -> Vec<S3Applied> {
    w.s3_replicators
        .iter()
        .find(|s| s.route() == (from, to))
        .map(|s| s.applied.lock().unwrap().clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn object_lag_reflects_the_injected_s3_replication_delay_per_direction() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    w.set_s3_replication_delay(US, EU, FAST);
    w.set_s3_replication_delay(EU, US, SLOW);
    for i in 0..3 {
        w.put_app_object(US, &format!("lag/from-us-{i}.txt"))
            .await?;
        w.put_app_object(EU, &format!("lag/from-eu-{i}.txt"))
            .await?;
    }
    // A replica whose write time is unusable is not measured, and nothing else changes.
    let us = w.region(US);
    us.clients
        .s3
        .put_object()
        .bucket(&us.bucket)
        .key("lag/garbled.txt")
        .metadata("origin-region", US)
        .metadata(OBJECT_WRITTEN_AT, "soon")
        .body(b"x".to_vec().into())
        .send()
        .await?;
    w.settle().await?;

    let mut lows = Vec::new();
    for (from, to, delay) in [(US, EU, FAST), (EU, US, SLOW)] {
        let copies: Vec<S3Applied> = applied(&w, from, to)
            .into_iter()
            .filter(|a| a.key.starts_with("lag/from-"))
            .collect();
        assert_eq!(copies.len(), 3, "{from} → {to}: {copies:?}");
        // Real state: each replica is marked REPLICA and carries the source's metadata.
        let dest = w.region(to);
        for a in &copies {
            let h = dest
                .clients
                .s3
                .head_object()
                .bucket(&dest.bucket)
                .key(&a.key)
                .version_id(&a.version)
                .send()
                .await?;
            assert_eq!(
                h.replication_status().map(|s| s.as_str()),
                Some("REPLICA"),
                "{}",
                a.key
            );
            let meta = h.metadata().cloned().unwrap_or_default();
            assert_eq!(meta.get("origin-region").map(String::as_str), Some(from));
            assert_eq!(
                meta.get(OBJECT_WRITTEN_AT),
                a.metadata.get(OBJECT_WRITTEN_AT)
            );
        }

        let docs = w.emf(to, "object-processor");
        let d = [
            ("Source", "assets"),
            ("SourceRegion", from),
            ("DestinationRegion", to),
        ];
        let lag = sorted(values(&docs, "ReplicationLag", &d));
        let e2e = values(&docs, "EndToEndLag", &d);
        // Exact: the replica's event time is when its PutObject returned, to the second
        // (EventBridge), minus the write time in its metadata.
        let written = |a: &S3Applied| -> u64 { a.metadata[OBJECT_WRITTEN_AT].parse().unwrap() };
        let want = sorted(
            copies
                .iter()
                .map(|a| (a.after_ms / 1000 * 1000).saturating_sub(written(a)) as f64)
                .collect(),
        );
        assert_eq!(lag, want, "{from} → {to}: {copies:?}");
        // The injected delay, exactly: each replica was written at least `delay` after its
        // source, and the event time's second loses less than a second of it.
        for (l, a) in lag.iter().zip(&copies) {
            assert!(
                *l + 1000.0 > delay.as_millis() as f64,
                "{from} → {to}: lag {l} below {delay:?} − 1 s ({a:?})"
            );
        }
        assert_eq!(e2e.len(), 3, "{from} → {to}: {docs:?}");
        assert!(
            e2e.iter().all(|e| *e >= delay.as_millis() as f64),
            "{from} → {to}: end-to-end {e2e:?} below {delay:?}"
        );
        // Local writes are no replication: no pair of this region with itself.
        assert!(
            values(
                &docs,
                "ReplicationLag",
                &[
                    ("Source", "assets"),
                    ("SourceRegion", to),
                    ("DestinationRegion", to)
                ]
            )
            .is_empty(),
            "{to}"
        );
        lows.push((lag.first().copied(), lag.last().copied()));
    }
    // Told apart: the slowest 200 ms sample is below the fastest 5 s sample.
    let ((_, fast_max), (slow_min, _)) = (lows[0], lows[1]);
    assert!(fast_max < slow_min, "{lows:?}");
    eprintln!(
        "object ReplicationLag (min, max) ms: us→eu (200 ms) {:?}, eu→us (5 s) {:?}",
        lows[0], lows[1]
    );

    // The garbled replica arrived in eu-west-1 and was processed, unmeasured, not rejected.
    assert!(
        applied(&w, US, EU)
            .iter()
            .any(|a| a.key == "lag/garbled.txt"),
        "replicated"
    );
    let eu = w.region(EU);
    assert!(eu.clients.drain(&eu.object_dlq_url).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn peers_heartbeat_objects_feed_object_lag_per_direction() -> Result<()> {
    let mut w = World::start(Options::default()).await?;
    w.set_s3_replication_delay(US, EU, FAST);
    w.set_s3_replication_delay(EU, US, SLOW);
    let config = tidemark::config::Config::load(&w.config_path)?;
    for canary in super::world_canaries(&w, &config, None).await {
        canary
            .run_tick()
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", canary.region))?;
    }
    w.settle().await?;
    for (from, to, delay) in [(US, EU, FAST), (EU, US, SLOW)] {
        // The peer's heartbeat object, as the replica here holds it (real state).
        let copy = applied(&w, from, to)
            .into_iter()
            .find(|a| a.key == format!("tidemark-heartbeat/{from}"))
            .unwrap_or_else(|| panic!("{from} → {to}: the heartbeat object replicated"));
        let written: u64 = copy.metadata["tidemark_written_at_ms"].parse()?;
        let docs = w.emf(to, "object-processor");
        let d = [
            ("Source", "assets"),
            ("SourceRegion", from),
            ("DestinationRegion", to),
        ];
        assert_eq!(
            values(&docs, "ReplicationLag", &d),
            [(copy.after_ms / 1000 * 1000).saturating_sub(written) as f64],
            "{from} → {to}: {copy:?}"
        );
        let e2e = values(&docs, "EndToEndLag", &d);
        assert!(
            e2e.len() == 1 && e2e[0] >= delay.as_millis() as f64,
            "{from} → {to}: {e2e:?}"
        );
        // A region's own heartbeat object is no replication.
        assert!(
            values(
                &docs,
                "ReplicationLag",
                &[("Source", "assets"), ("SourceRegion", to)]
            )
            .is_empty()
        );
    }
    Ok(())
}
