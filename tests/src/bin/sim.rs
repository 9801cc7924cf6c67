//! `tidemark-sim`: the local two-region simulation (the README's first command runs it
//! through `scripts/simulate.sh`, which starts the emulators and builds the functions).
//!
//! A smoke scenario with the real function binaries: caches filled in both regions,
//! writes in both regions, a delete and a TTL expiry, a replication pause; it prints what
//! happened at each step and exits non-zero if any derived key survives or any untouched
//! key is lost.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tidemark_tests::world::{Options, REGIONS, Stages, World};

const HELP: &str = "\
tidemark-sim — local two-region simulation of Tidemark (us-east-1 ↔ eu-west-1)

USAGE:
    scripts/simulate.sh            (sets up, starts the emulators, builds, runs this)
    tidemark-sim [--in-process]    (expects TIDEMARK_MOTO_URL and TIDEMARK_REDIS_* from scripts/env.sh)

OPTIONS:
    --in-process    call the handlers in-process instead of the cargo-lambda binaries
    -h, --help      print this help
";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if let Some(a) = args.iter().find(|a| *a != "--in-process") {
        eprintln!("tidemark-sim: unknown argument `{a}`\n\n{HELP}");
        return ExitCode::from(2);
    }
    let mut options = Options::default();
    if args.iter().any(|a| a == "--in-process") {
        options.mode = tidemark_tests::world::Mode::InProcess;
    }
    match run(options).await {
        Ok(()) => {
            println!(
                "\nsimulation: PASS — every derived key was invalidated in both regions, untouched keys survived"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nsimulation: FAIL — {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn show_caches(w: &World, title: &str) -> Result<()> {
    println!("  {title}");
    for r in REGIONS {
        let keys = w.cached(r).await?;
        println!(
            "    {r:<10} cache: {}",
            if keys.is_empty() {
                "(empty)".to_owned()
            } else {
                keys.join(", ")
            }
        );
    }
    Ok(())
}

async fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    println!("== starting two regions ({:?} functions) ==", options.mode);
    let mut w = World::start(options).await?;
    println!(
        "  world {}: table {}, buckets assets-{}-<region>, one redis per region",
        w.id, w.table, w.id
    );

    println!("\n== 1. application data and warm caches ==");
    for (region, pk, email) in [
        ("us-east-1", "alice", "alice@example.com"),
        ("eu-west-1", "bob", "bob@example.com"),
        ("us-east-1", "carol", "carol@example.com"),
        ("us-east-1", "dave", "dave@example.com"),
    ] {
        w.put_user(region, pk, email).await?;
        println!("  write {pk:<6} in {region}");
    }
    w.settle().await?;
    for r in REGIONS {
        for (pk, email) in [
            ("alice", "alice@example.com"),
            ("bob", "bob@example.com"),
            ("carol", "carol@example.com"),
            ("dave", "dave@example.com"),
            ("erin", "erin@example.com"),
        ] {
            w.set_cached(r, &format!("user:{pk}"), "cached").await?;
            w.set_cached(r, &format!("user-email:{email}"), "cached")
                .await?;
        }
    }
    show_caches(
        &w,
        "caches filled by readers (erin has no item: her keys must survive)",
    )
    .await?;

    println!("\n== 2. changes in both regions ==");
    w.put_user("us-east-1", "alice", "alice@new.example.com")
        .await?;
    println!("  us-east-1: alice changes e-mail (old and new e-mail keys must go)");
    w.put_user("eu-west-1", "bob", "bob@example.com").await?;
    println!("  eu-west-1: bob rewritten");
    w.delete_user("us-east-1", "carol").await?;
    println!("  us-east-1: carol deleted");
    w.ttl_expire("eu-west-1", "dave").await?;
    println!("  eu-west-1: dave expires by TTL");
    w.settle().await?;
    report_functions(&w);
    show_caches(&w, "after replication and invalidation").await?;
    for r in REGIONS {
        let left = w.cached(r).await?;
        if left != ["user-email:erin@example.com", "user:erin"] {
            bail!("{r}: unexpected cache contents {left:?}");
        }
    }

    println!("\n== 3. replication us-east-1 → eu-west-1 paused ==");
    w.pause("us-east-1", "eu-west-1", true);
    w.set_cached("eu-west-1", "user:frank", "cached").await?;
    w.set_cached("us-east-1", "user:frank", "cached").await?;
    w.put_user("us-east-1", "frank", "frank@example.com")
        .await?;
    w.settle_with(Stages::ALL, Duration::from_secs(60)).await?;
    let eu_has = w.get_user("eu-west-1", "frank").await?.is_some();
    let eu_cached = w
        .cached("eu-west-1")
        .await?
        .contains(&"user:frank".to_owned());
    println!(
        "  eu-west-1 replica has frank: {eu_has}; eu-west-1 cache still holds user:frank: {eu_cached}"
    );
    println!(
        "  (eu-west-1 invalidates from its own replica's stream, so its cache is not cleared before its data changes)"
    );
    if eu_has || !eu_cached {
        bail!("eu-west-1 must neither hold nor invalidate frank while replication is paused");
    }
    w.pause("us-east-1", "eu-west-1", false);
    w.settle().await?;
    let eu_cached = w
        .cached("eu-west-1")
        .await?
        .contains(&"user:frank".to_owned());
    println!(
        "  resumed: eu-west-1 replica has frank: {}; cache holds user:frank: {eu_cached}",
        w.get_user("eu-west-1", "frank").await?.is_some()
    );
    if eu_cached {
        bail!("eu-west-1 kept user:frank after replication resumed");
    }
    println!("\n  finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn report_functions(w: &World) {
    for r in REGIONS {
        for f in ["stream-processor", "cache-invalidator"] {
            let docs = w.emf(r, f);
            let sum = |name: &str| -> f64 {
                docs.iter()
                    .filter_map(|d| d.get(name))
                    .map(|v| {
                        v.as_f64().unwrap_or_else(|| {
                            v.as_array().map_or(0.0, |a| {
                                a.iter().filter_map(serde_json::Value::as_f64).sum()
                            })
                        })
                    })
                    .sum()
            };
            if docs.is_empty() {
                continue;
            }
            match f {
                "stream-processor" => println!(
                    "  {r:<10} {f}: records {} processed, {} failed, {} rejected; {} keys in {} messages",
                    sum("RecordsProcessed"),
                    sum("RecordsFailed"),
                    sum("RecordsRejected"),
                    sum("InvalidationKeys"),
                    sum("InvalidationMessages")
                ),
                _ => println!("  {r:<10} {f}: {} keys unlinked", sum("KeysInvalidated")),
            }
        }
    }
}
