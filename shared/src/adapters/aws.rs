//! AWS SDK configuration, built once per execution environment without network calls.
//!
//! Endpoints follow the SDK's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`
//! variables (used for emulators and VPC endpoints). `TIDEMARK_S3_FORCE_PATH_STYLE=true`
//! selects path-style S3 addressing for endpoints without virtual-host DNS.

use aws_config::{BehaviorVersion, SdkConfig};

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
