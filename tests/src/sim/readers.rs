//! Read-through readers: the application, in a task of its own, reading both regions all
//! along — through faults and slow invocations alike, as an application does not wait for
//! its cache's invalidator. A read goes to the cache; on a miss to the region's replica,
//! then `SET … EX` with the TTL the README advises as a backstop.
//!
//! Some misses are slow readers: the `SET` comes 1–4 s after the replica read (drawn from
//! the seed), as an application paused between the two (a GC, a slow network). Such a
//! reader can read the replica just before a change and set the old value just after the
//! change's invalidation deleted the key (the first delete comes 1–3 s after the change
//! here: the batching windows): only the delayed second delete removes it (the TTL would
//! keep it for 10 minutes), so it must come later than any reader's read-to-SET time
//! (`--second-delete 5`). With `--second-delete 0` those keys stay stale.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;

use super::rng::Rng;
use super::run::{object_key, pk_name};
use crate::aws::RegionClients;
use crate::world::{REGIONS, World};

/// TTL of what readers put in the caches.
pub const READ_TTL_S: u64 = 600;
/// Reads per region per round.
const READS_PER_ROUND: usize = 8;
const ROUND_PAUSE: Duration = Duration::from_millis(20);
/// Share of misses whose `SET` is late, and how late (ms, uniform).
const LATE_SET_SHARE: f64 = 0.25;
const LATE_SET_MS: (usize, usize) = (1_000, 4_000);

/// Per region: (reads, cache hits, late sets).
pub type Counts = BTreeMap<String, (u64, u64, u64)>;

struct Region {
    name: String,
    clients: RegionClients,
    bucket: String,
    /// The readers' own connection (not through the gate: the application keeps reaching
    /// its cache when the invalidator cannot).
    conn: MultiplexedConnection,
}

struct Reader {
    regions: Vec<Region>,
    table: String,
    prefix: String,
    items: usize,
    objects: usize,
    rng: Rng,
    counts: Arc<Mutex<Counts>>,
    /// The late `SET`s still waiting.
    late: tokio::task::JoinSet<Result<()>>,
}

/// The running readers.
pub struct Readers {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    task: JoinHandle<Result<()>>,
}

impl Readers {
    /// Starts reading `items` users and `objects` objects of `w` in both regions; the
    /// draws come from `seed` (a stream of their own: the workload's draws do not depend on
    /// how many reads ran).
    pub async fn start(w: &World, items: usize, objects: usize, seed: u64) -> Result<Self> {
        let mut regions = Vec::new();
        for r in REGIONS {
            let region = w.region(r);
            regions.push(Region {
                name: r.to_owned(),
                clients: region.clients.clone(),
                bucket: region.bucket.clone(),
                conn: w.cache(r).await?,
            });
        }
        let counts = Arc::new(Mutex::new(Counts::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = Reader {
            regions,
            table: w.table.clone(),
            prefix: w.key_prefix.clone(),
            items,
            objects,
            rng: Rng::new(seed ^ 0x5245_4144_4552_5321),
            counts: counts.clone(),
            late: tokio::task::JoinSet::new(),
        };
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            while !stopping.load(Ordering::Relaxed) {
                for i in 0..reader.regions.len() {
                    for _ in 0..READS_PER_ROUND {
                        reader.read(i).await?;
                    }
                }
                tokio::time::sleep(ROUND_PAUSE).await;
                while let Some(done) = reader.late.try_join_next() {
                    done.context("a late SET")??;
                }
            }
            while let Some(done) = reader.late.join_next().await {
                done.context("a late SET")??;
            }
            Ok(())
        });
        Ok(Self { stop, counts, task })
    }

    /// Reads and hits so far.
    pub fn counts(&self) -> Counts {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the readers after their current round and their late `SET`s; a reader's
    /// error ends the run.
    pub async fn stop(self) -> Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        let counts = self.counts.clone();
        self.task.await.context("the readers' task")??;
        Ok(counts.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl Reader {
    async fn read(&mut self, i: usize) -> Result<()> {
        let (full, item) = if self.rng.chance(0.7) {
            let pk = pk_name(self.rng.below(self.items));
            (format!("{}user:{pk}", self.prefix), Ok(pk))
        } else {
            let (key, _) = object_key(self.rng.below(self.objects));
            (format!("{}asset:{key}", self.prefix), Err(key))
        };
        let r = &mut self.regions[i];
        let hit: Option<String> = redis::cmd("GET")
            .arg(&full)
            .query_async(&mut r.conn)
            .await?;
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let c = counts.entry(r.name.clone()).or_default();
            c.0 += 1;
            c.1 += u64::from(hit.is_some());
        }
        if hit.is_some() {
            return Ok(());
        }
        let mut sets = Vec::new();
        match item {
            Ok(pk) => {
                if let Some(email) = user_email(&r.clients, &self.table, &pk).await? {
                    sets.push((full, email.clone()));
                    sets.push((format!("{}user-email:{email}", self.prefix), pk));
                }
            }
            Err(key) => {
                if let Some(body) = object_body_in(&r.clients, &r.bucket, &key).await? {
                    sets.push((full, body));
                }
            }
        }
        if sets.is_empty() {
            return Ok(());
        }
        let late = self.rng.chance(LATE_SET_SHARE).then(|| {
            Duration::from_millis(
                (LATE_SET_MS.0 + self.rng.below(LATE_SET_MS.1 - LATE_SET_MS.0 + 1)) as u64,
            )
        });
        let mut conn = r.conn.clone();
        let Some(after) = late else {
            return set_all(&mut conn, &sets).await;
        };
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.entry(r.name.clone()).or_default().2 += 1;
        }
        self.late.spawn(async move {
            tokio::time::sleep(after).await;
            set_all(&mut conn, &sets).await
        });
        Ok(())
    }
}

/// `SET … EX` of what a reader read.
async fn set_all(conn: &mut MultiplexedConnection, sets: &[(String, String)]) -> Result<()> {
    for (k, v) in sets {
        redis::cmd("SET")
            .arg(k)
            .arg(v)
            .arg("EX")
            .arg(READ_TTL_S)
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// A user's e-mail in a region's replica (strongly consistent read; None: absent).
pub async fn user_email(c: &RegionClients, table: &str, pk: &str) -> Result<Option<String>> {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let out = c
        .dynamodb
        .get_item()
        .table_name(table)
        .key("pk", A::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .with_context(|| format!("get item {pk} from {table}"))?;
    Ok(out
        .item()
        .and_then(|i| i.get("email"))
        .and_then(|v| v.as_s().ok())
        .cloned())
}

/// The current body of `key` in `bucket` (None: absent).
pub async fn object_body_in(c: &RegionClients, bucket: &str, key: &str) -> Result<Option<String>> {
    match c.s3.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => Ok(Some(
            String::from_utf8_lossy(&o.body.collect().await?.into_bytes()).into_owned(),
        )),
        Err(e) => {
            let e = e.into_service_error();
            if e.is_no_such_key() {
                Ok(None)
            } else {
                Err(anyhow::Error::new(e).context(format!("get object {key} from {bucket}")))
            }
        }
    }
}
