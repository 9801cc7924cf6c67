//! The Lambda edge: runs a batch handler under `lambda_runtime` and turns the ids it
//! reports into the partial batch response. The only module of this crate that knows
//! Lambda event and response types; handlers see the raw event text.

use std::future::Future;

use aws_lambda_events::streams::{
    DynamoDbBatchItemFailure, DynamoDbEventResponse, SqsBatchItemFailure, SqsEventResponse,
};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;

/// The trigger's response shape (`batchItemFailures[].itemIdentifier` in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Sequence numbers (Lambda checkpoints at the lowest).
    DynamoDbStream,
    /// Message ids (only those are delivered again).
    Sqs,
}

fn response(trigger: Trigger, failed: Vec<String>) -> serde_json::Value {
    let value = match trigger {
        Trigger::DynamoDbStream => {
            let mut r = DynamoDbEventResponse::default();
            r.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut f = DynamoDbBatchItemFailure::default();
                    f.item_identifier = Some(id);
                    f
                })
                .collect();
            serde_json::to_value(r)
        }
        Trigger::Sqs => {
            let mut r = SqsEventResponse::default();
            r.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut f = SqsBatchItemFailure::default();
                    f.item_identifier = Some(id);
                    f
                })
                .collect();
            serde_json::to_value(r)
        }
    };
    value.unwrap_or_default()
}

/// A function that handles one batch (raw event text) and returns the ids of the records
/// to report as failures, or an error that fails the whole invocation.
pub trait BatchHandler: Sync {
    fn handle(&self, event: &str) -> impl Future<Output = Result<Vec<String>, String>> + Send;
}

/// Logging, then `init` (settings and clients; no network calls), then the runtime loop.
pub async fn run_batches<H, I>(
    function: &'static str,
    trigger: Trigger,
    init: I,
) -> Result<(), Error>
where
    H: BatchHandler,
    I: Future<Output = Result<H, crate::settings::SettingsError>>,
{
    crate::logging::init();
    let handler = init
        .await
        .map_err(|e| crate::runtime::init_failed(function, e))?;
    let handler = &handler;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let failed = handler.handle(event.payload.get()).await?;
            Ok::<_, Error>(response(trigger, failed))
        },
    ))
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses_have_the_lambda_shape() {
        let r = response(Trigger::Sqs, vec!["m1".into()]);
        assert_eq!(
            r,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m1"}]})
        );
        let r = response(Trigger::DynamoDbStream, vec![]);
        assert_eq!(r, serde_json::json!({"batchItemFailures": []}));
    }
}
