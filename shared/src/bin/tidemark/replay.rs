//! `tidemark replay`: re-run what the dead-letter stores keep (argument parsing, name
//! resolution, progress and the summary over `tidemark::replay`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tidemark::adapters::dead_letter::{S3_PREFIX, S3DeadLetter, S3Kept, SqsQueue};
use tidemark::adapters::{alerts::SnsAlerts, aws, object_store::S3ObjectStore, sns::SnsPublisher};
use tidemark::config::Config;
use tidemark::replay::{Options, Replay, Store, Stores};

pub const HELP: &str = "\
tidemark replay — re-run what the dead-letter stores keep, and publish their invalidations

USAGE:
    tidemark replay --region REGION [--apply] [--from STORE]... [--limit N] [--json]
                    [--config FILE] [--bucket NAME] [--invalidation-queue-url URL]
                    [--object-dlq-url URL] [--invalidation-dlq-url URL]
                    [--topic-arn ARN] [--alert-topic-arn ARN]

A DRY RUN BY DEFAULT: it runs every kept record through the functions' own handlers with a
publisher, alert sender and object store that change nothing, and lists what it would
replay. --apply publishes and removes.

STORES (--from, repeatable; default: all four, in this order):
    given-up           stream batches the mapping gave up (Lambda's S3 on-failure
                       destination: aws/lambda/ in the dead-letter bucket; it keeps the whole
                       batch, so replay works after the stream's 24 h)
    dead-letters       records the stream-processor rejected
                       (dead-letter/stream-processor/ in the dead-letter bucket)
    object-dlq         the object-processor's dead-letter queue (its rejects, entries kept in
                       S3 behind a pointer, and messages its queue gave up)
    invalidation-dlq   invalidation messages the cache-invalidator gave up: checked with its
                       decoder and sent back to the region's invalidation queue (the cache
                       is reachable only from the invalidator, inside its VPC)

Records go through the stream-processor's and object-processor's pipeline and their
invalidations are published on REGION's invalidation topic (residency actions and alerts
run again too: all idempotent). A kept thing is removed only after every record in it went
through; one with a record rejected again (the reason is printed, keys only) or failed for
a transient reason stays where it is, whole. Replaying twice is harmless: invalidations are
deletes. Fix the cause first (often tidemark.toml: a table or bucket it lacks; the replay
uses --config, so replaying with the fixed file works before the redeploy).

OPTIONS:
    --region REGION                The region whose stores to replay (required)
    --apply                        Replay: publish, send back, remove (default: dry run)
    --from STORE                   A store to replay (repeatable; default: all)
    --limit N                      At most N kept things per store
    --json                         Print the summary as JSON
    --config FILE                  Configuration (default: tidemark.toml; `-` for the one
                                   compiled in)
    --bucket NAME                  Dead-letter bucket (default:
                                   tidemark-dead-letter-<account>-REGION)
    --invalidation-queue-url URL   Default: the URL of tidemark-invalidations-REGION (its
                                   account names the other defaults)
    --object-dlq-url URL           Default: tidemark-object-events-dlq-REGION
    --invalidation-dlq-url URL     Default: tidemark-invalidations-dlq-REGION
    --topic-arn ARN                Invalidation topic (default: tidemark-invalidations-REGION)
    --alert-topic-arn ARN          Alert topic (default: tidemark-alerts-REGION)
    -h, --help                     Print this help

Progress goes to standard error, the summary to standard output: per kept thing its
location and verdict, then the counts (replayed, still rejected, failed, skipped). Item
contents are never printed. With residency.hash_keys_in_alerts, keys in warnings are hashed
with the secret TIDEMARK_KEY_HASH_SECRET_ARN names.

EXAMPLES:
    tidemark replay --region eu-west-1
    tidemark replay --region eu-west-1 --apply
    tidemark replay --region eu-west-1 --from invalidation-dlq --apply

EXIT STATUS:
    0 everything replayed (or nothing kept), 1 something still rejected, failed or skipped,
    2 wrong usage
";

#[derive(Default)]
struct Args {
    region: Option<String>,
    apply: bool,
    from: Vec<Store>,
    limit: Option<usize>,
    json: bool,
    config: Option<PathBuf>,
    bucket: Option<String>,
    invalidation_queue_url: Option<String>,
    object_dlq_url: Option<String>,
    invalidation_dlq_url: Option<String>,
    topic_arn: Option<String>,
    alert_topic_arn: Option<String>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("tidemark replay: {msg}\n\n{HELP}");
    ExitCode::from(2)
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--region" => a.region = Some(value("--region")?),
            "--apply" => a.apply = true,
            "--json" => a.json = true,
            "--from" => {
                let v = value("--from")?;
                let store = Store::parse(&v).ok_or_else(|| {
                    format!(
                        "--from: no store `{v}` (expected one of {})",
                        Store::ALL.map(Store::name).join(", ")
                    )
                })?;
                if !a.from.contains(&store) {
                    a.from.push(store);
                }
            }
            "--limit" => {
                let v = value("--limit")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--limit: `{v}` is not a number"))?;
                if n == 0 {
                    return Err("--limit: 0 would replay nothing (expected at least 1)".into());
                }
                a.limit = Some(n);
            }
            "--config" => a.config = Some(value("--config")?.into()),
            "--bucket" => a.bucket = Some(value("--bucket")?),
            "--invalidation-queue-url" => {
                a.invalidation_queue_url = Some(value("--invalidation-queue-url")?);
            }
            "--object-dlq-url" => a.object_dlq_url = Some(value("--object-dlq-url")?),
            "--invalidation-dlq-url" => {
                a.invalidation_dlq_url = Some(value("--invalidation-dlq-url")?);
            }
            "--topic-arn" => a.topic_arn = Some(value("--topic-arn")?),
            "--alert-topic-arn" => a.alert_topic_arn = Some(value("--alert-topic-arn")?),
            s if s.starts_with('-') => return Err(format!("unknown option `{s}`")),
            s => return Err(format!("unexpected argument `{s}`")),
        }
    }
    Ok(Some(a))
}

pub fn main(args: &[String]) -> ExitCode {
    let a = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage(&e),
    };
    let Some(region) = a.region.clone() else {
        return usage("--region is required");
    };
    let path = a.config.clone().unwrap_or_else(|| "tidemark.toml".into());
    let config = if path.as_os_str() == "-" {
        Config::embedded()
    } else {
        Config::load(&path)
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !config.deployment.regions.contains(&region) {
        return usage(&format!(
            "region `{region}` is not in deployment.regions of {} ({})",
            path.display(),
            config.deployment.regions.join(", ")
        ));
    }
    // The functions' warnings (a record retried or rejected, with its reason) go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let from = if a.from.is_empty() {
        Store::ALL.to_vec()
    } else {
        a.from.clone()
    };
    let json = a.json;
    let result = runtime.block_on(async move {
        let replay = build(&a, config, &region).await?;
        let options = Options {
            apply: a.apply,
            from,
            limit: a.limit,
        };
        let tty = std::io::stderr().is_terminal();
        let progress = move |store: Store, items: usize, records: usize| {
            if tty {
                eprint!(
                    "\r{}: {items} kept, {records} records replayed",
                    store.name()
                );
            } else if items.is_multiple_of(50) {
                eprintln!("{}: {items} kept, {records} records replayed", store.name());
            }
        };
        eprintln!(
            "{} {} in {region}",
            if options.apply {
                "replaying"
            } else {
                "dry run (nothing is changed; --apply to replay):"
            },
            options
                .from
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let summary = replay.run(&options, &progress).await;
        if tty {
            eprintln!();
        }
        Ok::<_, String>(summary)
    });
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let mut v = serde_json::to_value(&summary).unwrap_or_default();
        v["replayed"] = summary.replayed().into();
        v["still_rejected"] = summary.still_rejected().into();
        v["failed"] = summary.failed().into();
        v["skipped"] = summary.skipped().into();
        println!("{v}");
    } else {
        print!("{summary}");
    }
    if summary.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The AWS partition of a region (for ARNs).
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The account of a queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
fn account_of(queue_url: &str) -> Option<&str> {
    let mut parts = queue_url.trim_end_matches('/').rsplit('/');
    parts.next()?;
    parts
        .next()
        .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
}

async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String, String> {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| {
            format!(
                "GetQueueUrl {name}: {} (pass the URL if the queue is named otherwise)",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })?
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| format!("GetQueueUrl {name}: no URL in the answer"))
}

/// The stores, topics and clients of `region`, by the template's names unless given.
async fn build(a: &Args, config: Config, region: &str) -> Result<Replay, String> {
    let sdk = aws::sdk_config_in(region).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let s3 = aws::s3_client(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let invalidation_queue_url = match &a.invalidation_queue_url {
        Some(u) => u.clone(),
        None => queue_url(&sqs, &format!("tidemark-invalidations-{region}")).await?,
    };
    let account = account_of(&invalidation_queue_url).map(str::to_owned);
    let by_account = |what: &str, make: &dyn Fn(&str) -> String| {
        account.as_deref().map(make).ok_or_else(|| {
            format!("cannot tell the account from {invalidation_queue_url}: pass {what}")
        })
    };
    let bucket = match &a.bucket {
        Some(b) => b.clone(),
        None => by_account("--bucket", &|acct| {
            format!("tidemark-dead-letter-{acct}-{region}")
        })?,
    };
    let topic = match &a.topic_arn {
        Some(t) => t.clone(),
        None => by_account("--topic-arn", &|acct| {
            format!(
                "arn:{}:sns:{region}:{acct}:tidemark-invalidations-{region}",
                partition(region)
            )
        })?,
    };
    let alert_topic = match &a.alert_topic_arn {
        Some(t) => t.clone(),
        None => by_account("--alert-topic-arn", &|acct| {
            format!(
                "arn:{}:sns:{region}:{acct}:tidemark-alerts-{region}",
                partition(region)
            )
        })?,
    };
    let wanted = |s: Store| a.from.is_empty() || a.from.contains(&s);
    let object_dlq = if wanted(Store::ObjectDlq) {
        Some(match &a.object_dlq_url {
            Some(u) => u.clone(),
            None => queue_url(&sqs, &format!("tidemark-object-events-dlq-{region}")).await?,
        })
    } else {
        None
    };
    let invalidation_dlq = if wanted(Store::InvalidationDlq) {
        Some(match &a.invalidation_dlq_url {
            Some(u) => u.clone(),
            None => queue_url(&sqs, &format!("tidemark-invalidations-dlq-{region}")).await?,
        })
    } else {
        None
    };
    let stores = Stores {
        dead_letters: Some(Arc::new(S3Kept::new(
            s3.clone(),
            bucket.clone(),
            format!("{S3_PREFIX}{}/", tidemark::app::stream::FUNCTION),
        ))),
        given_up: Some(Arc::new(S3Kept::new(
            s3.clone(),
            bucket.clone(),
            "aws/lambda/".to_owned(),
        ))),
        object_dlq: object_dlq.map(|u| {
            Arc::new(SqsQueue::new(sqs.clone(), u)) as Arc<dyn tidemark::ports::KeptRecords>
        }),
        invalidation_dlq: invalidation_dlq.map(|u| {
            Arc::new(SqsQueue::new(sqs.clone(), u)) as Arc<dyn tidemark::ports::KeptRecords>
        }),
        invalidation_queue: Some(Arc::new(SqsQueue::new(sqs.clone(), invalidation_queue_url))),
        overflow: Some(Arc::new(S3DeadLetter::new(s3.clone(), bucket))),
    };
    let labels = tidemark::app::key_labels(&config, &sdk).map_err(|e| e.to_string())?;
    Ok(Replay {
        config,
        region: region.to_owned(),
        publisher: Arc::new(SnsPublisher::new(sns.clone(), topic)),
        alerts: Arc::new(SnsAlerts::new(sns, alert_topic)),
        labels,
        objects: Arc::new(S3ObjectStore::new(s3)),
        stores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_comes_from_the_queue_url() {
        assert_eq!(
            account_of(
                "https://sqs.eu-west-1.amazonaws.com/123456789012/tidemark-invalidations-eu-west-1"
            ),
            Some("123456789012")
        );
        assert_eq!(account_of("http://localhost:4566/queue/q"), None);
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("eu-west-1"), "aws");
    }
}
