//! object-processor: S3 object events (EventBridge rule and replication notifications, through SQS) → invalidations.

use tidemark::app::object::{FUNCTION, ObjectProcessor};
use tidemark::lambda::{Trigger, run_batches};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(FUNCTION, Trigger::Sqs, ObjectProcessor::from_env()).await
}
