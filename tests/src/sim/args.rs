//! `tidemark-sim`'s options.

use std::path::PathBuf;

use super::faults::Fault;

/// The options, shared with `scripts/simulate.sh` (which prints it without building).
pub const HELP: &str = include_str!("help.txt");
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub duration_s: u64,
    pub rate: f64,
    pub items: usize,
    pub faults: Vec<Fault>,
    pub seed: u64,
    /// Delay of the delayed second delete (`SecondDeleteDelaySeconds`); 0: none.
    pub second_delete_s: u32,
    pub in_process: bool,
    pub report: PathBuf,
    pub page: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            duration_s: 90,
            rate: 4.0,
            items: 40,
            faults: Fault::ALL.to_vec(),
            seed: 1,
            second_delete_s: 5,
            in_process: false,
            report: PathBuf::from("target/tidemark-sim-report.json"),
            page: PathBuf::from("target/tidemark-sim-dashboard.html"),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Args),
    Help,
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} expects a value, found the end of the arguments"))
}

fn number<T: std::str::FromStr>(v: &str, flag: &str, what: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag} expects {what}, found `{v}`"))
}

pub fn parse(argv: &[String]) -> Result<Parsed, String> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let val = |it: &mut std::slice::Iter<'_, String>| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => value(it, flag).map(str::to_owned),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--in-process" if inline.is_none() => a.in_process = true,
            "--in-process" => return Err("--in-process takes no value".to_owned()),
            "--duration" => {
                a.duration_s = number(&val(&mut it)?, flag, "a whole number of seconds ≥ 5")?;
                if a.duration_s < 5 {
                    return Err(format!(
                        "--duration expects a whole number of seconds ≥ 5, found {}",
                        a.duration_s
                    ));
                }
            }
            "--rate" => {
                a.rate = number(&val(&mut it)?, flag, "changes per second (a number > 0)")?;
                if !(a.rate > 0.0 && a.rate <= 200.0) {
                    return Err(format!(
                        "--rate expects changes per second in (0, 200], found {}",
                        a.rate
                    ));
                }
            }
            "--items" => {
                a.items = number(&val(&mut it)?, flag, "a whole number of items ≥ 2")?;
                if a.items < 2 {
                    return Err(format!(
                        "--items expects a whole number ≥ 2, found {}",
                        a.items
                    ));
                }
            }
            "--seed" => a.seed = number(&val(&mut it)?, flag, "a whole number")?,
            "--second-delete" => {
                a.second_delete_s = number(&val(&mut it)?, flag, "seconds from 0 to 900")?;
                if a.second_delete_s > 900 {
                    return Err(format!(
                        "--second-delete expects seconds from 0 to 900 (SQS DelaySeconds), found {}",
                        a.second_delete_s
                    ));
                }
            }
            "--report" => a.report = PathBuf::from(val(&mut it)?),
            "--page" => a.page = PathBuf::from(val(&mut it)?),
            "--faults" => {
                let list = val(&mut it)?;
                if list.trim().is_empty() {
                    return Err(
                        "--faults expects `all`, `none` or fault names, found an empty list"
                            .to_owned(),
                    );
                }
                a.faults = Fault::parse_list(&list)?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Parsed::Run(a))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<Parsed, String> {
        parse(&s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn options_parse_with_spaces_or_equals_and_defaults_fill_the_rest() {
        let Ok(Parsed::Run(a)) = p(&[
            "--duration",
            "20",
            "--rate=2.5",
            "--faults",
            "sns-refused,malformed",
            "--seed",
            "9",
            "--in-process",
        ]) else {
            panic!("expected a run")
        };
        assert_eq!(a.duration_s, 20);
        assert!((a.rate - 2.5).abs() < f64::EPSILON);
        assert_eq!(a.faults, vec![Fault::SnsRefused, Fault::Malformed]);
        assert_eq!(a.seed, 9);
        assert_eq!(a.second_delete_s, 5);
        assert!(a.in_process);
        assert_eq!(a.items, Args::default().items);
        assert_eq!(
            p(&["--faults", "none"]).unwrap(),
            Parsed::Run(Args {
                faults: vec![],
                ..Args::default()
            })
        );
        assert_eq!(p(&["-h"]).unwrap(), Parsed::Help);
    }

    #[test]
    fn bad_options_say_what_was_expected_and_found() {
        assert_eq!(p(&["--bogus"]).unwrap_err(), "unknown argument `--bogus`");
        assert!(p(&["--duration", "x"]).unwrap_err().contains("found `x`"));
        assert!(p(&["--duration"]).unwrap_err().contains("found the end"));
        assert!(p(&["--rate", "0"]).unwrap_err().contains("found 0"));
        assert!(
            p(&["--second-delete", "901"])
                .unwrap_err()
                .contains("found 901")
        );
        assert!(p(&["--faults", ""]).unwrap_err().contains("empty list"));
        assert!(p(&["--in-process=false"]).unwrap_err().contains("no value"));
        let e = p(&["--faults", "cache-refused,quake"]).unwrap_err();
        assert!(e.contains("`quake`") && e.contains("sns-refused"), "{e}");
    }
}
