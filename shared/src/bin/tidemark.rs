//! `tidemark`: operator commands. Thin: argument parsing and printing over the library
//! (`config` validation, `explain`, `live` checks and the `adapters::account` reader).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use tidemark::config::{Config, ConfigErrors, EMBEDDED_NAME};
use tidemark::explain::{self, ObjectInput};
use tidemark::metrics::CATALOG;

#[path = "tidemark/flush.rs"]
mod flush;
#[path = "tidemark/replay.rs"]
mod replay;

const HELP: &str = "\
tidemark — operator commands for Tidemark (multi-region cache invalidation, replication
lag audit and data-residency enforcement on AWS Lambda)

USAGE:
    tidemark <COMMAND> [OPTIONS]

COMMANDS:
    check      Validate the configuration; with --live, also check the deployed account
    explain    Show what Tidemark decides for an item, a stream record or an object
    flush      Delete a source's cache keys by template prefix, after given-up invalidations
    replay     Re-run what the dead-letter stores keep and publish its invalidations
               (a dry run unless --apply)
    metrics    Print the metric catalog: name, unit, dimensions, meaning
    wiring     Rewrite (or --check) template.yaml's generated blocks from the configuration
    help       Print this help, or a command's: tidemark help <COMMAND>

OPTIONS:
    -h, --help       Print help (also after a command: tidemark check --help)
    -V, --version    Print the version

EXAMPLES:
    tidemark check tidemark.toml
    tidemark check --live --region eu-west-1 tidemark.toml
    tidemark explain --region us-east-1 --item item.json
    tidemark explain --region us-east-1 --object 'eu/red flower.jpg' --tag residency=eu
    tidemark replay --region eu-west-1 --apply
    tidemark flush users --region eu-west-1
    tidemark wiring tidemark.toml template.yaml
";

const CHECK_HELP: &str = "\
tidemark check — validate the configuration, and with --live the deployed account

USAGE:
    tidemark check [FILE] [--json]
    tidemark check --live --region REGION [FILE] [--json]

ARGS:
    FILE    Configuration file (default: tidemark.toml; `-` for the one compiled in)

OPTIONS:
    --live             Also read REGION of the deployed account (read-only calls) and check it
                       against the configuration
    --region REGION    The region to check (required with --live; one of deployment.regions)
    --json             Print one JSON report instead of text
    -h, --help         Print this help

Validation reports every problem of the file, each naming the file, the source or rule,
and the field. A file that does not parse reports that one error. With a samconfig.toml
beside the file, it also reports any source or region its config-envs do not wire.

--live uses the default AWS credential chain and honours endpoint overrides
(AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, …; TIDEMARK_S3_FORCE_PATH_STYLE=true for
path-style S3). It reports by name:
    readable                   a watched table or bucket that is missing or unreadable
    stream-view-type           a table whose stream is off or not NEW_AND_OLD_IMAGES
    global-table-residency     a global table with a replica in a region one of its
                               residency rules forbids (a configuration that cannot comply)
    replication-residency      a bucket replication rule whose prefix or tag filter ships
                               objects into a region a residency rule forbids
    heartbeat-replicated       a heartbeat object outside the replication rules to a peer
    eventbridge-notifications  a watched bucket without EventBridge notifications
    replication-events         replication rules without metrics, or without RTC where the
                               notifications ask for threshold events; no notification for
                               s3:Replication:* events on a replicating bucket

EXIT STATUS:
    0 clean, 1 a problem was found (invalid file or account), 2 wrong usage
";

const EXPLAIN_HELP: &str = "\
tidemark explain — what Tidemark decides for one item, stream record or object

USAGE:
    tidemark explain --region REGION [--config FILE] [--json] INPUT

INPUT (one of):
    --item JSON|FILE      An item in DynamoDB JSON ({\"pk\": {\"S\": \"u1\"}, …}, or the output of
                          `aws dynamodb get-item`), taken as the new image of a change
      --old JSON|FILE     The item before the change (old image)
      --table NAME        Configured table (default: the only one)
    --record JSON|FILE    A DynamoDB stream record, or a Lambda batch {\"Records\": […]}
      --table NAME        Configured table (default: the record's eventSourceARN)
    --object KEY          An object key as stored
      --encoded           KEY is form-encoded as in S3 event notifications (red+flower.jpg)
      --bucket NAME       Configured bucket, by name or its name in REGION (default: the only one)
      --version ID        The object's version id (for {version} templates)
    --s3-event JSON|FILE  An S3 event: EventBridge, or an S3 notification (keys form-encoded)
    With --object or --s3-event:
      --tag NAME=VALUE        An object tag (repeatable)
      --metadata NAME=VALUE   User metadata, name without x-amz-meta- (repeatable)

OPTIONS:
    --region REGION    The region the data is in (residency is decided for it)
    --config FILE      Configuration file (default: tidemark.toml; `-` for the one compiled in)
    --json             Print JSON instead of text
    -h, --help         Print this help

A JSON or FILE argument is read as JSON when it starts with `{`, from standard input when
it is `-`, and from the file otherwise. With --json, --item and --object print one
object, --record and --s3-event an array (one entry per change).

It prints the cache keys each template renders on the old and the new image, the keys
the function would invalidate, whether the change is a canary heartbeat, and the matching
residency rule with its decision (allowed, or violation and the action). It uses the
functions' own decoder, templates, heartbeat detection and rule evaluation.

EXIT STATUS:
    0 explained (a violation too), 1 the input or configuration is invalid, 2 wrong usage
";

const WIRING_HELP: &str = "\
tidemark wiring — template.yaml's generated per-source/per-region blocks, from the configuration

USAGE:
    tidemark wiring CONFIG TEMPLATE [--check]

Rewrites the generated blocks of TEMPLATE (template.yaml) from CONFIG (tidemark.toml);
with --check it only reports blocks that differ, and exits 1 if any does.
";

const METRICS_HELP: &str = "\
tidemark metrics — print the metric catalog (name, unit, dimensions, meaning)

USAGE:
    tidemark metrics
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let wants_help = rest.iter().any(|a| a == "-h" || a == "--help");
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help") => print_help(HELP),
        Some("help") => match rest.first().map(String::as_str) {
            None => print_help(HELP),
            Some("check") => print_help(CHECK_HELP),
            Some("explain") => print_help(EXPLAIN_HELP),
            Some("metrics") => print_help(METRICS_HELP),
            Some("wiring") => print_help(WIRING_HELP),
            Some("flush") => print_help(flush::HELP),
            Some("replay") => print_help(replay::HELP),
            Some(other) => usage(&format!("no command `{other}`"), HELP),
        },
        Some("-V" | "--version") => {
            println!("tidemark {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check") if wants_help => print_help(CHECK_HELP),
        Some("explain") if wants_help => print_help(EXPLAIN_HELP),
        Some("metrics") if wants_help => print_help(METRICS_HELP),
        Some("wiring") if wants_help => print_help(WIRING_HELP),
        Some("flush") => flush::main(rest),
        Some("replay") => replay::main(rest),
        Some("check") => check(rest),
        Some("wiring") => match tidemark::wiring::cli(rest) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some("explain") => explain_cmd(rest),
        Some("metrics") => {
            if let Some(extra) = rest.first() {
                return usage(&format!("unexpected argument `{extra}`"), METRICS_HELP);
            }
            for s in CATALOG {
                let dims: Vec<&str> = s.dimensions.iter().map(|d| d.name()).collect();
                println!(
                    "{:<22} {:<13} [{}]  {}",
                    s.name,
                    s.unit.name(),
                    dims.join(", "),
                    s.help
                );
            }
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("tidemark: unknown command `{other}`\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

fn print_help(text: &str) -> ExitCode {
    print!("{text}");
    ExitCode::SUCCESS
}

fn usage(message: &str, help: &str) -> ExitCode {
    eprintln!("tidemark: {message}\n\n{help}");
    ExitCode::from(2)
}

/// Parsed options: flags, valued options (repeatable) and positionals.
#[derive(Debug, Default)]
struct Args {
    flags: Vec<String>,
    values: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Args {
    /// `flags` take no value, `valued` take one; anything else starting with `--` is an error.
    fn parse(args: &[String], flags: &[&str], valued: &[&str]) -> Result<Self, String> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
                _ => (a.as_str(), None),
            };
            if flags.contains(&name) && inline.is_none() {
                out.flags.push(name.to_owned());
            } else if valued.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("option `{name}` needs a value"))?,
                };
                out.values.push((name.to_owned(), v));
            } else if name.starts_with("--") || (name.starts_with('-') && name.len() > 1) {
                return Err(format!("unknown option `{a}`"));
            } else {
                out.positional.push(a.clone());
            }
        }
        Ok(out)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn one(&self, name: &str) -> Result<Option<&str>, String> {
        let mut found = self.values.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(format!("option `{name}` given more than once"));
        }
        Ok(first)
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.values
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Loads the configuration named by `path` (`-`: the embedded one); returns its display name.
fn load(path: &Path) -> (String, Result<Config, ConfigErrors>) {
    if path.as_os_str() == "-" {
        (EMBEDDED_NAME.to_owned(), Config::embedded())
    } else {
        (path.display().to_string(), Config::load(path))
    }
}

fn check(raw: &[String]) -> ExitCode {
    let args = match Args::parse(raw, &["--json", "--live"], &["--region"]) {
        Ok(a) => a,
        Err(e) => return usage(&e, CHECK_HELP),
    };
    if args.positional.len() > 1 {
        return usage("check takes one configuration file", CHECK_HELP);
    }
    let region = match args.one("--region") {
        Ok(r) => r.map(str::to_owned),
        Err(e) => return usage(&e, CHECK_HELP),
    };
    let live = args.flag("--live");
    let json = args.flag("--json");
    if live && region.is_none() {
        return usage("--live needs --region REGION", CHECK_HELP);
    }
    if !live && region.is_some() {
        return usage("--region is for --live", CHECK_HELP);
    }
    let path = PathBuf::from(
        args.positional
            .first()
            .map_or("tidemark.toml", String::as_str),
    );
    let (shown, loaded) = load(&path);
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "file": shown, "errors": errors.0, "live": null})
                );
            } else {
                for e in errors.iter() {
                    eprintln!("error: {e}");
                }
                eprintln!("{shown}: {} problem(s)", errors.len());
            }
            return ExitCode::FAILURE;
        }
    };
    for (source, template) in tidemark::flush::unflushable(&config) {
        eprintln!(
            "warning: template `{template}` of `{source}` starts with a placeholder: `tidemark flush {source}` cannot select its keys (only --all can)"
        );
    }
    // Sources and regions samconfig.toml (beside the file) does not wire.
    let unwired = tidemark::wiring::check_samconfig_beside(&path, &config);
    if !unwired.is_empty() {
        if json {
            println!(
                "{}",
                json!({"ok": false, "file": shown, "errors": [], "samconfig": unwired, "live": null})
            );
        } else {
            for p in &unwired {
                eprintln!("error: {p}");
            }
        }
        return ExitCode::FAILURE;
    }
    let Some(region) = region else {
        if json {
            println!(
                "{}",
                json!({"ok": true, "file": shown, "errors": [], "live": null})
            );
        } else {
            println!("{shown}: ok — {}", summary(&config));
        }
        return ExitCode::SUCCESS;
    };
    if !config.deployment.regions.contains(&region) {
        return usage(
            &format!(
                "region `{region}` is not in deployment.regions of {shown} ({})",
                config.deployment.regions.join(", ")
            ),
            CHECK_HELP,
        );
    }
    let report = match live_report(&config, &region) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            json!({"ok": report.is_clean(), "file": shown, "errors": [], "live": report})
        );
    } else {
        println!("{shown}: ok — {}", summary(&config));
        print!("{report}");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn live_report(config: &Config, region: &str) -> Result<tidemark::live::Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    Ok(rt.block_on(async {
        let sdk = tidemark::adapters::aws::sdk_config().await;
        let reader = tidemark::adapters::account::AccountReader::from_sdk(&sdk, region);
        let account = reader.read(config, region).await;
        tidemark::live::run(config, &account)
    }))
}

fn summary(c: &Config) -> String {
    format!(
        "{} region(s), {} table(s), {} bucket(s), {} cache-key template(s), {} residency rule(s)",
        c.deployment.regions.len(),
        c.tables.len(),
        c.buckets.len(),
        c.tables.iter().map(|t| t.cache_keys.len()).sum::<usize>()
            + c.buckets.iter().map(|b| b.cache_keys.len()).sum::<usize>(),
        c.tables.iter().map(|t| t.residency.len()).sum::<usize>()
            + c.buckets.iter().map(|b| b.residency.len()).sum::<usize>(),
    )
}

/// Reads a JSON argument: inline when it starts with `{`, stdin for `-`, else a file.
fn json_arg(name: &str, value: &str) -> Result<String, String> {
    if value.trim_start().starts_with('{') {
        return Ok(value.to_owned());
    }
    if value == "-" {
        return std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("{name}: cannot read standard input: {e}"));
    }
    std::fs::read_to_string(value).map_err(|e| format!("{name}: cannot read `{value}`: {e}"))
}

fn pairs(args: &Args, name: &str) -> Result<Vec<(String, String)>, String> {
    args.all(name)
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{name} expects NAME=VALUE, found `{p}`"))
        })
        .collect()
}

fn explain_cmd(raw: &[String]) -> ExitCode {
    let args = match Args::parse(
        raw,
        &["--json", "--encoded"],
        &[
            "--region",
            "--config",
            "--item",
            "--old",
            "--record",
            "--table",
            "--object",
            "--bucket",
            "--version",
            "--tag",
            "--metadata",
            "--s3-event",
        ],
    ) {
        Ok(a) => a,
        Err(e) => return usage(&e, EXPLAIN_HELP),
    };
    match explain_run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(e)) => usage(&e, EXPLAIN_HELP),
        Err(Failure::Input(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Input(String),
}

fn explain_run(args: &Args) -> Result<String, Failure> {
    let one = |n: &str| args.one(n).map_err(Failure::Usage);
    if let Some(p) = args.positional.first() {
        return Err(Failure::Usage(format!("unexpected argument `{p}`")));
    }
    let region = one("--region")?
        .ok_or_else(|| Failure::Usage("--region REGION is required".into()))?
        .to_owned();
    let inputs: Vec<&str> = ["--item", "--record", "--object", "--s3-event"]
        .into_iter()
        .filter(|n| args.all(n).next().is_some())
        .collect();
    if inputs.len() != 1 {
        return Err(Failure::Usage(
            "give exactly one of --item, --record, --object, --s3-event".into(),
        ));
    }
    let item_only = ["--old"];
    let object_only = ["--bucket", "--version", "--tag", "--metadata"];
    let misplaced = |names: &[&str], allowed: bool| -> Result<(), Failure> {
        match names.iter().find(|n| args.all(n).next().is_some()) {
            Some(n) if !allowed => Err(Failure::Usage(format!(
                "{n} does not apply to {}",
                inputs[0]
            ))),
            _ => Ok(()),
        }
    };
    misplaced(&item_only, inputs[0] == "--item")?;
    misplaced(&["--table"], matches!(inputs[0], "--item" | "--record"))?;
    misplaced(&object_only, matches!(inputs[0], "--object" | "--s3-event"))?;
    if args.flag("--encoded") && inputs[0] != "--object" {
        return Err(Failure::Usage("--encoded applies to --object".into()));
    }
    let config_path = PathBuf::from(one("--config")?.unwrap_or("tidemark.toml"));
    let (_, loaded) = load(&config_path);
    let config = loaded.map_err(|e| {
        Failure::Input(
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\nerror: "),
        )
    })?;
    if !config.deployment.regions.contains(&region) {
        return Err(Failure::Usage(format!(
            "region `{region}` is not in deployment.regions ({})",
            config.deployment.regions.join(", ")
        )));
    }
    let table = one("--table")?;
    let input = |n: &str| -> Result<String, Failure> {
        let v = one(n)?.unwrap_or_default();
        json_arg(n, v).map_err(Failure::Input)
    };
    let object = || -> Result<ObjectInput, Failure> {
        Ok(ObjectInput {
            bucket: one("--bucket")?.map(str::to_owned),
            key: one("--object")?.unwrap_or_default().to_owned(),
            encoded: args.flag("--encoded"),
            version: one("--version")?.map(str::to_owned),
            tags: pairs(args, "--tag").map_err(Failure::Usage)?,
            metadata: pairs(args, "--metadata").map_err(Failure::Usage)?,
        })
    };
    let input_err = |e: explain::ExplainError| Failure::Input(e.0);
    let json = args.flag("--json");
    // JSON: an object for --item and --object, an array for --record and --s3-event
    // (either may hold several changes).
    let list = matches!(inputs[0], "--record" | "--s3-event");
    let render = |items: Vec<String>, values: Vec<serde_json::Value>| {
        if json {
            let v = match values.len() {
                1 if !list => values.into_iter().next().unwrap_or_default(),
                _ => serde_json::Value::Array(values),
            };
            format!("{v}\n")
        } else {
            items.join("\n")
        }
    };
    let to_value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| Failure::Input(format!("cannot encode JSON: {e}")))
    };
    match inputs[0] {
        "--item" => {
            let new = input("--item")?;
            let old = match one("--old")? {
                Some(v) => Some(json_arg("--old", v).map_err(Failure::Input)?),
                None => None,
            };
            let e = explain::explain_item(&config, &region, table, &new, old.as_deref())
                .map_err(input_err)?;
            let v = to_value(serde_json::to_value(&e))?;
            Ok(render(vec![e.to_string()], vec![v]))
        }
        "--record" => {
            let text = input("--record")?;
            let all =
                explain::explain_records(&config, &region, table, &text).map_err(input_err)?;
            let values = all
                .iter()
                .map(|e| to_value(serde_json::to_value(e)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(render(
                all.iter().map(ToString::to_string).collect(),
                values,
            ))
        }
        "--object" => {
            let e = explain::explain_object(&config, &region, &object()?).map_err(input_err)?;
            let v = to_value(serde_json::to_value(&e))?;
            Ok(render(vec![e.to_string()], vec![v]))
        }
        _ => {
            let text = input("--s3-event")?;
            let extra = ObjectInput {
                key: String::new(),
                ..object()?
            };
            let all =
                explain::explain_s3_event(&config, &region, &text, &extra).map_err(input_err)?;
            let values = all
                .iter()
                .map(|e| to_value(serde_json::to_value(e)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(render(
                all.iter().map(ToString::to_string).collect(),
                values,
            ))
        }
    }
}
