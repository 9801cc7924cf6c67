//! The faults the simulation injects, and when.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// us-east-1's cache refuses the invalidator's connections, then accepts and never
    /// answers (its gate); readers keep reaching it (they are the application).
    CacheRefused,
    /// SNS refuses a bounded number of PublishBatch calls (500).
    SnsRefused,
    /// Replication us-east-1 → eu-west-1 paused (tables and buckets).
    ReplicationPaused,
    /// Poison records in us-east-1's stream mapping and garbage on eu-west-1's object
    /// events queue.
    Malformed,
    /// us-east-1's stream-processor and eu-west-1's cache-invalidator killed in the middle
    /// of an invocation, about once a second: Lambda fails the invocation
    /// (`Runtime.ExitError`) and starts a fresh process for the retry.
    FunctionCrash,
    /// S3 replication us-east-1 → eu-west-1 fails (the role lost its rights on the
    /// destination): S3 sends OperationFailedReplication and does not retry; the runbook
    /// re-replicates with S3 Batch Replication.
    S3ReplicationFailed,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::CacheRefused,
        Fault::SnsRefused,
        Fault::ReplicationPaused,
        Fault::Malformed,
        Fault::FunctionCrash,
        Fault::S3ReplicationFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::CacheRefused => "cache-refused",
            Fault::SnsRefused => "sns-refused",
            Fault::ReplicationPaused => "replication-paused",
            Fault::Malformed => "malformed",
            Fault::FunctionCrash => "function-crash",
            Fault::S3ReplicationFailed => "s3-replication-failed",
        }
    }

    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        match s.trim() {
            "all" => return Ok(Self::ALL.to_vec()),
            "none" | "" => return Ok(Vec::new()),
            _ => {}
        }
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim) {
            let f = Self::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| {
                    format!(
                        "--faults expects `all`, `none` or names from {}, found `{name}`",
                        Self::ALL.map(Fault::name).join(", ")
                    )
                })?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

/// One fault's planned window, in seconds from the start of the workload.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub fault: Fault,
    pub start_s: f64,
    pub end_s: f64,
}

/// Longest window of a fault that makes messages retry: the invalidation queue gives a
/// message up after 5 receives, which on AWS come a visibility timeout (361 s) apart and
/// here 1–3 s apart (the simulation scales the timeout down to 1 s; the batching window
/// and a waiting invocation add to it), so a window spans about a message's retries:
/// some end in the dead-letter queue and the report shows the runbook's redrive.
pub const MAX_WINDOW_S: f64 = 8.0;
/// The cache outage may last longer: long enough (in a long run) that the invalidations it
/// holds run out of receives and the runbook's replay brings them back.
pub const MAX_CACHE_WINDOW_S: f64 = 20.0;

/// Windows spread over the middle 70 % of the run, one after the other, in an order
/// drawn from the seed; the cache outage gets a slot 2.5 times as long as the others.
pub fn plan(faults: &[Fault], duration_s: f64, rng: &mut super::rng::Rng) -> Vec<Planned> {
    let mut order = faults.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let weight = |f: Fault| if f == Fault::CacheRefused { 2.5 } else { 1.0 };
    let unit = duration_s * 0.7 / order.iter().map(|f| weight(*f)).sum::<f64>().max(1.0);
    let mut start_s = duration_s * 0.15;
    order
        .into_iter()
        .map(|fault| {
            let slot = unit * weight(fault);
            let len = if fault == Fault::CacheRefused {
                (slot * 0.8).clamp(1.0, MAX_CACHE_WINDOW_S)
            } else {
                (slot * 0.6).clamp(1.0, MAX_WINDOW_S)
            };
            let p = Planned {
                fault,
                start_s,
                end_s: start_s + len,
            };
            start_s += slot;
            p
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_do_not_overlap_and_fit_in_the_run() {
        let mut rng = super::super::rng::Rng::new(3);
        let p = plan(&Fault::ALL, 60.0, &mut rng);
        assert_eq!(p.len(), Fault::ALL.len());
        for w in p.windows(2) {
            assert!(w[0].end_s <= w[1].start_s, "{p:?}");
        }
        assert!(p.iter().all(|w| w.start_s >= 9.0 && w.end_s <= 60.0 * 0.85));
        assert!(p.iter().all(|w| w.end_s - w.start_s <= MAX_CACHE_WINDOW_S));
    }
}
