"""Small builders of rule inputs in wire (camelCase) shapes, valid unless a test breaks them."""

from __future__ import annotations

import copy
import json
from typing import Any

from infra.policies.base import Environment, Resource, StackView

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"


def res(type_: str, name: str = "r", **props: Any) -> Resource:
    return Resource(type_, name, props, urn=f"urn:pulumi:test::tritonform::{type_}::{name}")


def stack(*resources: Resource, env: Environment = "prod", cloud: str | None = None) -> StackView:
    return StackView(tuple(resources), environment=env, cloud=cloud)


def container(name: str = "app", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "image": "example/app:1",
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
    }
    base.update(overrides)
    return base


def gpu_container(name: str = "triton") -> dict[str, Any]:
    c = container(name)
    c["resources"]["limits"]["nvidia.com/gpu"] = 1
    return c


def pod_spec(*containers: dict[str, Any], gpu: bool = False, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers) or [container()]}
    if gpu:
        spec["nodeSelector"] = {"tritonform.dev/pool": "gpu"}
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    spec.update(extra)
    return spec


def deployment(spec: dict[str, Any], name: str = "triton", kind_type: str = DEPLOYMENT) -> Resource:
    return res(kind_type, name, metadata={"name": name}, spec={"replicas": 1, "template": {"spec": spec}})


def mutate(resource: Resource, path: str, value: Any) -> Resource:
    """A copy of `resource` with the dotted `path` set to `value` (None deletes it)."""
    props = copy.deepcopy(dict(resource.props))
    *parents, last = path.split(".")
    node = props
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return Resource(resource.type, resource.name, props, resource.urn)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
