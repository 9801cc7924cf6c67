//! stream-processor: DynamoDB Streams (one mapping per watched table) → invalidations.

use tidemark::app::stream::{FUNCTION, StreamProcessor};
use tidemark::lambda::{Trigger, run_batches};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(
        FUNCTION,
        Trigger::DynamoDbStream,
        StreamProcessor::from_env(),
    )
    .await
}
