//! The ledger: every change the workload made, in order, and what the replicas must hold
//! because of it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// An item written (`email` new or the same: a secondary-key change or a rewrite).
    Put {
        pk: String,
        email: String,
        eu: bool,
    },
    Delete {
        pk: String,
    },
    TtlExpire {
        pk: String,
    },
    ObjectPut {
        key: String,
        body: String,
    },
    ObjectDelete {
        key: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub at_ms: u64,
    pub region: String,
    /// Part of a pair written to the same key in both regions at once.
    pub concurrent: bool,
    pub change: Change,
}

/// What a replica must hold for one key: any of these (more than one only when writes
/// from both regions were concurrent: last-writer-wins picks one).
pub type Acceptable = BTreeSet<Option<String>>;

#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: Vec<Entry>,
}

impl Ledger {
    pub fn record(&mut self, region: &str, concurrent: bool, change: Change) {
        self.record_at(crate::now_ms(), region, concurrent, change);
    }

    /// A change whose write time the item carries (`updated_at_ms`, last-writer-wins).
    pub fn record_at(&mut self, at_ms: u64, region: &str, concurrent: bool, change: Change) {
        self.entries.push(Entry {
            at_ms,
            region: region.to_owned(),
            concurrent,
            change,
        });
    }

    pub fn count(&self, region: &str) -> usize {
        self.entries.iter().filter(|e| e.region == region).count()
    }

    /// The last change of `pk` (any region) and when.
    pub fn last_item(&self, pk: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| match &e.change {
            Change::Put { pk: p, .. } | Change::Delete { pk: p } | Change::TtlExpire { pk: p } => {
                p == pk
            }
            _ => false,
        })
    }

    /// The value (e-mail) every replica must hold for each item: the last write. Writes
    /// that crossed in replication (both regions within `window_ms`) are decided by
    /// last-writer-wins on their write times, which increase in ledger order: between
    /// puts that is the last one too. A delete or TTL expiry among them is timed by
    /// DynamoDB, not by the item, so there any of the crossing values is accepted.
    pub fn expected_items(&self, window_ms: u64) -> BTreeMap<String, Acceptable> {
        let mut per: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
        for e in &self.entries {
            if let Change::Put { pk, .. } | Change::Delete { pk } | Change::TtlExpire { pk } =
                &e.change
            {
                per.entry(pk.clone()).or_default().push(e);
            }
        }
        per.into_iter()
            .map(|(pk, es)| {
                let value = |e: &Entry| match &e.change {
                    Change::Put { email, .. } => Some(email.clone()),
                    _ => None,
                };
                let last = es[es.len() - 1];
                let crossing: Vec<&Entry> = es
                    .iter()
                    .rev()
                    .skip(1)
                    .take_while(|e| last.at_ms.saturating_sub(e.at_ms) <= window_ms)
                    .filter(|e| e.region != last.region && (e.concurrent || last.concurrent))
                    .copied()
                    .collect();
                let timed_by_item = |e: &Entry| matches!(e.change, Change::Put { .. });
                let mut ok: Acceptable = [value(last)].into();
                if !(timed_by_item(last) && crossing.iter().all(|e| timed_by_item(e))) {
                    ok.extend(crossing.iter().map(|e| value(e)));
                }
                (pk, ok)
            })
            .collect()
    }

    /// The body each object's origin region must hold (objects are written in one region
    /// each; the peer holds the same unless residency removes it).
    pub fn expected_objects(&self) -> BTreeMap<String, (String, Option<String>)> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            match &e.change {
                Change::ObjectPut { key, body } => {
                    out.insert(key.clone(), (e.region.clone(), Some(body.clone())));
                }
                Change::ObjectDelete { key } => {
                    out.insert(key.clone(), (e.region.clone(), None));
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(l: &mut Ledger, ms: u64, region: &str, concurrent: bool, change: Change) {
        l.entries.push(Entry {
            at_ms: ms,
            region: region.into(),
            concurrent,
            change,
        });
    }

    fn put(pk: &str, email: &str) -> Change {
        Change::Put {
            pk: pk.into(),
            email: email.into(),
            eu: false,
        }
    }

    #[test]
    fn the_last_write_wins_unless_both_regions_wrote_at_once() {
        let mut l = Ledger::default();
        at(&mut l, 1_000, "us-east-1", false, put("a", "a1"));
        at(&mut l, 9_000, "eu-west-1", false, put("a", "a2"));
        at(&mut l, 1_000, "us-east-1", false, put("b", "b1"));
        at(
            &mut l,
            2_000,
            "us-east-1",
            false,
            Change::Delete { pk: "b".into() },
        );
        at(&mut l, 5_000, "us-east-1", true, put("c", "c-us"));
        at(&mut l, 5_001, "eu-west-1", true, put("c", "c-eu"));
        at(&mut l, 5_000, "us-east-1", true, put("d", "d-us"));
        at(&mut l, 5_001, "eu-west-1", true, put("d", "d-eu"));
        at(
            &mut l,
            5_002,
            "eu-west-1",
            false,
            Change::Delete { pk: "d".into() },
        );
        let x = l.expected_items(3_000);
        assert_eq!(x["a"], [Some("a2".to_owned())].into());
        assert_eq!(x["b"], [None].into());
        // Puts crossing: the later write time wins everywhere.
        assert_eq!(x["c"], [Some("c-eu".to_owned())].into());
        // A delete among them is timed by DynamoDB: either outcome.
        assert_eq!(x["d"], [None, Some("d-us".to_owned())].into());
    }
}
