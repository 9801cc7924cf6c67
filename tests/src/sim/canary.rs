//! In-process canaries of both regions over a world's clients (the canary's schedule is
//! EventBridge's; the simulation ticks them itself every few seconds).

use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;
use tidemark::adapters::heartbeats::AwsHeartbeats;
use tidemark::app::canary::Canary;
use tidemark::ports::Heartbeats;

use crate::world::{REGIONS, World};

/// One canary per region; `unreachable`: the region whose cross-region reads go to a
/// closed port (as if that region were cut off).
pub async fn world_canaries(
    w: &World,
    config: &tidemark::config::Config,
    unreachable: Option<&str>,
) -> Vec<Canary> {
    // A closed port, one attempt: a peer that refuses every connection.
    let dead_sdk = crate::aws::sdk_config("http://127.0.0.1:9", "us-east-1", 1).await;
    let dead: Arc<dyn Heartbeats> = Arc::new(AwsHeartbeats::new(
        aws_sdk_dynamodb::Client::new(&dead_sdk),
        aws_sdk_s3::Client::new(&dead_sdk),
    ));
    let store = |r: &str| -> Arc<dyn Heartbeats> {
        Arc::new(AwsHeartbeats::new(
            w.region(r).clients.dynamodb.clone(),
            w.region(r).clients.s3.clone(),
        ))
    };
    REGIONS
        .iter()
        .map(|r| Canary {
            config: config.clone(),
            region: (*r).to_owned(),
            local: store(r),
            peers: REGIONS
                .iter()
                .filter(|p| *p != r)
                .map(|p| {
                    let c = if unreachable == Some(*p) {
                        dead.clone()
                    } else {
                        store(p)
                    };
                    ((*p).to_owned(), c)
                })
                .collect(),
            ticks: None,
        })
        .collect()
}

/// One tick of every canary, its EMF documents added to `docs` per region.
pub async fn tick_all(
    canaries: &[Canary],
    docs: &mut std::collections::HashMap<String, Vec<Value>>,
) -> Result<()> {
    for c in canaries {
        docs.entry(c.region.clone())
            .or_default()
            .extend(tick_docs(c).await?);
    }
    Ok(())
}

/// One tick of every canary after a round whose documents are dropped and the replication
/// of its heartbeats: what the canaries see when their peers' heartbeats are current (the
/// first and the last tick of a run, which would otherwise read a peer's missing or
/// minutes-old heartbeat and report staleness or a down peer that the schedule, not the
/// system, made).
pub async fn tick_settled(
    w: &mut World,
    canaries: &[Canary],
    docs: &mut std::collections::HashMap<String, Vec<Value>>,
) -> Result<()> {
    tick_all(canaries, &mut Default::default()).await?;
    w.settle().await?;
    tick_all(canaries, docs).await
}

/// One tick of `canary`; its EMF documents.
pub async fn tick_docs(canary: &Canary) -> Result<Vec<Value>> {
    let mut m = tidemark::metrics::Metrics::new("Tidemark");
    canary.tick_into(&mut m).await.map_err(anyhow::Error::msg)?;
    Ok(m.drain_documents(tidemark::now_ms()))
}
