//! TEST CODE: the deploy rehearsal. `scripts/rehearse.py` expands `template.yaml` with the
//! SAM translator and deploys it into moto's CloudFormation, region by region in the
//! README's order; this module runs it and reads back the wiring the stacks define
//! (function environments, queues, topics, subscriptions, mappings, alarms, dashboards).
//! The harness builds every region from that wiring and from nothing of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The workspace root (where `template.yaml` and `scripts/` are).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The template every world deploys.
pub fn template() -> PathBuf {
    root().join("template.yaml")
}

/// `template.yaml` with its generated blocks (`tidemark wiring`) rendered for `config`.
pub fn template_for(config: &tidemark::config::Config) -> Result<String> {
    let text = std::fs::read_to_string(template())?;
    let wiring = tidemark::wiring::render(config).map_err(anyhow::Error::msg)?;
    tidemark::wiring::splice(&text, &wiring).map_err(anyhow::Error::msg)
}

/// One deploy: a region and its stack parameters (a later pass of a region updates its stack).
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    pub region: String,
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub passes: Vec<Pass>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Wiring {
    pub account: String,
    pub regions: BTreeMap<String, RegionWiring>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegionWiring {
    pub functions: BTreeMap<String, FunctionWiring>,
    pub resources: BTreeMap<String, Resource>,
    pub subscriptions: Vec<Subscription>,
    pub mappings: Vec<Mapping>,
    pub alarms: Vec<Alarm>,
    pub dashboards: Vec<String>,
    /// Recommended practices the stack misses (the deploy still succeeds).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionWiring {
    /// The workspace binary (`Metadata.BuildProperties.Binary`).
    pub binary: String,
    pub name: String,
    pub arn: String,
    pub timeout: u64,
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    /// What `Ref` returns (a queue's URL, a topic's ARN, a bucket's name).
    pub physical: String,
    /// Queues: their ARN.
    #[serde(default)]
    pub arn: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub logical: String,
    pub topic_arn: String,
    pub endpoint: String,
    pub attributes: BTreeMap<String, String>,
}

/// An event source mapping with its properties, intrinsics resolved.
#[derive(Debug, Clone, Deserialize)]
pub struct Mapping {
    pub logical: String,
    /// `sqs` or `stream`.
    #[serde(rename = "type")]
    pub kind: String,
    pub properties: Value,
}

impl Mapping {
    pub fn function_name(&self) -> &str {
        self.properties["FunctionName"].as_str().unwrap_or("")
    }
    pub fn source_arn(&self) -> &str {
        self.properties["EventSourceArn"].as_str().unwrap_or("")
    }
    pub fn batch_size(&self) -> usize {
        let default = if self.kind == "sqs" { 10 } else { 100 };
        self.number("BatchSize").map_or(default, |n| n as usize)
    }
    pub fn window_seconds(&self) -> u64 {
        self.number("MaximumBatchingWindowInSeconds").unwrap_or(0)
    }
    pub fn number(&self, key: &str) -> Option<u64> {
        let v = &self.properties[key];
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }
    pub fn flag(&self, key: &str) -> bool {
        let v = &self.properties[key];
        v.as_bool().unwrap_or(false) || v.as_str() == Some("true")
    }
    pub fn reports_item_failures(&self) -> bool {
        self.properties["FunctionResponseTypes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t == "ReportBatchItemFailures"))
    }
    /// The on-failure destination's bucket (stream mappings with an S3 destination).
    pub fn on_failure_bucket(&self) -> Option<String> {
        self.properties["DestinationConfig"]["OnFailure"]["Destination"]
            .as_str()
            .and_then(|a| a.strip_prefix("arn:aws:s3:::"))
            .map(str::to_owned)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Alarm {
    pub logical: String,
    pub properties: Value,
}

impl RegionWiring {
    /// `Ref` of a resource, or an error naming it.
    pub fn physical(&self, logical: &str) -> Result<&str> {
        self.resources
            .get(logical)
            .map(|r| r.physical.as_str())
            .with_context(|| format!("the deployed stack has no resource {logical}"))
    }

    pub fn queue_arn(&self, logical: &str) -> Result<&str> {
        self.resources
            .get(logical)
            .and_then(|r| r.arn.as_deref())
            .with_context(|| format!("the deployed stack has no queue {logical}"))
    }

    /// The queue (URL) whose ARN is `arn`.
    pub fn queue_url_by_arn(&self, arn: &str) -> Option<&str> {
        self.resources
            .values()
            .find(|r| r.arn.as_deref() == Some(arn))
            .map(|r| r.physical.as_str())
    }

    /// The function built from `binary`.
    pub fn function(&self, binary: &str) -> Result<&FunctionWiring> {
        self.functions
            .values()
            .find(|f| f.binary == binary)
            .with_context(|| format!("the deployed stack has no function built from `{binary}`"))
    }

    /// Mappings that invoke the function built from `binary`.
    pub fn mappings_of(&self, binary: &str) -> Vec<&Mapping> {
        let Ok(f) = self.function(binary) else {
            return Vec::new();
        };
        self.mappings
            .iter()
            .filter(|m| m.function_name() == f.name || m.function_name() == f.arn)
            .collect()
    }
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEMARK_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/tools/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs the rehearsal: `plan` into moto at `endpoint`, in account `account`. An error
/// carries the rehearsal's own message (which resource, which rule).
pub async fn deploy(endpoint: &str, account: &str, template: &Path, plan: &Plan) -> Result<Wiring> {
    let dir = std::env::temp_dir().join(format!("tidemark-rehearsal-{account}"));
    std::fs::create_dir_all(&dir)?;
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(plan)?)?;
    let out = tokio::process::Command::new(python())
        .arg(root().join("scripts/rehearse.py"))
        .arg("deploy")
        .args(["--endpoint", endpoint, "--account", account])
        .arg("--plan")
        .arg(&plan_path)
        .arg("--template")
        .arg(template)
        .arg("--cache-dir")
        .arg(root().join("target/tidemark-rehearsal"))
        .env("SAM_CLI_TELEMETRY", "0")
        .output()
        .await
        .context("run scripts/rehearse.py (the SAM CLI venv: scripts/setup.sh)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("deploy rehearsal failed:"))
            .map_or_else(|| stderr.trim().to_owned(), str::to_owned);
        bail!("{} ({})", reason, template.display());
    }
    serde_json::from_slice(&out.stdout).context("scripts/rehearse.py printed no wiring")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        root().join("tests/fixtures").join(name)
    }

    fn pass(region: &str, params: &[(&str, &str)]) -> Pass {
        Pass {
            region: region.to_owned(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    async fn rehearse(template: &Path, passes: Vec<Pass>) -> Result<Wiring> {
        let moto = std::env::var("TIDEMARK_MOTO_URL")
            .context("TIDEMARK_MOTO_URL is not set: run scripts/test.sh")?;
        let account = format!("{:012}", 200_000_000_000 + crate::now_ms() % 99_999_999_999);
        deploy(&moto, &account, template, &Plan { passes }).await
    }

    #[tokio::test]
    #[ignore = "needs the emulators: run scripts/test.sh"]
    async fn first_region_deploy_fails_on_a_subscription_to_a_peer_topic_that_does_not_exist() {
        let err = rehearse(
            &fixture("blocker-peer-subscription-first-deploy.yaml"),
            vec![pass("us-east-1", &[("PeerRegion1", "eu-west-1")])],
        )
        .await
        .expect_err("the first region's deploy must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("Resources.PeerSubscription1 (AWS::SNS::Subscription)")
                && msg.contains(":tidemark-invalidations-eu-west-1 does not exist in eu-west-1"),
            "{msg}"
        );
    }

    #[tokio::test]
    #[ignore = "needs the emulators: run scripts/test.sh"]
    async fn sqs_batch_above_ten_without_a_window_is_refused_like_lambda_does() {
        let err = rehearse(
            &fixture("blocker-sqs-batch-without-window.yaml"),
            vec![pass("us-east-1", &[])],
        )
        .await
        .expect_err("Lambda rejects this mapping");
        let msg = err.to_string();
        assert!(
            msg.contains(
                "Lambda rejects event source mapping CacheInvalidatorFunctionDelayedInvalidations"
            ) && msg.contains("BatchSize 100 above 10 needs MaximumBatchingWindowInSeconds >= 1"),
            "{msg}"
        );
    }

    #[tokio::test]
    #[ignore = "needs the emulators: run scripts/test.sh"]
    async fn sqs_visibility_timeout_below_the_function_timeout_is_refused_and_below_six_times_warned()
    -> Result<()> {
        let fixture = fixture("sqs-visibility-timeout.yaml");
        let err = rehearse(&fixture, vec![pass("us-east-1", &[("Visibility", "30")])])
            .await
            .expect_err("Lambda rejects this mapping");
        assert!(
            err.to_string()
                .contains("VisibilityTimeout 30 s is below the function's Timeout 60 s"),
            "{err}"
        );
        let w = rehearse(&fixture, vec![pass("us-east-1", &[("Visibility", "120")])]).await?;
        let warnings = &w.regions["us-east-1"].warnings;
        assert!(
            warnings.len() == 1 && warnings[0].contains("below 6 x the function's Timeout 60 s"),
            "{warnings:?}"
        );
        let w = rehearse(&fixture, vec![pass("us-east-1", &[("Visibility", "360")])]).await?;
        assert!(w.regions["us-east-1"].warnings.is_empty());
        Ok(())
    }

    #[tokio::test]
    #[ignore = "needs the emulators: run scripts/test.sh"]
    async fn template_deploys_in_the_readme_order_with_its_second_pass() -> Result<()> {
        let params = |region: &str, second: bool| {
            let p = vec![
                (
                    "TableStreamArns",
                    format!("arn:aws:dynamodb:{region}:123456789012:table/users/stream/x"),
                ),
                ("PeerSubscriptions", second.to_string()),
                ("CacheUrl", "rediss://cache.example:6379".to_owned()),
                ("CacheSubnetIds", "subnet-0a1b2c3d".to_owned()),
                ("CacheSecurityGroupIds", "sg-0a1b2c3d".to_owned()),
                ("VpcId", "vpc-0a1b2c3d".to_owned()),
                ("SecondDeleteDelaySeconds", "5".to_owned()),
            ];
            Pass {
                region: region.to_owned(),
                parameters: p.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            }
        };
        let w = rehearse(
            &template(),
            vec![
                params("us-east-1", false),
                params("eu-west-1", false),
                params("us-east-1", true),
                params("eu-west-1", true),
            ],
        )
        .await?;
        for (region, peer) in [("us-east-1", "eu-west-1"), ("eu-west-1", "us-east-1")] {
            let r = &w.regions[region];
            let peer_sub = r
                .subscriptions
                .iter()
                .find(|s| s.logical.starts_with("PeerSubscription"))
                .context("second pass subscribes to the peer")?;
            assert!(peer_sub.topic_arn.contains(&format!(":sns:{peer}:")));
            assert_eq!(
                peer_sub.attributes["FilterPolicy"],
                r#"{"replicated": ["false"]}"#
            );
            // Every mapping passed Lambda's checks; the delayed queue is wired when enabled.
            assert!(
                r.mappings
                    .iter()
                    .any(|m| m.logical == "DelayedInvalidationsMapping")
            );
        }
        Ok(())
    }
}
