//! cache-invalidator: SQS invalidation messages → UNLINK in the regional cache.

use tidemark::app::invalidator::{FUNCTION, Invalidator};
use tidemark::lambda::{Trigger, run_batches};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(FUNCTION, Trigger::Sqs, Invalidator::from_env()).await
}
