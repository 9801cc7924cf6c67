//! replication-canary: scheduled heartbeat writer and reader (stall detection).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use tidemark::app::canary::{Canary, FUNCTION};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tidemark::logging::init();
    let canary = Canary::from_env()
        .await
        .map_err(|e| tidemark::runtime::init_failed(FUNCTION, e))?;
    let canary = &canary;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<Box<RawValue>>| async move {
            canary.tick().await?;
            Ok::<_, Error>(serde_json::json!({"ok": true}))
        },
    ))
    .await
}
