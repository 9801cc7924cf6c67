//! object-processor: S3 object events (EventBridge rule and replication notifications, through SQS) → invalidations.

use aws_lambda_events::streams::{SqsBatchItemFailure, SqsEventResponse};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use tidemark::app::object::{FUNCTION, ObjectProcessor};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tidemark::logging::init();
    let handler = ObjectProcessor::from_env()
        .await
        .map_err(|e| tidemark::runtime::init_failed(FUNCTION, e))?;
    let handler = &handler;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let failed = handler.handle(event.payload.get()).await?;
            let mut response = SqsEventResponse::default();
            response.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut f = SqsBatchItemFailure::default();
                    f.item_identifier = Some(id);
                    f
                })
                .collect();
            Ok::<_, Error>(response)
        },
    ))
    .await
}
