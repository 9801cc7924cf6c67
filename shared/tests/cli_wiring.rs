//! `tidemark check` with a samconfig.toml beside the file, and `tidemark wiring`, as a user
//! runs them: exit codes and messages naming file, config-env, parameter and source.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

const CONFIG: &str = include_str!("../../tidemark.toml");
const SAMCONFIG: &str = include_str!("../../samconfig.toml");
const TEMPLATE: &str = include_str!("../../template.yaml");

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tidemark-wiring-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_fails_when_samconfig_does_not_wire_a_table() {
    let d = dir("unwired");
    let config = d.join("tidemark.toml");
    let with_orders = CONFIG.replace(
        "[[tables.residency]]",
        "[[tables]]\nname = \"orders\"\npartition_key = { name = \"id\", type = \"S\" }\ncache_keys = [\"order:{id}\"]\nreplicated = true\n\n[[tables.residency]]",
    );
    // The residency rule now follows `orders`: keep it valid by naming an attribute orders has.
    let with_orders = with_orders.replace(
        "match = { attribute = { name = \"home_region\", equals = \"eu\" } }",
        "match = { key_prefix = \"eu#\" }",
    );
    std::fs::write(&config, &with_orders).unwrap();
    std::fs::write(d.join("samconfig.toml"), SAMCONFIG).unwrap();
    let (ok, msg) = run(&["check", config.to_str().unwrap()]);
    assert!(!ok, "expected a failure, found success: {msg}");
    for region in ["us-east-1", "eu-west-1"] {
        assert!(
            msg.contains(&format!(
                "config-env `{region}`, parameter `TableStreamArns`, entry 2"
            )) && msg.contains("table `orders` is not wired"),
            "{msg}"
        );
    }
    // The shipped pair is consistent.
    std::fs::write(&config, CONFIG).unwrap();
    let (ok, msg) = run(&["check", config.to_str().unwrap()]);
    assert!(ok, "{msg}");
}

#[test]
fn wiring_rewrites_stale_blocks_and_check_mode_reports_them() {
    let d = dir("stale");
    let config = d.join("tidemark.toml");
    let template = d.join("template.yaml");
    std::fs::write(
        &config,
        CONFIG.replace("stall_after_seconds = 300", "stall_after_seconds = 420"),
    )
    .unwrap();
    std::fs::write(&template, TEMPLATE).unwrap();
    let (c, t) = (config.to_str().unwrap(), template.to_str().unwrap());
    let (ok, msg) = run(&["wiring", c, t, "--check"]);
    assert!(!ok && msg.contains("[\"resources\"]"), "{msg}");
    let (ok, msg) = run(&["wiring", c, t]);
    assert!(ok, "{msg}");
    let rewritten = std::fs::read_to_string(&template).unwrap();
    assert!(rewritten.contains("      Threshold: 420\n"), "{rewritten}");
    assert!(!rewritten.contains("      Threshold: 300\n"));
    let (ok, msg) = run(&["wiring", c, t, "--check"]);
    assert!(ok, "{msg}");
}
