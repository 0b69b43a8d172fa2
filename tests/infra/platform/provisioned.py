"""Plans of the real program that keep the neutral `Platform` the cloud class provisioned (test-side only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pulumi.runtime.sync_await import _sync_await

from infra.catalog import CLOUDS
from infra.offline import Plan, plan_stack
from infra.platform import platform_class
from infra.platform.base import CloudPlatform, Platform

STACKS = Path(__file__).resolve().parents[3] / "stacks"


@dataclass
class Provisioned:
    """A plan and the neutral `Platform` the program built, with its outputs resolved."""

    plan: Plan
    platform: Platform
    cloud: CloudPlatform

    def value(self, output: Any) -> Any:
        return _sync_await(output.future())


_CACHE: dict[str, Provisioned] = {}


def _keeping(
    original: Callable[[CloudPlatform], Platform], captured: list[tuple[CloudPlatform, Platform]]
) -> Callable[[CloudPlatform], Platform]:
    def keep(self: CloudPlatform) -> Platform:
        platform = original(self)
        captured.append((self, platform))
        return platform

    return keep


def provisioned(stack: str) -> Provisioned:
    """Plan `stacks/Pulumi.<stack>.yaml` with the real program, keeping the `Platform` it provisioned."""
    if stack not in _CACHE:
        captured: list[tuple[CloudPlatform, Platform]] = []
        with pytest.MonkeyPatch.context() as patch:
            # Each cloud class wires its own `provision`, so each one is wrapped.
            for name in CLOUDS:
                cls = platform_class(name)
                patch.setattr(cls, "provision", _keeping(cls.provision, captured))
            plan = plan_stack(STACKS / f"Pulumi.{stack}.yaml")
        cloud, platform = captured[-1]
        _CACHE[stack] = Provisioned(plan, platform, cloud)
    return _CACHE[stack]
