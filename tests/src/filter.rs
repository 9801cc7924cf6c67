//! TEST CODE: Lambda event filtering (`FilterCriteria` of an event source mapping), as the
//! harness's mappings apply it. A record is delivered when any filter's pattern matches it;
//! others are dropped without invoking the function (SQS deletes them, a stream moves past
//! them), as Lambda does. Patterns use Lambda's filter syntax: nested objects down to arrays
//! of matchers, a record matching when every key matches one matcher of its array.
//!
//! Matchers: literal strings, numbers, booleans and `null`; `prefix`, `suffix`,
//! `equals-ignore-case`, `anything-but` (a value, a list, or a `prefix`), `exists`, and
//! `numeric` ranges. An SQS record's `body` is matched as JSON when it parses as JSON.
//! Anything else (`$or`, `cidr`, `wildcard`) is refused when the mapping is built, so the
//! harness never runs a mapping differently from Lambda.

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// The filters of one mapping (none: every record is delivered).
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Value>);

impl Filters {
    /// `FilterCriteria.Filters[].Pattern` of a mapping's properties, checked.
    pub fn from_properties(logical: &str, properties: &Value) -> Result<Self> {
        let mut out = Vec::new();
        for (i, f) in properties["FilterCriteria"]["Filters"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("mapping {logical}: FilterCriteria.Filters[{i}].Pattern");
            let text = f["Pattern"]
                .as_str()
                .with_context(|| format!("{at} is not a string"))?;
            let pattern: Value =
                serde_json::from_str(text).with_context(|| format!("{at} is not JSON"))?;
            let Value::Object(o) = &pattern else {
                bail!("{at} is not a JSON object");
            };
            check(o).with_context(|| at.clone())?;
            out.push(pattern);
        }
        Ok(Self(out))
    }

    /// Whether the mapping delivers `record` (an SQS body is matched as JSON if it is).
    pub fn keeps(&self, record: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let mut view = record.clone();
        let mut json_body = false;
        if let Some(body) = record["body"].as_str()
            && let Ok(parsed) = serde_json::from_str::<Value>(body)
        {
            view["body"] = parsed;
            json_body = true;
        }
        self.0.iter().any(|p| {
            // A body pattern and the body must agree on the format (an object pattern for a
            // JSON body, matchers for a plain one): otherwise Lambda drops the message.
            let format_agrees = match (p.get("body"), record.get("body")) {
                (Some(pattern), Some(_)) => pattern.is_object() == json_body,
                _ => true,
            };
            format_agrees && object_matches(p, &view)
        })
    }
}

fn check(pattern: &Map<String, Value>) -> Result<()> {
    for (k, v) in pattern {
        if k.starts_with('$') {
            bail!("{k}: not supported by the harness");
        }
        match v {
            Value::Object(o) => check(o)?,
            Value::Array(matchers) => {
                for m in matchers {
                    if let Value::Object(o) = m {
                        let [(op, _)] = o.iter().collect::<Vec<_>>()[..] else {
                            bail!("{k}: a matcher object has exactly one operator");
                        };
                        if ![
                            "prefix",
                            "suffix",
                            "equals-ignore-case",
                            "anything-but",
                            "exists",
                            "numeric",
                        ]
                        .contains(&op.as_str())
                        {
                            bail!("{k}: operator {op} is not supported by the harness");
                        }
                    }
                }
            }
            other => bail!("{k}: {other} must be an object or an array of matchers"),
        }
    }
    Ok(())
}

fn object_matches(pattern: &Value, event: &Value) -> bool {
    let Value::Object(p) = pattern else {
        return false;
    };
    p.iter().all(|(k, sub)| {
        let field = event.get(k);
        match sub {
            Value::Object(_) => field.is_some_and(|f| object_matches(sub, f)),
            Value::Array(matchers) => matchers.iter().any(|m| leaf_matches(m, field)),
            _ => false,
        }
    })
}

fn leaf_matches(matcher: &Value, field: Option<&Value>) -> bool {
    if let Value::Object(o) = matcher
        && let Some(Value::Bool(want)) = o.get("exists")
    {
        // `exists` applies to leaf nodes only: an object is not a value that exists.
        return field.is_some_and(|f| !f.is_object()) == *want;
    }
    match field {
        // An array field matches when any element does.
        Some(Value::Array(items)) => items.iter().any(|i| one(matcher, i)),
        Some(v) => one(matcher, v),
        None => false,
    }
}

fn one(matcher: &Value, v: &Value) -> bool {
    let s = v.as_str();
    match matcher {
        Value::Object(o) => {
            if let Some(p) = o.get("prefix").and_then(Value::as_str) {
                return s.is_some_and(|s| s.starts_with(p));
            }
            if let Some(p) = o.get("suffix").and_then(Value::as_str) {
                return s.is_some_and(|s| s.ends_with(p));
            }
            if let Some(p) = o.get("equals-ignore-case").and_then(Value::as_str) {
                return s.is_some_and(|s| s.eq_ignore_ascii_case(p));
            }
            if let Some(but) = o.get("anything-but") {
                return match but {
                    Value::Array(list) => !list.iter().any(|l| one(l, v)),
                    Value::Object(_) => !one(but, v),
                    single => !one(single, v),
                };
            }
            if let Some(Value::Array(ops)) = o.get("numeric") {
                let Some(n) = v.as_f64() else {
                    return false;
                };
                return ops.chunks(2).all(|c| {
                    match (c[0].as_str(), c.get(1).and_then(Value::as_f64)) {
                        (Some("="), Some(x)) => n == x,
                        (Some("<"), Some(x)) => n < x,
                        (Some("<="), Some(x)) => n <= x,
                        (Some(">"), Some(x)) => n > x,
                        (Some(">="), Some(x)) => n >= x,
                        _ => false,
                    }
                });
            }
            false
        }
        Value::Number(n) => v.as_f64().is_some_and(|x| Some(x) == n.as_f64()),
        literal => literal == v,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filters(patterns: &[Value]) -> Result<Filters> {
        let f: Vec<Value> = patterns
            .iter()
            .map(|p| json!({"Pattern": p.to_string()}))
            .collect();
        Filters::from_properties("M", &json!({"FilterCriteria": {"Filters": f}}))
    }

    #[test]
    fn no_filters_keep_everything() {
        assert!(
            Filters::from_properties("M", &json!({}))
                .unwrap()
                .keeps(&json!({"x": 1}))
        );
    }

    #[test]
    fn stream_records_match_on_nested_fields() {
        let f = filters(&[json!({"eventName": ["INSERT", "MODIFY"],
            "dynamodb": {"NewImage": {"email": {"S": [{"prefix": "a"}]}}}})])
        .unwrap();
        let rec = |name: &str, email: &str| json!({"eventName": name, "dynamodb": {"NewImage": {"email": {"S": email}}}});
        assert!(f.keeps(&rec("MODIFY", "anna@example.com")));
        assert!(!f.keeps(&rec("REMOVE", "anna@example.com")));
        assert!(!f.keeps(&rec("INSERT", "bob@example.com")));
        assert!(!f.keeps(&json!({"eventName": "INSERT"})));
    }

    #[test]
    fn sqs_bodies_match_as_json_and_any_filter_suffices() {
        let f = filters(&[
            json!({"body": {"kind": ["flush"]}}),
            json!({"body": {"size": [{"numeric": [">", 10, "<=", 20]}]}}),
        ])
        .unwrap();
        assert!(f.keeps(&json!({"body": "{\"kind\":\"flush\"}"})));
        assert!(f.keeps(&json!({"body": "{\"size\":15}"})));
        assert!(!f.keeps(&json!({"body": "{\"size\":25}"})));
        assert!(!f.keeps(&json!({"body": "not json"})));
        // The body's format must match the pattern's.
        let plain = filters(&[json!({"body": [{"anything-but": "x"}]})]).unwrap();
        assert!(plain.keeps(&json!({"body": "plain text"})));
        assert!(!plain.keeps(&json!({"body": "{\"a\":1}"})));
        let json_pattern = filters(&[json!({"body": {"a": [{"exists": false}]}})]).unwrap();
        assert!(!json_pattern.keeps(&json!({"body": "plain text"})));
    }

    #[test]
    fn operators() {
        let f = filters(&[
            json!({"a": [{"anything-but": ["x", "y"]}], "b": [{"exists": false}],
            "c": [{"suffix": ".jpg"}, {"equals-ignore-case": "README"}]}),
        ])
        .unwrap();
        assert!(f.keeps(&json!({"a": "z", "c": "p.jpg"})));
        assert!(f.keeps(&json!({"a": "z", "c": "readme"})));
        assert!(!f.keeps(&json!({"a": "x", "c": "p.jpg"})));
        assert!(!f.keeps(&json!({"a": "z", "b": 1, "c": "p.jpg"})));
        assert!(
            f.keeps(&json!({"a": ["x", "q"], "c": "p.jpg"})),
            "any element of an array"
        );
        let on_object = filters(&[json!({"dynamodb": {"NewImage": [{"exists": true}]}})]).unwrap();
        assert!(
            !on_object.keeps(&json!({"dynamodb": {"NewImage": {"a": {"S": "x"}}}})),
            "exists matches leaf nodes only"
        );
    }

    #[test]
    fn unsupported_or_malformed_patterns_refuse_the_mapping() {
        for (p, want) in [
            (json!({"$or": [{"a": ["b"]}]}), "$or"),
            (json!({"a": [{"wildcard": "*.x"}]}), "wildcard"),
            (json!({"a": "b"}), "must be an object or an array"),
        ] {
            let e = format!("{:#}", filters(&[p]).unwrap_err());
            assert!(
                e.contains("mapping M: FilterCriteria.Filters[0].Pattern") && e.contains(want),
                "{e}"
            );
        }
        let e = Filters::from_properties(
            "M",
            &json!({"FilterCriteria": {"Filters": [{"Pattern": "{"}]}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not JSON"), "{e}");
    }
}
