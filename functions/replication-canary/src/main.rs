//! replication-canary: heartbeat writer and reader (staleness, peer down), invoked by the
//! minute's schedule and by the tick queue's messages in between.

use tidemark::app::canary::{Canary, FUNCTION};
use tidemark::lambda::Trigger;

// One invocation at a time: a current-thread runtime keeps one allocator arena and no idle
// worker threads (peak RSS), and the handlers' concurrency is async I/O, not CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    tidemark::lambda::run_batches(FUNCTION, Trigger::Sqs, Canary::from_env()).await
}
