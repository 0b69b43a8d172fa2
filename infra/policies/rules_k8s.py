"""Kubernetes workload rules over the standard wire shapes (Deployment, StatefulSet, Pod, ConfigMap...)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from infra.policies.base import SECRET, UNKNOWN, Resource, ResourceRule, as_list, dig

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
# Node labels that pin a pod to GPU nodes (ours, NVIDIA's feature discovery, GKE's, AKS's).
GPU_NODE_LABELS = {
    "tritonform.dev/pool": {"gpu"},
    "nvidia.com/gpu.present": {"true"},
    "cloud.google.com/gke-accelerator": None,
    "accelerator": {"nvidia"},
}
# Where the pod spec lives, by kind.
_POD_SPEC_PATHS = {
    "Deployment": "spec.template.spec",
    "StatefulSet": "spec.template.spec",
    "DaemonSet": "spec.template.spec",
    "ReplicaSet": "spec.template.spec",
    "ReplicationController": "spec.template.spec",
    "Job": "spec.template.spec",
    "CronJob": "spec.jobTemplate.spec.template.spec",
    "Pod": "spec",
}


def kind_of(resource: Resource) -> str | None:
    """`kubernetes:apps/v1:Deployment` -> `Deployment`; None for anything that is not a Kubernetes object."""
    if not resource.type.startswith("kubernetes:"):
        return None
    return resource.type.rsplit(":", 1)[-1]


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod spec of a workload resource, or None (patches and non-workloads are not judged)."""
    kind = kind_of(resource)
    path = _POD_SPEC_PATHS.get(kind or "")
    spec = dig(resource.props, path) if path else None
    return spec if isinstance(spec, dict) else None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    found = as_list(spec.get("initContainers")) + as_list(spec.get("containers"))
    return [c for c in found if isinstance(c, dict)]


def _gpu_quantity(container: dict[str, Any], section: str) -> Any:
    quantities = dig(container, f"resources.{section}")
    return quantities.get(GPU_RESOURCE) if isinstance(quantities, dict) else None


def requests_gpu(spec: dict[str, Any]) -> bool:
    return any(
        _gpu_quantity(c, "limits") is not None or _gpu_quantity(c, "requests") is not None
        for c in containers(spec)
    )


def pinned_to_gpu_nodes(spec: dict[str, Any]) -> bool:
    """nodeSelector or required node affinity that only matches GPU nodes."""
    labels: dict[str, Any] = dict(spec.get("nodeSelector") or {})
    required = dig(
        spec, "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    )
    for term in as_list(required):
        for expr in as_list(term.get("matchExpressions") if isinstance(term, dict) else None):
            if isinstance(expr, dict) and expr.get("operator") in ("In", "Exists"):
                values = as_list(expr.get("values"))
                labels[str(expr.get("key"))] = values[0] if values else "true"
    for key, allowed in GPU_NODE_LABELS.items():
        if key in labels and (allowed is None or str(labels[key]) in allowed):
            return True
    return False


def tolerates_gpu_taint(spec: dict[str, Any]) -> bool:
    for tol in as_list(spec.get("tolerations")):
        if not isinstance(tol, dict) or tol.get("effect") not in (None, "", "NoSchedule"):
            continue
        operator = tol.get("operator", "Equal")
        if not tol.get("key") and operator == "Exists":
            return True
        if tol.get("key") == GPU_TAINT_KEY and (operator == "Exists" or tol.get("value") == "present"):
            return True
    return False


def _label(resource: Resource, spec: dict[str, Any]) -> str:
    return kind_of(resource) or resource.type


def gpu_pods_request_gpus(resource: Resource) -> Iterator[str]:
    spec = pod_spec(resource)
    if spec is None:
        return
    # DaemonSets on GPU nodes (device plugin, DCGM exporter) run beside GPU pods without taking a GPU.
    if kind_of(resource) != "DaemonSet" and pinned_to_gpu_nodes(spec) and not requests_gpu(spec):
        yield (
            f"{_label(resource, spec)} is pinned to GPU nodes but no container asks for {GPU_RESOURCE}; "
            f"set resources.limits['{GPU_RESOURCE}'] (e.g. 1) on the container that uses the GPU, "
            "or drop the GPU node selector."
        )
    for c in containers(spec):
        limit, request = _gpu_quantity(c, "limits"), _gpu_quantity(c, "requests")
        if request is not None and limit is None:
            yield (
                f"container {c.get('name')!r} requests {GPU_RESOURCE} without a limit; GPUs are extended "
                f"resources: set resources.limits['{GPU_RESOURCE}'] (requests may then be omitted)."
            )
        elif request is not None and str(request) != str(limit):
            yield (
                f"container {c.get('name')!r} has {GPU_RESOURCE} requests {request} != limits {limit}; "
                "make them equal."
            )
        if limit is not None and str(limit) not in (UNKNOWN,) and _as_int(limit) < 1:
            yield f"container {c.get('name')!r} asks for {limit!r} {GPU_RESOURCE}; ask for a whole number"


def _as_int(value: Any) -> int:
    try:
        return int(float(str(value)))
    except ValueError:
        return 0


def gpu_pods_tolerate_gpu_taint(resource: Resource) -> Iterator[str]:
    spec = pod_spec(resource)
    if spec is not None and requests_gpu(spec) and not tolerates_gpu_taint(spec):
        yield (
            f"{_label(resource, spec)} asks for {GPU_RESOURCE} but does not tolerate the GPU pool "
            "taint, so it "
            f"can never be scheduled; add the toleration {{key: {GPU_TAINT_KEY}, operator: Exists, "
            "effect: NoSchedule}."
        )


def containers_have_resources(resource: Resource) -> Iterator[str]:
    spec = pod_spec(resource)
    if spec is None:
        return
    for c in containers(spec):
        requests = dig(c, "resources.requests", {})
        limits = dig(c, "resources.limits", {})
        if requests == UNKNOWN or limits == UNKNOWN:
            continue
        missing = [f"requests.{k}" for k in ("cpu", "memory") if k not in requests]
        # A memory limit bounds a leak's blast radius; a CPU limit is optional (throttling hurts latency).
        missing += [f"limits.{k}" for k in ("memory",) if k not in limits]
        if missing:
            yield (
                f"container {c.get('name')!r} has no resources.{', resources.'.join(missing)}; "
                "set CPU and memory requests and a memory limit so the scheduler can place it and a leak "
                "cannot starve its node."
            )


# -- secrets in plain text ---------------------------------------------------------------------------

_SECRET_WORDS = {
    "KEY",
    "KEYS",
    "APIKEY",
    "APIKEYS",
    "TOKEN",
    "SECRET",
    "SECRETS",
    "PASSWORD",
    "PASSWD",
    "PWD",
    "CREDENTIAL",
    "CREDENTIALS",
}
# A name ending in one of these names or points at a secret instead of holding one.
_REFERENCE_WORDS = {
    "FILE",
    "PATH",
    "DIR",
    "NAME",
    "HEADER",
    "ID",
    "REF",
    "ARN",
    "URI",
    "ENV",
    "VAR",
    "MOUNT",
    "TYPE",
    "MODE",
    "ENABLED",
    "TTL",
    "PREFIX",
    "SOURCE",
}
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_CONFIG_LINE = re.compile(r"^\s*[\"']?([A-Za-z0-9_.-]+)[\"']?\s*[:=]\s*(.+?)\s*,?$")


def secret_like_name(name: str) -> bool:
    """`OPENAI_API_KEY`, `dbPassword`, `token` yes; `TOKENIZER_DIR`, `MAX_TOKENS`, `API_KEY_FILE` no."""
    words = [w.upper() for w in _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", name)) if w]
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    return any(w in _SECRET_WORDS for w in words)


def literal_value(value: Any) -> bool:
    """A value that could be a secret written out (not empty, a flag, a number, a path or a reference)."""
    if not isinstance(value, str):
        return False
    text = value.strip().strip("\"'")
    if text in ("", UNKNOWN) or text.lower() in ("true", "false", "null", "none", "[]", "{}"):
        return False
    if text.startswith(("/", "$(", "${", "file://", "secretKeyRef", "env:")):
        return False
    return not re.fullmatch(r"[0-9.]+[a-zA-Z]{0,2}", text)


def no_plaintext_secrets(resource: Resource) -> Iterator[str]:
    spec = pod_spec(resource)
    if spec is not None:
        for c in containers(spec):
            yield from _container_secrets(c)
    if kind_of(resource) == "ConfigMap":
        for key, value in dict(resource.get("data", {}) or {}).items():
            yield from _configmap_secrets(str(key), value)


def _container_secrets(c: dict[str, Any]) -> Iterator[str]:
    name = c.get("name")
    for env in as_list(c.get("env")):
        if not isinstance(env, dict) or "value" not in env:
            continue
        var, value = str(env.get("name", "")), env.get("value")
        if isinstance(value, str) and SECRET in value:
            yield (
                f"container {name!r} env {var} holds a Pulumi secret as a plain value (it would be stored "
                "unencrypted in the pod spec); put it in a Kubernetes Secret and use "
                "env.valueFrom.secretKeyRef."
            )
        elif secret_like_name(var) and literal_value(value):
            yield (
                f"container {name!r} env {var} looks like a secret written as a literal value; put it in a "
                "Kubernetes Secret and use env.valueFrom.secretKeyRef."
            )
    for field in ("args", "command"):
        if any(isinstance(a, str) and SECRET in a for a in as_list(c.get(field))):
            yield (
                f"container {name!r} {field} contain a Pulumi secret; pass it through an env var from a "
                "Kubernetes Secret instead ($(VAR) in args)."
            )


def _configmap_secrets(key: str, value: Any) -> Iterator[str]:
    if isinstance(value, str) and SECRET in value:
        yield f"ConfigMap key {key!r} holds a Pulumi secret; ConfigMaps are not encrypted: use a Secret."
        return
    if secret_like_name(key) and literal_value(value) and "\n" not in str(value):
        yield f"ConfigMap key {key!r} looks like a secret; move it to a Kubernetes Secret."
        return
    for line in str(value).splitlines()[:2000]:
        match = _CONFIG_LINE.match(line)
        if match and secret_like_name(match.group(1)) and literal_value(match.group(2)):
            yield (
                f"ConfigMap file {key!r} sets {match.group(1)!r} to a literal value that looks like a "
                "secret; "
                "move it to a Kubernetes Secret (mounted or via env)."
            )
            return


RULES = (
    ResourceRule(
        "gpu-pods-request-gpus",
        f"Pods placed on GPU nodes ask for {GPU_RESOURCE} (as a limit, a whole number >= 1).",
        "mandatory",
        gpu_pods_request_gpus,
    ),
    ResourceRule(
        "gpu-pods-tolerate-gpu-taint",
        f"Pods that ask for {GPU_RESOURCE} tolerate the {GPU_TAINT_KEY} NoSchedule taint of the GPU pool.",
        "mandatory",
        gpu_pods_tolerate_gpu_taint,
    ),
    ResourceRule(
        "containers-have-resources",
        "Every container (init containers too) has CPU and memory requests and a memory limit.",
        "mandatory",
        containers_have_resources,
    ),
    ResourceRule(
        "no-plaintext-secrets",
        "No secret in plain container env values, args or ConfigMaps (use Secrets and valueFrom).",
        "mandatory",
        no_plaintext_secrets,
    ),
)
