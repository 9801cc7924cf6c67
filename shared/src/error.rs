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

/// Service error codes that say the request can never succeed as made.
pub fn is_permanent_code(code: &str) -> bool {
    matches!(
        code,
        "InvalidParameter"
            | "InvalidParameterValue"
            | "InvalidParameterException"
            | "ValidationError"
            | "ValidationException"
            | "InvalidMessageContents"
            | "MessageTooLong"
            | "EntityTooLarge"
            | "KeyTooLongError"
            | "InvalidArgument"
    )
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
    fn sdk_codes_that_mean_a_bad_request_are_permanent() {
        assert!(is_permanent_code("InvalidParameter"));
        assert!(!is_permanent_code("Throttling"));
        assert!(!is_permanent_code("InternalError"));
    }
}
