"""What the providers that are not a cloud would return offline: image builds, random values, Kubernetes."""

from __future__ import annotations

from typing import Any


def neutral_resource(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Providers that are not a cloud: container builds, random values, Helm releases, Kubernetes objects."""
    state = dict(inputs)
    if typ == "docker-build:index:Image":
        tag = (inputs.get("tags") or [f"{name}:latest"])[0]
        state.update(ref=f"{tag}@sha256:{'0' * 64}", digest=f"sha256:{'0' * 64}")
        return f"{name}-id", state
    if typ == "random:index/randomPassword:RandomPassword":
        state["result"] = "offline0generated0key0000000000000000000"
        return f"{name}-id", state
    if typ.startswith("kubernetes:"):
        metadata = dict(state.get("metadata") or {})
        metadata.setdefault("name", name)
        state["metadata"] = metadata
        return f"{name}-id", state
    return None
