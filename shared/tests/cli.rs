//! `tidemark` as a user runs it: exit codes, messages naming file, source/rule and field,
//! `explain` on the README's examples, `--help` of every command. The `check --live` tests
//! need moto (`TIDEMARK_MOTO_URL`, from `scripts/env.sh up`) and are ignored without it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GOOD: &str = include_str!("../../tidemark.toml");

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "tidemark-cli-{}-{:x}",
        std::process::id(),
        text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tidemark.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        msg.replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn accepts_the_example_config() {
    let (ok, msg) = check(GOOD);
    assert!(ok, "{msg}");
    assert!(
        msg.contains("ok — 2 region(s), 1 table(s), 1 bucket(s)"),
        "{msg}"
    );
}

#[test]
fn rejects_with_file_source_rule_and_field() {
    let cases = [
        (
            GOOD.replacen("replicated = true\ncanary", "replicatd = true\ncanary", 1),
            "FILE: table \"users\", field `replicatd`: unknown field",
        ),
        (
            GOOD.replace("\"user:{pk}\"", "\"user:{pk\""),
            "FILE: table \"users\", field `cache_keys[0]`: malformed template `user:{pk`: unclosed",
        ),
        (
            GOOD.replace("\"user:{pk}\"", "\"user:{}\""),
            "FILE: table \"users\", field `cache_keys[0]`: malformed template `user:{}`: empty placeholder",
        ),
        (
            GOOD.replace("user-email:{email}", "user-phone:{phone}"),
            "FILE: table \"users\", field `cache_keys[1]`: placeholder `{phone}`",
        ),
        (
            GOOD.replacen(
                "allowed_regions = [\"eu-west-1\"]",
                "allowed_regions = [\"eu-west-9\"]",
                1,
            ),
            "FILE: table \"users\", rule \"eu-residents\", field `allowed_regions`: unknown region `eu-west-9`",
        ),
        (
            GOOD.replacen(
                "allowed_regions = [\"eu-west-1\"]",
                "allowed_regions = []",
                1,
            ),
            "FILE: table \"users\", rule \"eu-residents\", field `allowed_regions`: must name at least one region",
        ),
    ];
    for (text, want) in cases {
        assert_ne!(text, GOOD, "the case must change the file: {want}");
        let (ok, msg) = check(&text);
        assert!(!ok, "accepted: {want}");
        assert!(
            msg.starts_with(&format!("error: {want}")),
            "want `{want}`, got `{msg}`"
        );
    }
}

#[test]
fn missing_file_and_unknown_command_are_clear() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["check", "/nonexistent/t.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/t.toml: field `(file)`: cannot read")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown command `frobnicate`"));
}

fn tidemark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_problem_not_only_the_first() {
    let bad = GOOD
        .replace("user-email:{email}", "user-phone:{phone}")
        .replacen(
            "allowed_regions = [\"eu-west-1\"]",
            "allowed_regions = [\"eu-west-9\"]",
            1,
        )
        .replace("tidemark-assets-{region}", "tidemark-assets");
    let (ok, msg) = check(&bad);
    assert!(!ok);
    let lines: Vec<&str> = msg.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 3, "{msg}");
    assert!(lines[0].contains("field `cache_keys[1]`"), "{msg}");
    assert!(
        lines[1].contains("rule \"eu-residents\", field `allowed_regions`"),
        "{msg}"
    );
    assert!(
        lines[2].contains("bucket \"assets\", field `bucket`"),
        "{msg}"
    );
    assert!(msg.contains("FILE: 3 problem(s)"), "{msg}");
}

#[test]
fn check_rejects_shadowed_prefix_rules_and_duplicate_names() {
    let extra = "\n[[buckets.residency]]\nname = \"eu-only\"\nmatch = { key_prefix = \"eu/private/\" }\nallowed_regions = [\"eu-west-1\"]\naction = \"hold\"\n";
    let (ok, msg) = check(&format!("{GOOD}{extra}"));
    assert!(!ok);
    assert!(
        msg.contains(
            "error: FILE: bucket \"assets\", rule \"eu-only\", field `name`: duplicate rule name"
        ),
        "{msg}"
    );
    assert!(
        msg.contains(
            "field `match.key_prefix`: can never match: earlier rule \"eu-only\" (key prefix `eu/`)"
        ),
        "{msg}"
    );
}

#[test]
fn check_json_lists_every_error() {
    let dir = std::env::temp_dir().join(format!("tidemark-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.toml");
    std::fs::write(
        &path,
        GOOD.replace("\"user:{pk}\"", "\"user:{}\"")
            .replace("tidemark-assets-{region}", "x"),
    )
    .unwrap();
    let out = tidemark(&["check", "--json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["field"], "cache_keys[0]");
    assert_eq!(errors[1]["location"], "bucket \"assets\", ");
    let out = tidemark(&["check", "--json", "tidemark.toml"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn every_command_has_help_and_wrong_usage_exits_2() {
    for (args, want) in [
        (&["--help"][..], "COMMANDS:"),
        (
            &["check", "--help"][..],
            "tidemark check --live --region REGION",
        ),
        (&["help", "check"][..], "replication-residency"),
        (&["explain", "--help"][..], "--s3-event JSON|FILE"),
        (&["help", "explain"][..], "--metadata NAME=VALUE"),
        (&["metrics", "--help"][..], "tidemark metrics"),
        (
            &["wiring", "--help"][..],
            "tidemark wiring CONFIG TEMPLATE [--check]",
        ),
        (&["replay", "--help"][..], "A DRY RUN BY DEFAULT"),
        (&["help", "replay"][..], "invalidation-dlq"),
    ] {
        let out = tidemark(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stdout.contains(want), "{args:?}: {stdout}");
    }
    for (args, want) in [
        (&["check", "--live"][..], "--live needs --region REGION"),
        (
            &["check", "--live", "--region", "ap-south-1"][..],
            "region `ap-south-1` is not in deployment.regions",
        ),
        (
            &["check", "--frobnicate"][..],
            "unknown option `--frobnicate`",
        ),
        (&["replay"][..], "--region is required"),
        (
            &["replay", "--region", "us-east-1", "--from", "nope"][..],
            "no store `nope`",
        ),
        (
            &["replay", "--region", "us-east-1", "--limit", "0"][..],
            "--limit: 0 would replay nothing",
        ),
        (
            &["explain", "--item", "{}"][..],
            "--region REGION is required",
        ),
        (
            &["explain", "--region", "us-east-1"][..],
            "give exactly one of --item, --record, --object, --s3-event",
        ),
        (
            &[
                "explain",
                "--region",
                "us-east-1",
                "--object",
                "k",
                "--old",
                "{}",
            ][..],
            "--old does not apply to --object",
        ),
        (
            &[
                "explain",
                "--region",
                "us-east-1",
                "--object",
                "k",
                "--tag",
                "x",
            ][..],
            "--tag expects NAME=VALUE, found `x`",
        ),
    ] {
        let out = tidemark(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// Splits a README command line: words, with '…' quoting (no escapes inside).
fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The README's `console` blocks: each `$ tidemark …` line and the output shown under it.
fn readme_examples() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_block = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```console";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.push((cmd.to_owned(), String::new()));
        } else if let Some((_, want)) = out.last_mut() {
            want.push_str(line);
            want.push('\n');
        }
    }
    out
}

#[test]
fn readme_examples_print_what_the_readme_shows() {
    let examples = readme_examples();
    let explains = examples
        .iter()
        .filter(|(c, _)| c.starts_with("tidemark explain"))
        .count();
    assert!(
        explains >= 3,
        "the README shows explain examples: {examples:?}"
    );
    for (cmd, want) in examples {
        let words = split_words(&cmd);
        assert_eq!(words[0], "tidemark", "{cmd}");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let out = tidemark(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{cmd}: {stderr}");
        assert_eq!(stdout, want, "README example `{cmd}` prints something else");
    }
}

#[test]
fn explain_json_gives_keys_heartbeat_and_decision() {
    let out = tidemark(&[
        "explain",
        "--region",
        "us-east-1",
        "--json",
        "--item",
        r#"{"pk":{"S":"u1"},"email":{"S":"b@x"},"home_region":{"S":"eu"}}"#,
        "--old",
        r#"{"pk":{"S":"u1"},"email":{"S":"a@x"},"home_region":{"S":"eu"}}"#,
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["old_image"][1]["key"], "user-email:a@x");
    assert_eq!(v["new_image"][1]["key"], "user-email:b@x");
    assert_eq!(v["heartbeat"], false);
    assert_eq!(v["residency"]["rule"], "eu-residents");
    assert_eq!(v["residency"]["decision"], "violation");
    assert_eq!(v["residency"]["action"], "report");
}

#[test]
fn explain_decodes_encoded_s3_keys_from_the_flag_and_from_notifications() {
    let out = tidemark(&[
        "explain",
        "--region",
        "us-east-1",
        "--json",
        "--object",
        "eu/red+flower%2B1.jpg",
        "--encoded",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["key"], "eu/red flower+1.jpg");
    assert_eq!(v["encoded_key"], "eu/red+flower%2B1.jpg");
    assert_eq!(v["invalidated"][0], "asset:eu/red flower+1.jpg");
    assert_eq!(v["residency"]["rule"], "eu-only");
    assert_eq!(v["residency"]["action"], "delete-replica");
    // The notification sample carries `images/red+flower%2B1.jpg`: decoded by the
    // object-processor's own decoder.
    let out = tidemark(&[
        "explain",
        "--region",
        "us-east-1",
        "--json",
        "--s3-event",
        "events/s3-notification-put.json",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["key"], "images/red flower+1.jpg");
    assert_eq!(v[0]["invalidated"][1], "asset-dir:images");
    assert_eq!(v[0]["residency"]["decision"], "allowed");
    // A malformed escape is an input error naming the key.
    let out = tidemark(&[
        "explain",
        "--region",
        "us-east-1",
        "--object",
        "a%zz",
        "--encoded",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("key `a%zz` is not valid form-encoding")
    );
}

// ------------------------------------------------------------------ check --live (moto)

/// A table-only configuration (moto stores stream specifications faithfully; the bucket
/// checks run through the harness proxy in the system tests).
fn table_only(table: &str) -> String {
    let cut = GOOD.find("[[buckets]]").unwrap();
    GOOD[..cut].replace("name = \"users\"", &format!("name = \"{table}\""))
}

async fn create_table(moto: &str, region: &str, name: &str, view: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(moto)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "cli-test",
        ))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(view))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// Runs the binary as an operator would: credentials and the endpoint from the standard
/// environment variables, nothing else.
fn live(moto: &str, region: &str, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["check", "--live", "--region", region, "--json"])
        .arg(config)
        .env_clear()
        .env("AWS_ENDPOINT_URL", moto)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

#[tokio::test]
#[ignore = "needs moto: TIDEMARK_MOTO_URL (scripts/env.sh up)"]
async fn live_check_uses_the_endpoint_override_and_names_a_wrong_view_type() {
    let moto = std::env::var("TIDEMARK_MOTO_URL").expect("TIDEMARK_MOTO_URL");
    let table = format!(
        "cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    create_table(&moto, "us-east-1", &table, "NEW_IMAGE").await;
    create_table(&moto, "eu-west-1", &table, "NEW_AND_OLD_IMAGES").await;
    let dir = std::env::temp_dir().join(&table);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tidemark.toml");
    std::fs::write(&path, table_only(&table)).unwrap();

    let out = live(&moto, "us-east-1", &path);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let problems = v["live"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["check"], "stream-view-type");
    assert_eq!(problems[0]["source"], format!("table {table}"));
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("stream view type is NEW_IMAGE, expected NEW_AND_OLD_IMAGES"),
        "{v}"
    );

    let out = live(&moto, "eu-west-1", &path);
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["live"]["region"], "eu-west-1");

    // A table that does not exist in the region is named too.
    std::fs::write(&path, table_only(&format!("{table}-missing"))).unwrap();
    let out = live(&moto, "eu-west-1", &path);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["live"]["problems"][0]["check"], "readable", "{v}");
}
