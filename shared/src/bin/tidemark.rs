//! `tidemark`: operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use tidemark::config::{Config, EMBEDDED_NAME};
use tidemark::metrics::CATALOG;

const HELP: &str = "\
tidemark — operator commands for Tidemark (multi-region cache invalidation, replication
lag audit and data-residency enforcement on AWS Lambda)

USAGE:
    tidemark <COMMAND> [ARGS]

COMMANDS:
    check [FILE]     Validate a configuration file (default: tidemark.toml). Prints a
                     summary, or the first error naming file, source/rule and field;
                     exits 1 on an invalid file.
                     With a samconfig.toml beside the file, also reports any source or
                     region its config-envs do not wire.
    metrics          Print the metric catalog: name, unit, dimensions, meaning.
    wiring CONFIG TEMPLATE
                     Rewrite the generated per-source/per-region blocks of TEMPLATE
                     (template.yaml) from CONFIG; `--check` only reports stale blocks.
    help             Print this help.

OPTIONS:
    -h, --help       Print this help.
    -V, --version    Print the version.

EXAMPLES:
    tidemark check tidemark.toml
    tidemark metrics
    tidemark wiring tidemark.toml template.yaml
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("tidemark {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check") => check(args.get(1).map(PathBuf::from)),
        Some("wiring") => match tidemark::wiring::cli(&args[1..]) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some("metrics") => {
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

fn check(path: Option<PathBuf>) -> ExitCode {
    let path = path.unwrap_or_else(|| PathBuf::from("tidemark.toml"));
    let result = if path.as_os_str() == "-" {
        Config::embedded()
    } else {
        Config::load(&path)
    };
    match result {
        Ok(c) => {
            // Sources and regions samconfig.toml (beside the file) does not wire.
            let unwired = tidemark::wiring::check_samconfig_beside(&path, &c);
            if !unwired.is_empty() {
                for p in unwired {
                    eprintln!("error: {p}");
                }
                return ExitCode::FAILURE;
            }
            let shown = if path.as_os_str() == "-" {
                EMBEDDED_NAME.to_owned()
            } else {
                path.display().to_string()
            };
            println!(
                "{shown}: ok — {} region(s), {} table(s), {} bucket(s), {} cache-key template(s), {} residency rule(s)",
                c.deployment.regions.len(),
                c.tables.len(),
                c.buckets.len(),
                c.tables.iter().map(|t| t.cache_keys.len()).sum::<usize>()
                    + c.buckets.iter().map(|b| b.cache_keys.len()).sum::<usize>(),
                c.tables.iter().map(|t| t.residency.len()).sum::<usize>()
                    + c.buckets.iter().map(|b| b.residency.len()).sum::<usize>(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
