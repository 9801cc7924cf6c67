//! AWS SDK configuration, built once per execution environment without network calls.
//!
//! Endpoints follow the SDK's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`
//! variables (used for emulators and VPC endpoints). `TIDEMARK_S3_FORCE_PATH_STYLE=true`
//! selects path-style S3 addressing for endpoints without virtual-host DNS.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::error::PortError;

/// TCP + TLS connect to an AWS endpoint. A subnet without a route to the service (no NAT,
/// no VPC endpoint) fails here instead of hanging until the function times out.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of one API call (the SDK retries a timed-out attempt).
pub const OPERATION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
/// One API call, retries included; below the shortest function timeout (30 s), so a
/// failing call becomes a record retry or a dead letter, not a timed-out invocation.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The timeouts every client gets.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(OPERATION_ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Loads the shared SDK configuration (region and credentials are resolved lazily), with
/// [`timeouts`] on every client built from it.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts())
        .load()
        .await
}

/// [`sdk_config`] for an operator command that names its region (`--region`): the same
/// timeouts as the functions' clients, so a missing route fails a call instead of hanging.
pub async fn sdk_config_in(region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts())
        .region(aws_config::Region::new(region.to_owned()))
        .load()
        .await
}

pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style =
        std::env::var("TIDEMARK_S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Classifies an AWS SDK failure of `operation` with [`super::errors::classify`] (the one
/// rule for every adapter; see [`crate::error::classify_code`]).
pub fn port_error<E>(
    operation: &str,
    err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> PortError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    super::errors::classify(operation, "", &err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers (a black hole after the
    /// handshake): a call must fail after OPERATION_TIMEOUT, not hang.
    #[tokio::test]
    async fn a_silent_endpoint_fails_the_call_within_the_operation_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                open.push(sock);
            }
        });
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(format!("http://{addr}"))
            .load()
            .await;
        assert_eq!(sdk.timeout_config(), Some(&timeouts()));
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let started = std::time::Instant::now();
        let out = sqs
            .send_message()
            .queue_url(format!("http://{addr}/000000000000/q"))
            .message_body("{}")
            .send()
            .await;
        let took = started.elapsed();
        held.abort();
        let err = out.expect_err("expected a timeout from a silent endpoint, found a response");
        assert!(
            matches!(err, aws_sdk_sqs::error::SdkError::TimeoutError(_)),
            "expected a timeout error, found {}",
            aws_sdk_sqs::error::DisplayErrorContext(&err)
        );
        assert!(
            took < OPERATION_TIMEOUT + Duration::from_secs(3),
            "expected the call to end within {OPERATION_TIMEOUT:?}, it took {took:?}"
        );
    }

    #[tokio::test]
    async fn sdk_config_carries_the_timeouts() {
        let sdk = sdk_config().await;
        let t = sdk
            .timeout_config()
            .expect("expected a timeout config, found none");
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(
            t.operation_attempt_timeout(),
            Some(OPERATION_ATTEMPT_TIMEOUT)
        );
        assert_eq!(t.operation_timeout(), Some(OPERATION_TIMEOUT));
    }

    #[tokio::test]
    async fn operator_commands_get_the_same_timeouts_in_their_region() {
        let sdk = sdk_config_in("eu-west-1").await;
        assert_eq!(sdk.timeout_config(), Some(&timeouts()));
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
    }
}
