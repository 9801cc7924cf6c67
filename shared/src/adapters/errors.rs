//! Classifies SDK failures where they arise: transient (retry the record) or permanent
//! (dead-letter it with the reason). Every adapter goes through [`classify`], which applies
//! the one rule of [`crate::error::classify_code`].

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::{Class, Fault, classify_code};
use crate::ports::PortError;

/// `op` and `what` (bucket and version; topic; queue) make the message say where it failed.
/// `what` never holds an item or object key: with `hash_keys_in_alerts` only the key's
/// label may reach a reason, and the stage that knows the key adds it.
pub fn classify<E>(op: &str, what: &str, e: &SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let at = if what.is_empty() {
        op.to_owned()
    } else {
        format!("{op} {what}")
    };
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = e.code().unwrap_or("");
            let message = e.message().unwrap_or("");
            let text = format!("{at}: HTTP {status} {code} {message}")
                .trim_end()
                .to_owned();
            PortError::of(classify_code(code, Fault::from_status(status)), text)
        }
        // The request could not be built: retrying cannot help.
        SdkError::ConstructionFailure(_) => {
            PortError::Permanent(format!("{at}: {}", DisplayErrorContext(e)))
        }
        // Timeouts, connection failures, unreadable responses: no verdict from the service.
        _ => PortError::of(
            Class::Transient,
            format!("{at}: {}", DisplayErrorContext(e)),
        ),
    }
}

/// HTTP status of a service error (`None` for timeouts and connection failures).
pub fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    }
}
