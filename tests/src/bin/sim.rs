//! `tidemark-sim`: the local two-region simulation (the README's first command runs it
//! through `scripts/simulate.sh`, which starts the emulators and builds the functions).
//! The logic lives in `tidemark_tests::sim`; `--help` explains the options.

use std::process::ExitCode;

use tidemark_tests::sim::args::{self, HELP, Parsed};
use tidemark_tests::sim::{page, report, run};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = match args::parse(&argv) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(a)) => a,
        Err(e) => {
            eprintln!("tidemark-sim: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let r = match run::run(&a).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("\nsimulation: FAIL — {e:#}");
            return ExitCode::FAILURE;
        }
    };
    report::print(&r);
    // The JSON report and the page are outputs the run promises: failing to write either
    // fails the run.
    let mut written = true;
    if let Some(dir) = a.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_string_pretty(&r).map(|j| std::fs::write(&a.report, j)) {
        Ok(Ok(())) => println!("report written to {}", a.report.display()),
        Ok(Err(e)) => {
            written = false;
            eprintln!(
                "tidemark-sim: cannot write the report to {}: {e}",
                a.report.display()
            );
        }
        Err(e) => {
            written = false;
            eprintln!("tidemark-sim: cannot encode the report: {e}");
        }
    }
    match page::write(&r, &a.page) {
        Ok(()) => println!(
            "dashboard page written to {} (self-contained: open it in a browser, e.g. xdg-open {})",
            a.page.display(),
            a.page.display()
        ),
        Err(e) => {
            written = false;
            eprintln!("tidemark-sim: cannot write the dashboard page: {e:#}");
        }
    }
    if r.pass && written {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
