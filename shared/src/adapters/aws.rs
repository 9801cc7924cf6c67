//! AWS SDK configuration, built once per execution environment without network calls.
//!
//! Endpoints follow the SDK's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`
//! variables (used for emulators and VPC endpoints). `TIDEMARK_S3_FORCE_PATH_STYLE=true`
//! selects path-style S3 addressing for endpoints without virtual-host DNS.

use aws_config::{BehaviorVersion, SdkConfig};

use crate::error::{PortError, is_permanent_code};

/// Loads the shared SDK configuration (region and credentials are resolved lazily).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style =
        std::env::var("TIDEMARK_S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Classifies an AWS SDK failure of `operation` (see [`crate::error`]): a service error
/// whose code says the request itself is wrong is permanent; throttling, timeouts,
/// connection failures, server errors and unknown codes are transient (a wrong guess there
/// costs bounded retries, never a lost record).
pub fn port_error<E, R>(operation: &str, err: aws_sdk_s3::error::SdkError<E, R>) -> PortError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
    let code = match &err {
        SdkError::ServiceError(s) => s.err().code().map(str::to_owned),
        _ => None,
    };
    let text = format!("{operation}: {}", DisplayErrorContext(&err));
    match code.as_deref() {
        Some(c) if is_permanent_code(c) => PortError::Permanent(text),
        _ => PortError::Transient(text),
    }
}
