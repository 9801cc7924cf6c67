//! stream-processor: DynamoDB Streams (one mapping per watched table) → invalidations.

use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use tidemark::app::stream::{FUNCTION, StreamProcessor};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tidemark::logging::init();
    let processor = StreamProcessor::from_env()
        .await
        .map_err(|e| tidemark::runtime::init_failed(FUNCTION, e))?;
    let processor = &processor;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let failed = processor.handle(event.payload.get()).await?;
            let mut response = DynamoDbEventResponse::default();
            response.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut f = DynamoDbBatchItemFailure::default();
                    f.item_identifier = Some(id);
                    f
                })
                .collect();
            Ok::<_, Error>(response)
        },
    ))
    .await
}
