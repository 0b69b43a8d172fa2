"""Run the policy rules over an offline plan (`infra.offline.plan_stack`), as `tritonform plan` does."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from infra.offline import Plan
from infra.policies.base import Level, Resource, ResourceRule, StackView
from infra.policies.rules import RULES, Rule


@dataclass(frozen=True)
class PolicyResult:
    """One violation: which rule, which resource (`type::name`, or the stack), how bad, what to do."""

    rule: str
    resource: str
    level: Level
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# Under mocks the provider does not expand these into child objects (a real preview does): expand them here.
MANIFEST_GROUPS = ("kubernetes:yaml/v2:ConfigGroup", "kubernetes:yaml:ConfigGroup")


def _manifests(group: Resource) -> Iterator[Resource]:
    """The Kubernetes objects a ConfigGroup holds in `objs` or in `yaml` text, as resources of their kind."""
    docs: list[Any] = list(group.props.get("objs") or [])
    texts = group.props.get("yaml") or []
    for text in [texts] if isinstance(texts, str) else texts:
        if isinstance(text, str):
            docs += list(yaml.safe_load_all(text))
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") and doc.get("apiVersion"):
            api = str(doc["apiVersion"])
            api = api if "/" in api else f"core/{api}"
            name = str((doc.get("metadata") or {}).get("name", ""))
            yield Resource(f"kubernetes:{api}:{doc['kind']}", f"{group.name}:{name}", doc, group.urn)


def view_of(plan: Plan) -> StackView:
    """The neutral view of a plan (component resources included; no rule matches their types)."""
    planned = [Resource(r.type, r.name, r.inputs, r.urn) for r in plan.resources]
    expanded = [m for r in planned if r.type in MANIFEST_GROUPS for m in _manifests(r)]
    resources = tuple(planned + expanded)
    return StackView(resources=resources, environment=plan.settings.environment, cloud=plan.settings.cloud)


def evaluate(plan: Plan, rules: Iterable[Rule] = RULES) -> list[PolicyResult]:
    """Every violation of every rule in the plan, mandatory first, in a stable order."""
    view = view_of(plan)
    results: list[PolicyResult] = []
    for rule in rules:
        if isinstance(rule, ResourceRule):
            for resource in view.resources:
                results += [
                    PolicyResult(rule.name, resource.ref, rule.level, m) for m in rule.check(resource)
                ]
        else:
            for violation in rule.check(view):
                where = violation.resource.ref if violation.resource else f"stack::{plan.stack}"
                results.append(PolicyResult(rule.name, where, rule.level, violation.message))
    return sorted(results, key=lambda r: (r.level != "mandatory", r.rule, r.resource))


def mandatory_violations(results: Iterable[PolicyResult]) -> list[PolicyResult]:
    """The results that must fail a plan."""
    return [r for r in results if r.level == "mandatory"]
