#!/usr/bin/env python3
"""Deploy rehearsal: template.yaml, SAM-expanded, deployed into moto's CloudFormation.

  rehearse.py expand --region R [--template T] [-o OUT]
      Prints (or writes) the SAM-expanded template (what CloudFormation deploys), offline.
  rehearse.py deploy --endpoint URL --account ID --plan PLAN.json [--template T]
      Runs a deploy plan (the README's order: each region, then the second pass) into moto
      and prints the wiring the stacks define, as JSON, for the test harness.

Runs in the SAM CLI's venv (samtranslator, boto3). moto's CloudFormation creates the stack
but skips alarms, AWS::SNS::Subscription, AWS::SQS::QueuePolicy and AWS::S3::BucketPolicy
(bucket policies are resolved but not applied: moto enforces a TLS-only Deny, and the
emulators speak plain HTTP),
and it would run event source mappings itself (Docker). So those resources are taken out
of the stack, resolved here against the deployed stack, and applied (subscriptions,
policies) or handed to the harness (mappings, alarms, dashboard) -- with the checks
CloudFormation and Lambda make: a subscription to a topic that does not exist fails the
region's deploy, and a mapping Lambda would reject fails it too.

The plan: {"stack": "tidemark", "passes": [{"region": "us-east-1", "parameters": {...}}, ...]}.
A region's later pass updates its stack with the new parameters (the second pass).
"""

import argparse
import hashlib
import io
import json
import os
import re
import sys
import zipfile

DEFERRED = {
    "AWS::Lambda::EventSourceMapping",
    "AWS::SNS::Subscription",
    "AWS::SQS::QueuePolicy",
    "AWS::S3::BucketPolicy",
    "AWS::CloudWatch::Alarm",
}
CODE_BUCKET = "tidemark-rehearsal-code"


class RehearsalError(Exception):
    """The deploy fails here, as it would on AWS."""


# ------------------------------------------------------------------ expansion


def expand(template_path, region):
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    os.environ["AWS_DEFAULT_REGION"] = region
    from samcli.yamlhelper import yaml_parse
    from samtranslator.translator.transform import transform

    with open(template_path, encoding="utf-8") as f:
        doc = yaml_parse(f.read())
    globals_fn = doc.get("Globals", {}).get("Function", {})
    if "CodeUri" in globals_fn:
        globals_fn["CodeUri"] = f"s3://{CODE_BUCKET}/function.zip"
    for name, res in doc.get("Resources", {}).items():
        if res.get("Type") == "AWS::Serverless::Function":
            res.setdefault("Properties", {})["CodeUri"] = f"s3://{CODE_BUCKET}/{name}.zip"

    class Loader:
        """Managed policy name -> ARN, without an IAM call."""

        def load(self):
            return _ManagedPolicies()

    return transform(doc, {}, Loader())


class _ManagedPolicies(dict):
    def __missing__(self, name):
        return f"arn:aws:iam::aws:policy/{name}"

    def __contains__(self, name):
        return True

    def get(self, name, default=None):
        return self[name]


def resolve_static_mappings(node, mappings):
    """Fn::FindInMap with literal keys is a constant: resolved here as CloudFormation resolves
    it before anything else, so Guard rules can compare the values."""
    if isinstance(node, list):
        return [resolve_static_mappings(x, mappings) for x in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and "Fn::FindInMap" in node:
        args = node["Fn::FindInMap"]
        if isinstance(args, list) and len(args) == 3 and all(isinstance(a, str) for a in args):
            try:
                return mappings[args[0]][args[1]][args[2]]
            except KeyError:
                return node
    return {k: resolve_static_mappings(v, mappings) for k, v in node.items()}


def cached_expand(template_path, region, cache_dir):
    with open(template_path, "rb") as f:
        digest = hashlib.sha256(f.read() + region.encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"expanded-{region}-{digest}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    out = expand(template_path, region)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


# ------------------------------------------------------------------ intrinsic functions


class Stack:
    """A deployed stack: parameters, conditions and resources, to resolve intrinsics."""

    def __init__(self, session, region, account, template, parameters, physical):
        self.session = session
        self.region = region
        self.account = account
        self.template = template
        self.parameters = dict(parameters)
        for name, p in template.get("Parameters", {}).items():
            if name not in self.parameters and "Default" in p:
                self.parameters[name] = p["Default"]
            if p.get("Type", "").startswith("List<") or p.get("Type") == "CommaDelimitedList":
                v = self.parameters.get(name, "")
                if isinstance(v, str):
                    self.parameters[name] = [x for x in v.split(",") if x]
        self.physical = physical  # logical id -> physical id
        self._conditions = {}

    def where(self, path):
        return f"stack {self.region}, {path}"

    def condition(self, name):
        if name not in self._conditions:
            expr = self.template.get("Conditions", {}).get(name)
            if expr is None:
                raise RehearsalError(f"unknown condition {name}")
            self._conditions[name] = bool(self.resolve(expr, f"Conditions.{name}"))
        return self._conditions[name]

    def enabled(self, res):
        c = res.get("Condition")
        return c is None or self.condition(c)

    def ref(self, name, path):
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "tidemark",
            "AWS::NoValue": None,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]
        raise RehearsalError(f"{self.where(path)}: Ref {name}: no such parameter or resource in the stack")

    def get_att(self, logical, attr, path):
        res = self.template["Resources"].get(logical)
        if res is None or logical not in self.physical:
            raise RehearsalError(f"{self.where(path)}: GetAtt {logical}.{attr}: no such resource in the stack")
        t, pid = res["Type"], self.physical[logical]
        r, a = self.region, self.account
        if t == "AWS::SQS::Queue":
            name = pid.rstrip("/").rsplit("/", 1)[-1]
            return {"Arn": f"arn:aws:sqs:{r}:{a}:{name}", "QueueName": name, "QueueUrl": pid}[attr]
        if t == "AWS::SNS::Topic":
            return {"TopicArn": pid, "TopicName": pid.rsplit(":", 1)[-1]}[attr]
        if t == "AWS::S3::Bucket":
            return {"Arn": f"arn:aws:s3:::{pid}", "DomainName": f"{pid}.s3.amazonaws.com"}[attr]
        if t == "AWS::Lambda::Function":
            return {"Arn": f"arn:aws:lambda:{r}:{a}:function:{pid}"}[attr]
        if t == "AWS::KMS::Key":
            return {"Arn": f"arn:aws:kms:{r}:{a}:key/{pid}", "KeyId": pid}[attr]
        if t == "AWS::IAM::Role":
            return {"Arn": f"arn:aws:iam::{a}:role/{pid}", "RoleId": pid}[attr]
        if t == "AWS::Events::Rule":
            return {"Arn": f"arn:aws:events:{r}:{a}:rule/{pid}"}[attr]
        if t == "AWS::DynamoDB::Table":
            return {"Arn": f"arn:aws:dynamodb:{r}:{a}:table/{pid}"}[attr]
        raise RehearsalError(f"{self.where(path)}: GetAtt {logical}.{attr} ({t}) is not known to the rehearsal")

    def sub(self, text, extra, path):
        def one(m):
            var = m.group(1)
            if var.startswith("!"):
                return "${" + var[1:] + "}"
            if var in extra:
                return str(extra[var])
            if "." in var and not var.startswith("AWS::"):
                logical, attr = var.split(".", 1)
                return str(self.get_att(logical, attr, path))
            v = self.ref(var, path)
            return ",".join(v) if isinstance(v, list) else str(v)

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, v, path):
        if isinstance(v, list):
            out = [self.resolve(x, f"{path}[{i}]") for i, x in enumerate(v)]
            return [x for x in out if x is not _NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, arg), = v.items()
            if k == "Ref":
                out = self.ref(arg, path)
                return _NO_VALUE if out is None else out
            if k == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical, attr, path)
            if k == "Fn::Sub":
                if isinstance(arg, list):
                    extra = {n: self.resolve(x, path) for n, x in arg[1].items()}
                    return self.sub(arg[0], extra, path)
                return self.sub(arg, {}, path)
            if k == "Fn::Join":
                parts = self.resolve(arg[1], path)
                return arg[0].join(str(p) for p in parts)
            if k == "Fn::Select":
                return self.resolve(arg[1], path)[int(self.resolve(arg[0], path))]
            if k == "Fn::Split":
                return self.resolve(arg[1], path).split(arg[0])
            if k == "Fn::FindInMap":
                m, top, second = (self.resolve(x, path) for x in arg[:3])
                try:
                    return self.template["Mappings"][m][top][second]
                except KeyError:
                    raise RehearsalError(f"{self.where(path)}: FindInMap {m}.{top}.{second}: no such mapping") from None
            if k == "Fn::Base64":
                return self.resolve(arg, path)
            if k == "Fn::GetAZs":
                return [f"{self.region}a", f"{self.region}b"]
            if k == "Fn::If":
                branch = arg[1] if self.condition(arg[0]) else arg[2]
                return self.resolve(branch, path)
            if k == "Fn::Equals":
                a, b = (self.resolve(x, path) for x in arg)
                return str(a) == str(b)
            if k == "Fn::Not":
                return not self.resolve(arg[0], path)
            if k == "Fn::And":
                return all(self.resolve(x, path) for x in arg)
            if k == "Fn::Or":
                return any(self.resolve(x, path) for x in arg)
            if k == "Condition":
                return self.condition(arg)
            if k.startswith("Fn::"):
                raise RehearsalError(f"{self.where(path)}: {k} is not known to the rehearsal")
        out = {}
        for key, x in v.items():
            r = self.resolve(x, f"{path}.{key}")
            if r is not _NO_VALUE:
                out[key] = r
        return out


class _NoValue:
    pass


_NO_VALUE = _NoValue()


# ------------------------------------------------------------------ Lambda's own checks


def check_mapping(logical, props, source_type, where):
    """Rejects what CreateEventSourceMapping rejects (Lambda API reference)."""
    batch = int(props.get("BatchSize", 10 if source_type == "sqs" else 100))
    window = int(props.get("MaximumBatchingWindowInSeconds", 0))
    problems = []
    if source_type == "sqs":
        if not 1 <= batch <= 10000:
            problems.append(f"BatchSize {batch} is outside 1..10000 for an SQS queue")
        if batch > 10 and window < 1:
            problems.append(
                f"BatchSize {batch} above 10 needs MaximumBatchingWindowInSeconds >= 1 for an SQS queue, found {window}"
            )
        for stream_only in ("StartingPosition", "BisectBatchOnFunctionError", "MaximumRetryAttempts",
                            "MaximumRecordAgeInSeconds", "ParallelizationFactor", "DestinationConfig"):
            if stream_only in props:
                problems.append(f"{stream_only} applies to streams only, not to an SQS queue")
        mc = props.get("ScalingConfig", {}).get("MaximumConcurrency")
        if mc is not None and not 2 <= int(mc) <= 1000:
            problems.append(f"ScalingConfig.MaximumConcurrency {mc} is outside 2..1000")
    else:
        if not 1 <= batch <= 10000:
            problems.append(f"BatchSize {batch} is outside 1..10000 for a stream")
        if props.get("StartingPosition") not in ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"):
            problems.append(f"StartingPosition {props.get('StartingPosition')!r} is not TRIM_HORIZON, LATEST or AT_TIMESTAMP")
        retries = int(props.get("MaximumRetryAttempts", -1))
        if not -1 <= retries <= 10000:
            problems.append(f"MaximumRetryAttempts {retries} is outside -1..10000")
        age = int(props.get("MaximumRecordAgeInSeconds", -1))
        if age != -1 and not 60 <= age <= 604800:
            problems.append(f"MaximumRecordAgeInSeconds {age} is outside 60..604800 (or -1)")
        pf = int(props.get("ParallelizationFactor", 1))
        if not 1 <= pf <= 10:
            problems.append(f"ParallelizationFactor {pf} is outside 1..10")
    if not 0 <= window <= 300:
        problems.append(f"MaximumBatchingWindowInSeconds {window} is outside 0..300")
    for t in props.get("FunctionResponseTypes", []):
        if t != "ReportBatchItemFailures":
            problems.append(f"FunctionResponseTypes holds {t!r}")
    if problems:
        raise RehearsalError(
            f"{where}: Lambda rejects event source mapping {logical}: " + "; ".join(problems)
        )


def check_visibility(client, stack, logical, props, where):
    """Lambda rejects an SQS mapping whose queue's visibility timeout is below the
    function's timeout (required); AWS recommends at least 6x (returned as a warning).
    https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html"""
    source = props["EventSourceArn"]
    url = client("sqs", stack.region).get_queue_url(QueueName=source.rsplit(":", 1)[-1])["QueueUrl"]
    attrs = client("sqs", stack.region).get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
    visibility = int(attrs["Attributes"]["VisibilityTimeout"])
    timeout = int(client("lambda", stack.region).get_function_configuration(
        FunctionName=props["FunctionName"]).get("Timeout", 3))
    if visibility < timeout:
        raise RehearsalError(
            f"{where}: Lambda rejects event source mapping {logical}: the queue's VisibilityTimeout "
            f"{visibility} s is below the function's Timeout {timeout} s"
        )
    if visibility < 6 * timeout:
        return [f"{where}: recommended: the queue's VisibilityTimeout {visibility} s is below 6 x the "
                f"function's Timeout {timeout} s"]
    return []


# ------------------------------------------------------------------ deploy


def session_for(endpoint, account):
    import boto3

    s = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test")

    def client(service, region):
        c = s.client(service, region_name=region, endpoint_url=endpoint)
        c.meta.events.register(
            "before-send.*.*", lambda request, **_: request.headers.__setitem__("x-moto-account-id", account)
        )
        return c

    return client


def upload_code(client, account, region, template):
    s3 = client("s3", region)
    bucket = f"{CODE_BUCKET}-{account}-{region}"  # bucket names are global
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n# placeholder: the harness runs the real binary\n")
    for res in template["Resources"].values():
        if res["Type"] == "AWS::Lambda::Function":
            code = res["Properties"]["Code"]
            code["S3Bucket"] = bucket
            s3.put_object(Bucket=bucket, Key=code["S3Key"], Body=buf.getvalue())


def split(template):
    """(what moto's CloudFormation creates, what the rehearsal applies itself)."""
    deployable = json.loads(json.dumps(template))
    deferred = {}
    for name in list(deployable["Resources"]):
        if deployable["Resources"][name]["Type"] in DEFERRED:
            deferred[name] = deployable["Resources"].pop(name)
    # Resources that name a deferred one (moto could not resolve the name) are resolved
    # and handed over too, e.g. a Route 53 health check on an alarm.
    changed = True
    while changed:
        changed = False
        for name in list(deployable["Resources"]):
            text = json.dumps(deployable["Resources"][name].get("Properties", {}))
            if any(f'"Ref": "{d}"' in text or f'["{d}",' in text or "${" + d + "}" in text
                   or "${" + d + "." in text for d in deferred):
                deferred[name] = deployable["Resources"].pop(name)
                changed = True
    for res in deployable["Resources"].values():
        dep = res.get("DependsOn")
        if isinstance(dep, str):
            dep = [dep]
        if dep:
            dep = [d for d in dep if d not in deferred]
            if dep:
                res["DependsOn"] = dep
            else:
                res.pop("DependsOn")
    # Outputs may name deferred resources; the harness reads resources, not outputs.
    deployable.pop("Outputs", None)
    return deployable, deferred


def choose_branches(node, stack):
    """Fn::If resolved by its condition, and AWS::NoValue dropped from lists, before moto
    sees the template (moto keeps a null in a list, e.g. a policy's statements)."""
    if isinstance(node, list):
        out = [choose_branches(x, stack) for x in node]
        return [x for x in out if x != {"Ref": "AWS::NoValue"}]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and "Fn::If" in node:
        cond, yes, no = node["Fn::If"]
        return choose_branches(yes if stack.condition(cond) else no, stack)
    return {k: choose_branches(v, stack) for k, v in node.items()}


def deploy_region(client, account, region, template, parameters, update):
    cfn = client("cloudformation", region)
    deployable, deferred = split(template)
    conditions = Stack(client, region, account, template, parameters, {})
    deployable["Resources"] = choose_branches(deployable["Resources"], conditions)
    upload_code(client, account, region, deployable)
    params = [{"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
              for k, v in parameters.items()]
    body = json.dumps(deployable)
    caps = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
    if update:
        cfn.update_stack(StackName="tidemark", TemplateBody=body, Parameters=params, Capabilities=caps)
    else:
        cfn.create_stack(StackName="tidemark", TemplateBody=body, Parameters=params, Capabilities=caps)
    status = cfn.describe_stacks(StackName="tidemark")["Stacks"][0]["StackStatus"]
    if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise RehearsalError(f"stack {region}: {status}")
    physical = {}
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName="tidemark"):
        for r in page["StackResourceSummaries"]:
            if r["LogicalResourceId"] in template["Resources"]:
                physical[r["LogicalResourceId"]] = r["PhysicalResourceId"]
    stack = Stack(client, region, account, template, parameters, physical)
    try:
        wiring = apply_deferred(client, stack, deferred)
    except Exception:
        cfn.delete_stack(StackName="tidemark")  # CloudFormation rolls the region back
        raise
    wiring["functions"] = functions_of(client, stack)
    wiring["resources"] = {n: {"type": template["Resources"][n]["Type"], "physical": p} for n, p in physical.items()}
    for n in stack.template["Resources"]:
        t = template["Resources"][n]["Type"]
        if n in physical and t == "AWS::SQS::Queue":
            wiring["resources"][n]["arn"] = stack.get_att(n, "Arn", n)
    dash = [n for n, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    wiring["dashboards"] = [stack.resolve(template["Resources"][n]["Properties"]["DashboardBody"], n) for n in dash
                            if stack.enabled(template["Resources"][n])]
    return wiring


def functions_of(client, stack):
    lam = client("lambda", stack.region)
    out = {}
    for name, res in stack.template["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function" or name not in stack.physical:
            continue
        cfg = lam.get_function_configuration(FunctionName=stack.physical[name])
        binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary", "")
        out[name] = {
            "binary": binary,
            "name": cfg["FunctionName"],
            "arn": cfg["FunctionArn"],
            "timeout": cfg.get("Timeout", 3),
            "memory": cfg.get("MemorySize", 128),
            "environment": cfg.get("Environment", {}).get("Variables", {}),
        }
    return out


def apply_deferred(client, stack, deferred):
    wiring = {"subscriptions": [], "mappings": [], "alarms": [], "queue_policies": [],
              "bucket_policies": [],
              "warnings": [], "not_deployed": []}
    order = ["AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy", "AWS::SNS::Subscription",
             "AWS::Lambda::EventSourceMapping", "AWS::CloudWatch::Alarm"]
    for kind in order:
        for name, res in sorted(deferred.items()):
            if res["Type"] != kind or not stack.enabled(res):
                continue
            props = stack.resolve(res.get("Properties", {}), f"Resources.{name}.Properties")
            where = stack.where(f"Resources.{name} ({kind})")
            if kind == "AWS::SQS::QueuePolicy":
                sqs = client("sqs", stack.region)
                for url in props["Queues"]:
                    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(props["PolicyDocument"])})
                wiring["queue_policies"].append({"logical": name, "queues": props["Queues"],
                                                 "policy": props["PolicyDocument"]})
            elif kind == "AWS::S3::BucketPolicy":
                # Resolved and handed over, not applied: moto enforces its Deny on
                # aws:SecureTransport = false, and the emulators speak plain HTTP.
                wiring["bucket_policies"].append({"logical": name, "bucket": props["Bucket"],
                                                  "policy": props["PolicyDocument"]})
            elif kind == "AWS::SNS::Subscription":
                wiring["subscriptions"].append(subscribe(client, stack, name, props, where))
            elif kind == "AWS::Lambda::EventSourceMapping":
                source = props.get("EventSourceArn", "")
                source_type = "sqs" if source.startswith("arn:aws:sqs:") else "stream"
                check_mapping(name, props, source_type, where)
                if source_type == "sqs":
                    wiring["warnings"].extend(check_visibility(client, stack, name, props, where))
                wiring["mappings"].append({"logical": name, "type": source_type, "properties": props})
            elif kind == "AWS::CloudWatch::Alarm":
                wiring["alarms"].append({"logical": name, "properties": props})
    for name, res in sorted(deferred.items()):
        if res["Type"] not in order and stack.enabled(res):
            wiring["not_deployed"].append({"logical": name, "type": res["Type"]})
    return wiring


def subscribe(client, stack, name, props, where):
    topic = props["TopicArn"]
    region = props.get("Region") or stack.region
    topic_region = topic.split(":")[3] if topic.count(":") >= 5 else "?"
    if topic_region != region:
        raise RehearsalError(
            f"{where}: TopicArn {topic} is in {topic_region} but the subscription's Region is {region}"
        )
    sns = client("sns", region)
    try:
        sns.get_topic_attributes(TopicArn=topic)
    except sns.exceptions.NotFoundException:
        raise RehearsalError(
            f"{where}: topic {topic} does not exist in {region}; CloudFormation fails this "
            f"subscription and rolls the {stack.region} stack back (deploy that region first, "
            f"or enable cross-region subscriptions only in the second pass)"
        ) from None
    attrs = {}
    for k in ("RawMessageDelivery", "FilterPolicyScope", "RedrivePolicy", "DeliveryPolicy"):
        if k in props:
            v = props[k]
            attrs[k] = json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v)
    if "FilterPolicy" in props:
        fp = props["FilterPolicy"]
        attrs["FilterPolicy"] = fp if isinstance(fp, str) else json.dumps(fp)
    out = sns.subscribe(TopicArn=topic, Protocol=props["Protocol"], Endpoint=props["Endpoint"],
                        Attributes=attrs, ReturnSubscriptionArn=True)
    return {"logical": name, "arn": out["SubscriptionArn"], "topic_arn": topic, "protocol": props["Protocol"],
            "endpoint": props["Endpoint"], "attributes": attrs}


def deploy(args):
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    client = session_for(args.endpoint, args.account)
    cache_dir = args.cache_dir
    result = {"account": args.account, "regions": {}}
    for p in plan["passes"]:
        region = p["region"]
        template = cached_expand(args.template, region, cache_dir)
        update = region in result["regions"]
        result["regions"][region] = deploy_region(client, args.account, region, template, p["parameters"], update)
    json.dump(result, sys.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expand")
    e.add_argument("--region", required=True)
    e.add_argument("--template", default="template.yaml")
    e.add_argument("-o", "--output")
    e.add_argument("--resolve-mappings", action="store_true",
                   help="replace Fn::FindInMap lookups with literal keys by their values")
    d = sub.add_parser("deploy")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--account", required=True)
    d.add_argument("--plan", required=True)
    d.add_argument("--template", default="template.yaml")
    d.add_argument("--cache-dir", default=os.path.join("target", "tidemark-rehearsal"))
    args = ap.parse_args()
    try:
        if args.cmd == "expand":
            expanded = expand(args.template, args.region)
            if args.resolve_mappings:
                expanded = resolve_static_mappings(expanded, expanded.get("Mappings", {}))
            out = json.dumps(expanded, indent=1)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(out)
            else:
                print(out)
        else:
            deploy(args)
    except RehearsalError as err:
        print(f"deploy rehearsal failed: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
