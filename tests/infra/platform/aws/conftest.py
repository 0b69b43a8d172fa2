"""The AWS stacks, planned through the real program under mocks (once per session)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infra.offline import Plan

PlanOf = Callable[[str], Plan]


@pytest.fixture
def dev(plan_of: PlanOf) -> Plan:
    return plan_of("aws-dev")


@pytest.fixture
def prod(plan_of: PlanOf) -> Plan:
    return plan_of("aws-prod")
