//! `tidemark check` as a user runs it: exit codes and messages naming file, source/rule, field.

#![allow(clippy::unwrap_used)]

use std::process::Command;

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
