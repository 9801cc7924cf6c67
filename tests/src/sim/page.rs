//! The dashboard page: the template's CloudWatch dashboard drawn from a simulation run, as
//! one self-contained HTML file (inline CSS, inline JS that draws SVG; nothing fetched).
//!
//! - **One definition.** The widgets (order, titles, grid place, what each reads) come from
//!   the deployed stacks' `DashboardBody` at run time ([`widgets`]), never from a list of
//!   our own. Both regions deploy the same body; each widget overlays both regions' series.
//! - **Series** are evaluated from the EMF documents the functions printed, the way a
//!   widget's `SEARCH('{ns,D1,…} MetricName="M"', 'stat', …)` reads CloudWatch: every series
//!   with exactly the schema's dimensions, one line per dimension-value combination, the
//!   widget's statistic per period. The period is 5 s (the template's is 60 s) so a short
//!   run still has several points. A query with no sample says so on the chart.
//! - **Annotations.** Fault windows are shaded on every chart's time axis; the alarm
//!   evaluator's transitions (the report's `alarms_fired`) are drawn as vertical markers on
//!   the widgets that read the alarm's metric, and all of them on the timeline above.
//! - **What the page reports.** After drawing, each widget's `<section>` carries
//!   `data-rendered-series` (paths drawn), `data-points` (points drawn) and
//!   `data-no-data`; `#render-status` carries `data-status="ok"` or the error. The browser
//!   check ([`check_dom`], `tidemark-page-check`) reads those and counts the drawn paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::report::{FaultWindow, Report};
use crate::alarms::{self, Sample, Stat};
use crate::world::World;

/// The page's period: 5 s buckets (the report's series use the same).
pub const PERIOD_MS: u64 = 5_000;

/// What one metrics row of a widget reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryDef {
    pub namespace: String,
    pub metric: String,
    /// The exact dimension names of the series it matches.
    pub dimensions: BTreeSet<String>,
    /// Dimension values fixed by an explicit `[ns, M, D, v, …]` row (none for SEARCH).
    pub fixed: BTreeMap<String, String>,
    pub stat: String,
}

impl QueryDef {
    fn describe(&self) -> String {
        let dims: Vec<&str> = self.dimensions.iter().map(String::as_str).collect();
        format!(
            "{}/{} {} by {{{}}}",
            self.namespace,
            self.metric,
            self.stat,
            dims.join(", ")
        )
    }
}

/// One widget of a dashboard body, in the body's order.
#[derive(Debug, Clone, PartialEq)]
pub struct WidgetDef {
    pub title: String,
    pub kind: String,
    pub x: u64,
    pub y: u64,
    pub width: u64,
    pub height: u64,
    pub queries: Vec<QueryDef>,
}

/// `SEARCH('…', 'stat', period)`: the statistic (the second quoted argument).
fn search_stat(expr: &str) -> Result<String> {
    let quoted: Vec<&str> = expr.split('\'').collect();
    // [SEARCH(, schema+name, ", ", stat, ", period)"]
    quoted
        .get(3)
        .map(|s| (*s).to_owned())
        .with_context(|| format!("expression `{expr}`: expected SEARCH('…', 'stat', period)"))
}

/// Every widget of a dashboard body (JSON), in order.
pub fn widgets(body: &str) -> Result<Vec<WidgetDef>> {
    let v: Value = serde_json::from_str(body).context("the dashboard body is not JSON")?;
    let list = v["widgets"]
        .as_array()
        .context("the dashboard body has no `widgets` array")?;
    let mut out = Vec::new();
    for (i, w) in list.iter().enumerate() {
        let p = &w["properties"];
        let kind = w["type"].as_str().unwrap_or("?").to_owned();
        let title = p["title"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("(widget {i}, {kind}, untitled)"));
        let num = |k: &str, d: u64| w[k].as_u64().unwrap_or(d);
        let mut queries = Vec::new();
        if kind == "metric" {
            let default_stat = p["stat"].as_str().unwrap_or("Average");
            for row in p["metrics"].as_array().into_iter().flatten() {
                let row = row.as_array().cloned().unwrap_or_default();
                if let Some(expr) = row.first().and_then(|e| e["expression"].as_str()) {
                    let u =
                        alarms::parse_search(expr).with_context(|| format!("widget {title:?}"))?;
                    queries.push(QueryDef {
                        namespace: u.namespace,
                        metric: u.metric,
                        dimensions: u.dimensions,
                        fixed: BTreeMap::new(),
                        stat: search_stat(expr).with_context(|| format!("widget {title:?}"))?,
                    });
                } else {
                    let strings: Vec<&str> = row.iter().filter_map(Value::as_str).collect();
                    let [ns, metric, dims @ ..] = strings.as_slice() else {
                        bail!("widget {title:?}: a metrics row without namespace and name");
                    };
                    let fixed: BTreeMap<String, String> = dims
                        .chunks(2)
                        .filter_map(|c| match c {
                            [k, v] => Some(((*k).to_owned(), (*v).to_owned())),
                            _ => None,
                        })
                        .collect();
                    let stat = row
                        .iter()
                        .find_map(|e| e["stat"].as_str())
                        .unwrap_or(default_stat);
                    queries.push(QueryDef {
                        namespace: (*ns).to_owned(),
                        metric: (*metric).to_owned(),
                        dimensions: fixed.keys().cloned().collect(),
                        fixed,
                        stat: stat.to_owned(),
                    });
                }
            }
        }
        out.push(WidgetDef {
            title,
            kind,
            x: num("x", 0),
            y: num("y", 0),
            width: num("width", 6),
            height: num("height", 6),
            queries,
        });
    }
    Ok(out)
}

/// The `DashboardBody` of `template.yaml`'s dashboard as written (its `!Sub` block), with
/// `${AWS::Region}` set to `region` and other placeholders left as their names: the
/// widgets' order and titles as the template defines them, without deploying it.
pub fn template_dashboard_body(template: &str, region: &str) -> Result<String> {
    let lines: Vec<&str> = template.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("DashboardBody: !Sub"))
        .context("template.yaml: expected a `DashboardBody: !Sub` property, found none")?;
    let head = lines
        .get(at + 1)
        .filter(|l| l.trim() == "- |")
        .context("template.yaml: expected `- |` (a block) after `DashboardBody: !Sub`")?;
    let indent = head.len() - head.trim_start().len();
    let mut body = String::new();
    for l in &lines[at + 2..] {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
            break;
        }
        body.push_str(l);
        body.push('\n');
    }
    let mut out = body.replace("${AWS::Region}", region);
    while let Some(i) = out.find("${") {
        let end = out[i..]
            .find('}')
            .with_context(|| format!("template.yaml dashboard: unclosed `${{` at {i}"))?;
        let name = out[i + 2..i + end].to_owned();
        out.replace_range(i..i + end + 1, &name);
    }
    Ok(out)
}

/// The titles of `template.yaml`'s dashboard widgets, in order.
pub fn template_titles() -> Result<Vec<String>> {
    let path = crate::rehearsal::template();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(widgets(&template_dashboard_body(&text, "us-east-1")?)?
        .into_iter()
        .map(|w| w.title)
        .collect())
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub region: String,
    pub label: String,
    /// (period start ms, the widget's statistic over the period's samples).
    pub points: Vec<(u64, f64)>,
}

/// A widget with what the run gave it.
#[derive(Debug, Clone, Serialize)]
pub struct Widget {
    pub title: String,
    pub kind: String,
    pub x: u64,
    pub y: u64,
    pub width: u64,
    pub height: u64,
    /// Metric names it reads (alarm annotations go where an alarm's metric is read).
    pub metrics: Vec<String>,
    /// Each query, described.
    pub reads: Vec<String>,
    pub series: Vec<Series>,
    /// Queries that matched no sample in the run, and why.
    pub missing: Vec<String>,
}

/// The page's data: the dashboard's widgets with their series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dashboard {
    pub period_ms: u64,
    pub widgets: Vec<Widget>,
    /// Alarm name → the metric it reads.
    pub alarm_metrics: BTreeMap<String, String>,
}

fn matches(q: &QueryDef, s: &Sample) -> bool {
    s.namespace == q.namespace
        && s.metric == q.metric
        && s.dimensions.len() == q.dimensions.len()
        && s.dimensions.keys().all(|k| q.dimensions.contains(k))
        && q.fixed.iter().all(|(k, v)| s.dimensions.get(k) == Some(v))
}

impl Dashboard {
    /// The widgets of each region's dashboard body (which must agree on titles and order),
    /// with series from that region's EMF samples.
    pub fn from_bodies(
        regions: &[(String, String, Vec<Sample>)],
        alarm_metrics: BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut defs: Vec<(String, Vec<WidgetDef>, &[Sample])> = Vec::new();
        for (region, body, samples) in regions {
            let w = widgets(body).with_context(|| format!("{region}'s dashboard"))?;
            defs.push((region.clone(), w, samples));
        }
        let Some((first_region, first, _)) = defs.first() else {
            return Ok(Self::default());
        };
        let titles = |w: &[WidgetDef]| w.iter().map(|w| w.title.clone()).collect::<Vec<_>>();
        for (region, w, _) in &defs[1..] {
            if titles(w) != titles(first) {
                bail!(
                    "the dashboards differ: {first_region} has widgets {:?}, {region} has {:?}",
                    titles(first),
                    titles(w)
                );
            }
        }
        let mut out = Vec::new();
        for (i, def) in first.iter().enumerate() {
            let stats: BTreeSet<&str> = def.queries.iter().map(|q| q.stat.as_str()).collect();
            let metrics: BTreeSet<&str> = def.queries.iter().map(|q| q.metric.as_str()).collect();
            let mut series = Vec::new();
            let mut missing = Vec::new();
            for (qi, q) in def.queries.iter().enumerate() {
                let stat = Stat::parse(&q.stat)
                    .with_context(|| format!("widget {:?}: statistic", def.title))?;
                let mut found = false;
                for (region, wdefs, samples) in &defs {
                    let q = &wdefs[i].queries[qi];
                    let mut groups: BTreeMap<Vec<String>, BTreeMap<u64, Vec<f64>>> =
                        BTreeMap::new();
                    for s in samples.iter().filter(|s| matches(q, s)) {
                        let at = (s.timestamp_ms.max(0) as u64) / PERIOD_MS * PERIOD_MS;
                        groups
                            .entry(s.dimensions.values().cloned().collect())
                            .or_default()
                            .entry(at)
                            .or_default()
                            .push(s.value);
                    }
                    for (values, buckets) in groups {
                        found = true;
                        let mut label = format!("{region}:");
                        if metrics.len() > 1 {
                            label.push_str(&format!(" {}", q.metric));
                        }
                        if stats.len() > 1 {
                            label.push_str(&format!(" {}", q.stat));
                        }
                        for v in &values {
                            label.push_str(&format!(" {v}"));
                        }
                        series.push(Series {
                            region: region.clone(),
                            label,
                            points: buckets.iter().map(|(t, v)| (*t, stat.of(v))).collect(),
                        });
                    }
                }
                if !found {
                    let why = if q.namespace.starts_with("AWS/") {
                        "AWS publishes it itself (not EMF), and the harness measured none"
                    } else {
                        "no function printed it in this run"
                    };
                    missing.push(format!("{}: {why}", q.describe()));
                }
            }
            out.push(Widget {
                title: def.title.clone(),
                kind: def.kind.clone(),
                x: def.x,
                y: def.y,
                width: def.width,
                height: def.height,
                metrics: metrics.iter().map(|m| (*m).to_owned()).collect(),
                reads: def.queries.iter().map(QueryDef::describe).collect(),
                series,
                missing,
            });
        }
        Ok(Self {
            period_ms: PERIOD_MS,
            widgets: out,
            alarm_metrics,
        })
    }

    /// The deployed dashboards of `w`'s regions with `docs` (per region: every EMF document
    /// its functions and canaries printed), the `AWS/Lambda` `IteratorAge` the harness's
    /// stream mapping measured (as Lambda's poller does) and the `AWS/SQS` depth of the
    /// dead-letter queues the simulation sampled (the only AWS metrics drawn).
    pub fn build(w: &World, docs: &[(String, Vec<Value>)]) -> Result<Self> {
        let mut regions = Vec::new();
        let mut alarm_metrics = BTreeMap::new();
        for (r, d) in docs {
            let wiring = &w.region(r).wiring;
            let body = wiring
                .dashboards
                .first()
                .with_context(|| format!("{r}: the deployed stack has no dashboard"))?;
            let mut samples = alarms::samples(d)?;
            // The harness plays Lambda's stream poller: its per-invocation IteratorAge.
            let function = wiring.function("stream-processor")?.name.clone();
            let ages = w.region(r).stream_mapping.iterator_ages.lock();
            for (at, age) in ages.unwrap_or_else(|e| e.into_inner()).iter() {
                samples.push(Sample {
                    namespace: "AWS/Lambda".to_owned(),
                    metric: "IteratorAge".to_owned(),
                    dimensions: BTreeMap::from([("FunctionName".to_owned(), function.clone())]),
                    timestamp_ms: *at as i64,
                    value: *age,
                });
            }
            // And SQS's: the dead-letter queues' depth the simulation sampled.
            let depths = w.region(r).dlq_depths.lock();
            for (queue, at, n) in depths.unwrap_or_else(|e| e.into_inner()).iter() {
                samples.push(Sample {
                    namespace: "AWS/SQS".to_owned(),
                    metric: "ApproximateNumberOfMessagesVisible".to_owned(),
                    dimensions: BTreeMap::from([("QueueName".to_owned(), queue.clone())]),
                    timestamp_ms: *at as i64,
                    value: *n,
                });
            }
            regions.push((r.clone(), body.clone(), samples));
            for a in alarms::alarms(wiring)? {
                alarm_metrics.insert(a.name.clone(), a.query.metric().to_owned());
            }
        }
        Self::from_bodies(&regions, alarm_metrics)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JSON safe inside `<script>`: no `</` (`\/` is a JSON escape of `/`) and no `<!--`.
fn script_json(v: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string(v)?
        .replace("</", "<\\/")
        .replace("<!--", "<\\u0021--"))
}

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// (region, alarm name, transitions (ms, state)) from the alarm evaluator.
pub type AlarmMarks<'a> = (&'a str, &'a str, &'a [(i64, String)]);

/// What a page shows of a run (the report's fields it needs).
#[derive(Debug, Clone, Serialize)]
pub struct PageRun<'a> {
    pub seed: u64,
    pub mode: &'a str,
    pub pass: bool,
    pub changes: usize,
    pub duration_s: u64,
    pub run_start_ms: u64,
    pub run_end_ms: u64,
    pub faults: &'a [FaultWindow],
    /// The alarm evaluator's transitions of the alarms that fired.
    pub alarms: Vec<AlarmMarks<'a>>,
    pub dashboard: &'a Dashboard,
}

impl<'a> PageRun<'a> {
    pub fn of(r: &'a Report) -> Self {
        Self {
            seed: r.seed,
            mode: &r.mode,
            pass: r.pass,
            changes: r.changes,
            duration_s: r.duration_s,
            run_start_ms: r.run_start_ms,
            run_end_ms: r.run_end_ms,
            faults: &r.faults,
            alarms: r
                .regions
                .iter()
                .flat_map(|g| {
                    g.alarms_fired.iter().map(|a| {
                        (
                            g.region.as_str(),
                            a.alarm.as_str(),
                            a.transitions.as_slice(),
                        )
                    })
                })
                .collect(),
            dashboard: &r.dashboard,
        }
    }
}

/// The page of a run.
pub fn html(r: &PageRun<'_>) -> Result<String> {
    let d = r.dashboard;
    let alarms: Vec<Value> = r
        .alarms
        .iter()
        .map(|(region, alarm, transitions)| {
            serde_json::json!({
                "region": region,
                "alarm": alarm,
                "metric": d.alarm_metrics.get(*alarm),
                "transitions": transitions,
            })
        })
        .collect();
    let data = serde_json::json!({
        "seed": r.seed,
        "mode": r.mode,
        "pass": r.pass,
        "run_start_ms": r.run_start_ms,
        "run_end_ms": r.run_end_ms,
        "faults": r.faults,
        "alarms": alarms,
        "period_ms": d.period_ms,
        "widgets": d.widgets,
    });
    let mut sections = String::new();
    for (i, w) in d.widgets.iter().enumerate() {
        sections.push_str(&format!(
            "<section class=\"widget\" data-widget-index=\"{i}\" data-title=\"{t}\" style=\"grid-column: {c} / span {cw}; grid-row: {row} / span {rh};\">\n  <h2>{t}</h2>\n  <div class=\"chart\"></div>\n  <ul class=\"legend\"></ul>\n  <p class=\"reads\">{reads}</p>\n</section>\n",
            t = escape(&w.title),
            c = w.x + 1,
            cw = w.width.max(1),
            row = w.y + 1,
            rh = w.height.max(1),
            reads = escape(&w.reads.join("; ")),
        ));
    }
    let faults = if r.faults.is_empty() {
        "none".to_owned()
    } else {
        r.faults
            .iter()
            .map(|f| escape(&f.fault))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Tidemark dashboard — simulation seed {seed}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<header>\n  <h1>Tidemark dashboard <span class=\"{verdict_class}\">{verdict}</span></h1>\n  <p>Simulation seed {seed}, {mode} functions, {changes} changes in {duration} s; faults: {faults}. The template deploys this dashboard in each region (<code>tidemark-&lt;region&gt;</code>); each widget here overlays both regions' series, one line per dimension set, with the widget's statistic per {period} s period (the template's is 60 s). Shaded: fault windows. Vertical markers: alarm transitions from the alarm evaluator. Time: seconds from the workload's start.</p>\n  <div id=\"timeline\"></div>\n  <p id=\"render-status\" data-status=\"pending\">not rendered (JavaScript did not run)</p>\n</header>\n<main class=\"grid\">\n{sections}</main>\n<script type=\"application/json\" id=\"page-data\">{json}</script>\n<script>\n{SCRIPT}</script>\n</body>\n</html>\n",
        seed = r.seed,
        mode = escape(r.mode),
        changes = r.changes,
        duration = r.duration_s,
        period = d.period_ms / 1000,
        verdict = if r.pass { "PASS" } else { "FAIL" },
        verdict_class = if r.pass { "pass" } else { "fail" },
        json = script_json(&data)?,
    ))
}

/// Writes the page of report `r` to `path`.
pub fn write(r: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, html(&PageRun::of(r))?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What the browser check found on one widget of the rendered page.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedWidget {
    pub title: String,
    /// The series paths drawn in it: (`data-label`, points in its `d`).
    pub paths: Vec<(String, usize)>,
    pub fault_windows: usize,
    pub alarm_annotations: usize,
    pub no_data: bool,
    /// What the page says it drew.
    pub reported_series: Option<usize>,
    pub reported_points: Option<usize>,
    pub text: String,
}

/// What the browser check found on the rendered page.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub status: String,
    pub status_text: String,
    pub widgets: Vec<RenderedWidget>,
    pub timeline_fault_windows: usize,
    pub timeline_alarm_annotations: usize,
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the opening tag `tag` (`<x a="v" …>`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let pat = format!(" {name}=\"");
    let i = tag.find(&pat)? + pat.len();
    let end = tag[i..].find('"')?;
    Some(unescape(&tag[i..i + end]))
}

/// Opening tags of elements whose tag starts with `open` (e.g. `<path class="series"`).
fn tags<'a>(html: &'a str, open: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(open) {
        let end = rest[i..].find('>').map_or(rest.len(), |e| i + e + 1);
        out.push(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

/// Text of `html` without tags.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in html.chars() {
        match c {
            '<' => inside = true,
            '>' => {
                inside = false;
                out.push(' ');
            }
            c if !inside => out.push(c),
            _ => {}
        }
    }
    unescape(&out.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Points of an SVG path `d` made of `M x y` / `L x y` commands.
fn path_points(d: &str) -> usize {
    d.chars().filter(|c| matches!(c, 'M' | 'L')).count()
}

/// Reads the rendered DOM (Chromium's `--dump-dom`) back.
pub fn read_dom(dom: &str) -> Result<Rendered> {
    let status_tag = tags(dom, "<p id=\"render-status\"")
        .first()
        .copied()
        .context("the rendered page has no #render-status element")?;
    let status = attr(status_tag, "data-status").unwrap_or_default();
    let after = &dom[dom.find(status_tag).unwrap_or(0) + status_tag.len()..];
    let status_text = text(&after[..after.find("</p>").unwrap_or(0)]);
    let timeline = dom
        .split("<div id=\"timeline\"")
        .nth(1)
        .and_then(|t| t.split("</div>").next())
        .unwrap_or("");
    let mut widgets = Vec::new();
    for part in dom.split("<section class=\"widget\"").skip(1) {
        let sec = &part[..part.find("</section>").unwrap_or(part.len())];
        let open = &sec[..sec.find('>').unwrap_or(sec.len())];
        let open = format!(" {open}");
        let num = |n: &str| attr(&open, n).and_then(|v| v.parse().ok());
        widgets.push(RenderedWidget {
            title: attr(&open, "data-title").unwrap_or_default(),
            paths: tags(sec, "<path class=\"series\"")
                .iter()
                .map(|t| {
                    (
                        attr(t, "data-label").unwrap_or_default(),
                        path_points(&attr(t, "d").unwrap_or_default()),
                    )
                })
                .collect(),
            fault_windows: tags(sec, "<rect class=\"fault-window\"").len(),
            alarm_annotations: tags(sec, "<line class=\"alarm-annotation\"").len(),
            no_data: attr(&open, "data-no-data").as_deref() == Some("true"),
            reported_series: num("data-rendered-series"),
            reported_points: num("data-points"),
            text: text(sec),
        });
    }
    Ok(Rendered {
        status,
        status_text,
        widgets,
        timeline_fault_windows: tags(timeline, "<rect class=\"fault-window\"").len(),
        timeline_alarm_annotations: tags(timeline, "<line class=\"alarm-annotation\"").len(),
    })
}

/// One widget of [`Expected`].
#[derive(Debug, Clone)]
pub struct ExpectedWidget {
    pub title: String,
    /// (label, points) of each series with points.
    pub series: Vec<(String, usize)>,
    /// Why a query has no data.
    pub missing: Vec<String>,
}

/// What the page's embedded data says should be drawn (from the page itself, before
/// rendering): per widget the series with points, and the fault / alarm counts.
#[derive(Debug, Clone)]
pub struct Expected {
    pub widgets: Vec<ExpectedWidget>,
    pub faults: usize,
    /// Per widget: alarm transitions of alarms reading one of its metrics.
    pub widget_annotations: Vec<usize>,
    pub transitions: usize,
}

/// The data embedded in a page (its `#page-data` script).
pub fn expected(page: &str) -> Result<Expected> {
    let start = page
        .find("<script type=\"application/json\" id=\"page-data\">")
        .context("the page has no #page-data script")?;
    let json = &page[start..];
    let json = &json[json.find('>').unwrap_or(0) + 1..json.find("</script>").unwrap_or(0)];
    let v: Value = serde_json::from_str(json).context("#page-data is not JSON")?;
    let alarms: Vec<(String, usize)> = items(&v["alarms"])
        .map(|a| {
            (
                a["metric"].as_str().unwrap_or("").to_owned(),
                a["transitions"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    let mut widgets = Vec::new();
    let mut widget_annotations = Vec::new();
    for w in items(&v["widgets"]) {
        let series = items(&w["series"])
            .map(|s| {
                (
                    s["label"].as_str().unwrap_or("").to_owned(),
                    s["points"].as_array().map_or(0, Vec::len),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let metrics: Vec<&str> = items(&w["metrics"]).filter_map(Value::as_str).collect();
        widget_annotations.push(
            alarms
                .iter()
                .filter(|(m, _)| metrics.contains(&m.as_str()))
                .map(|(_, n)| n)
                .sum(),
        );
        widgets.push(ExpectedWidget {
            title: w["title"].as_str().unwrap_or("").to_owned(),
            series,
            missing: items(&w["missing"])
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(Expected {
        widgets,
        faults: v["faults"].as_array().map_or(0, Vec::len),
        widget_annotations,
        transitions: alarms.iter().map(|(_, n)| n).sum(),
    })
}

/// The elements of a JSON array (none when `v` is not one).
fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Widgets the browser check treats leniently, by title (each must be a template widget).
#[derive(Debug, Default, Clone)]
pub struct Leniency {
    /// Known to get no data in the run: each must say "No data" visibly, and fails if it
    /// has data after all (the list stays true).
    pub expect_empty: Vec<String>,
    /// Rare events: data required, but it may all fall in one period (one point per series
    /// instead of a line of at least 2).
    pub allow_sparse: Vec<String>,
    /// Rare events a short run may not have at all: one point or none ("No data" then).
    pub allow_empty: Vec<String>,
}

/// The browser check's verdicts on a rendered page: the template's widgets in order with
/// the same titles; every widget drew exactly the series of the page's data (label and
/// point count per path, and what it reports in `data-rendered-series` / `data-points`);
/// every widget with data drew a path of at least 2 points unless `lenient` says
/// otherwise; a widget without data says so visibly; each chart shades every fault window
/// and marks the transitions of the alarms on its metrics, and the timeline all of them.
/// Returns the problems found.
pub fn check_dom(
    r: &Rendered,
    e: &Expected,
    template_titles: &[String],
    lenient: &Leniency,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (flag, list) in [
        ("--expect-empty", &lenient.expect_empty),
        ("--allow-sparse", &lenient.allow_sparse),
        ("--allow-empty", &lenient.allow_empty),
    ] {
        for t in list.iter().filter(|t| !template_titles.contains(t)) {
            bad.push(format!(
                "{flag}: expected a widget title of the template's dashboard, found {t:?}"
            ));
        }
    }
    let expect_empty = &lenient.expect_empty;
    let sparse = |t: &String| lenient.allow_sparse.contains(t) || lenient.allow_empty.contains(t);
    if r.status != "ok" {
        bad.push(format!(
            "#render-status: expected data-status=\"ok\", found {:?} ({})",
            r.status, r.status_text
        ));
    }
    let titles: Vec<String> = r.widgets.iter().map(|w| w.title.clone()).collect();
    if titles != template_titles {
        bad.push(format!(
            "widgets: expected the template's dashboard widgets {template_titles:?} in order, found {titles:?}"
        ));
    }
    if r.widgets.len() != e.widgets.len() {
        bad.push(format!(
            "widgets: the page's data has {}, the rendered page {}",
            e.widgets.len(),
            r.widgets.len()
        ));
    }
    for (i, (w, x)) in r.widgets.iter().zip(&e.widgets).enumerate() {
        let at = format!("widget {i} {:?}", x.title);
        if w.paths != x.series {
            let missing: Vec<&(String, usize)> =
                x.series.iter().filter(|s| !w.paths.contains(s)).collect();
            bad.push(format!(
                "{at}: expected the {} series of the page's data drawn, found {} paths; not drawn as in the data: {missing:?}",
                x.series.len(),
                w.paths.len()
            ));
        }
        if w.reported_series != Some(w.paths.len()) {
            bad.push(format!(
                "{at}: data-rendered-series says {:?}, the DOM has {} series paths",
                w.reported_series,
                w.paths.len()
            ));
        }
        let points: usize = w.paths.iter().map(|(_, n)| n).sum();
        if w.reported_points != Some(points) {
            bad.push(format!(
                "{at}: data-points says {:?}, the drawn paths have {points}",
                w.reported_points
            ));
        }
        if x.series.is_empty() {
            if !w.no_data || !w.text.contains("No data") {
                bad.push(format!(
                    "{at}: no series, and the chart does not say \"No data\" (data-no-data={}, text {:?})",
                    w.no_data, w.text
                ));
            }
            if !expect_empty.contains(&x.title) && !lenient.allow_empty.contains(&x.title) {
                bad.push(format!(
                    "{at}: expected data, found none ({})",
                    x.missing.join("; ")
                ));
            }
        } else {
            if expect_empty.contains(&x.title) {
                bad.push(format!(
                    "{at}: listed as expected empty, but it drew {} series: drop it from the list",
                    x.series.len()
                ));
            }
            if !w.paths.iter().any(|(_, n)| *n >= 2) && !sparse(&x.title) {
                bad.push(format!(
                    "{at}: expected a path with at least 2 points, found {:?}",
                    w.paths
                ));
            }
        }
        if w.fault_windows != e.faults {
            bad.push(format!(
                "{at}: expected {} fault windows shaded, found {}",
                e.faults, w.fault_windows
            ));
        }
        let want = e.widget_annotations.get(i).copied().unwrap_or(0);
        if w.alarm_annotations != want {
            bad.push(format!(
                "{at}: expected {want} alarm annotations (transitions of the alarms on its metrics), found {}",
                w.alarm_annotations
            ));
        }
    }
    if r.timeline_fault_windows != e.faults {
        bad.push(format!(
            "timeline: expected {} fault windows, found {}",
            e.faults, r.timeline_fault_windows
        ));
    }
    if r.timeline_alarm_annotations != e.transitions {
        bad.push(format!(
            "timeline: expected {} alarm annotations, found {}",
            e.transitions, r.timeline_alarm_annotations
        ));
    }
    bad
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template_body(region: &str) -> String {
        let text = std::fs::read_to_string(crate::rehearsal::template()).unwrap();
        template_dashboard_body(&text, region)
            .unwrap()
            .replace("\"Namespace,", "\"Tidemark,")
            .replace("{Namespace,", "{Tidemark,")
    }

    fn doc(ts: u64, dims: &[(&str, &str)], metric: &str, value: Value) -> Value {
        let names: Vec<&str> = dims.iter().map(|(n, _)| *n).collect();
        let mut d = json!({"_aws": {"Timestamp": ts, "CloudWatchMetrics": [
            {"Namespace": "Tidemark", "Dimensions": [names], "Metrics": [{"Name": metric}]}]}});
        for (n, v) in dims {
            d[*n] = json!(v);
        }
        d[metric] = value;
        d
    }

    /// One sample of every EMF metric every template widget reads, under its schema.
    fn docs_for_every_query(body: &str, t: u64) -> Vec<Value> {
        let mut out = Vec::new();
        for w in widgets(body).unwrap() {
            for q in w.queries.iter().filter(|q| q.namespace == "Tidemark") {
                let dims: Vec<(&str, &str)> =
                    q.dimensions.iter().map(|d| (d.as_str(), "x")).collect();
                out.push(doc(t, &dims, &q.metric, json!([1.0, 2.0])));
                out.push(doc(t + PERIOD_MS, &dims, &q.metric, json!(3.0)));
            }
        }
        out
    }

    fn page_of(d: &Dashboard, faults: &[FaultWindow]) -> String {
        html(&PageRun {
            seed: 1,
            mode: "InProcess",
            pass: true,
            changes: 0,
            duration_s: 20,
            run_start_ms: 1_000_000,
            run_end_ms: 1_030_000,
            faults,
            alarms: Vec::new(),
            dashboard: d,
        })
        .unwrap()
    }

    #[test]
    fn the_page_has_the_template_widgets_in_order_with_their_titles() {
        let text = std::fs::read_to_string(crate::rehearsal::template()).unwrap();
        let raw = template_dashboard_body(&text, "eu-west-1").unwrap();
        // The same widgets as alarms::dashboard_uses reads (the other parser of the body).
        let defs = widgets(&raw).unwrap();
        let uses = alarms::dashboard_uses(&raw).unwrap();
        let from_defs: Vec<(String, String)> = defs
            .iter()
            .flat_map(|w| {
                w.queries
                    .iter()
                    .map(|q| (format!("widget {:?}", w.title), q.metric.clone()))
            })
            .collect();
        let from_uses: Vec<(String, String)> = uses
            .iter()
            .map(|u| (u.by.clone(), u.metric.clone()))
            .collect();
        assert_eq!(from_defs, from_uses);
        let titles = template_titles().unwrap();
        assert!(titles.len() >= 10, "{titles:?}");

        let us = template_body("us-east-1");
        let eu = template_body("eu-west-1");
        let regions = vec![
            (
                "us-east-1".to_owned(),
                us.clone(),
                alarms::samples(&docs_for_every_query(&us, 1_000_000)).unwrap(),
            ),
            (
                "eu-west-1".to_owned(),
                eu,
                alarms::samples(&docs_for_every_query(&us, 1_000_000)).unwrap(),
            ),
        ];
        let d = Dashboard::from_bodies(&regions, BTreeMap::new()).unwrap();
        let page = page_of(&d, &[]);
        let in_page: Vec<String> = tags(&page, "<section class=\"widget\"")
            .iter()
            .map(|t| attr(t, "data-title").unwrap())
            .collect();
        assert_eq!(in_page, titles);
        // Every EMF widget got both regions' series; the AWS/Lambda one says why it has none.
        let e = expected(&page).unwrap();
        for x in &e.widgets {
            if x.missing.is_empty() {
                assert!(x.series.len() >= 2, "{}: {:?}", x.title, x.series);
            } else {
                assert!(
                    x.missing.iter().all(|m| m.starts_with("AWS/")),
                    "{}: {:?}",
                    x.title,
                    x.missing
                );
            }
        }
    }

    #[test]
    fn series_use_the_widget_statistic_and_the_exact_schema() {
        let body = r#"{"widgets":[{"type":"metric","x":0,"y":0,"width":12,"height":6,"properties":{"title":"Lag","stat":"Sum",
            "metrics":[[{"expression":"SEARCH('{Tidemark,DestinationRegion,SourceRegion} MetricName=\"ReplicationLag\"', 'p99', 60)","id":"a"}],
                       [{"expression":"SEARCH('{Tidemark,DestinationRegion,SourceRegion} MetricName=\"ReplicationLag\"', 'p50', 60)","id":"b"}],
                       ["Tidemark","RecordsFailed","Function","f"]]}}]}"#;
        let pair = [("DestinationRegion", "eu"), ("SourceRegion", "us")];
        let docs = [
            doc(
                10_000,
                &pair,
                "ReplicationLag",
                json!([1.0, 2.0, 3.0, 100.0]),
            ),
            doc(12_000, &pair, "ReplicationLag", json!(4.0)),
            doc(15_000, &pair, "ReplicationLag", json!(7.0)),
            // Another dimension set: not the schema's.
            doc(
                10_000,
                &[
                    ("DestinationRegion", "eu"),
                    ("SourceRegion", "us"),
                    ("X", "y"),
                ],
                "ReplicationLag",
                json!(9999.0),
            ),
            doc(10_000, &[("Function", "g")], "RecordsFailed", json!(5.0)),
        ];
        let d = Dashboard::from_bodies(
            &[(
                "r".to_owned(),
                body.to_owned(),
                alarms::samples(&docs).unwrap(),
            )],
            BTreeMap::new(),
        )
        .unwrap();
        let w = &d.widgets[0];
        assert_eq!(w.series.len(), 2);
        assert_eq!(w.series[0].label, "r: ReplicationLag p99 eu us");
        assert_eq!(w.series[0].points, [(10_000, 100.0), (15_000, 7.0)]);
        assert_eq!(w.series[1].label, "r: ReplicationLag p50 eu us");
        assert_eq!(w.series[1].points, [(10_000, 3.0), (15_000, 7.0)]);
        // The explicit row fixes Function = f: g's sample is not it, and the chart says so.
        assert_eq!(w.missing.len(), 1);
        assert!(w.missing[0].contains("Tidemark/RecordsFailed Sum by {Function}"));
    }

    #[test]
    fn the_dom_check_names_what_is_missing() {
        let e = Expected {
            widgets: vec![
                ExpectedWidget {
                    title: "A".into(),
                    series: vec![("a".into(), 3)],
                    missing: vec![],
                },
                ExpectedWidget {
                    title: "B".into(),
                    series: vec![],
                    missing: vec!["m".into()],
                },
            ],
            faults: 1,
            widget_annotations: vec![2, 0],
            transitions: 2,
        };
        let dom = r#"<p id="render-status" data-status="ok">ok</p>
<div id="timeline"><svg><rect class="fault-window" x="1"></rect><line class="alarm-annotation"></line><line class="alarm-annotation"></line></svg></div>
<section class="widget" data-title="A" data-rendered-series="1" data-points="3"><svg><path class="series" d="M1 2 L3 4 L5 6" data-label="a"></path><rect class="fault-window"></rect><line class="alarm-annotation"></line><line class="alarm-annotation"></line></svg></section>
<section class="widget" data-title="B" data-rendered-series="0" data-points="0" data-no-data="true"><svg><rect class="fault-window"></rect><text>No data: m</text></svg></section>"#;
        let titles = ["A".to_owned(), "B".to_owned()];
        let r = read_dom(dom).unwrap();
        let lenient = |expect_empty: &[&str], allow_sparse: &[&str], allow_empty: &[&str]| {
            let v = |l: &[&str]| l.iter().map(|t| (*t).to_owned()).collect();
            Leniency {
                expect_empty: v(expect_empty),
                allow_sparse: v(allow_sparse),
                allow_empty: v(allow_empty),
            }
        };
        assert_eq!(
            check_dom(&r, &e, &titles, &lenient(&["B"], &[], &[])),
            Vec::<String>::new()
        );
        // B not expected empty: named.
        let bad = check_dom(&r, &e, &titles, &Leniency::default());
        assert!(
            bad.len() == 1 && bad[0].contains("\"B\": expected data"),
            "{bad:?}"
        );
        // A's path dropped (a renderer skipping a series): named.
        let broken = dom.replace(
            r#"<path class="series" d="M1 2 L3 4 L5 6" data-label="a"></path>"#,
            "",
        );
        let bad = check_dom(
            &read_dom(&broken).unwrap(),
            &e,
            &titles,
            &lenient(&["B"], &[], &[]),
        );
        assert!(
            bad.iter()
                .any(|b| b.contains("expected the 1 series of the page's data drawn")),
            "{bad:?}"
        );
        // B allowed empty: it may have no data (it still says "No data").
        assert_eq!(
            check_dom(&r, &e, &titles, &lenient(&[], &[], &["B"])),
            Vec::<String>::new()
        );
        // B allowed sparse only: data is still required.
        let bad = check_dom(&r, &e, &titles, &lenient(&[], &["B"], &[]));
        assert!(
            bad.len() == 1 && bad[0].contains("\"B\": expected data"),
            "{bad:?}"
        );
        // A single point: only a sparse or empty-allowed widget may.
        let one = dom.replace(
            r#"d="M1 2 L3 4 L5 6" data-label="a"></path>"#,
            r#"d="M1 2" data-label="a"></path>"#,
        );
        let e1 = Expected {
            widgets: vec![
                ExpectedWidget {
                    series: vec![("a".into(), 1)],
                    ..e.widgets[0].clone()
                },
                e.widgets[1].clone(),
            ],
            ..e.clone()
        };
        let one = one.replace(r#"data-points="3""#, r#"data-points="1""#);
        let bad = check_dom(
            &read_dom(&one).unwrap(),
            &e1,
            &titles,
            &lenient(&["B"], &[], &[]),
        );
        assert!(
            bad.len() == 1 && bad[0].contains("at least 2 points"),
            "{bad:?}"
        );
        assert_eq!(
            check_dom(
                &read_dom(&one).unwrap(),
                &e1,
                &titles,
                &lenient(&["B"], &["A"], &[])
            ),
            Vec::<String>::new()
        );
        // A title the template does not have: named (a typo would silently allow nothing).
        let bad = check_dom(&r, &e, &titles, &lenient(&["B"], &["Z"], &[]));
        assert!(
            bad.len() == 1 && bad[0].contains("--allow-sparse") && bad[0].contains("\"Z\""),
            "{bad:?}"
        );
        // A wrong order.
        let bad = check_dom(
            &r,
            &e,
            &["B".into(), "A".into()],
            &lenient(&["B"], &[], &[]),
        );
        assert!(bad[0].contains("in order"), "{bad:?}");
    }
}
