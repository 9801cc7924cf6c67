//! TEST CODE: the two-region harness. Everything here stands in for AWS behaviour that
//! moto lacks (global-table and S3 replication, event source mappings, the Lambda runtime,
//! the S3 events moto does not send) — production code never reads what it writes.

pub mod alarms;
pub mod aws;
pub mod filter;
pub mod gate;
pub mod http;
pub mod proxy;
pub mod rehearsal;
pub mod runtime;
pub mod s3sim;
pub mod sim;
pub mod sqs;
pub mod streams;
pub mod world;

pub use tidemark::now_ms;
