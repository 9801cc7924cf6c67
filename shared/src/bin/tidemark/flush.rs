//! `tidemark flush SOURCE`: delete a source's cache keys by template prefix.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tidemark::adapters::cache::{CacheAuth, CacheSettings, RedisCache};
use tidemark::config::Config;
use tidemark::flush::{self, FlushCommand};
use tidemark::ports::FlushPlan;

pub const HELP: &str = "\
tidemark flush — delete a source's cache keys by template prefix, after given-up invalidations

USAGE:
    tidemark flush SOURCE --region REGION [--config FILE] [--queue-url URL]
    tidemark flush SOURCE --region REGION --local --cache-url URL [--cluster] [--ca-file PEM]
                   [--username USER] [--password-file FILE] [--batch N] [--pause-ms MS]
    tidemark flush --all --region REGION [--yes] [...]

Rendering keys from the table cannot find what lost invalidations leave behind (keys of
deleted items, old e-mail values), so flush deletes every key under each literal prefix
of SOURCE's cache-key templates: SCAN MATCH on every node of a cluster, then UNLINK in
batches (default 500 keys, 10 ms apart).

The cache is reachable only inside its VPC: by default the command is sent to REGION's
invalidation queue (tidemark-invalidations-REGION, or --queue-url) and the
cache-invalidator runs it, logging `flush progress` / `flush done` and emitting the
KeysFlushed metric. --local runs the same code here, against a cache you can reach.

A template that starts with a placeholder has no literal prefix (`tidemark check` warns):
its source cannot be flushed selectively. --all then deletes every key of the cache,
after you type the region name to confirm (or --yes).

OPTIONS:
    --region REGION        The region whose cache to flush (required)
    --config FILE          Configuration (default: tidemark.toml; `-` for the one compiled in)
    --queue-url URL        The invalidation queue (default: looked up by name)
    --local                Run here against --cache-url instead of sending the command
    --cache-url URL        redis://host:port or rediss://host:port (TLS)
    --cluster              The cache is a cluster (every master is scanned)
    --ca-file PEM          Roots to trust for TLS (private CA)
    --username USER        ACL user
    --password-file FILE   File holding the password (never on the command line)
    --batch N              Keys per SCAN/UNLINK round (default 500)
    --pause-ms MS          Pause between rounds (default 10)
    --all                  Every key of the cache (needs confirmation)
    --yes                  Do not ask for confirmation
    -h, --help             Print this help

EXIT STATUS:
    0 flushed (or command sent), 1 failed, 2 wrong usage
";

#[derive(Default)]
struct Args {
    source: Option<String>,
    region: Option<String>,
    config: Option<PathBuf>,
    queue_url: Option<String>,
    local: bool,
    cache_url: Option<String>,
    cluster: bool,
    ca_file: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    batch: Option<usize>,
    pause_ms: Option<u64>,
    all: bool,
    yes: bool,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("tidemark flush: {msg}\n\n{HELP}");
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
            "--config" => a.config = Some(value("--config")?.into()),
            "--queue-url" => a.queue_url = Some(value("--queue-url")?),
            "--local" => a.local = true,
            "--cache-url" => a.cache_url = Some(value("--cache-url")?),
            "--cluster" => a.cluster = true,
            "--ca-file" => a.ca_file = Some(value("--ca-file")?.into()),
            "--username" => a.username = Some(value("--username")?),
            "--password-file" => a.password_file = Some(value("--password-file")?.into()),
            "--batch" => {
                let v = value("--batch")?;
                a.batch = Some(
                    v.parse()
                        .map_err(|_| format!("--batch: `{v}` is not a number"))?,
                );
            }
            "--pause-ms" => {
                let v = value("--pause-ms")?;
                a.pause_ms = Some(
                    v.parse()
                        .map_err(|_| format!("--pause-ms: `{v}` is not a number"))?,
                );
            }
            "--all" => a.all = true,
            "--yes" => a.yes = true,
            s if s.starts_with('-') => return Err(format!("unknown option `{s}`")),
            s if a.source.is_none() => a.source = Some(s.to_owned()),
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
    if a.source.is_none() && !a.all {
        return usage("name a SOURCE (a table or bucket of the configuration), or --all");
    }
    if a.local && a.cache_url.is_none() {
        return usage("--local needs --cache-url");
    }
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
    let source = a.source.clone().unwrap_or_else(|| "*".to_owned());
    let command = if a.all {
        FlushCommand::new(&source, &region, Vec::new(), true)
    } else {
        match flush::prefixes(&config, &source) {
            Ok(p) => FlushCommand::new(&source, &region, p, false),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    if a.all && !a.yes && !confirm(&region) {
        eprintln!("not confirmed: nothing was flushed");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if a.local {
            local(&a, &command).await
        } else {
            send(&a, &command).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn confirm(region: &str) -> bool {
    eprint!("This deletes EVERY key of the cache in {region}. Type `{region}` to confirm: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && line.trim() == region
}

fn what(command: &FlushCommand) -> String {
    if command.all {
        "every key".to_owned()
    } else {
        format!("keys under {}", command.prefixes.join(", "))
    }
}

async fn send(a: &Args, command: &FlushCommand) -> Result<(), String> {
    // The functions' SDK timeouts: an unreachable endpoint fails the command, never hangs it.
    let sdk = tidemark::adapters::aws::sdk_config_in(&command.region).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = match &a.queue_url {
        Some(u) => u.clone(),
        None => {
            let name = format!("tidemark-invalidations-{}", command.region);
            sqs.get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "GetQueueUrl {name}: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(e)
                    )
                })?
                .queue_url()
                .ok_or_else(|| format!("GetQueueUrl {name}: no URL"))?
                .to_owned()
        }
    };
    let id = flush::send(&sqs, &queue_url, command).await?;
    println!(
        "sent flush of `{}` ({}) to {queue_url} as message {id}: the cache-invalidator in {} runs it (logs `flush progress`, `flush done`; metric KeysFlushed)",
        command.source,
        what(command),
        command.region
    );
    Ok(())
}

async fn local(a: &Args, command: &FlushCommand) -> Result<(), String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca_pem = a.ca_file.as_ref().map(read).transpose()?;
    let auth = match &a.password_file {
        Some(p) => CacheAuth::Password(String::from_utf8_lossy(&read(p)?).trim_end().to_owned()),
        None => CacheAuth::None,
    };
    let cache = RedisCache::new(CacheSettings {
        url: a.cache_url.clone().unwrap_or_default(),
        cluster: a.cluster,
        ca_pem,
        username: a.username.clone(),
        auth,
    });
    let defaults = FlushPlan::default();
    let plan = FlushPlan {
        batch: a.batch.unwrap_or(defaults.batch).max(1),
        pause: a.pause_ms.map_or(defaults.pause, Duration::from_millis),
    };
    let tty = std::io::stderr().is_terminal();
    let progress = |prefix: &str, n: u64| {
        if tty {
            eprint!("\r{prefix}*: {n} keys removed");
        }
    };
    eprintln!(
        "flushing `{}` in {}: {}",
        command.source,
        command.region,
        what(command)
    );
    let report = flush::run(&cache, command, plan, &progress)
        .await
        .map_err(|e| e.to_string())?;
    if tty {
        eprintln!();
    }
    for (prefix, n) in &report.removed {
        println!("{prefix}*\t{n} keys removed");
    }
    println!("total\t{} keys removed", report.total());
    Ok(())
}
