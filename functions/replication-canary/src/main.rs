//! replication-canary: scheduled heartbeat writer and reader (stall detection).

use tidemark::app::canary::{Canary, FUNCTION};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tidemark::lambda::run_scheduled(FUNCTION, Canary::from_env()).await
}
