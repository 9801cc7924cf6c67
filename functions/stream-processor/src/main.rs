//! stream-processor: DynamoDB Streams (one mapping per watched table) → invalidations.

use tidemark::app::stream::{FUNCTION, StreamProcessor};
use tidemark::lambda::{Trigger, run_batches};

// One invocation at a time: a current-thread runtime keeps one allocator arena and no idle
// worker threads (peak RSS), and the handlers' concurrency is async I/O, not CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(
        FUNCTION,
        Trigger::DynamoDbStream,
        StreamProcessor::from_env(),
    )
    .await
}
