//! SQS records as Lambda delivers them, decoded one at a time, and the SNS envelope.

use std::borrow::Cow;

use serde::Deserialize;

use crate::ddb::Str;
use crate::error::DecodeError;

const RECORD: &str = "SQS record";

/// One SQS message from a Lambda SQS batch.
#[derive(Debug, Clone)]
pub struct SqsRecord<'a> {
    pub message_id: Cow<'a, str>,
    pub body: Cow<'a, str>,
    /// `attributes.SentTimestamp` in epoch milliseconds, 0 when absent.
    pub sent_ms: u64,
    pub receive_count: u32,
    /// Received from the delayed second delete's queue (`eventSourceARN` names it).
    pub second_delete: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "messageId", borrow)]
    message_id: Option<Str<'a>>,
    #[serde(borrow)]
    body: Option<Str<'a>>,
    #[serde(default, borrow)]
    attributes: Option<WireAttrs<'a>>,
    #[serde(rename = "eventSourceARN", default, borrow)]
    source_arn: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct WireAttrs<'a> {
    #[serde(rename = "SentTimestamp", borrow)]
    sent: Option<Str<'a>>,
    #[serde(rename = "ApproximateReceiveCount", borrow)]
    receive_count: Option<Str<'a>>,
}

impl<'a> SqsRecord<'a> {
    pub fn decode(raw: &'a str) -> Result<Self, DecodeError> {
        let w: Wire<'a> =
            serde_json::from_str(raw).map_err(|e| DecodeError::malformed(RECORD, &e))?;
        let message_id = w
            .message_id
            .ok_or(DecodeError::Missing {
                what: RECORD,
                field: "messageId",
            })?
            .0;
        if message_id.is_empty() {
            return Err(DecodeError::Missing {
                what: RECORD,
                field: "messageId",
            });
        }
        let body = w
            .body
            .ok_or(DecodeError::Missing {
                what: RECORD,
                field: "body",
            })?
            .0;
        let (sent_ms, receive_count) = match &w.attributes {
            Some(a) => (
                a.sent.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
                a.receive_count
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1),
            ),
            None => (0, 1),
        };
        let second_delete = w.source_arn.as_deref().is_some_and(|arn| {
            arn.rsplit(':')
                .next()
                .is_some_and(|queue| queue.starts_with(crate::wiring::SECOND_DELETE_QUEUE_PREFIX))
        });
        Ok(SqsRecord {
            message_id,
            body,
            sent_ms,
            receive_count,
            second_delete,
        })
    }

    /// Best-effort message id of a record that failed to decode.
    pub fn salvage_id(raw: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct P {
            #[serde(rename = "messageId")]
            message_id: Option<String>,
        }
        serde_json::from_str::<P>(raw)
            .ok()?
            .message_id
            .filter(|m| !m.is_empty())
    }
}

/// The body of an SQS message subscribed to an SNS topic without raw delivery.
#[derive(Deserialize)]
struct SnsEnvelope<'a> {
    #[serde(rename = "Type", borrow)]
    kind: Str<'a>,
    #[serde(rename = "Message", borrow)]
    message: Str<'a>,
}

/// Returns the SNS `Message` when `body` is an SNS notification envelope, else `body` itself
/// (raw message delivery).
pub fn unwrap_sns(body: &str) -> Cow<'_, str> {
    if body.contains("\"Type\"")
        && let Ok(env) = serde_json::from_str::<SnsEnvelope<'_>>(body)
        && env.kind.0 == "Notification"
    {
        return env.message.0;
    }
    Cow::Borrowed(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decodes_records_and_unwraps_sns() {
        let raw = r#"{"messageId":"m1","receiptHandle":"h","body":"{\"Type\":\"Notification\",\"MessageId\":\"x\",\"Message\":\"{\\\"v\\\":1}\"}",
          "attributes":{"SentTimestamp":"1700000000123","ApproximateReceiveCount":"2"},"eventSource":"aws:sqs"}"#;
        let r = SqsRecord::decode(raw).unwrap();
        assert_eq!(r.message_id, "m1");
        assert_eq!(r.sent_ms, 1_700_000_000_123);
        assert_eq!(r.receive_count, 2);
        assert_eq!(unwrap_sns(&r.body), r#"{"v":1}"#);
        assert_eq!(unwrap_sns(r#"{"v":1}"#), r#"{"v":1}"#);
        assert!(SqsRecord::decode(r#"{"body":"x"}"#).is_err());
    }
}
