"""The Azure stacks, planned through the real program under mocks (once per session)."""

from __future__ import annotations

import pytest

from infra.offline import Plan
from tests.infra.platform.provisioned import provisioned


@pytest.fixture
def dev() -> Plan:
    return provisioned("azure-dev").plan


@pytest.fixture
def prod() -> Plan:
    return provisioned("azure-prod").plan
