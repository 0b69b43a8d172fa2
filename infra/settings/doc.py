"""The README's settings table, generated from the settings model so defaults are never written twice.

`python -m infra.settings.doc` prints the table, `python -m infra.settings.doc --write` refreshes it in
README.md; a test checks that README.md contains it verbatim.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticUndefined

from infra.settings.stack import NAMESPACE, SYSTEM_MACHINE_DEFAULTS, StackSettings

# What each key means; its type and default come from the model.
DESCRIPTIONS: dict[str, str] = {
    "cloud": "Which cloud this stack deploys to.",
    "environment": "`prod` makes the Kubernetes API private by default and spreads NAT over zones.",
    "name": "Prefix of every cloud resource name (1-20 lowercase letters, digits, '-').",
    "region": "Cloud region (AWS/GCP region, Azure location).",
    "tags": "Extra tags/labels on every resource (project, stack and environment are always added).",
    "network.cidr": "IPv4 block of the cluster network (/20 or larger).",
    "network.zoneCount": "Availability zones to spread subnets and nodes over.",
    "cluster.kubernetesVersion": "Kubernetes minor version of the managed cluster; `plan` stops on one its "
    "cloud no longer creates and warns 60 days before its standard support ends (infra/catalog.py).",
    "cluster.endpointPublicAccess": "Public Kubernetes API; unset: public in dev, private in prod.",
    "cluster.endpointAllowedCidrs": "CIDRs allowed to reach a public Kubernetes API endpoint.",
    "systemPool.instanceType": "Machine type of the always-on system pool; unset means the cloud's default "
    f"({', '.join(f'{c}: {m}' for c, m in SYSTEM_MACHINE_DEFAULTS.items())}).",
    "systemPool.minNodes": "System pool minimum size.",
    "systemPool.desiredNodes": "System pool initial size.",
    "systemPool.maxNodes": "System pool maximum size.",
    "systemPool.diskSizeGb": "System node disk size (GB).",
    "gpuPool.instanceType": "GPU machine type (AWS instance type, GCP machine type, Azure VM size).",
    "gpuPool.gpusPerNode": "GPUs each GPU node carries (at most what the machine type has).",
    "gpuPool.accelerator": "GCP only: accelerator type attached to the machine (e.g. nvidia-l4).",
    "gpuPool.minNodes": "GPU pool minimum size (0 lets it scale to zero when idle).",
    "gpuPool.desiredNodes": "GPU pool initial size (the autoscaler owns it afterwards).",
    "gpuPool.maxNodes": "GPU pool maximum size: the cost ceiling.",
    "gpuPool.diskSizeGb": "GPU node disk size (GB); model images are large.",
    "gpuPool.capacity": "`spot` (cheaper, can be reclaimed) or `on-demand`.",
    "allowedClientCidrs": "Client CIDRs allowed to call the public API endpoint.",
    "bucket.forceDestroy": "Let `pulumi destroy` delete a non-empty model bucket.",
    "bucket.kmsKey": "Customer-managed encryption key; unset means the cloud's managed encryption.",
    "bucket.noncurrentVersionDays": "Days a replaced model version is kept before it expires.",
    "triton.minReplicas": "Triton replicas when idle (each takes `gpusPerReplica` GPUs); unset: 2 in prod "
    "(a node drain takes one while the other serves), 1 in dev; 0: Triton scales to zero when idle and the "
    "gateway holds requests while it comes back (see `gateway.coldStartTimeoutSeconds`).",
    "triton.maxReplicas": "Most Triton replicas the load-based autoscaler may run.",
    "triton.cpuRequest": "CPU requested by each Triton pod.",
    "triton.cpuLimit": "CPU limit of each Triton pod.",
    "triton.memoryRequest": "Memory requested by each Triton pod.",
    "triton.memoryLimit": "Memory limit of each Triton pod.",
    "triton.version": "NGC Triton release the Triton image builds on (nvcr.io/nvidia/tritonserver:<v>-py3); "
    "Azure needs 26.05 or later (the first that reads Blob storage with the workload identity).",
    "triton.image": "A prebuilt Triton image to run instead of building docker/triton.",
    "triton.modelPrefix": "Bucket prefix that `tritonform model upload` writes versions and CURRENT under.",
    "triton.modelVersion": "The uploaded version Triton and the gateway serve (`tritonform model upload "
    "--stack` sets it); unset: neither runs yet, so the first `pulumi up` needs no model.",
    "triton.gpusPerReplica": "GPUs each Triton pod requests: its tensor parallel size, a divisor of "
    "`gpuPool.gpusPerNode`; 1 on the ONNX backend.",
    "triton.executionProvider": "ONNX backend: onnxruntime's execution provider on the GPU node, `cuda` or "
    "`tensorrt` (opt-in: engines built on first load, cached under /tmp in the pod); a model whose provider "
    "does not load fails readiness instead of running on the CPU.",
    "triton.targetInflightRequests": "Generations in flight (plus requests held) per Triton replica that "
    "trigger a scale-out (KEDA ScaledObject).",
    "triton.scaleToZeroAfterSeconds": "With `minReplicas: 0`: seconds without generations in flight or held "
    "before Triton goes to zero (KEDA's cooldown); the GPU pool's autoscaler then removes the idle node.",
    "canary.version": "A version tried beside `triton.modelVersion` in its own Triton Deployment "
    "(`tritonform model upload --stack --canary PERCENT` sets it; `model promote|rollback` ends it).",
    "canary.weight": "Percent of conversations the gateway sends to the canary (each stays on one version).",
    "canary.replicas": "Triton replicas of the canary version (fixed; the stable one keeps its autoscaler).",
    "canary.windowSeconds": "Sliding window over which the gateway compares the canary with the stable one.",
    "canary.minRequests": "Canary generations in the window before it is judged at all.",
    "canary.maxErrorRatioIncrease": "Roll back when the canary's 5xx ratio exceeds the stable one's by more "
    "than this (0.02 = 2 points).",
    "canary.maxTtftP95Ratio": "Roll back when the canary's time-to-first-token p95 exceeds this many times "
    "the stable one's.",
    "gateway.minReplicas": "Gateway replicas at least (on the system nodes).",
    "gateway.maxReplicas": "Gateway replicas at most (CPU-based autoscaling).",
    "gateway.cpuRequest": "CPU requested by each gateway pod.",
    "gateway.cpuLimit": "CPU limit of each gateway pod.",
    "gateway.memoryRequest": "Memory requested by each gateway pod.",
    "gateway.memoryLimit": "Memory limit of each gateway pod.",
    "gateway.image": "A prebuilt gateway image to run instead of building docker/gateway.",
    "gateway.requestsPerMinute": "Requests per minute allowed per API key (429 beyond).",
    "gateway.tokensPerMinute": "Prompt + completion tokens per minute allowed per API key.",
    "gateway.maxPromptTokens": "Longest prompt accepted, in tokens (400 beyond).",
    "gateway.rateLimitStoreImage": "Image of the Valkey (Redis) pod the gateway replicas share per-key "
    "limits through; pin it by digest (repo@sha256:...) in production.",
    "gateway.coldStartTimeoutSeconds": "How long a request waits while no Triton replica is ready (a scale "
    "from zero: a GPU node joining, Triton's image pull) before a 503 with Retry-After; below "
    "`edge.streamTimeoutSeconds` so the client gets the 503 rather than the edge's cut.",
    "gateway.maxHeldRequests": "Requests each gateway replica holds at most while Triton is cold (503 with "
    "Retry-After beyond).",
    "gateway.maxTokens": "Largest `max_tokens` a request may ask for (400 beyond).",
    "addons.devicePluginVersion": "NVIDIA k8s-device-plugin chart version (clouds whose GPU nodes lack one).",
    "addons.clusterAutoscalerVersion": "cluster-autoscaler chart version (clouds that need one installed); "
    "the image is the release of the cluster's Kubernetes minor (infra/catalog.py).",
    "addons.metricsServerVersion": "kubernetes-sigs metrics-server chart version (clouds without a metrics "
    "API: AWS); the gateway's CPU autoscaler reads it.",
    "addons.prometheusVersion": "prometheus-community/prometheus chart version.",
    "addons.kedaVersion": "kedacore/keda chart version: KEDA scales Triton on the gateway's generations in "
    "flight plus held requests, down to zero when `triton.minReplicas` is 0.",
    "addons.dcgmExporterVersion": "NVIDIA dcgm-exporter Helm chart: GPU metrics (memory, utilisation) "
    "from every GPU node, scraped by the stack's Prometheus.",
    "addons.grafanaVersion": "grafana-community/grafana Helm chart: Grafana in the monitoring namespace "
    "with the gateway, Triton and GPU dashboards (`kubectl -n monitoring port-forward svc/grafana 3000:80`).",
    "model.name": "Name of the served model, as `plan` prints it.",
    "model.configJson": "A checkpoint's config.json (path from the project root); its numbers replace the "
    "shape keys below.",
    "model.parametersB": "Parameters in billions; unset: counted from the shape.",
    "model.layers": "Transformer layers (`num_hidden_layers`).",
    "model.hiddenSize": "Hidden size.",
    "model.intermediateSize": "MLP intermediate size.",
    "model.attentionHeads": "Query heads.",
    "model.kvHeads": "Key/value heads (grouped-query attention).",
    "model.headDim": "Size of one head; unset: hiddenSize / attentionHeads.",
    "model.vocabSize": "Vocabulary size.",
    "model.tiedEmbeddings": "Input and output embeddings share one table.",
    "model.precision": "Weights (and KV cache: 16 bits below fp32) as served; `plan` checks the fit per GPU.",
    "model.contextLength": "Tokens of context each sequence may hold (KV cache is sized for it).",
    "model.concurrency": "Sequences one replica decodes at once (KV cache and throughput estimate).",
    "model.backend": "Triton backend of the uploaded repository: `onnx` (one GPU) or `tensorrt-llm` "
    "(LLM API).",
    "edge.rateLimitPerSecond": "Steady request rate the public edge lets through.",
    "edge.burst": "Burst of requests the public edge lets through.",
    "edge.streamTimeoutSeconds": "Longest generation (stream) the edge keeps open, in seconds (max 900).",
    "edge.gatewayNodePort": "NodePort the gateway listens on where the edge reaches it through nodes (AWS).",
    "workload.namespace": "Kubernetes namespace of Triton and the gateway.",
    "workload.tritonServiceAccount": "Service account Triton runs as; the bucket reader is bound to it.",
    "workload.gatewayServiceAccount": "Service account the gateway runs as; its identity reads only the "
    "tokenizer files.",
    "workload.trainerServiceAccount": "Service account training Jobs run as; its identity reads datasets/ "
    "and writes checkpoints/ only.",
    "workload.trainerImage": "A prebuilt image for training Jobs to run instead of building docker/trainer.",
    "workload.buildTrainerImage": "Build docker/trainer (CUDA PyTorch, several GB) and push it to the "
    "stack's registry on `pulumi up`, for `tritonform finetune|distill --stack` (on in the dev stacks, off "
    "by default: a serving-only stack never runs it).",
}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(names)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin is tuple:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "map"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return f"`{list(value)}`" if value else "`[]`"
    return f"`{value}`" if value != {} else "`{}`"


def rows(model: type[BaseModel] = StackSettings, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every leaf setting, depth first, in declaration order."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{to_camel(name)}"
        annotation = field.annotation
        candidates = get_args(annotation) or (annotation,)
        nested = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            yield from rows(nested[0], f"{key}.")
        else:
            meaning = DESCRIPTIONS.get(key) or field.description or ""
            yield key, _type_name(annotation), _default(field), meaning


def markdown_table() -> str:
    """The settings table for README.md."""
    lines = ["| setting | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, type_name, default, meaning in rows():
        lines.append(f"| `{NAMESPACE}:{key}` | {type_name} | {default} | {meaning} |")
    return "\n".join(lines)


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def update_readme(path: Path) -> bool:
    """Replace the table between the markers in README.md; True when the file changed."""
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{markdown_table()}\n{END}{tail}"
    if updated != text:
        path.write_text(updated)
    return updated != text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        readme = Path(sys.argv[2] if len(sys.argv) > 2 else "README.md")
        print("updated" if update_readme(readme) else "up to date", readme)
    else:
        print(markdown_table())
