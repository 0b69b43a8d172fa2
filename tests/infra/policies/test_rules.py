"""Each rule flags its violating input (naming what to fix) and accepts its passing input."""

from __future__ import annotations

from typing import Any

import pytest

from infra.policies import RULES, ResourceRule, rule
from tests.infra.policies import cases_cloud, cases_k8s

CASES = cases_cloud.CASES + cases_k8s.CASES


def messages(rule_name: str, subject: Any) -> list[str]:
    r = rule(rule_name)
    if isinstance(r, ResourceRule):
        return list(r.check(subject))
    return [v.message for v in r.check(subject)]


@pytest.mark.parametrize(("rule_name", "bad"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_violating_input_is_flagged(rule_name: str, bad: Any) -> None:
    found = messages(rule_name, bad)
    assert found, f"{rule_name} missed a violation"
    assert all(
        len(m) > 40
        and any(
            w in m
            for w in (
                "set",
                "add",
                "use",
                "remove",
                "grant",
                "move",
                "put",
                "allow",
                "list",
                "make",
                "detach",
                "scope",
                "go",
                "route",
                "annotate",
                "ask",
                "drop",
                "pass",
            )
        )
        for m in found
    ), found


@pytest.mark.parametrize(("rule_name", "good"), [(c[1], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_passing_input_is_accepted(rule_name: str, good: Any) -> None:
    assert messages(rule_name, good) == []


def test_every_rule_has_cases_and_metadata() -> None:
    covered = {c[1] for c in CASES}
    assert {r.name for r in RULES} <= covered
    assert len({r.name for r in RULES}) == len(RULES)
    for r in RULES:
        assert r.level in ("mandatory", "advisory") and r.description


def test_unknown_rule_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match="buckets-not-public"):
        rule("nope")
