"""Policy rules for tritonform stacks: plain functions over a neutral resource view.

`rules.RULES` is the list; `offline.evaluate(plan)` runs it over an offline plan; the CrossGuard pack in
`pack/` (built from `adapter.py`) runs the same functions under `pulumi preview --policy-pack`.
Importing this package never starts a policy server.
"""

from infra.policies.base import Resource, ResourceRule, StackRule, StackView, Violation
from infra.policies.rules import RULES, rule

__all__ = ["RULES", "Resource", "ResourceRule", "StackRule", "StackView", "Violation", "rule"]
