"""The reader rule (policies/rules_identity.py) over the AWS plan: the gateway's own reader is judged like
Triton's, and a bucket that only receives access logs is not a model bucket."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from infra.offline import Plan, PlannedResource
from infra.policies.offline import evaluate

RULE = "triton-identity-reads-only-its-bucket"
GATEWAY_POLICY = ("aws:iam/rolePolicy:RolePolicy", "tf-dev-gateway-reader")


def _with_policy(plan: Plan, statements: list[dict[str, object]]) -> Plan:
    policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
    resources = [
        PlannedResource(r.type, r.name, r.parent, {**r.inputs, "policy": policy}, r.urn)
        if (r.type, r.name) == GATEWAY_POLICY
        else r
        for r in plan.resources
    ]
    return dataclasses.replace(plan, resources=resources)


def _violations(plan: Plan) -> list[str]:
    return [r.message for r in evaluate(plan) if r.rule == RULE]


def test_the_shipped_gateway_reader_passes(plan_of: Callable[[str], Plan]) -> None:
    plan = plan_of("aws-dev")
    assert plan.one(*GATEWAY_POLICY)
    assert _violations(plan) == []


def test_a_gateway_reader_that_writes_is_flagged(plan_of: Callable[[str], Plan]) -> None:
    objects = "arn:aws:s3:::tf-dev-models-0123abcd/models/versions/*/tokenizer.json"
    statement = {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": objects}
    (message,) = _violations(_with_policy(plan_of("aws-dev"), [statement]))
    assert "reader role" in message and "s3:putobject" in message


def test_a_gateway_reader_of_another_bucket_or_of_the_access_logs_is_flagged(
    plan_of: Callable[[str], Plan],
) -> None:
    for bucket in ("arn:aws:s3:::someone-elses-bucket/*", "arn:aws:s3:::tf-dev-access-logs-0123abcd/*"):
        statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": bucket}
        (message,) = _violations(_with_policy(plan_of("aws-dev"), [statement]))
        assert f"applies to {bucket}, which is not the model bucket" in message
