"""Run the real Pulumi program offline under Pulumi's mocks: no CLI, no credentials, no cloud.

`plan_stack(path)` loads a stack file, feeds its config to the Pulumi runtime exactly as the engine
would, runs `infra/__main__.py`, and records every resource the program registers (type, name,
parent, inputs as passed on the wire) plus the stack outputs. Provider-computed values (ids, ARNs,
endpoints) come from `CloudMocks`, which knows the few types and invokes the program needs and fails
loudly on any invoke it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.offline.mocks import CloudMocks
from infra.settings import (
    NAMESPACE,
    StackSettings,
    config_from_stack_file,
    load_settings,
    secret_keys_in_stack_file,
)

SECRET = "[secret]"
_SECRET_SIG = "4dabf18193072939515e22adb298388d"
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


@dataclass
class PlannedResource:
    """One resource the program would create."""

    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    urn: str
    # What the program made it wait for (`type::name` of each resource its registration named).
    dependencies: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}


@dataclass
class Plan:
    """The offline result for one stack."""

    stack: str
    settings: StackSettings
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def cloud(self) -> str:
        return self.settings.cloud

    def of_type(self, type_token: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str, name: str | None = None) -> PlannedResource:
        found = [r for r in self.of_type(type_token) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {type_token} {name or ''}, found {len(found)}")
        return found[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "cloud": self.cloud,
            "resources": [r.as_dict() for r in self.resources],
            "outputs": self.outputs,
        }


def _scrub(value: Any) -> Any:
    """Secrets become `[secret]`, unknowns `[unknown]`; everything else stays as passed."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270":
            return SECRET
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if value == _UNKNOWN:
        return "[unknown]"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, also keeping each registration's parent and raw (wire-name) inputs."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.recorded: list[PlannedResource] = []
        self._names: dict[str, str] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            from pulumi.runtime import rpc
            from pulumi.runtime.sync_await import _ensure_event_loop

            _ensure_event_loop()
            wire = rpc.deserialize_properties(request.object, keep_unknowns=True)
            inputs = _scrub(wire)
            parent = self._names.get(request.parent) if request.parent else None
            self._names[response.urn] = f"{request.type}::{request.name}"
            dependencies = tuple(self._names.get(urn, urn) for urn in request.dependencies)
            self.recorded.append(
                PlannedResource(request.type, request.name, parent, inputs, response.urn, dependencies)
            )
        return response


def _pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """Config as the Pulumi engine hands it to a program: namespaced keys, objects as JSON text."""
    return {
        f"{NAMESPACE}:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in raw.items()
    }


def plan_stack(stack_file: Path, *, preview: bool = False) -> Plan:
    """Run `infra/__main__.py` for a stack file under mocks and return what it would create."""
    raw = config_from_stack_file(stack_file)
    settings = load_settings(raw, str(stack_file))  # fail fast, with the same messages as the program
    stack = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")

    # Pulumi's runtime asks for the thread's current event loop; a caller that ran asyncio.run() before
    # (which leaves none set) would otherwise get "There is no current event loop".
    from pulumi.runtime.sync_await import _ensure_event_loop

    _ensure_event_loop()
    pulumi_settings.ROOT.set(None)
    monitor = _RecordingMonitor(CloudMocks(settings))
    pulumi_mocks.set_mocks(monitor.mocks, project=NAMESPACE, stack=stack, preview=preview, monitor=monitor)
    # Secret config cannot be decrypted offline: the program gets a marked placeholder instead.
    secret_keys = secret_keys_in_stack_file(stack_file)
    config = _pulumi_config(raw) | {f"{NAMESPACE}:{key}": f"offline-placeholder-{key}" for key in secret_keys}
    set_all_config(config, [f"{NAMESPACE}:{key}" for key in secret_keys])
    settings_obj = pulumi_settings.SETTINGS
    settings_obj.rpc_manager.clear()
    settings_obj.outputs.clear()

    def program() -> None:
        # `infra/__main__.py` is `main()`; the plan reports readiness itself instead of stopping on it.
        from infra.program import main

        main(check_ready=False)

    _sync_await(run_pulumi_func(program))
    root = pulumi_settings.get_root_resource()
    outputs = _resolve_outputs(getattr(root, "outputs", {}))
    return Plan(stack=stack, settings=settings, resources=monitor.recorded, outputs=outputs)


def _resolve_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for key, value in outputs.items():
        out = pulumi.Output.from_input(value)
        is_secret = _sync_await(out.is_secret())
        resolved[key] = SECRET if is_secret else _scrub(_sync_await(out.future()))
    return resolved
