//! Classifies SDK failures where they arise: transient (retry the record) or permanent
//! (dead-letter it with the reason).

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::ports::PortError;

/// Error codes that say "try again later" even though their HTTP status is 4xx.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "KMSThrottlingException",
    "KMS.ThrottlingException",
    "ProvisionedThroughputExceededException",
];

/// `op` and `what` (bucket, key, version; or topic) make the message say where it failed.
pub fn classify<E>(op: &str, what: &str, e: &SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = e.code().unwrap_or("");
            let message = e.message().unwrap_or("");
            let text = format!("{op} {what}: HTTP {status} {code} {message}")
                .trim_end()
                .to_owned();
            if status == 429 || status >= 500 || TRANSIENT_CODES.contains(&code) {
                PortError::Transient(text)
            } else {
                // Access denied, a missing bucket or topic, a disabled key, a bad request:
                // the same call fails the same way however often it is retried.
                PortError::Permanent(text)
            }
        }
        // The request could not be built: retrying cannot help.
        SdkError::ConstructionFailure(_) => PortError::Permanent(format!(
            "{op} {what}: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
        // Timeouts, connection failures, unreadable responses.
        _ => PortError::Transient(format!(
            "{op} {what}: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
    }
}

/// HTTP status of a service error (`None` for timeouts and connection failures).
pub fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    }
}
