//! TEST CODE: an alarm evaluator. moto neither evaluates CloudWatch alarms nor reads EMF, so
//! this module applies the deployed template's alarm definitions (intrinsics resolved by the
//! rehearsal) to the EMF documents the functions printed, the way CloudWatch would:
//!
//! - **Metric.** A single-metric alarm matches samples of its namespace and metric name whose
//!   dimension set equals the alarm's `Dimensions` exactly (names and values: CloudWatch
//!   identifies a metric by all of its dimensions). A Metrics Insights alarm
//!   (`SELECT FUNC(Metric) FROM SCHEMA("ns", D1, D2) [WHERE D = 'v' AND …]`) matches every
//!   series with exactly the dimensions `D1, D2` and aggregates them.
//! - **Statistic** per period: `Sum`, `Average`, `Maximum`, `Minimum`, `SampleCount`, or an
//!   `ExtendedStatistic` `pNN` (nearest rank over every sample; EMF value arrays keep each
//!   sample). Periods are aligned to the epoch, like CloudWatch's.
//! - **Evaluation.** The last `EvaluationPeriods` periods up to and including the one holding
//!   the evaluation time; ALARM when at least `DatapointsToAlarm` (default: all) of them
//!   breach `Threshold` by `ComparisonOperator`.
//! - **Missing data** (`TreatMissingData`): `breaching` and `notBreaching` count a missing
//!   period as such; `missing` and `ignore` evaluate the periods that have data, and with
//!   none at all `missing` answers INSUFFICIENT_DATA while `ignore` keeps the previous state
//!   (INSUFFICIENT_DATA for a new alarm, as CloudWatch starts one).
//!
//! **Where it is simpler than CloudWatch.** It looks at exactly the last `EvaluationPeriods`
//! periods. When the most recent periods lack data, CloudWatch looks further back (its
//! evaluation range) and fills in only as many missing periods as it needs, and with
//! `missing` it can go to ALARM before M datapoints exist (its "premature alarm" rule); so
//! with gaps in the data the two can answer differently. The tests therefore assert with
//! data in every period they evaluate, or on [`Alarm::transitions`] over the run.
//! Percentiles are nearest-rank over every sample (CloudWatch approximates them).
//!
//! Alarms on AWS's own namespaces (`AWS/Lambda`, `AWS/SQS`, `AWS/S3`) are not fed by EMF:
//! [`Alarm::is_emf`] tells them apart, and evaluating one is an error.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One value of one metric, as CloudWatch stores it after extracting an EMF document.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub namespace: String,
    pub metric: String,
    pub dimensions: BTreeMap<String, String>,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// Every sample of `docs` (EMF documents): each metric under each dimension set its
/// directive declares, one sample per value of a value array. A document that is not valid
/// EMF is an error naming what is wrong (CloudWatch would drop it).
pub fn samples(docs: &[Value]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let aws = &doc["_aws"];
        let ts = aws["Timestamp"]
            .as_i64()
            .with_context(|| format!("EMF document {i}: _aws.Timestamp is not an integer"))?;
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .with_context(|| format!("EMF document {i}: _aws.CloudWatchMetrics is not an array"))?;
        for d in directives {
            let ns = d["Namespace"]
                .as_str()
                .with_context(|| format!("EMF document {i}: a directive has no Namespace"))?;
            let sets = d["Dimensions"].as_array().cloned().unwrap_or_default();
            let sets: Vec<Vec<String>> = if sets.is_empty() {
                vec![Vec::new()]
            } else {
                sets.iter()
                    .map(|s| {
                        s.as_array()
                            .into_iter()
                            .flatten()
                            .map(|n| n.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                            .with_context(|| {
                                format!("EMF document {i}: a dimension set is not a list of names")
                            })
                    })
                    .collect::<Result<_>>()?
            };
            for m in d["Metrics"].as_array().into_iter().flatten() {
                let name = m["Name"]
                    .as_str()
                    .with_context(|| format!("EMF document {i}: a metric has no Name"))?;
                let values: Vec<f64> = match &doc[name] {
                    Value::Number(n) => n.as_f64().into_iter().collect(),
                    // CloudWatch rejects a document with a non-numeric value, or with more
                    // than 100 values of one metric.
                    Value::Array(a) if a.len() <= 100 => a
                        .iter()
                        .map(|v| {
                            v.as_f64().with_context(|| {
                                format!("EMF document {i}: {name} holds {v}, not a number")
                            })
                        })
                        .collect::<Result<_>>()?,
                    Value::Array(a) => {
                        bail!("EMF document {i}: {name} has {} values, above 100", a.len())
                    }
                    other => bail!("EMF document {i}: {name} is {other}, not a number or array"),
                };
                for set in &sets {
                    let dimensions = set
                        .iter()
                        .map(|n| {
                            let v = doc[n].as_str().with_context(|| {
                                format!(
                                    "EMF document {i}: dimension {n} of {name} has no string value"
                                )
                            })?;
                            Ok((n.clone(), v.to_owned()))
                        })
                        .collect::<Result<BTreeMap<_, _>>>()?;
                    for &value in &values {
                        out.push(Sample {
                            namespace: ns.to_owned(),
                            metric: name.to_owned(),
                            dimensions: dimensions.clone(),
                            timestamp_ms: ts,
                            value,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// An alarm's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    Alarm,
    InsufficientData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stat {
    Sum,
    Average,
    Maximum,
    Minimum,
    SampleCount,
    /// `pNN`: the percentile in 0..=100.
    Percentile(f64),
}

impl Stat {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "Sum" | "SUM" => Self::Sum,
            "Average" | "AVG" => Self::Average,
            "Maximum" | "MAX" => Self::Maximum,
            "Minimum" | "MIN" => Self::Minimum,
            "SampleCount" | "COUNT" => Self::SampleCount,
            p if p.starts_with('p') => {
                let n: f64 = p[1..]
                    .parse()
                    .with_context(|| format!("statistic {p}: not pNN"))?;
                if !(0.0..=100.0).contains(&n) {
                    bail!("statistic {p}: percentile outside 0..100");
                }
                Self::Percentile(n)
            }
            other => bail!("statistic {other} is not one CloudWatch alarms accept"),
        })
    }

    /// The statistic of `values` (not empty).
    pub fn of(&self, values: &[f64]) -> f64 {
        match self {
            Self::Sum => values.iter().sum(),
            Self::Average => values.iter().sum::<f64>() / values.len() as f64,
            Self::Maximum => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Self::Minimum => values.iter().copied().fold(f64::INFINITY, f64::min),
            Self::SampleCount => values.len() as f64,
            Self::Percentile(p) => {
                let mut v = values.to_vec();
                v.sort_by(f64::total_cmp);
                // Nearest rank.
                let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
                v[rank.min(v.len()) - 1]
            }
        }
    }
}

/// Which series an alarm reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `Namespace` + `MetricName` + exactly `Dimensions`.
    Metric {
        namespace: String,
        metric: String,
        dimensions: BTreeMap<String, String>,
    },
    /// Metrics Insights: every series of `metric` with exactly the `schema` dimensions, and
    /// the `filters` (`WHERE D = 'v'`) values.
    Insights {
        namespace: String,
        metric: String,
        schema: BTreeSet<String>,
        filters: BTreeMap<String, String>,
    },
}

impl Query {
    pub fn namespace(&self) -> &str {
        match self {
            Self::Metric { namespace, .. } | Self::Insights { namespace, .. } => namespace,
        }
    }

    pub fn metric(&self) -> &str {
        match self {
            Self::Metric { metric, .. } | Self::Insights { metric, .. } => metric,
        }
    }

    /// The dimension names the query's series carry.
    pub fn dimension_names(&self) -> BTreeSet<String> {
        match self {
            Self::Metric { dimensions, .. } => dimensions.keys().cloned().collect(),
            Self::Insights { schema, .. } => schema.clone(),
        }
    }

    fn matches(&self, s: &Sample) -> bool {
        if s.namespace != self.namespace() || s.metric != self.metric() {
            return false;
        }
        match self {
            Self::Metric { dimensions, .. } => &s.dimensions == dimensions,
            Self::Insights {
                schema, filters, ..
            } => {
                s.dimensions.len() == schema.len()
                    && s.dimensions.keys().all(|k| schema.contains(k))
                    && filters.iter().all(|(k, v)| s.dimensions.get(k) == Some(v))
            }
        }
    }
}

/// `SELECT FUNC(Metric) FROM SCHEMA("ns", D1, …) [WHERE D = 'v' [AND …]]`, or `FROM "ns"`.
fn parse_insights(sql: &str) -> Result<(Stat, Query)> {
    let err = || {
        format!(
            "Metrics Insights query `{sql}`: expected SELECT FUNC(Metric) FROM SCHEMA(\"namespace\", Dimension, …) [WHERE Dimension = 'value' [AND …]]"
        )
    };
    // Keywords are case-insensitive; names and values are not.
    let find = |text: &str, kw: &str| text.to_ascii_uppercase().find(kw);
    let sql_t = sql.trim();
    let rest = (find(sql_t, "SELECT ") == Some(0))
        .then(|| &sql_t[7..])
        .with_context(err)?;
    let (func, rest) = rest.split_once('(').with_context(err)?;
    let (metric, rest) = rest.split_once(')').with_context(err)?;
    let stat = match func.trim().to_ascii_uppercase().as_str() {
        "SUM" => Stat::Sum,
        "AVG" => Stat::Average,
        "MAX" => Stat::Maximum,
        "MIN" => Stat::Minimum,
        "COUNT" => Stat::SampleCount,
        other => bail!("{}: {other} is not one of AVG, COUNT, MAX, MIN, SUM", err()),
    };
    let rest = rest.trim_start();
    let rest = (find(rest, "FROM ") == Some(0))
        .then(|| rest[5..].trim())
        .with_context(err)?;
    if find(rest, " GROUP BY").is_some() || find(rest, " ORDER BY").is_some() {
        bail!("{}: GROUP BY and ORDER BY are not evaluated", err());
    }
    let (from, where_) = match find(rest, " WHERE ") {
        Some(i) => (&rest[..i], Some(&rest[i + 7..])),
        None => (rest, None),
    };
    let (namespace, schema) = if let Some(inner) = (find(from, "SCHEMA(") == Some(0))
        .then(|| &from[7..])
        .and_then(|s| s.strip_suffix(')'))
    {
        let mut parts = inner.split(',').map(str::trim);
        let ns = parts.next().with_context(err)?;
        let ns = ns.trim_matches('"').to_owned();
        (ns, parts.map(|p| p.trim_matches('"').to_owned()).collect())
    } else {
        bail!(
            "{}: only SCHEMA(…) sources are evaluated (a bare namespace matches any dimension set)",
            err()
        );
    };
    let mut filters = BTreeMap::new();
    if let Some(w) = where_ {
        let upper = w.to_ascii_uppercase();
        let mut conds = Vec::new();
        let mut start = 0;
        while let Some(i) = upper[start..].find(" AND ") {
            conds.push(&w[start..start + i]);
            start += i + 5;
        }
        conds.push(&w[start..]);
        for cond in conds {
            let upper = cond.to_ascii_uppercase();
            if ["!=", "<", ">", " LIKE ", " IN "]
                .iter()
                .any(|op| upper.contains(op))
            {
                bail!(
                    "{}: only `Dimension = 'value'` conditions are evaluated",
                    err()
                );
            }
            let (k, v) = cond.split_once('=').with_context(err)?;
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .with_context(err)?;
            filters.insert(k.trim().trim_matches('"').to_owned(), v.to_owned());
        }
    }
    Ok((
        stat,
        Query::Insights {
            namespace,
            metric: metric.trim().to_owned(),
            schema,
            filters,
        },
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Greater => value > threshold,
            Self::GreaterOrEqual => value >= threshold,
            Self::Less => value < threshold,
            Self::LessOrEqual => value <= threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingData {
    Missing,
    Ignore,
    Breaching,
    NotBreaching,
}

/// One alarm of the template, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Alarm {
    pub logical: String,
    pub name: String,
    pub query: Query,
    pub stat: Stat,
    pub period_s: u64,
    pub evaluation_periods: usize,
    pub datapoints_to_alarm: usize,
    pub threshold: f64,
    pub comparison: Comparison,
    pub missing: MissingData,
}

/// One period of an evaluation: its start and its statistic (None: no data).
#[derive(Debug, Clone, PartialEq)]
pub struct Datapoint {
    pub start_ms: i64,
    pub value: Option<f64>,
}

/// An answer with the datapoints it was drawn from (for failure messages).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub state: State,
    pub datapoints: Vec<Datapoint>,
}

fn number(v: &Value, what: &str) -> Result<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .with_context(|| format!("{what} is {v}, not a number"))
}

impl Alarm {
    /// Reads `properties` of an `AWS::CloudWatch::Alarm` (intrinsics resolved).
    pub fn from_properties(logical: &str, p: &Value) -> Result<Self> {
        let at = |f: &str| format!("alarm {logical}: {f}");
        let (query, stat, period_s) = if let Some(metrics) = p["Metrics"].as_array() {
            let returned: Vec<&Value> = metrics
                .iter()
                .filter(|m| m["ReturnData"].as_bool().unwrap_or(true))
                .collect();
            let [m] = returned.as_slice() else {
                bail!("{}", at("Metrics must return exactly one series"));
            };
            let sql = m["Expression"].as_str().with_context(|| {
                at("Metrics[].Expression (only Metrics Insights queries are evaluated)")
            })?;
            let (stat, query) = parse_insights(sql).with_context(|| at("Metrics[].Expression"))?;
            let period = number(&m["Period"], &at("Metrics[].Period"))? as u64;
            (query, stat, period)
        } else {
            let stat = match (p["Statistic"].as_str(), p["ExtendedStatistic"].as_str()) {
                (Some(s), None) | (None, Some(s)) => {
                    Stat::parse(s).with_context(|| at("Statistic"))?
                }
                _ => bail!("{}", at("exactly one of Statistic and ExtendedStatistic")),
            };
            let dimensions = p["Dimensions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    Ok((
                        d["Name"]
                            .as_str()
                            .with_context(|| at("Dimensions[].Name"))?
                            .to_owned(),
                        d["Value"]
                            .as_str()
                            .with_context(|| at("Dimensions[].Value"))?
                            .to_owned(),
                    ))
                })
                .collect::<Result<BTreeMap<_, _>>>()?;
            let query = Query::Metric {
                namespace: p["Namespace"]
                    .as_str()
                    .with_context(|| at("Namespace"))?
                    .to_owned(),
                metric: p["MetricName"]
                    .as_str()
                    .with_context(|| at("MetricName"))?
                    .to_owned(),
                dimensions,
            };
            (query, stat, number(&p["Period"], &at("Period"))? as u64)
        };
        if !([10, 20, 30].contains(&period_s) || (period_s >= 60 && period_s % 60 == 0)) {
            bail!(
                "{}",
                at(&format!(
                    "Period {period_s} is not 10, 20, 30 or a multiple of 60"
                ))
            );
        }
        if p["EvaluateLowSampleCountPercentile"]
            .as_str()
            .is_some_and(|v| v != "evaluate")
        {
            bail!(
                "{}",
                at("EvaluateLowSampleCountPercentile other than evaluate")
            );
        }
        let evaluation_periods =
            number(&p["EvaluationPeriods"], &at("EvaluationPeriods"))? as usize;
        let datapoints_to_alarm = if p["DatapointsToAlarm"].is_null() {
            evaluation_periods
        } else {
            number(&p["DatapointsToAlarm"], &at("DatapointsToAlarm"))? as usize
        };
        if evaluation_periods == 0
            || datapoints_to_alarm == 0
            || datapoints_to_alarm > evaluation_periods
        {
            bail!("{}", at("need 1 <= DatapointsToAlarm <= EvaluationPeriods"));
        }
        let comparison = match p["ComparisonOperator"].as_str() {
            Some("GreaterThanThreshold") => Comparison::Greater,
            Some("GreaterThanOrEqualToThreshold") => Comparison::GreaterOrEqual,
            Some("LessThanThreshold") => Comparison::Less,
            Some("LessThanOrEqualToThreshold") => Comparison::LessOrEqual,
            other => bail!(
                "{}",
                at(&format!(
                    "ComparisonOperator {other:?} is not a static-threshold operator"
                ))
            ),
        };
        let missing = match p["TreatMissingData"].as_str() {
            None | Some("missing") => MissingData::Missing,
            Some("ignore") => MissingData::Ignore,
            Some("breaching") => MissingData::Breaching,
            Some("notBreaching") => MissingData::NotBreaching,
            Some(other) => bail!("{}", at(&format!("TreatMissingData {other}"))),
        };
        Ok(Self {
            logical: logical.to_owned(),
            name: p["AlarmName"].as_str().unwrap_or(logical).to_owned(),
            query,
            stat,
            period_s,
            evaluation_periods,
            datapoints_to_alarm,
            threshold: number(&p["Threshold"], &at("Threshold"))?,
            comparison,
            missing,
        })
    }

    /// Whether EMF feeds this alarm (AWS's own `AWS/…` namespaces do not).
    pub fn is_emf(&self) -> bool {
        !self.query.namespace().starts_with("AWS/")
    }

    /// The statistic of each of the `EvaluationPeriods` periods ending with the one that
    /// holds `at_ms`, oldest first.
    pub fn datapoints(&self, samples: &[Sample], at_ms: i64) -> Vec<Datapoint> {
        let p = (self.period_s * 1000) as i64;
        let last = at_ms.div_euclid(p);
        let first = last - self.evaluation_periods as i64 + 1;
        let mut buckets: BTreeMap<i64, Vec<f64>> =
            (first..=last).map(|i| (i, Vec::new())).collect();
        for s in samples.iter().filter(|s| self.query.matches(s)) {
            if let Some(b) = buckets.get_mut(&s.timestamp_ms.div_euclid(p)) {
                b.push(s.value);
            }
        }
        buckets
            .into_iter()
            .map(|(i, v)| Datapoint {
                start_ms: i * p,
                value: (!v.is_empty()).then(|| self.stat.of(&v)),
            })
            .collect()
    }

    /// The state CloudWatch would give this alarm at `at_ms`, coming from `previous`
    /// (what `ignore` keeps when every period lacks data).
    pub fn evaluate_from(
        &self,
        samples: &[Sample],
        at_ms: i64,
        previous: State,
    ) -> Result<Evaluation> {
        if !self.is_emf() {
            bail!(
                "alarm {}: {} is AWS's own metric, not fed by EMF",
                self.logical,
                self.query.namespace()
            );
        }
        let datapoints = self.datapoints(samples, at_ms);
        let breach = |v: f64| self.comparison.breaches(v, self.threshold);
        let present: Vec<f64> = datapoints.iter().filter_map(|d| d.value).collect();
        let breaching = match self.missing {
            MissingData::Breaching => datapoints
                .iter()
                .filter(|d| d.value.is_none_or(breach))
                .count(),
            _ => present.iter().filter(|v| breach(**v)).count(),
        };
        let state = if breaching >= self.datapoints_to_alarm {
            State::Alarm
        } else if present.is_empty() && self.missing == MissingData::Missing {
            State::InsufficientData
        } else if present.is_empty() && self.missing == MissingData::Ignore {
            previous
        } else {
            State::Ok
        };
        Ok(Evaluation { state, datapoints })
    }

    /// The state of a new alarm (INSUFFICIENT_DATA before its first evaluation) at `at_ms`.
    pub fn evaluate(&self, samples: &[Sample], at_ms: i64) -> Result<Evaluation> {
        self.evaluate_from(samples, at_ms, State::InsufficientData)
    }

    /// Every state change from `from_ms` to `to_ms`, evaluating once a minute as CloudWatch
    /// does, or once per period when shorter (the first entry is the state at `from_ms`).
    pub fn transitions(
        &self,
        samples: &[Sample],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, State)>> {
        let step = (self.period_s.min(60) * 1000) as i64;
        let mut out: Vec<(i64, State)> = Vec::new();
        let mut state = State::InsufficientData;
        let mut at = from_ms;
        loop {
            state = self.evaluate_from(samples, at, state)?.state;
            if out.last().is_none_or(|(_, s)| *s != state) {
                out.push((at, state));
            }
            if at >= to_ms {
                break;
            }
            at = (at + step).min(to_ms);
        }
        Ok(out)
    }
}

/// The alarms of a deployed region (from the rehearsal's wiring).
pub fn alarms(wiring: &crate::rehearsal::RegionWiring) -> Result<Vec<Alarm>> {
    wiring
        .alarms
        .iter()
        .map(|a| Alarm::from_properties(&a.logical, &a.properties))
        .collect()
}

/// The alarm `logical` of a deployed region.
pub fn alarm(wiring: &crate::rehearsal::RegionWiring, logical: &str) -> Result<Alarm> {
    let a = wiring
        .alarms
        .iter()
        .find(|a| a.logical == logical)
        .with_context(|| {
            let names: Vec<&str> = wiring.alarms.iter().map(|a| a.logical.as_str()).collect();
            format!("the deployed stack has no alarm {logical} (it has {names:?})")
        })?;
    Alarm::from_properties(&a.logical, &a.properties)
}

/// A metric a dashboard widget or an alarm reads: namespace, name and dimension names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricUse {
    pub namespace: String,
    pub metric: String,
    pub dimensions: BTreeSet<String>,
    /// Which alarm or widget (for messages).
    pub by: String,
}

/// The metrics every metric widget of a dashboard body reads: `SEARCH('{ns,D1,…}
/// MetricName="M"', …)` expressions and `[ns, M, D1, v1, …]` rows.
pub fn dashboard_uses(body: &str) -> Result<Vec<MetricUse>> {
    let v: Value = serde_json::from_str(body).context("the dashboard body is not JSON")?;
    let mut out = Vec::new();
    for w in v["widgets"].as_array().into_iter().flatten() {
        if w["type"] != "metric" {
            continue;
        }
        let title = w["properties"]["title"].as_str().unwrap_or("?").to_owned();
        for row in w["properties"]["metrics"].as_array().into_iter().flatten() {
            let row = row.as_array().cloned().unwrap_or_default();
            if let Some(expr) = row.first().and_then(|e| e["expression"].as_str()) {
                out.push(
                    parse_search(expr)
                        .with_context(|| format!("widget {title:?}"))?
                        .with_by(&title),
                );
            } else {
                let strings: Vec<&str> = row.iter().filter_map(Value::as_str).collect();
                let [ns, metric, dims @ ..] = strings.as_slice() else {
                    bail!("widget {title:?}: a metrics row without namespace and name");
                };
                out.push(MetricUse {
                    namespace: (*ns).to_owned(),
                    metric: (*metric).to_owned(),
                    dimensions: dims.iter().step_by(2).map(|d| (*d).to_owned()).collect(),
                    by: format!("widget {title:?}"),
                });
            }
        }
    }
    Ok(out)
}

impl MetricUse {
    fn with_by(mut self, title: &str) -> Self {
        self.by = format!("widget {title:?}");
        self
    }
}

/// `SEARCH('{ns,D1,D2} MetricName="M"', 'stat', period)`: the schema in braces fixes the
/// exact dimension set.
pub fn parse_search(expr: &str) -> Result<MetricUse> {
    let err = || {
        format!(
            "expression `{expr}`: expected SEARCH('{{namespace,Dimension,…}} MetricName=\"Name\"', …)"
        )
    };
    let inner = expr.split_once("{").with_context(err)?.1;
    let (schema, rest) = inner.split_once('}').with_context(err)?;
    let mut parts = schema.split(',').map(str::trim);
    let namespace = parts.next().with_context(err)?.to_owned();
    let dimensions = parts.map(str::to_owned).collect();
    let metric = rest
        .split_once("MetricName=\"")
        .and_then(|(_, m)| m.split_once('"'))
        .with_context(err)?
        .0
        .to_owned();
    Ok(MetricUse {
        namespace,
        metric,
        dimensions,
        by: String::new(),
    })
}

/// What every alarm and dashboard widget of a deployed region reads.
pub fn metric_uses(wiring: &crate::rehearsal::RegionWiring) -> Result<Vec<MetricUse>> {
    let mut out = Vec::new();
    for a in alarms(wiring)? {
        out.push(MetricUse {
            namespace: a.query.namespace().to_owned(),
            metric: a.query.metric().to_owned(),
            dimensions: a.query.dimension_names(),
            by: format!("alarm {}", a.logical),
        });
    }
    for body in &wiring.dashboards {
        out.extend(dashboard_uses(body)?);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIN: i64 = 60_000;

    fn doc(ts: i64, dims: &[(&str, &str)], metric: &str, value: Value) -> Value {
        let names: Vec<&str> = dims.iter().map(|(n, _)| *n).collect();
        let mut d = json!({"_aws": {"Timestamp": ts, "CloudWatchMetrics": [
            {"Namespace": "Tidemark", "Dimensions": [names], "Metrics": [{"Name": metric, "Unit": "Count"}]}]}});
        for (n, v) in dims {
            d[*n] = json!(v);
        }
        d[metric] = value;
        d
    }

    fn lag_alarm(missing: &str, periods: u64, to_alarm: Option<u64>) -> Alarm {
        let mut p = json!({
            "AlarmName": "lag", "Namespace": "Tidemark", "MetricName": "ReplicationLag",
            "Dimensions": [{"Name": "Source", "Value": "users"}, {"Name": "SourceRegion", "Value": "us-east-1"},
                           {"Name": "DestinationRegion", "Value": "eu-west-1"}],
            "ExtendedStatistic": "p99", "Period": 60, "EvaluationPeriods": periods,
            "Threshold": "1000", "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": missing,
        });
        if let Some(n) = to_alarm {
            p["DatapointsToAlarm"] = json!(n);
        }
        Alarm::from_properties("Lag", &p).unwrap()
    }

    const PAIR: &[(&str, &str)] = &[
        ("Source", "users"),
        ("SourceRegion", "us-east-1"),
        ("DestinationRegion", "eu-west-1"),
    ];

    #[test]
    fn value_arrays_are_samples_and_percentiles_use_each() {
        let docs = [doc(
            10 * MIN,
            PAIR,
            "ReplicationLag",
            json!([100.0, 200.0, 5000.0]),
        )];
        let s = samples(&docs).unwrap();
        assert_eq!(s.len(), 3);
        let a = lag_alarm("missing", 1, None);
        let e = a.evaluate(&s, 10 * MIN + 5).unwrap();
        assert_eq!(
            e.datapoints,
            [Datapoint {
                start_ms: 10 * MIN,
                value: Some(5000.0)
            }]
        );
        assert_eq!(e.state, State::Alarm);
        assert_eq!(Stat::Percentile(50.0).of(&[1.0, 2.0, 3.0, 4.0]), 2.0);
        assert_eq!(
            Stat::Percentile(99.0).of(&[1.0; 99]
                .iter()
                .copied()
                .chain([500.0])
                .collect::<Vec<_>>()),
            1.0
        );
    }

    #[test]
    fn all_three_answers() {
        let a = lag_alarm("missing", 2, None);
        let high = |t| doc(t, PAIR, "ReplicationLag", json!(2000.0));
        let low = |t| doc(t, PAIR, "ReplicationLag", json!(10.0));
        // No data at all: INSUFFICIENT_DATA.
        assert_eq!(
            a.evaluate(&[], 5 * MIN).unwrap().state,
            State::InsufficientData
        );
        // Two breaching periods of two: ALARM.
        let s = samples(&[high(4 * MIN), high(5 * MIN + 1)]).unwrap();
        assert_eq!(
            a.evaluate(&s, 5 * MIN + 30_000).unwrap().state,
            State::Alarm
        );
        // One of two breaching: OK.
        let s = samples(&[low(4 * MIN), high(5 * MIN + 1)]).unwrap();
        assert_eq!(a.evaluate(&s, 5 * MIN + 30_000).unwrap().state, State::Ok);
        // Breaching data outside the window no longer counts.
        let s = samples(&[high(MIN), high(2 * MIN)]).unwrap();
        assert_eq!(
            a.evaluate(&s, 5 * MIN).unwrap().state,
            State::InsufficientData
        );
    }

    #[test]
    fn dimensions_must_match_exactly() {
        let a = lag_alarm("missing", 1, None);
        let other_pair = [
            ("Source", "users"),
            ("SourceRegion", "eu-west-1"),
            ("DestinationRegion", "eu-west-1"),
        ];
        let extra = [
            ("Source", "users"),
            ("SourceRegion", "us-east-1"),
            ("DestinationRegion", "eu-west-1"),
            ("Function", "x"),
        ];
        let s = samples(&[
            doc(MIN, &other_pair, "ReplicationLag", json!(9000.0)),
            doc(MIN, &extra, "ReplicationLag", json!(9000.0)),
            doc(MIN, PAIR, "EndToEndLag", json!(9000.0)),
        ])
        .unwrap();
        assert_eq!(a.evaluate(&s, MIN).unwrap().state, State::InsufficientData);
    }

    #[test]
    fn missing_data_treatments() {
        let high = samples(&[doc(MIN, PAIR, "ReplicationLag", json!(2000.0))]).unwrap();
        // One breaching period, two missing, of three.
        let at = 3 * MIN;
        assert_eq!(
            lag_alarm("breaching", 3, None)
                .evaluate(&high, at)
                .unwrap()
                .state,
            State::Alarm
        );
        assert_eq!(
            lag_alarm("notBreaching", 3, None)
                .evaluate(&high, at)
                .unwrap()
                .state,
            State::Ok
        );
        assert_eq!(
            lag_alarm("missing", 3, Some(1))
                .evaluate(&high, at)
                .unwrap()
                .state,
            State::Alarm
        );
        assert_eq!(
            lag_alarm("notBreaching", 3, None)
                .evaluate(&[], at)
                .unwrap()
                .state,
            State::Ok
        );
        assert_eq!(
            lag_alarm("breaching", 3, None)
                .evaluate(&[], at)
                .unwrap()
                .state,
            State::Alarm
        );
        let ignore = lag_alarm("ignore", 1, None);
        assert_eq!(
            ignore.evaluate_from(&[], at, State::Alarm).unwrap().state,
            State::Alarm
        );
        assert_eq!(
            ignore.evaluate(&[], at).unwrap().state,
            State::InsufficientData
        );
    }

    #[test]
    fn insights_alarms_sum_every_series_of_the_schema() {
        let a = Alarm::from_properties(
            "Residency",
            &json!({"Metrics": [{"Id": "v", "ReturnData": true, "Period": 60,
                "Expression": "SELECT SUM(ResidencyViolations) FROM SCHEMA(\"Tidemark\", Rule, Source)"}],
                "EvaluationPeriods": 1, "Threshold": 0, "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching"}),
        )
        .unwrap();
        let one = samples(&[doc(
            MIN,
            &[("Rule", "eu"), ("Source", "users")],
            "ResidencyViolations",
            json!(1),
        )])
        .unwrap();
        assert_eq!(a.evaluate(&one, MIN + 1).unwrap().state, State::Alarm);
        assert_eq!(a.evaluate(&one, 3 * MIN).unwrap().state, State::Ok);
        let wrong_schema = samples(&[doc(
            MIN,
            &[("Source", "users")],
            "ResidencyViolations",
            json!(1),
        )])
        .unwrap();
        assert_eq!(a.evaluate(&wrong_schema, MIN).unwrap().state, State::Ok);
        let (_, q) = parse_insights("SELECT MAX(X) FROM SCHEMA(\"N\", A) WHERE A = 'b'").unwrap();
        assert!(matches!(q, Query::Insights { ref filters, .. } if filters["A"] == "b"));
        assert!(parse_insights("SELECT SUM(X) FROM \"N\"").is_err());
        assert!(parse_insights("select sum(X) from schema(\"N\", A) where A = 'b'").is_ok());
        for refused in [
            "SELECT SUM(X) FROM SCHEMA(\"N\", A) WHERE A != 'b'",
            "SELECT p99(X) FROM SCHEMA(\"N\", A)",
            "SELECT Average(X) FROM SCHEMA(\"N\", A)",
            "SELECT SUM(X) FROM SCHEMA(\"N\", A) GROUP BY A",
        ] {
            assert!(parse_insights(refused).is_err(), "{refused}");
        }
        let bad = [
            json!({"_aws": {"Timestamp": 0, "CloudWatchMetrics": [{"Namespace": "N",
            "Dimensions": [[]], "Metrics": [{"Name": "M"}]}]}, "M": [1, "x"]}),
        ];
        assert!(samples(&bad).is_err());
    }

    #[test]
    fn transitions_are_listed_once_per_change() {
        let a = lag_alarm("notBreaching", 1, None);
        let s = samples(&[doc(2 * MIN + 10, PAIR, "ReplicationLag", json!(5000.0))]).unwrap();
        let t = a.transitions(&s, 0, 5 * MIN).unwrap();
        assert_eq!(
            t,
            [
                (0, State::Ok),
                (2 * MIN, State::Alarm),
                (3 * MIN, State::Ok)
            ]
        );
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_field() {
        let e = Alarm::from_properties("X", &json!({"Namespace": "N", "MetricName": "M", "Statistic": "Median",
            "Period": 60, "EvaluationPeriods": 1, "Threshold": 0, "ComparisonOperator": "GreaterThanThreshold"}))
            .unwrap_err();
        assert!(format!("{e:#}").contains("alarm X: Statistic"), "{e:#}");
        let e = Alarm::from_properties(
            "X",
            &json!({"Namespace": "N", "MetricName": "M", "Statistic": "Sum",
            "Period": 60, "EvaluationPeriods": 1, "DatapointsToAlarm": 2, "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("DatapointsToAlarm"), "{e}");
        let aws = Alarm::from_properties("E", &json!({"Namespace": "AWS/Lambda", "MetricName": "Errors", "Statistic": "Sum",
            "Period": 300, "EvaluationPeriods": 1, "Threshold": 0, "ComparisonOperator": "GreaterThanThreshold"}))
            .unwrap();
        assert!(!aws.is_emf() && aws.evaluate(&[], 0).is_err());
    }

    #[test]
    fn dashboard_searches_and_rows_are_read() {
        let body = r#"{"widgets":[{"type":"metric","properties":{"title":"T","metrics":[
            [{"expression":"SEARCH('{Tidemark,Function,Source} MetricName=\"InvalidationKeys\"', 'Sum', 60)","id":"k"}],
            ["AWS/Lambda","IteratorAge","FunctionName","f",{"stat":"Maximum"}]]}},
            {"type":"text","properties":{"markdown":"x"}}]}"#;
        let u = dashboard_uses(body).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].metric, "InvalidationKeys");
        assert_eq!(
            u[0].dimensions,
            ["Function", "Source"].map(String::from).into()
        );
        assert_eq!(u[1].namespace, "AWS/Lambda");
        assert_eq!(u[1].dimensions, ["FunctionName"].map(String::from).into());
    }
}
