"""The neutral view every rule works on, and the small helpers rules share.

Rules never see Pulumi objects: a `Resource` is a type token, a logical name and its properties in
wire (camelCase) names. The offline plan (`infra.policies.offline`) and the real policy pack
(`infra.policies.adapter`) both translate what they have into this view, so one function serves both.
Values the engine does not know yet (preview) are the string `UNKNOWN`; secrets are `SECRET`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["mandatory", "advisory"]
Environment = Literal["dev", "prod"]
UNKNOWN = "[unknown]"
SECRET = "[secret]"


@dataclass(frozen=True)
class Resource:
    """One resource as rules see it: type token, logical name, properties in wire names."""

    type: str
    name: str
    props: Mapping[str, Any] = field(default_factory=dict)
    urn: str = ""

    @property
    def ref(self) -> str:
        """How results name the resource: `type::name`."""
        return f"{self.type}::{self.name}"

    def get(self, path: str, default: Any = None) -> Any:
        """A nested property by dotted path (`spec.template.spec`); `default` when any step is missing."""
        return dig(self.props, path, default)


@dataclass(frozen=True)
class StackView:
    """Everything a stack rule sees: all resources, the stack's environment and cloud."""

    resources: tuple[Resource, ...]
    environment: Environment = "prod"
    cloud: str | None = None

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]


@dataclass(frozen=True)
class Violation:
    """What is wrong and how to fix it; `resource` is None for a stack-wide problem."""

    message: str
    resource: Resource | None = None


ResourceCheck = Callable[[Resource], Iterable[str]]
StackCheck = Callable[[StackView], Iterable[Violation]]


@dataclass(frozen=True)
class ResourceRule:
    """A rule that judges one resource at a time."""

    name: str
    description: str
    level: Level
    check: ResourceCheck


@dataclass(frozen=True)
class StackRule:
    """A rule that judges the whole stack (cross-resource relations, the stack's environment)."""

    name: str
    description: str
    level: Level
    check: StackCheck


Rule = ResourceRule | StackRule


def dig(value: Any, path: str, default: Any = None) -> Any:
    """Follow a dotted path through nested mappings."""
    current = value
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return default
        current = current[part]
    return default if current is None else current


def as_list(value: Any) -> list[Any]:
    """A list property as a list (missing, unknown or scalar become [] or [value])."""
    if value is None or value == UNKNOWN:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.lower() == "false")


def is_world(cidr: Any) -> bool:
    """True for 0.0.0.0/0, ::/0 and any other prefix of length 0."""
    if not isinstance(cidr, str):
        return False
    if cidr.strip() in {"*", "Internet", "any", "0.0.0.0"}:
        return True
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def json_doc(value: Any) -> dict[str, Any] | None:
    """A policy document that may arrive as JSON text or as a mapping; None when unknown or unreadable."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value not in (UNKNOWN, SECRET):
        try:
            doc = json.loads(value)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None
    return None


def refers_to(value: Any, target: Resource, *names: Any) -> bool:
    """Whether a reference property (`bucket`, `role`, ...) points at `target`.

    A reference holds the target's physical name or id, which a plan may not know; so it matches the
    given known names exactly, or carries the target's logical name (ids and generated physical names
    start from it, e.g. `tf-dev-models-0123abcd`).
    """
    if not isinstance(value, str) or value in (UNKNOWN, ""):
        return False
    known = {n for n in names if isinstance(n, str) and n and n != UNKNOWN}
    if value in known:
        return True
    tail = value.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail == target.name or tail.startswith(target.name)


def owner_of(
    value: Any, targets: Iterable[Resource], names: Callable[[Resource], tuple[Any, ...]]
) -> Resource | None:
    """The target a reference points at; the longest logical-name match wins (`models` vs `models-logs`)."""
    matches = [t for t in targets if refers_to(value, t, *names(t))]
    return max(matches, key=lambda t: len(t.name), default=None)


def walk_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string leaf with its dotted path."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from walk_strings(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, child in enumerate(value):
            yield from walk_strings(child, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value
