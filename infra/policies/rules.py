"""Every tritonform policy rule, in one list; the offline plan and the policy pack both read `RULES`."""

from __future__ import annotations

from infra.policies import rules_cluster, rules_edge, rules_identity, rules_k8s, rules_storage
from infra.policies.base import Rule

RULES: tuple[Rule, ...] = (
    *rules_storage.RULES,
    *rules_cluster.RULES,
    *rules_k8s.RULES,
    *rules_edge.RULES,
    *rules_identity.RULES,
)


def rule(name: str) -> Rule:
    """The rule called `name`; the error lists the valid names."""
    for candidate in RULES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no policy rule {name!r}; rules are: {', '.join(r.name for r in RULES)}")
