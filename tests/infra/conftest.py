"""Shared fixtures: offline plans of the real program, computed once per stack file per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from infra.offline import Plan, plan_stack

ROOT = Path(__file__).resolve().parents[2]
STACKS = ROOT / "stacks"
STACK_FILES = sorted(STACKS.glob("Pulumi.*.yaml"))

_CACHE: dict[Path, Plan] = {}


def planned(path: Path) -> Plan:
    """The plan for a stack file (the program runs once per file per session; plans are read-only)."""
    path = path.resolve()
    if path not in _CACHE:
        _CACHE[path] = plan_stack(path)
    return _CACHE[path]


@pytest.fixture
def plan_of() -> Callable[[str], Plan]:
    """`plan_of("aws-dev")` plans stacks/Pulumi.aws-dev.yaml."""
    return lambda stack: planned(STACKS / f"Pulumi.{stack}.yaml")


@pytest.fixture
def write_stack(tmp_path: Path) -> Callable[[str], Path]:
    """Write a stack file's text to a temporary Pulumi.<name>.yaml and return its path."""

    def write(text: str, name: str = "test") -> Path:
        path = tmp_path / f"Pulumi.{name}.yaml"
        path.write_text(text)
        return path

    return write
