//! `tidemark-page-check`: the dashboard page's browser check. Opens the page `tidemark-sim`
//! wrote in headless Chromium (Debian's `chromium`, installed by `scripts/setup.sh`), reads
//! the rendered DOM back and checks it against the template's dashboard and the page's own
//! data (`tidemark_tests::sim::page::check_dom`); with `--screenshot PNG` it also saves what
//! a person would see.
//!
//! USAGE: tidemark-page-check PAGE.html [--screenshot OUT.png] [--height PX]
//!        [--expect-empty "WIDGET TITLE"]... [--allow-sparse "WIDGET TITLE"]...
//!        [--allow-empty "WIDGET TITLE"]...
//!
//! `--expect-empty` names a widget the run is known to give no data (the check then wants
//! it to say "No data" visibly, and fails if it has data after all). `--allow-sparse`
//! names a widget of rare events whose data may all fall in one period (one point per
//! series instead of a line of at least 2; it must still have data). `--allow-empty`: the
//! same, and a short run may have none (it must then say "No data" visibly). Each title
//! must be one of the template's widgets. Exits 0 when every check holds, 1 when not, 2 on
//! bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use tidemark_tests::sim::page;

struct Args {
    page: PathBuf,
    screenshot: Option<PathBuf>,
    height: u32,
    lenient: page::Leniency,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut page = None;
    let mut a = Args {
        page: PathBuf::new(),
        screenshot: None,
        height: 1500,
        lenient: page::Leniency::default(),
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut val = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} expects a value, found the end of the arguments"))
        };
        match arg.as_str() {
            "--screenshot" => a.screenshot = Some(PathBuf::from(val(arg)?)),
            "--height" => {
                let v = val(arg)?;
                a.height = v
                    .parse()
                    .map_err(|_| format!("--height expects pixels, found `{v}`"))?;
            }
            "--expect-empty" => a.lenient.expect_empty.push(val(arg)?),
            "--allow-sparse" => a.lenient.allow_sparse.push(val(arg)?),
            "--allow-empty" => a.lenient.allow_empty.push(val(arg)?),
            s if s.starts_with("--") => return Err(format!("unknown argument `{s}`")),
            s if page.is_none() => page = Some(PathBuf::from(s)),
            s => return Err(format!("expected one page, found a second `{s}`")),
        }
    }
    a.page = page.ok_or("expected the page's path, found none")?;
    Ok(a)
}

/// Runs headless Chromium on `page` with `extra` flags (a fresh profile; at most 90 s).
fn chromium(page: &Path, extra: &[String]) -> Result<String> {
    let profile = std::env::temp_dir().join(format!("tidemark-page-check-{}", std::process::id()));
    let out = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(page)
        .output()
        .context("cannot run chromium (scripts/setup.sh installs it)")?;
    let _ = std::fs::remove_dir_all(&profile);
    if !out.status.success() {
        bail!(
            "chromium on {}: expected exit 0, found {} ({})",
            page.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("dbus"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(a: &Args) -> Result<bool> {
    let page = a
        .page
        .canonicalize()
        .with_context(|| format!("cannot find the page {}", a.page.display()))?;
    let source = std::fs::read_to_string(&page)?;
    let expected = page::expected(&source)?;
    let dom = chromium(&page, &["--dump-dom".to_owned()])?;
    let rendered = page::read_dom(&dom)?;
    let titles = page::template_titles()?;
    let problems = page::check_dom(&rendered, &expected, &titles, &a.lenient);
    println!(
        "page check: {} — {} widgets ({}), {} fault windows and {} alarm annotations on the timeline",
        page.display(),
        rendered.widgets.len(),
        rendered.status_text,
        rendered.timeline_fault_windows,
        rendered.timeline_alarm_annotations
    );
    for w in &rendered.widgets {
        println!(
            "  {:<3} paths {:>2} (points {:>4}, longest {:>3}) faults {} alarms {}  {}",
            if w.no_data { "—" } else { "ok" },
            w.paths.len(),
            w.paths.iter().map(|(_, n)| n).sum::<usize>(),
            w.paths.iter().map(|(_, n)| *n).max().unwrap_or(0),
            w.fault_windows,
            w.alarm_annotations,
            w.title
        );
    }
    if let Some(png) = &a.screenshot {
        if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let png_abs = std::env::current_dir()?.join(png);
        chromium(
            &page,
            &[
                format!("--screenshot={}", png_abs.display()),
                format!("--window-size=1280,{}", a.height),
            ],
        )?;
        let size = std::fs::metadata(&png_abs)
            .with_context(|| format!("chromium wrote no screenshot at {}", png_abs.display()))?
            .len();
        println!("screenshot: {} ({} KiB)", png.display(), size / 1024);
    }
    for p in &problems {
        eprintln!("page check: {p}");
    }
    Ok(problems.is_empty())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tidemark-page-check: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(true) => {
            println!("page check: PASS");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("page check: FAIL");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("page check: FAIL — {e:#}");
            ExitCode::FAILURE
        }
    }
}
