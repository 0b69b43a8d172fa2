"""Plans that also keep what each resource was registered with besides its inputs (test-side only): the
resources Pulumi waits for before it creates it, and how long it waits for the cloud."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from infra.offline import Plan, PlannedResource
from infra.offline import plan as offline_plan
from tests.infra.platform.provisioned import STACKS


@dataclass
class Registrations:
    """A plan and, by URN, the URNs each resource depends on and its custom timeouts."""

    plan: Plan
    dependencies: dict[str, set[str]]
    timeouts: dict[str, dict[str, str]]

    def waits_for(self, resource: PlannedResource, other: PlannedResource) -> bool:
        return other.urn in self.dependencies[resource.urn]


_CACHE: dict[str, Registrations] = {}


def registrations(stack: str) -> Registrations:
    """Plan `stacks/Pulumi.<stack>.yaml`, recording each registration's dependencies (once per session)."""
    if stack not in _CACHE:
        dependencies: dict[str, set[str]] = {}
        timeouts: dict[str, dict[str, str]] = {}
        original = offline_plan._RecordingMonitor.RegisterResource

        def record(self: Any, request: Any) -> Any:
            response = original(self, request)
            dependencies[response.urn] = set(request.dependencies)
            custom = request.customTimeouts
            timeouts[response.urn] = {
                "create": custom.create,
                "update": custom.update,
                "delete": custom.delete,
            }
            return response

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(offline_plan._RecordingMonitor, "RegisterResource", record)
            planned = offline_plan.plan_stack(STACKS / f"Pulumi.{stack}.yaml")
        _CACHE[stack] = Registrations(planned, dependencies, timeouts)
    return _CACHE[stack]
