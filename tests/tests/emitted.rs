//! No alarm or dashboard widget on a metric nothing emits. The deployed stacks' alarms and
//! widgets name metrics with their dimension sets; one scenario that exercises every
//! capability (writes in both regions, a conflict, a residency violation, a poisoned
//! message, a cache outage, an S3 replication failure, canary ticks with a live and a down
//! peer) must emit each of them, in this template's EMF namespace, with exactly that set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tidemark_tests::alarms::{MetricUse, Query, alarms, metric_uses, samples};
use tidemark_tests::world::{Options, Stages, World};

use super::replication_events::{notification, send};
use super::{tick_docs, world_canaries};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the emulators: run scripts/test.sh"]
async fn every_metric_an_alarm_or_widget_reads_is_emitted_with_exactly_its_dimensions() -> Result<()>
{
    let mut w = World::start(Options {
        residency: true,
        ..Options::default()
    })
    .await?;
    let config = tidemark::config::Config::load(&w.config_path)?;
    // The canaries' EMF per region (they run in-process here).
    let mut extra: BTreeMap<&str, Vec<Value>> = BTreeMap::new();

    // Canaries: heartbeats, their age and staleness, with every peer live.
    let canaries = world_canaries(&w, &config, None).await;
    for _ in 0..2 {
        for (c, region) in canaries.iter().zip([US, EU]) {
            extra.entry(region).or_default().extend(tick_docs(c).await?);
        }
        w.settle().await?;
    }

    // Application writes in both regions, one key written from both at once (a conflict),
    // and an EU resident's item (reported where it must not live).
    w.put_user(US, "from-us", "us@example.com").await?;
    w.put_user(EU, "from-eu", "eu@example.com").await?;
    w.put_user(US, "both", "us-both@example.com").await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    w.put_user(EU, "both", "eu-both@example.com").await?;
    {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        w.region(EU)
            .clients
            .dynamodb
            .put_item()
            .table_name(&w.table)
            .item("pk", A::S("resident".into()))
            .item("email", A::S("resident@example.com".into()))
            .item("home_region", A::S("eu".into()))
            .item("updated_at_ms", A::N(tidemark::now_ms().to_string()))
            .item("origin_region", A::S(EU.into()))
            .send()
            .await?;
    }
    // A message no decoder can read (rejected), and an S3 replication failure.
    let r = w.region(US);
    r.clients
        .sqs
        .send_message()
        .queue_url(&r.object_queue_url)
        .message_body("not an event")
        .send()
        .await?;
    for (from, to) in [(US, EU), (EU, US)] {
        let destination = w.region(to).bucket.clone();
        let failure = notification(
            from,
            &w.region(from).bucket,
            "OperationFailedReplication",
            "images/a.jpg",
            "v-failed",
            json!({"replicationRuleId": "assets", "destinationBucket": format!("arn:aws:s3:::{destination}"),
                   "s3Operation": "OBJECT_PUT", "requestTime": "2026-11-23T12:00:00.000Z",
                   "failureReason": "AssumeRoleNotPermitted"}),
        );
        send(&w, from, failure).await?;
    }
    // eu-west-1's cache refuses for a while: its invalidations fail and are retried.
    w.region(EU).cache_gate.set_open(false);
    for _ in 0..10 {
        w.step(Stages::ALL).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.region(EU).cache_gate.set_open(true);
    w.settle().await?;

    // Each region cannot reach the other any more (its own heartbeat is unreadable): the
    // peer is down, both ways.
    let cut_off = world_canaries(&w, &config, Some(US)).await;
    extra
        .entry(EU)
        .or_default()
        .extend(tick_docs(&cut_off[1]).await?);
    let cut_off = world_canaries(&w, &config, Some(EU)).await;
    extra
        .entry(US)
        .or_default()
        .extend(tick_docs(&cut_off[0]).await?);

    // What the scenario emitted: (namespace, metric) → every dimension set it carried; and
    // per region, every full dimension map (names and values) of each metric.
    let mut emitted: BTreeMap<(String, String), BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    let mut series: BTreeMap<(&str, String), BTreeSet<BTreeMap<String, String>>> = BTreeMap::new();
    for region in [US, EU] {
        let mut docs = w.emf(region, "");
        docs.extend(extra.get(region).cloned().unwrap_or_default());
        for s in samples(&docs)? {
            series
                .entry((region, s.metric.clone()))
                .or_default()
                .insert(s.dimensions.clone());
            emitted
                .entry((s.namespace, s.metric))
                .or_default()
                .insert(s.dimensions.into_keys().collect());
        }
    }
    // A single-metric alarm names dimension values too: some series of its region must
    // carry exactly those (a misspelled value or a physical name for a configured one
    // would leave the alarm without data forever).
    let mut unfed = Vec::new();
    for region in [US, EU] {
        for a in alarms(&w.region(region).wiring)? {
            if let Query::Metric {
                namespace,
                metric,
                dimensions,
            } = &a.query
                && *namespace == config.deployment.namespace
                && !series
                    .get(&(region, metric.clone()))
                    .is_some_and(|s| s.contains(dimensions))
            {
                unfed.push(format!(
                    "{region}: alarm {} reads {metric} {dimensions:?}; emitted: {:?}",
                    a.logical,
                    series.get(&(region, metric.clone()))
                ));
            }
        }
    }
    assert!(unfed.is_empty(), "{}", unfed.join("\n"));
    // One dimension set per metric (the catalog's), so alarms and widgets cannot split.
    for ((_, metric), sets) in &emitted {
        assert_eq!(
            sets.len(),
            1,
            "{metric} is emitted with several sets: {sets:?}"
        );
    }
    let mut uses: Vec<MetricUse> = Vec::new();
    for region in [US, EU] {
        uses.extend(metric_uses(&w.region(region).wiring)?);
    }
    let ours: Vec<&MetricUse> = uses
        .iter()
        .filter(|u| u.namespace == config.deployment.namespace)
        .collect();
    assert!(ours.len() >= 20, "{ours:?}");
    let missing: Vec<String> = ours
        .iter()
        .filter(|u| {
            !emitted
                .get(&(u.namespace.clone(), u.metric.clone()))
                .is_some_and(|sets| sets.contains(&u.dimensions))
        })
        .map(|u| {
            let got = emitted.get(&(u.namespace.clone(), u.metric.clone()));
            format!(
                "{} reads {} {:?}; emitted: {got:?}",
                u.by, u.metric, u.dimensions
            )
        })
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // Everything else comes from AWS itself, not from EMF.
    for u in uses
        .iter()
        .filter(|u| u.namespace != config.deployment.namespace)
    {
        assert!(
            ["AWS/Lambda", "AWS/SQS", "AWS/S3"].contains(&u.namespace.as_str()),
            "{} reads {} in {}, which nothing emits",
            u.by,
            u.metric,
            u.namespace
        );
    }
    Ok(())
}
