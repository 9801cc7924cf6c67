//! cache-invalidator: SQS invalidation messages → UNLINK in the regional cache.

use tidemark::app::invalidator::{FUNCTION, Invalidator};
use tidemark::lambda::{Trigger, run_batches};

// One invocation at a time: a current-thread runtime keeps one allocator arena and no idle
// worker threads (peak RSS), and the handlers' concurrency is async I/O, not CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(FUNCTION, Trigger::Sqs, Invalidator::from_env()).await
}
