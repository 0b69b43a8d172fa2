"""Adapt the plain rules to pulumi-policy (CrossGuard) policies, without starting a policy server.

`pack/__main__.py` is the only place that builds the `PolicyPack` (constructing one starts a gRPC
server and blocks). Here each `ResourceRule` becomes a `ResourceValidationPolicy` and each `StackRule` a
`StackValidationPolicy`; the engine's property proxies are turned back into plain data first, with
preview unknowns as `UNKNOWN` so that rules decide for themselves what an unknown value means.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import _is_unknown
from pulumi_policy.secret import Secret

from infra.policies.base import (
    SECRET,
    UNKNOWN,
    Environment,
    Resource,
    ResourceRule,
    StackRule,
    StackView,
    json_doc,
)
from infra.policies.rules import RULES, Rule

PACK_NAME = "tritonform"
LEVELS = {"mandatory": EnforcementLevel.MANDATORY, "advisory": EnforcementLevel.ADVISORY}
ENVIRONMENT_SCHEMA = PolicyConfigSchema(
    properties={"environment": {"type": "string", "enum": ["dev", "prod"]}}
)


def plain(value: Any) -> Any:
    """Engine values (proxies, secrets, unknown sentinels) as plain dicts, lists and strings."""
    if isinstance(value, Secret):
        return SECRET
    if isinstance(value, str):
        return UNKNOWN if _is_unknown(value) else value
    if isinstance(value, Mapping):
        target = _target(value)
        return {str(k): plain(target[k]) for k in target}
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        target = _target(value)
        return [plain(target[i]) for i in range(len(target))]
    return value


def _target(proxy: Any) -> Any:
    """The wrapped container of a pulumi-policy proxy (its items can be read without raising)."""
    try:
        return proxy["__target"]
    except (KeyError, IndexError, TypeError):
        return proxy


def resource_of(args: Any) -> Resource:
    """The neutral view of a `ResourceValidationArgs` or a stack's `PolicyResource`."""
    return Resource(args.resource_type, args.name, plain(args.props), getattr(args, "urn", ""))


def environment_of(resources: Iterable[Resource], config: Mapping[str, Any]) -> Environment:
    """dev or prod: policy config, else an `environment` tag/label, else the stack name; prod if unsure."""
    if config.get("environment") in ("dev", "prod"):
        return "prod" if config["environment"] == "prod" else "dev"
    for resource in resources:
        for key in ("tags", "labels", "resourceLabels", "defaultTags"):
            tags = resource.props.get(key)
            if isinstance(tags, str):  # provider inputs arrive as JSON text
                tags = json_doc(tags)
            if isinstance(tags, Mapping) and isinstance(tags.get("tags"), Mapping):
                tags = tags["tags"]
            if isinstance(tags, Mapping) and tags.get("environment") in ("dev", "prod"):
                return "dev" if tags["environment"] == "dev" else "prod"
    stack = os.environ.get("PULUMI_STACK", "")
    return "dev" if stack.endswith("-dev") or stack == "dev" else "prod"


def resource_validator(rule: ResourceRule) -> Any:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in rule.check(resource_of(args)):
            report_violation(message, None)

    return validate


def stack_validator(rule: StackRule) -> Any:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = tuple(resource_of(r) for r in args.resources)
        view = StackView(resources, environment_of(resources, args.get_config()))
        for violation in rule.check(view):
            urn = violation.resource.urn if violation.resource and violation.resource.urn else None
            report_violation(violation.message, urn)

    return validate


def to_policy(rule: Rule) -> Policy:
    """One CrossGuard policy for one rule (same name, description and enforcement level)."""
    if isinstance(rule, ResourceRule):
        return ResourceValidationPolicy(
            name=rule.name,
            description=rule.description,
            enforcement_level=LEVELS[rule.level],
            validate=resource_validator(rule),
        )
    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        enforcement_level=LEVELS[rule.level],
        validate=stack_validator(rule),
        config_schema=ENVIRONMENT_SCHEMA,
    )


def policies(rules: Iterable[Rule] = RULES) -> list[Policy]:
    """The pack's policies, one per rule."""
    return [to_policy(r) for r in rules]
