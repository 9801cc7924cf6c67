//! The invalidation message: what the processors publish and the cache-invalidator reads.
//!
//! Body (JSON): `{"v":1,"source":"users","origin_region":"us-east-1","replicated":true,
//! "changed_at_ms":1700000000000,"keys":["user:1", …]}`. The same facts travel as SNS
//! String message attributes so that subscriptions can filter on them.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

pub const VERSION: u32 = 1;

/// SNS message attribute names (String type: moto breaks on Binary attributes, and SNS
/// filter policies match strings).
pub const ATTR_ORIGIN_REGION: &str = "origin_region";
pub const ATTR_SOURCE: &str = "source";
pub const ATTR_REPLICATED: &str = "replicated";
pub const ATTR_CHANGED_AT: &str = "changed_at_ms";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub v: u32,
    pub source: String,
    pub origin_region: String,
    pub replicated: bool,
    /// The oldest change time among the keys, epoch ms: the invalidation age is measured from it.
    pub changed_at_ms: u64,
    pub keys: Vec<String>,
}

/// The same message, borrowing its strings: what the publisher serialises.
#[derive(Debug, Serialize)]
pub struct InvalidationRef<'a> {
    pub v: u32,
    pub source: &'a str,
    pub origin_region: &'a str,
    pub replicated: bool,
    pub changed_at_ms: u64,
    pub keys: Vec<&'a str>,
}

impl Invalidation {
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let m: Invalidation = serde_json::from_str(body)
            .map_err(|e| DecodeError::malformed("invalidation message", &e))?;
        if m.v != VERSION {
            return Err(DecodeError::Unsupported(format!(
                "invalidation message version {} (expected {VERSION})",
                m.v
            )));
        }
        Ok(m)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn other_versions_and_other_documents_are_rejected_without_their_values() {
        let v2 = r#"{"v":2,"source":"users","origin_region":"us-east-1","replicated":true,"changed_at_ms":1,"keys":["user:plain@example.com"]}"#;
        let e = Invalidation::decode(v2).unwrap_err().to_string();
        assert_eq!(e, "invalidation message version 2 (expected 1)");
        let e = Invalidation::decode(r#"{"v":1,"keys":"plain@example.com"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("malformed invalidation message"), "{e}");
        assert!(!e.contains("plain@example.com"), "{e}");
    }
}
