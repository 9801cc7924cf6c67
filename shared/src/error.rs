//! Typed failures, each classed where it arises as transient or permanent.
//!
//! * **Transient** (throttling, a timeout, an outage): the record is reported as a batch
//!   item failure and Lambda delivers it again.
//! * **Permanent** (input that can never be interpreted, a key too large for any message, a
//!   source missing from the configuration): the record is dead-lettered now, with the
//!   reason. Retrying it would only stall the shard until Lambda gives up and drops it.
//!
//! Reasons name attribute paths, types and keys, never attribute values: they reach logs,
//! metrics-adjacent alerts and dead-letter entries.

use std::fmt;

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retry the record (batch item failure).
    Transient,
    /// Dead-letter the record with its reason; never retry it.
    Permanent,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Transient => "transient",
            Class::Permanent => "permanent",
        })
    }
}

/// Why a record cannot be interpreted. Always permanent: the same bytes decode the same
/// way however often they are retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON shape expected (the parser's message, values removed).
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A required field is absent or empty.
    #[error("{what} has no {field}")]
    Missing {
        what: &'static str,
        field: &'static str,
    },
    /// An attribute value that breaks the DynamoDB wire format (path and type, no value).
    #[error("attribute `{path}`: {problem}")]
    Value { path: String, problem: String },
    /// Well-formed, but not something Tidemark handles (an unknown event, another source).
    #[error("{0}")]
    Unsupported(String),
    /// The record needs configuration that does not exist (a table or bucket not in
    /// `tidemark.toml`): permanent until a deploy, so it is dead-lettered for replay.
    #[error("{0}")]
    Unconfigured(String),
}

impl DecodeError {
    pub fn class(&self) -> Class {
        Class::Permanent
    }

    /// A parser error, with any value it quotes removed.
    pub fn malformed(what: &'static str, e: &serde_json::Error) -> Self {
        DecodeError::Malformed {
            what,
            detail: redact_serde(e),
        }
    }
}

/// A failed I/O call through a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl PortError {
    pub fn class(&self) -> Class {
        match self {
            PortError::Transient(_) => Class::Transient,
            PortError::Permanent(_) => Class::Permanent,
        }
    }

    /// The same class, with what was being done in front of the reason.
    pub fn context(&self, what: &str) -> PortError {
        match self {
            PortError::Transient(m) => PortError::Transient(format!("{what}: {m}")),
            PortError::Permanent(m) => PortError::Permanent(format!("{what}: {m}")),
        }
    }
}

/// Whom a failed AWS call blames: the HTTP status of the reply (4xx: the request, 5xx: the
/// service), or, for one entry of a batch reply (SNS PublishBatch), its `SenderFault` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request as made (a 3xx or 4xx other than 408 and 429; `SenderFault: true`).
    Request,
    /// The service, or no one knows (5xx, 408, 429, no reply; `SenderFault: false`).
    Service,
}

impl Fault {
    pub fn from_status(status: u16) -> Self {
        match status {
            // Request Timeout and Too Many Requests: try again later, by definition.
            408 | 429 => Fault::Service,
            300..=499 => Fault::Request,
            _ => Fault::Service,
        }
    }

    pub fn from_sender_fault(sender_fault: bool) -> Self {
        if sender_fault {
            Fault::Request
        } else {
            Fault::Service
        }
    }
}

/// Codes that say "try again" whatever the status they come with (several are 4xx):
/// throttling, timeouts, a clock skew or expired credentials (the SDK corrects its clock and
/// refreshes credentials on the next attempt), a conflicting operation still in progress,
/// and server errors reported as codes.
const TRANSIENT_CODES: &[&str] = &[
    // Throttling (the AWS SDKs' own list, plus KMS throttling as SNS and SQS report it).
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException",
    "KMSThrottling",
    "KMSThrottlingException",
    "KMS.ThrottlingException",
    // Timeouts and work still in progress.
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "TransactionInProgressException",
    "TransactionConflictException",
    "OperationAborted",
    "ConditionalRequestConflict",
    // Clock and credentials.
    "RequestTimeTooSkewed",
    "RequestExpired",
    "RequestInTheFuture",
    "ExpiredToken",
    "ExpiredTokenException",
    "TokenRefreshRequired",
    // Server errors.
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServiceError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// Validation codes: the request can never succeed as made, whatever fault is reported.
const PERMANENT_CODES: &[&str] = &[
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidParameterException",
    "ValidationError",
    "ValidationException",
    "InvalidMessageContents",
    "MessageTooLong",
    "EntityTooLarge",
    "KeyTooLongError",
    "InvalidArgument",
];

/// The one classification of a failed AWS call, for every adapter. The rule:
///
/// 1. a code in [`TRANSIENT_CODES`] is transient, even with a 4xx status;
/// 2. a validation code ([`PERMANENT_CODES`]) is permanent;
/// 3. any other code follows the fault: the request's (4xx: access denied, a missing
///    bucket or topic, a disabled KMS key) is permanent, since the same call fails the
///    same way however often it is retried; the service's, or an unknown one (5xx, 408,
///    429, no reply), is transient.
///
/// Unknown server errors are transient on purpose: a wrong "transient" costs bounded
/// retries, a wrong "permanent" dead-letters a record that a retry would have processed.
pub fn classify_code(code: &str, fault: Fault) -> Class {
    if TRANSIENT_CODES.contains(&code) {
        Class::Transient
    } else if PERMANENT_CODES.contains(&code) {
        Class::Permanent
    } else {
        match fault {
            Fault::Request => Class::Permanent,
            Fault::Service => Class::Transient,
        }
    }
}

impl PortError {
    /// `text` as a failure of class `class`.
    pub fn of(class: Class, text: String) -> PortError {
        match class {
            Class::Transient => PortError::Transient(text),
            Class::Permanent => PortError::Permanent(text),
        }
    }
}

/// Why a stage could not finish a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// A port call failed; its class decides.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The record can never be processed as configured (a key above the size limit, a
    /// stream view type that lacks the images the templates need): permanent.
    #[error("{0}")]
    Invalid(String),
}

impl StageError {
    pub fn class(&self) -> Class {
        match self {
            StageError::Port(p) => p.class(),
            StageError::Invalid(_) => Class::Permanent,
        }
    }
}

/// A serde_json error as text without any value it quotes. serde's `invalid type` and
/// `invalid value` messages print the offending value (`invalid type: string
/// "plain@example.com", expected u64`); they become `invalid type: string, expected u64`.
/// Field and variant names stay (they are names, not contents); the position is kept.
pub fn redact_serde(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let (message, at) = match text.strip_suffix(&position) {
        Some(m) if e.line() > 0 => (m, position.as_str()),
        _ => (text.as_str(), ""),
    };
    format!("{}{at}", redact_message(message))
}

/// Removes quoted values from a serde message (see [`redact_serde`]).
pub fn redact_message(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // The expectation comes from code, the unexpected part from the input: keep
            // the first and only the kind of the second.
            let (found, expected) = match rest.rfind(", expected ") {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let kind = UNEXPECTED_KINDS
                .iter()
                .find(|k| found.starts_with(*k))
                .copied()
                .unwrap_or("value");
            return format!("{prefix}{kind}{expected}");
        }
    }
    // Messages our own visitors produce never quote values; anything else from serde that
    // quotes with backticks (`unknown variant `x``) names a variant or field.
    message.to_owned()
}

/// How serde's `Unexpected` prints each kind, longest first where one prefixes another.
const UNEXPECTED_KINDS: &[&str] = &[
    "string",
    "integer",
    "floating point",
    "boolean",
    "character",
    "byte array",
    "unit value",
    "unit variant",
    "newtype struct",
    "newtype variant",
    "tuple variant",
    "struct variant",
    "Option value",
    "null",
    "map",
    "sequence",
    "enum",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_values_and_keep_the_position() {
        let e = serde_json::from_str::<u64>(r#""plain@example.com""#).unwrap_err();
        assert!(e.to_string().contains("plain@example.com"), "premise: {e}");
        let r = redact_serde(&e);
        assert!(!r.contains("plain@example.com"), "{r}");
        assert!(r.starts_with("invalid type: string, expected u64"), "{r}");
        assert!(r.ends_with("at line 1 column 19"), "{r}");

        let e = serde_json::from_str::<bool>("12345").unwrap_err();
        let r = redact_serde(&e);
        assert!(!r.contains("12345"), "{r}");
        assert!(
            r.starts_with("invalid type: integer, expected a boolean"),
            "{r}"
        );
    }

    #[test]
    fn a_value_that_imitates_the_expectation_is_still_removed() {
        let m = redact_message(r#"invalid type: string "a, expected b", expected u64"#);
        assert_eq!(m, "invalid type: string, expected u64");
    }

    #[test]
    fn aws_error_codes_are_classed_by_one_table() {
        use Class::{Permanent as P, Transient as T};
        // (code, the fault its status or SenderFault reports, expected class)
        let cases: &[(&str, Fault, Class)] = &[
            // Throttling, whatever the status.
            ("Throttling", Fault::from_status(400), T),
            ("ThrottlingException", Fault::from_status(400), T),
            ("RequestLimitExceeded", Fault::from_status(400), T),
            (
                "ProvisionedThroughputExceededException",
                Fault::from_status(400),
                T,
            ),
            ("SlowDown", Fault::from_status(503), T),
            ("TooManyRequestsException", Fault::from_status(429), T),
            // SNS reports KMS throttling of an encrypted topic as a sender fault.
            ("KMSThrottling", Fault::from_sender_fault(true), T),
            ("KMSThrottling", Fault::from_status(400), T),
            ("KMS.ThrottlingException", Fault::from_status(400), T),
            // S3: a conflicting operation in progress; clock skew; expired credentials.
            ("OperationAborted", Fault::from_status(409), T),
            ("RequestTimeTooSkewed", Fault::from_status(403), T),
            ("ExpiredToken", Fault::from_status(400), T),
            ("ExpiredTokenException", Fault::from_status(403), T),
            ("RequestTimeout", Fault::from_status(400), T),
            // Server errors.
            ("InternalError", Fault::from_status(500), T),
            ("InternalError", Fault::from_sender_fault(false), T),
            ("ServiceUnavailable", Fault::from_status(503), T),
            ("ServiceUnavailable", Fault::from_status(403), T),
            // Unknown codes follow the fault: the service's is transient...
            ("SomethingNew", Fault::from_status(500), T),
            ("SomethingNew", Fault::from_status(502), T),
            ("", Fault::from_status(504), T),
            ("", Fault::from_status(408), T),
            ("", Fault::from_status(429), T),
            ("SomethingNew", Fault::from_sender_fault(false), T),
            // ...the request's is permanent.
            ("SomethingNew", Fault::from_status(400), P),
            ("", Fault::from_status(400), P),
            ("SomethingNew", Fault::from_sender_fault(true), P),
            ("AccessDenied", Fault::from_status(403), P),
            ("AuthorizationError", Fault::from_status(403), P),
            ("NoSuchBucket", Fault::from_status(404), P),
            ("NotFound", Fault::from_status(404), P),
            ("PermanentRedirect", Fault::from_status(301), P),
            // A disabled or missing KMS key needs an operator: dead-letter for replay.
            ("KMSDisabled", Fault::from_status(400), P),
            ("KMSNotFound", Fault::from_status(400), P),
            ("KMSAccessDenied", Fault::from_status(400), P),
            ("KMSInvalidState", Fault::from_status(400), P),
            // Validation codes, even where the fault is the service's.
            ("InvalidParameter", Fault::from_status(400), P),
            ("InvalidParameter", Fault::from_sender_fault(false), P),
            ("ValidationException", Fault::from_status(400), P),
            ("MessageTooLong", Fault::from_status(400), P),
            ("EntityTooLarge", Fault::from_status(400), P),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(code, fault, class)| classify_code(code, *fault) != *class)
            .map(|(code, fault, class)| {
                format!(
                    "{code:?} ({fault:?}): expected {class}, found {}",
                    classify_code(code, *fault)
                )
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
