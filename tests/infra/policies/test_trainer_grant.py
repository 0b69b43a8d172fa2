"""The identity rule on the trainer's Azure grant (rules_identity.py): the shipped custom role (blob
read/write data actions, writes held to checkpoints/ by its condition) passes; a role that may delete, or
a grant without the path condition, is flagged. The same rule keeps judging the serving identities."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from infra.offline import Plan, PlannedResource
from infra.policies.offline import evaluate, mandatory_violations

RULE = "triton-identity-reads-only-its-bucket"
ROLE = ("azure-native:authorization:RoleDefinition", "tf-dev-trainer")
GRANT = ("azure-native:authorization:RoleAssignment", "tf-dev-trainer")


def _with(plan: Plan, target: tuple[str, str], **changes: Any) -> Plan:
    resources = []
    for r in plan.resources:
        if (r.type, r.name) == target:
            r = PlannedResource(r.type, r.name, r.parent, {**r.inputs, **changes}, r.urn)
        resources.append(r)
    return dataclasses.replace(plan, resources=resources)


def _flagged(plan: Plan) -> set[str]:
    return {r.resource for r in mandatory_violations(evaluate(plan)) if r.rule == RULE}


def test_the_shipped_trainer_grant_passes_and_widened_ones_fail(plan_of: Callable[[str], Plan]) -> None:
    plan = plan_of("azure-dev")
    assert _flagged(plan) == set()
    permissions = plan.one(*ROLE).inputs["permissions"]
    deleting = [{"dataActions": [*permissions[0]["dataActions"], "Microsoft.Storage/x/blobs/delete"]}]
    assert f"{GRANT[0]}::{GRANT[1]}" in _flagged(_with(plan, ROLE, permissions=deleting))
    assert f"{GRANT[0]}::{GRANT[1]}" in _flagged(_with(plan, GRANT, condition=None))
