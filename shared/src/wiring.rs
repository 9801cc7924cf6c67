//! The per-source and per-region part of `template.yaml`, generated from `tidemark.toml`.
//!
//! CloudFormation cannot loop without `Fn::ForEach`, which `sam build` (without
//! `--language-extensions`), samtranslator and moto do not expand. So the parts of the
//! template that repeat per table, bucket or region are rendered here and checked in
//! between `# BEGIN tidemark wiring: <block>` / `# END tidemark wiring: <block>` markers:
//! production and the offline expansion deploy exactly the same text.
//! `tidemark wiring tidemark.toml template.yaml` rewrites the blocks; a unit test fails when
//! the checked-in blocks differ from the rendering of the checked-in `tidemark.toml`.
//!
//! The only per-region, per-source inputs left are the stream ARNs (their label is chosen
//! by DynamoDB): `TableStreamArns`, one entry per `[[tables]]` in file order.
//! [`check_samconfig`] reports config-envs whose parameters do not wire every source.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::{Config, KeyType};

/// Timeout (s) of the SQS-triggered functions.
pub const QUEUE_FUNCTION_TIMEOUT_S: u32 = 60;
/// AWS: a queue's visibility timeout should be at least six times the consumer's timeout
/// (plus the batching window), or a batch still running becomes visible again.
pub const VISIBILITY_TIMEOUT_FACTOR: u32 = 6;
/// Batching window (s) of the SQS mappings (also added to the visibility timeout).
pub const QUEUE_BATCHING_WINDOW_S: u32 = 1;
/// Name of the delayed second delete's queue, before the region (`SecondDeleteQueue`): the
/// cache-invalidator tells its messages apart by it (they are not a change's first
/// invalidation, so they measure no invalidation age).
pub const SECOND_DELETE_QUEUE_PREFIX: &str = "tidemark-invalidations-delayed-";
/// Template parameter holding one stream ARN per table, in `tidemark.toml` order.
pub const STREAM_ARNS_PARAMETER: &str = "TableStreamArns";

/// The generated blocks, by marker name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wiring {
    pub blocks: Vec<(&'static str, String)>,
}

/// Visibility timeout of the SQS queues, derived from the consumer's timeout.
pub fn queue_visibility_timeout_s() -> u32 {
    VISIBILITY_TIMEOUT_FACTOR * QUEUE_FUNCTION_TIMEOUT_S + QUEUE_BATCHING_WINDOW_S
}

/// `us-east-1` → `UsEast1`; `user_events` → `UserEvents`.
fn logical(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut c = s.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect()
}

fn topic_arn(region: &str) -> String {
    format!(
        "!Sub \"arn:${{AWS::Partition}}:sns:{region}:${{AWS::AccountId}}:tidemark-invalidations-{region}\""
    )
}

/// Renders every block. Fails when two sources or regions map to the same logical id.
pub fn render(config: &Config) -> Result<Wiring, String> {
    let mut ids = BTreeSet::new();
    for r in &config.deployment.regions {
        if !ids.insert(format!("region {}", logical(r))) {
            return Err(format!(
                "tidemark wiring: region `{r}` maps to a logical id another region already uses"
            ));
        }
    }
    let mut source_ids = BTreeSet::new();
    for name in config
        .tables
        .iter()
        .map(|t| &t.name)
        .chain(config.buckets.iter().map(|b| &b.name))
    {
        if logical(name).is_empty() || !source_ids.insert(logical(name)) {
            return Err(format!(
                "tidemark wiring: source `{name}` maps to an empty logical id or one another source already uses (`{}`)",
                logical(name)
            ));
        }
    }
    Ok(Wiring {
        blocks: vec![
            ("mappings", mappings(config)),
            ("conditions", conditions(config)),
            ("resources", resources(config)),
        ],
    })
}

fn mappings(config: &Config) -> String {
    format!(
        "  Tidemark:\n    Settings:\n      Namespace: {}\n      QueueFunctionTimeout: {}\n      QueueVisibilityTimeout: {}\n      StaleAfterSeconds: {}\n",
        config.deployment.namespace,
        QUEUE_FUNCTION_TIMEOUT_S,
        queue_visibility_timeout_s(),
        config.deployment.stale_after_seconds
    )
}

fn conditions(config: &Config) -> String {
    let mut s = String::new();
    for r in &config.deployment.regions {
        let l = logical(r);
        let _ = writeln!(s, "  Peer{l}: !Not [!Equals [!Ref AWS::Region, {r}]]");
        let _ = writeln!(
            s,
            "  SubscribeFrom{l}: !And [!Condition SubscribeToPeers, !Condition Peer{l}]"
        );
    }
    s
}

fn resources(config: &Config) -> String {
    let mut s = String::new();
    let d = &config.deployment;
    let prefix = &d.heartbeat_prefix;

    // Topics of every region may deliver to this region's queues (its own: the local
    // subscription; the peers': the opt-in peer subscriptions). No other topic may.
    s.push_str(
        "  InvalidationQueuePolicy:\n    Type: AWS::SQS::QueuePolicy\n    Properties:\n      Queues:\n        - !Ref InvalidationQueue\n        - !If [SecondDelete, !Ref SecondDeleteQueue, !Ref AWS::NoValue]\n      PolicyDocument:\n        Version: \"2012-10-17\"\n        Statement:\n          - Sid: FromTidemarkTopics\n            Effect: Allow\n            Principal: { Service: sns.amazonaws.com }\n            Action: sqs:SendMessage\n            Resource:\n              - !GetAtt InvalidationQueue.Arn\n              - !If [SecondDelete, !GetAtt SecondDeleteQueue.Arn, !Ref AWS::NoValue]\n            Condition:\n              ArnEquals:\n                aws:SourceArn:\n",
    );
    for r in &d.regions {
        let _ = writeln!(s, "                  - {}", topic_arn(r));
    }
    s.push('\n');

    for r in &d.regions {
        let l = logical(r);
        let _ = write!(
            s,
            "  PeerSubscription{l}:\n    Type: AWS::SNS::Subscription\n    Condition: SubscribeFrom{l}\n    Properties:\n      Region: {r}\n      TopicArn: {}\n      Protocol: sqs\n      Endpoint: !GetAtt InvalidationQueue.Arn\n      RawMessageDelivery: true\n      FilterPolicyScope: MessageAttributes\n      FilterPolicy:\n        replicated: [\"false\"]\n\n",
            topic_arn(r)
        );
    }

    if !config.tables.is_empty() {
        s.push_str(
            "  StreamSourcesPolicy:\n    Type: AWS::IAM::Policy\n    Properties:\n      PolicyName: watched-streams\n      Roles: [!Ref StreamProcessorRole]\n      PolicyDocument:\n        Version: \"2012-10-17\"\n        Statement:\n          - Sid: ReadWatchedStreams\n            Effect: Allow\n            Action: [dynamodb:DescribeStream, dynamodb:GetRecords, dynamodb:GetShardIterator]\n            Resource:\n",
        );
        for i in 0..config.tables.len() {
            let _ = writeln!(
                s,
                "              - !Select [{i}, !Ref {STREAM_ARNS_PARAMETER}]"
            );
        }
        s.push('\n');
        for (i, t) in config.tables.iter().enumerate() {
            let _ = write!(
                s,
                "  StreamMapping{l}:\n    Type: AWS::Lambda::EventSourceMapping\n    DependsOn: StreamSourcesPolicy\n    Properties:\n      FunctionName: !Ref StreamProcessorFunction\n      EventSourceArn: !Select [{i}, !Ref {STREAM_ARNS_PARAMETER}]\n      # LATEST: see README \"Deploying\" (TRIM_HORIZON would replay up to 24 h, and\n      # records older than MaximumRecordAgeInSeconds would go straight to the bucket).\n      StartingPosition: LATEST\n      BatchSize: 1000\n      MaximumBatchingWindowInSeconds: 1\n      ParallelizationFactor: 1\n      BisectBatchOnFunctionError: true\n      MaximumRetryAttempts: 10\n      MaximumRecordAgeInSeconds: 21600\n      FunctionResponseTypes: [ReportBatchItemFailures]\n      MetricsConfig:\n        Metrics: [EventCount]\n      DestinationConfig:\n        OnFailure:\n          Destination: !GetAtt StreamDeadLetterBucket.Arn\n\n",
                l = logical(&t.name)
            );
        }
    }

    let canary_tables: Vec<_> = config.tables.iter().filter(|t| t.canary.enabled).collect();
    let canary_buckets: Vec<_> = config.buckets.iter().filter(|b| b.canary.enabled).collect();
    if !canary_tables.is_empty() || !canary_buckets.is_empty() {
        s.push_str(
            "  CanarySourcesPolicy:\n    Type: AWS::IAM::Policy\n    Properties:\n      PolicyName: heartbeats\n      Roles: [!Ref ReplicationCanaryRole]\n      PolicyDocument:\n        Version: \"2012-10-17\"\n        Statement:\n",
        );
        for t in &canary_tables {
            let l = logical(&t.name);
            let arn = format!(
                "!Sub \"arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/{}\"",
                t.name
            );
            // The leading-key condition only applies to string keys (the heartbeat key of
            // a numeric or binary partition key is not the prefixed text).
            let (own, any) = if t.partition_key.kind == KeyType::S {
                (
                    format!(
                        "            Condition:\n              ForAllValues:StringEquals:\n                dynamodb:LeadingKeys: [!Sub \"{prefix}#${{AWS::Region}}\"]\n"
                    ),
                    format!(
                        "            Condition:\n              ForAllValues:StringLike:\n                dynamodb:LeadingKeys: [\"{prefix}#*\"]\n"
                    ),
                )
            } else {
                (String::new(), String::new())
            };
            // Heartbeats are read here (the copies) and in every peer (their own, a
            // cross-region read that tells a down peer from a stalled replication).
            let mut read = String::new();
            for r in &d.regions {
                let _ = writeln!(
                    read,
                    "              - !Sub \"arn:${{AWS::Partition}}:dynamodb:{r}:${{AWS::AccountId}}:table/{}\"",
                    t.name
                );
            }
            let _ = write!(
                s,
                "          - Sid: WriteOwnHeartbeatItem{l}\n            Effect: Allow\n            Action: dynamodb:PutItem\n            Resource: {arn}\n{own}          - Sid: ReadHeartbeatItems{l}\n            Effect: Allow\n            Action: dynamodb:GetItem\n            Resource:\n{read}{any}"
            );
        }
        for b in &canary_buckets {
            let l = logical(&b.name);
            let bucket = b.bucket_in("${AWS::Region}");
            // The copies here and each peer's own heartbeat in the peer's bucket.
            let (mut objects, mut buckets) = (String::new(), String::new());
            for r in &d.regions {
                let _ = writeln!(
                    objects,
                    "              - !Sub \"arn:${{AWS::Partition}}:s3:::{}/{prefix}/*\"",
                    b.bucket_in(r)
                );
                let _ = writeln!(
                    buckets,
                    "              - !Sub \"arn:${{AWS::Partition}}:s3:::{}\"",
                    b.bucket_in(r)
                );
            }
            let _ = write!(
                s,
                "          - Sid: WriteOwnHeartbeatObject{l}\n            Effect: Allow\n            Action: s3:PutObject\n            Resource: !Sub \"arn:${{AWS::Partition}}:s3:::{bucket}/{prefix}/${{AWS::Region}}\"\n          - Sid: ReadHeartbeatObjects{l}\n            Effect: Allow\n            Action: s3:GetObject\n            Resource:\n{objects}          # Without ListBucket, HeadObject on a heartbeat not yet replicated is a 403, not a 404.\n          - Sid: SeeMissingHeartbeats{l}\n            Effect: Allow\n            Action: s3:ListBucket\n            Resource:\n{buckets}"
            );
        }
        s.push('\n');
    }

    if !config.buckets.is_empty() {
        s.push_str(
            "  # EventBridge works for existing buckets (enable \"Send notifications to EventBridge\")\n  # and never touches their notification configuration.\n  ObjectEventsRule:\n    Type: AWS::Events::Rule\n    Properties:\n      Description: S3 Object Created / Object Deleted of the watched buckets → object-processor queue\n      EventPattern:\n        source: [aws.s3]\n        detail-type: [Object Created, Object Deleted]\n        detail:\n          bucket:\n            name:\n",
        );
        for b in &config.buckets {
            let _ = writeln!(
                s,
                "              - !Sub \"{}\"",
                b.bucket_in("${AWS::Region}")
            );
        }
        s.push_str(
            "      Targets:\n        - Id: object-events\n          Arn: !GetAtt ObjectEventsQueue.Arn\n\n  ObjectEventsQueuePolicy:\n    Type: AWS::SQS::QueuePolicy\n    Properties:\n      Queues: [!Ref ObjectEventsQueue]\n      PolicyDocument:\n        Version: \"2012-10-17\"\n        Statement:\n          - Sid: FromEventBridgeRule\n            Effect: Allow\n            Principal: { Service: events.amazonaws.com }\n            Action: sqs:SendMessage\n            Resource: !GetAtt ObjectEventsQueue.Arn\n            Condition:\n              ArnEquals: { aws:SourceArn: !GetAtt ObjectEventsRule.Arn }\n          - Sid: FromBucketReplicationNotifications\n            Effect: Allow\n            Principal: { Service: s3.amazonaws.com }\n            Action: sqs:SendMessage\n            Resource: !GetAtt ObjectEventsQueue.Arn\n            Condition:\n              StringEquals: { aws:SourceAccount: !Ref AWS::AccountId }\n              ArnEquals:\n                aws:SourceArn:\n",
        );
        for b in &config.buckets {
            let _ = writeln!(
                s,
                "                  - !Sub \"arn:${{AWS::Partition}}:s3:::{}\"",
                b.bucket_in("${AWS::Region}")
            );
        }
        s.push('\n');
    }

    // Residency actions on the buckets that have rules, and on their quarantine buckets;
    // version HEADs on the buckets whose replicas are measured (object lag: application
    // objects with `lag.enabled`, peers' heartbeat objects with the canary).
    let ruled: Vec<_> = config
        .buckets
        .iter()
        .filter(|b| !b.residency.is_empty() || b.lag.enabled || b.canary.enabled)
        .collect();
    if !ruled.is_empty() {
        s.push_str(
            "  ResidencySourcesPolicy:\n    Type: AWS::IAM::Policy\n    Properties:\n      PolicyName: residency\n      Roles: [!Ref ObjectProcessorRole]\n      PolicyDocument:\n        Version: \"2012-10-17\"\n        Statement:\n",
        );
        for b in &ruled {
            let l = logical(&b.name);
            let bucket = b.bucket_in("${AWS::Region}");
            // HEAD and tags of the event's exact version (rules on tags and metadata,
            // the REPLICA check, and the lag's metadata).
            let _ = write!(
                s,
                "          - Sid: ReadVersions{l}\n            Effect: Allow\n            Action: [s3:GetObjectVersion, s3:GetObjectVersionTagging]\n            Resource: !Sub \"arn:${{AWS::Partition}}:s3:::{bucket}/*\"\n          # Without ListBucket, HeadObject on a version deleted since the event is a 403, not a 404.\n          - Sid: SeeDeletedVersions{l}\n            Effect: Allow\n            Action: s3:ListBucket\n            Resource: !Sub \"arn:${{AWS::Partition}}:s3:::{bucket}\"\n"
            );
            let deletes = b.residency.iter().any(|r| {
                matches!(
                    r.action,
                    crate::config::Action::DeleteReplica | crate::config::Action::Hold
                )
            });
            if deletes {
                let _ = write!(
                    s,
                    "          - Sid: DeleteVersions{l}\n            Effect: Allow\n            Action: s3:DeleteObjectVersion\n            Resource: !Sub \"arn:${{AWS::Partition}}:s3:::{bucket}/*\"\n"
                );
            }
            let holds = b
                .residency
                .iter()
                .any(|r| r.action == crate::config::Action::Hold);
            if let (true, Some(q)) = (holds, b.quarantine_in("${AWS::Region}")) {
                // CopyObject (and the multipart copy above 5 GB) into the quarantine bucket,
                // with the version's tags.
                let _ = write!(
                    s,
                    "          - Sid: Quarantine{l}\n            Effect: Allow\n            Action: [s3:PutObject, s3:PutObjectTagging, s3:AbortMultipartUpload]\n            Resource: !Sub \"arn:${{AWS::Partition}}:s3:::{q}/*\"\n"
                );
            }
        }
        // Buckets encrypted with customer-managed keys: read the source, write the copy.
        s.push_str(
            "          - !If\n            - HasBucketKeys\n            - Sid: BucketKeys\n              Effect: Allow\n              Action: [kms:Decrypt, kms:GenerateDataKey]\n              Resource: !Ref BucketKmsKeyArns\n              Condition:\n                StringEquals: { kms:ViaService: !Sub \"s3.${AWS::Region}.amazonaws.com\" }\n            - !Ref AWS::NoValue\n\n",
        );
    }

    // One stall alarm per canary source and peer (the canary emits HeartbeatAge for tables
    // and buckets alike, with the source's name from tidemark.toml).
    for name in canary_tables
        .iter()
        .map(|t| &t.name)
        .chain(canary_buckets.iter().map(|b| &b.name))
    {
        for r in &d.regions {
            let _ = write!(
                s,
                "  HeartbeatStall{ls}From{lr}:\n    Type: AWS::CloudWatch::Alarm\n    Condition: Peer{lr}\n    Properties:\n      AlarmName: !Sub \"tidemark-${{AWS::Region}}-heartbeat-stall-{name}-from-{r}\"\n      AlarmDescription: !Sub \"Replication of {name} from {r} into ${{AWS::Region}} looks stalled. Runbook: README.md#runbook-heartbeatstall\"\n      Namespace: !FindInMap [Tidemark, Settings, Namespace]\n      MetricName: HeartbeatAge\n      Dimensions:\n        - {{ Name: Source, Value: {name} }}\n        - {{ Name: SourceRegion, Value: {r} }}\n        - {{ Name: DestinationRegion, Value: !Ref AWS::Region }}\n      Statistic: Maximum\n      Period: 60\n      EvaluationPeriods: 5\n      Threshold: {stall}\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: breaching\n      AlarmActions: [!Ref AlertTopic]\n      OKActions: [!Ref AlertTopic]\n\n",
                ls = logical(name),
                lr = logical(r),
                stall = d.stall_after_seconds,
            );
            // Staleness has no value while the peer is down (PeerDown has) or while this
            // region's canary is silent (the errors and stall alarms cover that): missing
            // data is not a stall.
            let _ = write!(
                s,
                "  Stale{ls}From{lr}:\n    Type: AWS::CloudWatch::Alarm\n    Condition: Peer{lr}\n    Properties:\n      AlarmName: !Sub \"tidemark-${{AWS::Region}}-stale-{name}-from-{r}\"\n      AlarmDescription: !Sub \"{r} is live but ${{AWS::Region}}'s copy of {name} is behind it. Runbook: README.md#runbook-staleness\"\n      Namespace: !FindInMap [Tidemark, Settings, Namespace]\n      MetricName: Staleness\n      Dimensions:\n        - {{ Name: Source, Value: {name} }}\n        - {{ Name: SourceRegion, Value: {r} }}\n        - {{ Name: DestinationRegion, Value: !Ref AWS::Region }}\n      Statistic: Maximum\n      Period: 60\n      EvaluationPeriods: 3\n      DatapointsToAlarm: 2\n      Threshold: {stale}\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: notBreaching\n      AlarmActions: [!Ref AlertTopic]\n      OKActions: [!Ref AlertTopic]\n\n",
                ls = logical(name),
                lr = logical(r),
                stale = d.stale_after_seconds,
            );
            // One down tick is a blip (the next tick asks again); three minutes of them are not.
            let _ = write!(
                s,
                "  PeerDown{ls}From{lr}:\n    Type: AWS::CloudWatch::Alarm\n    Condition: Peer{lr}\n    Properties:\n      AlarmName: !Sub \"tidemark-${{AWS::Region}}-peer-down-{name}-{r}\"\n      AlarmDescription: !Sub \"${{AWS::Region}} cannot see a fresh heartbeat of {name} in {r} itself. Runbook: README.md#runbook-peerdown\"\n      Namespace: !FindInMap [Tidemark, Settings, Namespace]\n      MetricName: PeerDown\n      Dimensions:\n        - {{ Name: Source, Value: {name} }}\n        - {{ Name: SourceRegion, Value: {r} }}\n        - {{ Name: DestinationRegion, Value: !Ref AWS::Region }}\n      Statistic: Maximum\n      Period: 60\n      EvaluationPeriods: 3\n      Threshold: 1\n      ComparisonOperator: GreaterThanOrEqualToThreshold\n      TreatMissingData: notBreaching\n      AlarmActions: [!Ref AlertTopic]\n      OKActions: [!Ref AlertTopic]\n\n",
                ls = logical(name),
                lr = logical(r),
            );
        }
    }
    // One lag alarm per source that emits ReplicationLag (tables: heartbeats, or both app
    // attributes; buckets: heartbeat objects, or `lag.enabled`) and peer, on the catalog's
    // exact dimension set; p99 needs every sample (EMF value arrays), and no samples means
    // no writes from that peer (not breaching: silence is the stall alarm's job).
    let lag_tables = config.tables.iter().filter(|t| {
        t.canary.enabled
            || (t.app_attributes.origin_region.is_some()
                && t.app_attributes.written_at_ms.is_some())
    });
    let lag_buckets = config
        .buckets
        .iter()
        .filter(|b| b.replicated && (b.canary.enabled || b.lag.enabled));
    // S3 replication takes seconds to minutes (RTC's objective is 15 minutes): buckets have
    // their own threshold.
    for (name, threshold) in lag_tables
        .map(|t| (&t.name, "LagAlarmMilliseconds"))
        .chain(lag_buckets.map(|b| (&b.name, "ObjectLagAlarmMilliseconds")))
    {
        for r in &d.regions {
            let _ = write!(
                s,
                "  ReplicationLag{ls}From{lr}:\n    Type: AWS::CloudWatch::Alarm\n    Condition: Peer{lr}\n    Properties:\n      AlarmName: !Sub \"tidemark-${{AWS::Region}}-replication-lag-{name}-from-{r}\"\n      AlarmDescription: !Sub \"Replication of {name} from {r} into ${{AWS::Region}} is slow (p99 ReplicationLag). Runbook: README.md#runbook-replicationlag\"\n      Namespace: !FindInMap [Tidemark, Settings, Namespace]\n      MetricName: ReplicationLag\n      Dimensions:\n        - {{ Name: Source, Value: {name} }}\n        - {{ Name: SourceRegion, Value: {r} }}\n        - {{ Name: DestinationRegion, Value: !Ref AWS::Region }}\n      ExtendedStatistic: p99\n      Period: 60\n      EvaluationPeriods: 3\n      DatapointsToAlarm: 2\n      Threshold: !Ref {threshold}\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: notBreaching\n      AlarmActions: [!Ref AlertTopic]\n      OKActions: [!Ref AlertTopic]\n\n",
                ls = logical(name),
                lr = logical(r),
            );
        }
    }
    // One alarm per bucket on S3's replication failure events, on the catalog's exact
    // dimension set (Source, Event). They arrive in the source region, so each region's
    // alarm covers the objects that left it. No events means no failures.
    for b in &config.buckets {
        let name = &b.name;
        let _ = write!(
            s,
            "  ReplicationFailures{lb}:\n    Type: AWS::CloudWatch::Alarm\n    Properties:\n      AlarmName: !Sub \"tidemark-${{AWS::Region}}-replication-failures-{name}\"\n      AlarmDescription: !Sub \"Objects of {name} failed to replicate out of ${{AWS::Region}} (S3 OperationFailedReplication events). Runbook: README.md#runbook-replicationfailures\"\n      Namespace: !FindInMap [Tidemark, Settings, Namespace]\n      MetricName: ReplicationFailures\n      Dimensions:\n        - {{ Name: Source, Value: {name} }}\n        - {{ Name: Event, Value: OperationFailedReplication }}\n      Statistic: Sum\n      Period: 60\n      EvaluationPeriods: 1\n      Threshold: 0\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: notBreaching\n      AlarmActions: [!Ref AlertTopic]\n      OKActions: [!Ref AlertTopic]\n\n",
            lb = logical(name),
        );
    }
    while s.ends_with("\n\n") {
        s.pop();
    }
    s
}

fn marker(kind: &str, block: &str) -> String {
    format!("# {kind} tidemark wiring: {block}")
}

/// Replaces the text between each block's markers in `template`.
pub fn splice(template: &str, wiring: &Wiring) -> Result<String, String> {
    let mut out = template.to_owned();
    for (block, text) in &wiring.blocks {
        let (begin, end) = (marker("BEGIN", block), marker("END", block));
        let b = out
            .find(&begin)
            .ok_or_else(|| format!("template: expected a line `{begin}`, found none"))?;
        let body_start = out[b..].find('\n').map_or(out.len(), |i| b + i + 1);
        let e = out[body_start..]
            .find(&end)
            .map(|i| body_start + i)
            .ok_or_else(|| format!("template: expected a line `{end}` after `{begin}`"))?;
        // Keep the END marker's indentation.
        let line_start = out[..e].rfind('\n').map_or(0, |i| i + 1);
        out.replace_range(body_start..line_start, text);
    }
    Ok(out)
}

/// The blocks of `template` that differ from `wiring` (empty when in sync).
pub fn stale_blocks(template: &str, wiring: &Wiring) -> Result<Vec<&'static str>, String> {
    let fresh = splice(template, wiring)?;
    if fresh == template {
        return Ok(Vec::new());
    }
    let mut stale = Vec::new();
    for (block, _) in &wiring.blocks {
        let one = Wiring {
            blocks: wiring
                .blocks
                .iter()
                .filter(|(b, _)| b == block)
                .cloned()
                .collect(),
        };
        if splice(template, &one)? != template {
            stale.push(*block);
        }
    }
    Ok(stale)
}

/// What `samconfig.toml` must wire for `config`: every region of `deployment.regions` has a
/// config-env deploying there, and its `TableStreamArns` names, in order, the stream of each
/// `[[tables]]` entry in that region. Returns one message per problem.
pub fn check_samconfig(config: &Config, file: &str, text: &str) -> Vec<String> {
    let doc: toml::Table = match text.parse() {
        Ok(d) => d,
        Err(e) => return vec![format!("{file}: not valid TOML: {e}")],
    };
    let mut problems = Vec::new();
    let mut deployed = BTreeSet::new();
    for (env, body) in &doc {
        let Some(deploy) = body
            .get("deploy")
            .and_then(|d| d.get("parameters"))
            .and_then(toml::Value::as_table)
        else {
            continue;
        };
        // SAM takes the region from deploy.parameters, else from global.parameters.
        let global_region = body
            .get("global")
            .and_then(|g| g.get("parameters"))
            .and_then(|p| p.get("region"));
        let Some(region) = deploy
            .get("region")
            .or(global_region)
            .and_then(toml::Value::as_str)
        else {
            continue;
        };
        deployed.insert(region.to_owned());
        let at = format!("{file}: config-env `{env}`");
        if !config.deployment.regions.iter().any(|r| r == region) {
            problems.push(format!(
                "{at}, field `region`: expected one of deployment.regions {:?}, found `{region}`",
                config.deployment.regions
            ));
        }
        let overrides: Vec<String> = match deploy.get("parameter_overrides") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(toml::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let key = format!("{STREAM_ARNS_PARAMETER}=");
        let arns: Vec<String> = overrides
            .iter()
            .find_map(|o| o.trim_matches('"').strip_prefix(&key).map(str::to_owned))
            .map(|v| {
                v.split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for (i, t) in config.tables.iter().enumerate() {
            let expected = format!("the stream of table `{}` in {region}", t.name);
            match arns.get(i) {
                None => problems.push(format!(
                    "{at}, parameter `{STREAM_ARNS_PARAMETER}`, entry {}: expected {expected}, found none (table `{}` is not wired)",
                    i + 1,
                    t.name
                )),
                Some(arn) if !stream_arn_matches(arn, region, &t.name) => problems.push(format!(
                    "{at}, parameter `{STREAM_ARNS_PARAMETER}`, entry {}: expected {expected} (arn:<partition>:dynamodb:{region}:<account>:table/{}/stream/<label>), found `{arn}`",
                    i + 1,
                    t.name
                )),
                Some(_) => {}
            }
        }
        if arns.len() > config.tables.len() {
            problems.push(format!(
                "{at}, parameter `{STREAM_ARNS_PARAMETER}`: expected {} entr(ies), one per [[tables]], found {}",
                config.tables.len(),
                arns.len()
            ));
        }
    }
    for r in &config.deployment.regions {
        if !deployed.contains(r) {
            problems.push(format!(
                "{file}: expected a config-env deploying to {r} (in deployment.regions), found none"
            ));
        }
    }
    problems
}

/// [`check_samconfig`] on the `samconfig.toml` in the directory of `config_path` (the current
/// directory for `-`, the embedded file); no problems when there is none.
pub fn check_samconfig_beside(config_path: &std::path::Path, config: &Config) -> Vec<String> {
    let dir = match config_path.parent() {
        Some(d) if config_path.as_os_str() != "-" && !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let path = dir.join("samconfig.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => check_samconfig(config, &path.display().to_string(), &text),
        Err(_) => Vec::new(),
    }
}

/// `tidemark wiring CONFIG TEMPLATE [--check]`: rewrites (or, with `--check`, verifies) the
/// generated blocks of TEMPLATE from CONFIG.
pub fn cli(args: &[String]) -> Result<String, String> {
    let check_only = args.iter().any(|a| a == "--check");
    let paths: Vec<&String> = args.iter().filter(|a| *a != "--check").collect();
    let [config_path, template_path] = paths.as_slice() else {
        return Err("tidemark wiring: expected CONFIG TEMPLATE [--check], e.g. `tidemark wiring tidemark.toml template.yaml`".into());
    };
    let config =
        Config::load(std::path::Path::new(config_path.as_str())).map_err(|e| e.to_string())?;
    let template = std::fs::read_to_string(template_path.as_str())
        .map_err(|e| format!("{template_path}: cannot read: {e}"))?;
    let wiring = render(&config)?;
    let stale = stale_blocks(&template, &wiring).map_err(|e| format!("{template_path}: {e}"))?;
    if stale.is_empty() {
        return Ok(format!(
            "{template_path}: wiring up to date with {config_path}"
        ));
    }
    if check_only {
        return Err(format!(
            "{template_path}: blocks {stale:?} differ from the wiring of {config_path}; run `tidemark wiring {config_path} {template_path}`"
        ));
    }
    let fresh = splice(&template, &wiring).map_err(|e| format!("{template_path}: {e}"))?;
    std::fs::write(template_path.as_str(), fresh)
        .map_err(|e| format!("{template_path}: cannot write: {e}"))?;
    Ok(format!(
        "{template_path}: rewrote blocks {stale:?} from {config_path}"
    ))
}

fn stream_arn_matches(arn: &str, region: &str, table: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "dynamodb" || parts[3] != region {
        return false;
    }
    let mut res = parts[5].split('/');
    res.next() == Some("table")
        && res.next() == Some(table)
        && res.next() == Some("stream")
        && res.next().is_some_and(|l| !l.is_empty())
        && res.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../template.yaml");
    const SAMCONFIG: &str = include_str!("../../samconfig.toml");

    fn example() -> Config {
        Config::embedded().expect("the embedded tidemark.toml is valid")
    }

    #[test]
    fn checked_in_template_matches_the_wiring_of_tidemark_toml() {
        let wiring = render(&example()).expect("tidemark.toml renders");
        let stale = stale_blocks(TEMPLATE, &wiring).expect("template.yaml has every marker");
        assert!(
            stale.is_empty(),
            "template.yaml: blocks {stale:?} differ from tidemark.toml; run `cargo run -p tidemark -- wiring tidemark.toml template.yaml`"
        );
    }

    #[test]
    fn the_second_delete_queue_is_named_as_the_invalidator_expects() {
        let block = TEMPLATE
            .split("\n  SecondDeleteQueue:\n")
            .nth(1)
            .and_then(|b| b.split("\n\n").next())
            .expect("template.yaml: a SecondDeleteQueue resource");
        assert!(
            block.contains(&format!(
                "QueueName: !Sub {SECOND_DELETE_QUEUE_PREFIX}${{AWS::Region}}"
            )),
            "template.yaml: SecondDeleteQueue: expected QueueName !Sub {SECOND_DELETE_QUEUE_PREFIX}${{AWS::Region}}, found {block}"
        );
    }

    #[test]
    fn every_source_and_peer_is_wired() {
        let mut c = example();
        let mut t2 = c.tables[0].clone();
        t2.name = "orders".into();
        c.tables.push(t2);
        let mut b2 = c.buckets[0].clone();
        b2.name = "media".into();
        b2.bucket_pattern = "acme-media-{region}".into();
        b2.residency[0].action = crate::config::Action::Hold;
        c.buckets.push(b2);
        c.deployment.regions.push("ap-south-1".into());
        let w = render(&c).expect("distinct sources render");
        let all: String = w.blocks.iter().map(|(_, t)| t.as_str()).collect();
        for id in [
            "StreamMappingUsers:",
            "StreamMappingOrders:",
            "EventSourceArn: !Select [1, !Ref TableStreamArns]",
            "table/orders\"",
            "acme-media-ap-south-1/tidemark-heartbeat/*",
            "dynamodb:ap-south-1:${AWS::AccountId}:table/orders",
            "StaleMediaFromApSouth1:",
            "PeerDownOrdersFromEuWest1:",
            "PeerSubscriptionApSouth1:",
            "HeartbeatStallMediaFromApSouth1:",
            "HeartbeatStallOrdersFromEuWest1:",
            "HeartbeatStallAssetsFromUsEast1:",
            "ReplicationLagOrdersFromApSouth1:",
            "ReplicationLagUsersFromEuWest1:",
            "ReplicationLagMediaFromApSouth1:",
            "sns:ap-south-1:${AWS::AccountId}:tidemark-invalidations-ap-south-1",
            "PeerApSouth1: !Not [!Equals [!Ref AWS::Region, ap-south-1]]",
            "Sid: DeleteVersionsMedia",
            "s3:::acme-media-${AWS::Region}/*",
            "Sid: QuarantineMedia",
            "s3:::tidemark-quarantine-${AWS::Region}/*",
        ] {
            assert!(
                all.contains(id),
                "expected `{id}` in the wiring, found:\n{all}"
            );
        }
    }

    #[test]
    fn generated_alarms_use_their_metrics_exact_catalog_dimensions() {
        // Alarms match exact dimension sets: one name more or less and the alarm watches
        // a metric nothing emits.
        let w = render(&example()).expect("tidemark.toml renders");
        let all: String = w.blocks.iter().map(|(_, b)| b.as_str()).collect();
        let mut alarms = 0;
        for alarm in all.split("Type: AWS::CloudWatch::Alarm").skip(1) {
            let alarm = alarm.split("\n\n").next().unwrap_or("");
            let Some(metric) = alarm
                .lines()
                .find_map(|l| l.trim().strip_prefix("MetricName: "))
            else {
                continue;
            };
            let mut dims: Vec<&str> = alarm
                .lines()
                .filter_map(|l| l.trim().strip_prefix("- { Name: "))
                .filter_map(|l| l.split(',').next())
                .collect();
            dims.sort_unstable();
            let spec = crate::metrics::CATALOG
                .iter()
                .find(|s| s.name == metric)
                .unwrap_or_else(|| panic!("alarm on `{metric}`, which is not in the catalog"));
            let mut want: Vec<&str> = spec.dimensions.iter().map(|d| d.name()).collect();
            want.sort_unstable();
            assert_eq!(dims, want, "alarm on {metric}:\n{alarm}");
            alarms += 1;
        }
        assert!(
            all.contains("MetricName: ReplicationFailures")
                && all.contains("Name: Event, Value: OperationFailedReplication"),
            "expected a ReplicationFailures alarm per bucket, found:\n{all}"
        );
        assert!(alarms > 0);
    }

    #[test]
    fn visibility_timeout_covers_six_function_timeouts() {
        assert!(queue_visibility_timeout_s() >= 6 * QUEUE_FUNCTION_TIMEOUT_S);
        let w = render(&example()).expect("tidemark.toml renders");
        let m = &w.blocks[0].1;
        assert!(m.contains(&format!(
            "QueueVisibilityTimeout: {}",
            queue_visibility_timeout_s()
        )));
    }

    #[test]
    fn duplicate_logical_ids_are_refused() {
        let mut c = example();
        let mut t2 = c.tables[0].clone();
        t2.name = "users_".into();
        c.tables.push(t2);
        let e = render(&c).expect_err("expected `users` and `users_` to clash, found no error");
        assert!(e.contains("users_"), "{e}");
    }

    #[test]
    fn shipped_samconfig_wires_every_source() {
        let problems = check_samconfig(&example(), "samconfig.toml", SAMCONFIG);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn samconfig_missing_a_table_or_region_is_reported() {
        let mut c = example();
        let mut t2 = c.tables[0].clone();
        t2.name = "orders".into();
        c.tables.push(t2);
        c.deployment.regions.push("ap-south-1".into());
        let p = check_samconfig(&c, "samconfig.toml", SAMCONFIG);
        assert!(
            p.iter().any(|m| m.contains("config-env `us-east-1`")
                && m.contains("entry 2")
                && m.contains("table `orders` is not wired")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("expected a config-env deploying to ap-south-1")),
            "{p:#?}"
        );
        let swapped = SAMCONFIG.replace(
            "arn:aws:dynamodb:us-east-1:111122223333:table/users/",
            "arn:aws:dynamodb:eu-west-1:111122223333:table/users/",
        );
        let p = check_samconfig(&example(), "samconfig.toml", &swapped);
        assert!(
            p.iter().any(|m| m.contains("config-env `us-east-1`")
                && m.contains("the stream of table `users` in us-east-1")),
            "{p:#?}"
        );
    }

    #[test]
    fn a_region_given_only_in_global_parameters_is_checked_too() {
        let text = r#"
version = 0.1
[us-east-1.global.parameters]
region = "us-east-1"
[us-east-1.deploy.parameters]
parameter_overrides = ["CacheUrl=rediss://c:6379"]
[eu-west-1.global.parameters]
region = "eu-west-1"
[eu-west-1.deploy.parameters]
parameter_overrides = ["TableStreamArns=arn:aws:dynamodb:eu-west-1:111122223333:table/users/stream/L"]
"#;
        let p = check_samconfig(&example(), "samconfig.toml", text);
        assert!(
            p.iter().any(|m| m.contains("config-env `us-east-1`")
                && m.contains("table `users` is not wired")),
            "{p:#?}"
        );
        assert!(
            !p.iter()
                .any(|m| m.contains("expected a config-env deploying")),
            "{p:#?}"
        );
    }
}
