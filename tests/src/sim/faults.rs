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
/// message up after 5 receives, about a second apart with the template's batching window,
/// so longer outages end in the dead-letter queue (the report then shows the runbook's
/// redrive).
pub const MAX_WINDOW_S: f64 = 8.0;

/// Windows spread over the middle 70 % of the run, one after the other, in an order
/// drawn from the seed.
pub fn plan(faults: &[Fault], duration_s: f64, rng: &mut super::rng::Rng) -> Vec<Planned> {
    let mut order = faults.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let n = order.len().max(1) as f64;
    let slot = duration_s * 0.7 / n;
    order
        .into_iter()
        .enumerate()
        .map(|(i, fault)| {
            let start_s = duration_s * 0.15 + slot * i as f64;
            let len = (slot * 0.6).clamp(1.0, MAX_WINDOW_S);
            Planned {
                fault,
                start_s,
                end_s: start_s + len,
            }
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
        assert!(p.iter().all(|w| w.end_s - w.start_s <= MAX_WINDOW_S));
    }
}
