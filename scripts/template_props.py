"""Deploy properties of template.yaml that cfn-lint and checkov do not check.

Expands the template offline with samtranslator (what the deployment sees after the SAM
transform), then checks what a real deploy into empty regions needs: the SQS mapping limits,
opt-in cross-region and reserved-concurrency wiring, explicit least-privilege roles, log
groups, derived timeouts, and that a given-up stream batch reaches the alert topic (the
bucket's notification configuration, applied to moto in-process).

Run: .venv/tools/bin/python scripts/template_props.py [template.yaml]
Exits 1 with one line per broken property (file, resource, field, expected, found).
"""

import json
import os
import re
import sys
from urllib.parse import unquote_plus

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402

PATH = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
PROBLEMS = []

# Actions AWS accepts only on "*" (README.md, "Choices the template makes").
STAR_ONLY = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "dynamodb:ListStreams",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
LEVELS_KEEPING_EMF = {"TRACE", "DEBUG", "INFO"}


def problem(resource, field, expected, found):
    PROBLEMS.append(f"{PATH}: {resource}, field `{field}`: expected {expected}, found {found}")


class Loader:  # no managed policy may be looked up: the template attaches none
    def load(self):
        return {}


def expand(text):
    t = yaml_parse(text)
    for name, r in t["Resources"].items():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = f"s3://artifacts/{name}.zip"
    return t, transform(json.loads(json.dumps(t)), {}, Loader())


def resolve(v, mappings):
    """Resolves Fn::FindInMap and plain numbers; leaves anything else as is."""
    if isinstance(v, dict) and "Fn::FindInMap" in v:
        a, b, c = v["Fn::FindInMap"]
        return mappings[a][b][c]
    return v


def ref_target(v):
    if isinstance(v, dict):
        if "Ref" in v:
            return v["Ref"]
        if "Fn::GetAtt" in v:
            g = v["Fn::GetAtt"]
            return g[0] if isinstance(g, list) else g.split(".")[0]
    return None


def statements(doc):
    s = doc.get("Statement", [])
    for st in s if isinstance(s, list) else [s]:
        if isinstance(st, dict) and "Fn::If" in st:
            for branch in st["Fn::If"][1:]:
                if isinstance(branch, dict) and "Effect" in branch:
                    yield branch
        elif isinstance(st, dict):
            yield st


def conditions_of(name, conds):
    """Every condition name a condition refers to, itself included."""
    seen, todo = set(), [name]
    while todo:
        c = todo.pop()
        if c in seen or c is None:
            continue
        seen.add(c)
        stack = [conds.get(c)]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                if "Condition" in x and isinstance(x["Condition"], str):
                    todo.append(x["Condition"])
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
    return seen


def main():
    text = open(PATH, encoding="utf-8").read()
    # The template stands on its own: no pointer to documents outside the repository.
    if re.search(r"DESIGN\.md|\.\./shar" + "ed/", text):
        problem("(file)", "text", "no reference to team-internal documents", "one")
    source, t = expand(text)
    res = t["Resources"]
    params = t.get("Parameters", {})
    mappings = t.get("Mappings", {})
    conds = t.get("Conditions", {})

    functions = {k: r for k, r in res.items() if r["Type"] == "AWS::Lambda::Function"}
    queues = {k: r for k, r in res.items() if r["Type"] == "AWS::SQS::Queue"}

    # Explicit roles only, no managed policies; "*" only where AWS requires it.
    for k, r in res.items():
        if r["Type"] == "AWS::IAM::Role":
            if r["Properties"].get("ManagedPolicyArns"):
                problem(k, "ManagedPolicyArns", "none (explicit, ARN-scoped statements)",
                        r["Properties"]["ManagedPolicyArns"])
            docs = [p["PolicyDocument"] for p in r["Properties"].get("Policies", [])]
        elif r["Type"] == "AWS::IAM::Policy":
            docs = [r["Properties"]["PolicyDocument"]]
        else:
            continue
        for d in docs:
            for st in statements(d):
                rs = st.get("Resource")
                if rs == "*" or (isinstance(rs, list) and "*" in rs):
                    acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                    extra = sorted(set(acts) - STAR_ONLY)
                    if extra:
                        problem(k, f"Statement {st.get('Sid', '?')}.Resource",
                                "\"*\" only for actions AWS accepts only on \"*\"", extra)
    for k, f in functions.items():
        role = ref_target(f["Properties"].get("Role"))
        if role not in res or res[role]["Type"] != "AWS::IAM::Role" or not source["Resources"].get(role):
            problem(k, "Role", "a role declared in template.yaml", f["Properties"].get("Role"))

    # Log groups with retention; levels that keep START/REPORT and EMF lines.
    for k, f in functions.items():
        lc = f["Properties"].get("LoggingConfig", {})
        lg = ref_target(lc.get("LogGroup"))
        if lg not in res or res[lg]["Type"] != "AWS::Logs::LogGroup":
            problem(k, "LoggingConfig.LogGroup", "a log group of the stack", lc.get("LogGroup"))
        elif "RetentionInDays" not in res[lg]["Properties"]:
            problem(lg, "RetentionInDays", "a retention", "none")
        if lc.get("SystemLogLevel") not in ("DEBUG", "INFO"):
            problem(k, "LoggingConfig.SystemLogLevel", "DEBUG or INFO (keeps START/REPORT)",
                    lc.get("SystemLogLevel"))
        app = lc.get("ApplicationLogLevel")
        allowed = set(params.get(app["Ref"], {}).get("AllowedValues", [])) if isinstance(app, dict) else {app}
        if not allowed or not allowed <= LEVELS_KEEPING_EMF:
            problem(k, "LoggingConfig.ApplicationLogLevel",
                    "only TRACE/DEBUG/INFO (EMF lines have no level: INFO)", sorted(allowed))

    # Event source mappings.
    for k, m in res.items():
        if m["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        p = m["Properties"]
        fn = ref_target(p["FunctionName"])
        src = ref_target(p["EventSourceArn"])
        if src in queues:
            if p.get("BatchSize", 10) > 10 and p.get("MaximumBatchingWindowInSeconds", 0) < 1:
                problem(k, "MaximumBatchingWindowInSeconds",
                        "≥ 1 with BatchSize > 10 (Lambda rejects it otherwise)",
                        p.get("MaximumBatchingWindowInSeconds"))
            mc = p.get("ScalingConfig", {}).get("MaximumConcurrency")
            if mc is None:
                problem(k, "ScalingConfig.MaximumConcurrency", "a cap (2–1000)", "none")
            if "ReservedConcurrentExecutions" in functions[fn]["Properties"]:
                problem(fn, "ReservedConcurrentExecutions",
                        "none on an SQS consumer (throttles batches into the DLQ)",
                        functions[fn]["Properties"]["ReservedConcurrentExecutions"])
            qc = queues[src].get("Condition")
            if qc and m.get("Condition") != qc:
                problem(k, "Condition", f"`{qc}` (the queue's)", m.get("Condition"))
            vis = int(resolve(queues[src]["Properties"].get("VisibilityTimeout", 30), mappings))
            timeout = int(resolve(functions[fn]["Properties"].get("Timeout", 3), mappings))
            if vis < 6 * timeout:
                problem(src, "VisibilityTimeout", f"≥ 6 × {fn} Timeout ({6 * timeout})", vis)
        elif "StartingPosition" in p:
            if p["StartingPosition"] != "LATEST":
                problem(k, "StartingPosition", "LATEST (README: first deploy)", p["StartingPosition"])
            dest = ref_target(p.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination"))
            if dest not in res or res[dest]["Type"] != "AWS::S3::Bucket":
                problem(k, "DestinationConfig.OnFailure", "the dead-letter bucket", dest)
            elif not alerting(res[dest]):
                problem(dest, "NotificationConfiguration",
                        "s3:ObjectCreated:* under aws/lambda/ → AlertTopic", "none")
            else:
                deliver_given_up_batch(res[dest])

    # Reserved concurrency is opt-in everywhere.
    for k, f in functions.items():
        rc = f["Properties"].get("ReservedConcurrentExecutions")
        if rc is not None and not (isinstance(rc, dict) and "Fn::If" in rc
                                   and {"Ref": "AWS::NoValue"} in rc["Fn::If"][1:]):
            problem(k, "ReservedConcurrentExecutions", "opt-in (Fn::If … AWS::NoValue)", rc)

    # Subscriptions: cross-region ones are opt-in; every one lands in a queue of the stack.
    for k, s in res.items():
        if s["Type"] != "AWS::SNS::Subscription":
            continue
        p = s["Properties"]
        if "Region" in p and "SubscribeToPeers" not in conditions_of(s.get("Condition"), conds):
            problem(k, "Condition", "one requiring SubscribeToPeers (peer topics may not exist yet)",
                    s.get("Condition"))
        ep = ref_target(p.get("Endpoint"))
        if p["Protocol"] == "sqs" and ep in queues:
            qc = queues[ep].get("Condition")
            if qc and s.get("Condition") != qc:
                problem(k, "Condition", f"`{qc}` (the queue's)", s.get("Condition"))
        if p["Protocol"] == "email" and not s.get("Condition"):
            problem(k, "Condition", "HasAlertEmail", "none")
    if not any(s["Type"] == "AWS::SNS::Subscription" and s["Properties"]["Protocol"] == "email"
               for s in res.values()):
        problem("AlertTopic", "subscriptions", "an optional e-mail subscription", "none")

    # Queue policies: senders are named, never any-region wildcards.
    for k, q in res.items():
        if q["Type"] != "AWS::SQS::QueuePolicy":
            continue
        for st in statements(q["Properties"]["PolicyDocument"]):
            flat = json.dumps(st.get("Condition", {}))
            if "aws:SourceArn" not in flat:
                problem(k, f"Statement {st.get('Sid')}.Condition", "an aws:SourceArn", "none")
            if ":*:" in flat or "-*\"" in flat:
                problem(k, f"Statement {st.get('Sid')}.Condition", "named sources", flat)

    # KMS key statements for EventBridge: no aws:Source* condition (EventBridge's KMS
    # requests do not carry those keys; delivery to the encrypted queue would fail silently).
    for k, key in res.items():
        if key["Type"] != "AWS::KMS::Key":
            continue
        for st in statements(key["Properties"]["KeyPolicy"]):
            svc = st.get("Principal", {}).get("Service", []) if isinstance(st.get("Principal"), dict) else []
            svc = svc if isinstance(svc, list) else [svc]
            flat = json.dumps(st.get("Condition", {}))
            if "events.amazonaws.com" in svc and "aws:Source" in flat:
                problem(k, f"KeyPolicy Statement {st.get('Sid')}.Condition",
                        "no aws:SourceAccount/SourceArn for events.amazonaws.com", flat)

    # One metric namespace, from the generated mapping.
    for k, a in res.items():
        if a["Type"] == "AWS::CloudWatch::Alarm":
            ns = a["Properties"].get("Namespace")
            if ns is not None and not (isinstance(ns, str) and ns.startswith("AWS/")) \
                    and ns != {"Fn::FindInMap": ["Tidemark", "Settings", "Namespace"]}:
                problem(k, "Namespace", "Fn::FindInMap [Tidemark, Settings, Namespace]", ns)


def alerting(bucket):
    for tc in bucket["Properties"].get("NotificationConfiguration", {}).get("TopicConfigurations", []):
        rules = tc.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        if ref_target(tc["Topic"]) == "AlertTopic" and tc["Event"] == "s3:ObjectCreated:*" \
                and {"Name": "prefix", "Value": "aws/lambda/"} in rules:
            return True
    return False


def deliver_given_up_batch(bucket):
    """Applies the bucket's notification configuration in moto: an on-failure record under
    aws/lambda/ reaches the alert topic's subscriber; a function dead letter does not."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        sns, sqs, s3 = (boto3.client(s, region_name="us-east-1") for s in ("sns", "sqs", "s3"))
        topic = sns.create_topic(Name="tidemark-alerts-us-east-1")["TopicArn"]
        q = sqs.create_queue(QueueName="alert-subscriber")["QueueUrl"]
        qarn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=qarn,
                      Attributes={"RawMessageDelivery": "true"})
        name = "tidemark-dead-letter-123456789012-us-east-1"
        s3.create_bucket(Bucket=name)
        conf = json.loads(json.dumps(bucket["Properties"]["NotificationConfiguration"]))
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={
            "TopicConfigurations": [{
                "TopicArn": topic, "Events": [tc["Event"]],
                "Filter": {"Key": {"FilterRules": tc["Filter"]["S3Key"]["Rules"]}},
            } for tc in conf["TopicConfigurations"]]})
        given_up = "aws/lambda/0f1e2d3c-esm/shardId-0001/2026/01/02/2026-01-02T03.04.05-abcd"
        s3.put_object(Bucket=name, Key="dead-letter/stream-processor/users/1.json", Body=b"{}")
        s3.put_object(Bucket=name, Key=given_up, Body=b"{}")
        got = []
        for _ in range(3):
            got += [m["Body"] for m in sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10)
                    .get("Messages", [])]
        # Notifications carry keys form-encoded (as on AWS).
        keys = [unquote_plus(r["s3"]["object"]["key"])
                for b in got for r in json.loads(b).get("Records", [])]
        if keys != [given_up]:
            problem("StreamDeadLetterBucket", "NotificationConfiguration",
                    f"one alert, for `{given_up}`", keys)


if __name__ == "__main__":
    main()
    for p in PROBLEMS:
        print(p, file=sys.stderr)
    if PROBLEMS:
        sys.exit(1)
    print(f"{PATH}: deploy properties ok")
