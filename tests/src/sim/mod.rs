//! TEST CODE: the two-region simulation behind `tidemark-sim` (the README's first
//! command): a seeded workload in both regions, faults mid-run, a ledger of every change
//! as the oracle, and a report (printed and JSON).

pub mod args;
pub mod canary;
pub mod faults;
pub mod ledger;
pub mod page;
pub mod readers;
pub mod report;
pub mod rng;
pub mod run;
