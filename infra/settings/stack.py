"""Typed stack settings: the one place where every stack setting is parsed, checked and defaulted.

A stack file (`stacks/Pulumi.<stack>.yaml`) holds structured Pulumi config under the `tritonform:`
namespace. `load_settings` turns that mapping into a frozen `StackSettings` tree, or raises
`SettingsError` with one line per problem naming the key, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from infra.catalog import (
    AWS_GPU_FAMILIES,
    DEFAULT_KUBERNETES_VERSION,
    GCP_ACCELERATORS,
    GPU_MACHINES,
    CloudName,
    GpuMachine,
)
from infra.settings.base import Settings
from infra.settings.base import check_cidr as _check_cidr
from infra.settings.clouds import AwsSettings, AzureSettings, GcpSettings
from infra.settings.fit import check_disk, check_fit, check_parallelism
from infra.settings.model import ModelSettings
from infra.settings.serving import (
    AddonSettings,
    CanarySettings,
    EdgeSettings,
    GatewaySettings,
    TritonSettings,
    check_triton_release,
)

NAMESPACE = "tritonform"

# Per-cloud defaults live here and nowhere else.
SYSTEM_MACHINE_DEFAULTS: dict[CloudName, str] = {
    "aws": "m6i.large",
    "gcp": "e2-standard-4",
    "azure": "Standard_D4s_v5",
}

# Secret config (`pulumi config set --secret tritonform:apiKeys ...`) is not part of the settings: the
# program reads it with pulumi.Config().get_secret so it stays encrypted from the stack file to the cluster.
SECRET_CONFIG_KEYS = frozenset({"apiKeys"})

_DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$")
_K8S_VERSION = re.compile(r"^1\.(2[6-9]|3[0-9])$")
# N1 machines take attached GPUs; every other GCP GPU family has its GPUs built in (fixed type and count).
_GCP_N1_ACCELERATORS = frozenset(
    {"nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p4", "nvidia-tesla-p100"}
)


class SettingsError(ValueError):
    """A stack file holds a wrong or missing setting; the message says which and how to fix it."""

    def __init__(self, problems: list[str], source: str = "stack config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid settings in {source}:\n{lines}")


_Settings = Settings


class NetworkSettings(_Settings):
    """The private network the cluster lives in."""

    cidr: str = "10.0.0.0/16"
    zone_count: int = Field(default=2, ge=2, le=6)

    _cidr = field_validator("cidr")(_check_cidr)

    @field_validator("cidr")
    @classmethod
    def _big_enough(cls, value: str) -> str:
        if ipaddress.ip_network(value).version != 4:
            raise ValueError("must be an IPv4 block (the cluster network is IPv4)")
        if ipaddress.ip_network(value).prefixlen > 20:
            raise ValueError("must be /20 or larger so that every zone gets public and private subnets")
        return value


class ClusterSettings(_Settings):
    """The managed Kubernetes control plane."""

    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION  # which ones each cloud creates: infra/catalog.py
    # None means: public for dev stacks, private for prod stacks.
    endpoint_public_access: bool | None = None
    endpoint_allowed_cidrs: tuple[str, ...] = ()

    @field_validator("kubernetes_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _K8S_VERSION.match(value):
            raise ValueError(
                'must be a Kubernetes minor version between "1.26" and "1.39", '
                f'e.g. "{DEFAULT_KUBERNETES_VERSION}"'
            )
        return value

    @field_validator("endpoint_allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_cidr(v) for v in value)


class _Scaling(_Settings):
    min_nodes: int = Field(default=1, ge=0, le=1000)
    desired_nodes: int = Field(default=1, ge=0, le=1000)
    max_nodes: int = Field(default=3, ge=1, le=1000)
    disk_size_gb: int = Field(default=100, ge=20, le=16384)

    @model_validator(mode="after")
    def _ordered(self) -> _Scaling:
        if not self.min_nodes <= self.desired_nodes <= self.max_nodes:
            raise ValueError(
                f"needs minNodes <= desiredNodes <= maxNodes, got {self.min_nodes} <= "
                f"{self.desired_nodes} <= {self.max_nodes}"
            )
        return self


class SystemPoolSettings(_Scaling):
    """The small always-on node pool for cluster add-ons and the gateway."""

    instance_type: str | None = None  # None: the cloud's default in SYSTEM_MACHINE_DEFAULTS
    min_nodes: int = Field(default=1, ge=1, le=100)
    desired_nodes: int = Field(default=2, ge=1, le=100)
    max_nodes: int = Field(default=3, ge=1, le=100)
    disk_size_gb: int = Field(default=50, ge=20, le=16384)


class GpuPoolSettings(_Scaling):
    """The tainted, autoscaled GPU node pool that runs Triton."""

    instance_type: str
    gpus_per_node: int = Field(default=1, ge=1, le=16)
    accelerator: str | None = None  # GCP only: the accelerator type attached to the machine
    min_nodes: int = Field(default=0, ge=0, le=1000)
    desired_nodes: int = Field(default=1, ge=0, le=1000)
    max_nodes: int = Field(default=2, ge=1, le=1000)
    capacity: Literal["spot", "on-demand"] = "on-demand"


class BucketSettings(_Settings):
    """Object storage for the model repository."""

    force_destroy: bool = False
    kms_key: str | None = None  # customer-managed key; None means the cloud's managed encryption
    noncurrent_version_days: int = Field(default=30, ge=1, le=3650)


class WorkloadSettings(_Settings):
    """Where Triton runs in the cluster; the reader identity is bound to this service account."""

    namespace: str = "tritonform"
    triton_service_account: str = "triton"
    gateway_service_account: str = "gateway"
    # Training Jobs (`tritonform finetune --stack`): bound to the trainer identity (datasets/, checkpoints/)
    trainer_service_account: str = "trainer"
    # The image those Jobs run: a prebuilt image with tritonform's training code and its dependencies, or
    # (build_trainer_image) docker/trainer built and pushed to the stack's registry like the gateway's.
    # Off by default: a CUDA PyTorch image of several GB that a serving-only stack never runs.
    trainer_image: str | None = None
    build_trainer_image: bool = False

    @field_validator(
        "namespace", "triton_service_account", "gateway_service_account", "trainer_service_account"
    )
    @classmethod
    def _dns(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", value):
            raise ValueError("must be a lowercase DNS label (letters, digits and '-')")
        return value


class StackSettings(_Settings):
    """Everything that varies between stacks, parsed once from the stack file."""

    cloud: CloudName
    environment: Literal["dev", "prod"] = "dev"
    name: str = "tritonform"
    region: str
    tags: dict[str, str] = Field(default_factory=dict)
    network: NetworkSettings = NetworkSettings()
    cluster: ClusterSettings = ClusterSettings()
    system_pool: SystemPoolSettings = SystemPoolSettings()
    gpu_pool: GpuPoolSettings
    allowed_client_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    bucket: BucketSettings = BucketSettings()
    workload: WorkloadSettings = WorkloadSettings()
    triton: TritonSettings = TritonSettings()
    canary: CanarySettings = CanarySettings()
    gateway: GatewaySettings = GatewaySettings()
    addons: AddonSettings = AddonSettings()
    edge: EdgeSettings = EdgeSettings()
    model: ModelSettings = ModelSettings()
    gcp: GcpSettings | None = None
    azure: AzureSettings | None = None
    aws: AwsSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(
                "must be 1-20 lowercase letters, digits or '-', starting with a letter "
                "(it prefixes every cloud resource name)"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.match(r"^[a-z][a-z0-9-]+[0-9a-z]$", value):
            raise ValueError("must be a region name such as us-east-1, europe-west4 or westeurope")
        return value

    @field_validator("allowed_client_cidrs")
    @classmethod
    def _client_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_cidr(v) for v in value)

    @model_validator(mode="after")
    def _cloud_specific(self) -> StackSettings:
        _check_gpu_machine(self.cloud, self.gpu_pool)
        if self.cloud == "gcp" and self.gcp is None:
            raise ValueError("gcp: the GCP stack needs a `gcp:` block with at least `project`")
        if (
            self.gcp is not None
            and self.gcp.zone is not None
            and not self.gcp.zone.startswith(f"{self.region}-")
        ):
            raise ValueError(
                f"gcp.zone: {self.gcp.zone} is not in region {self.region}; use one of its zones, "
                f"e.g. {self.region}-b (gcloud compute zones list --filter region:{self.region})"
            )
        for other in ("gcp", "azure", "aws"):
            if other != self.cloud and getattr(self, other) is not None:
                raise ValueError(f"{other}: this block is only for cloud {other}, this stack is {self.cloud}")
        check_triton_release(self.cloud, self.triton.version)
        if self.canary.version is not None and self.triton.model_version is None:
            raise ValueError(
                "canary.version: a canary runs beside a stable version, and triton.modelVersion is not set; "
                "upload the first version without --canary"
            )
        if self.canary.version is not None and self.canary.version == self.triton.model_version:
            raise ValueError(
                f"canary.version: {self.canary.version} is already the stable triton.modelVersion; remove "
                "canary.version (tritonform model rollback) or upload a new version as the canary"
            )
        if self.gateway.cold_start_timeout_seconds >= self.edge.stream_timeout_seconds:
            raise ValueError(
                f"gateway.coldStartTimeoutSeconds: {self.gateway.cold_start_timeout_seconds} s is not below "
                f"edge.streamTimeoutSeconds ({self.edge.stream_timeout_seconds} s), so the edge would cut a "
                "held request before the gateway answers it with a 503; lower it or raise the edge's"
            )
        check_parallelism(self.gpu_pool.gpus_per_node, self.triton.gpus_per_replica, self.model.backend)
        check_fit(self.cloud, self.gpu_machine, self.triton.gpus_per_replica, self.model)
        check_disk(self.model.backend, self.gpu_pool.disk_size_gb, self.model)
        return self

    # Derived values: computed here so that no other module re-decides them.
    @property
    def api_public(self) -> bool:
        """Whether the Kubernetes API has a public endpoint (dev: yes unless said; prod: no unless said)."""
        if self.cluster.endpoint_public_access is not None:
            return self.cluster.endpoint_public_access
        return self.environment == "dev"

    @property
    def triton_min_replicas(self) -> int:
        """Triton's fewest replicas: as set, else 2 in prod (a drain takes one while the other serves)."""
        if self.triton.min_replicas is not None:
            return self.triton.min_replicas
        return min(2, self.triton.max_replicas) if self.environment == "prod" else 1

    @property
    def gpu_machine(self) -> GpuMachine | None:
        """The GPU pool's machine type in the catalogue (None: an AWS type of a known family not listed)."""
        return GPU_MACHINES[self.cloud].get(self.gpu_pool.instance_type)

    @property
    def system_instance_type(self) -> str:
        return self.system_pool.instance_type or SYSTEM_MACHINE_DEFAULTS[self.cloud]

    @property
    def resource_tags(self) -> dict[str, str]:
        return {"project": NAMESPACE, "stack-name": self.name, "environment": self.environment, **self.tags}


def _check_gpu_machine(cloud: CloudName, pool: GpuPoolSettings) -> None:
    known = GPU_MACHINES[cloud]
    machine = known.get(pool.instance_type)
    if cloud == "aws" and machine is None:
        family = pool.instance_type.split(".")[0]
        if family not in AWS_GPU_FAMILIES:
            raise ValueError(
                f"gpuPool.instanceType: {pool.instance_type!r} is not an NVIDIA GPU instance type; "
                f"use one of the families {', '.join(sorted(AWS_GPU_FAMILIES))} (e.g. g5.xlarge)"
            )
    elif machine is None:
        raise ValueError(
            f"gpuPool.instanceType: {pool.instance_type!r} is not a known GPU machine on {cloud}; "
            f"use one of {', '.join(known)}"
        )
    if cloud == "gcp":
        accelerator = pool.accelerator or (machine.gpu_model if machine else None)
        if accelerator not in GCP_ACCELERATORS | _GCP_N1_ACCELERATORS:
            raise ValueError(
                f"gpuPool.accelerator: {pool.accelerator!r} is not a GCP NVIDIA accelerator; "
                f"use one of {', '.join(sorted(GCP_ACCELERATORS | _GCP_N1_ACCELERATORS))}"
            )
        _check_gcp_accelerator(pool, machine, accelerator)
    elif cloud == "azure" and pool.accelerator is not None:
        raise ValueError(
            "gpuPool.accelerator: only GCP attaches accelerators; on Azure the VM size sets the GPU"
        )
    if machine is not None and pool.gpus_per_node > machine.gpus:
        raise ValueError(
            f"gpuPool.gpusPerNode: {pool.instance_type} has {machine.gpus} GPU(s), "
            f"so gpusPerNode must be at most {machine.gpus} (got {pool.gpus_per_node})"
        )


def _check_gcp_accelerator(pool: GpuPoolSettings, machine: GpuMachine | None, accelerator: str) -> None:
    """GCP: N1 machines take an attachable accelerator; other families have theirs built in."""
    if machine is None:
        return
    if pool.instance_type.startswith("n1-"):
        if accelerator not in _GCP_N1_ACCELERATORS:
            raise ValueError(
                f"gpuPool.accelerator: {accelerator!r} cannot be attached to {pool.instance_type}; "
                f"N1 machines take one of {', '.join(sorted(_GCP_N1_ACCELERATORS))}"
            )
        return
    if accelerator != machine.gpu_model:
        raise ValueError(
            f"gpuPool.accelerator: {pool.instance_type} has {machine.gpu_model} built in, "
            f"so accelerator must be {machine.gpu_model!r} or left out (got {accelerator!r})"
        )
    if pool.gpus_per_node != machine.gpus:
        raise ValueError(
            f"gpuPool.gpusPerNode: {pool.instance_type} comes with {machine.gpus} {machine.gpu_model} GPU(s) "
            f"built in; set gpusPerNode: {machine.gpus} (got {pool.gpus_per_node})"
        )


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(to_camel(item) if "_" in item else item)
    return ".".join(parts)


def _value_at(raw: Mapping[str, Any], loc: tuple[int | str, ...]) -> Any:
    node: Any = raw
    for item in loc:
        try:
            node = node[item] if isinstance(item, int) else node.get(item, node.get(to_camel(str(item))))
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
    return node


def load_settings(config: Mapping[str, Any], source: str = "stack config") -> StackSettings:
    """Parse un-namespaced config (`{"cloud": "aws", "gpuPool": {...}}`) into `StackSettings`."""
    try:
        return StackSettings.model_validate(dict(config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if not loc:
                # A check across blocks names the key it is about first (`gpuPool.instanceType: ...`).
                head, colon, rest = message.partition(": ")
                if colon and re.fullmatch(r"[a-zA-Z]+(\.[a-zA-Z]+)+", head):
                    loc, message = tuple(head.split(".")), rest
            key = f"{NAMESPACE}:{_key_path(loc)}" if loc else NAMESPACE
            if err["type"] == "extra_forbidden":
                message = "unknown setting; check the spelling against the settings table in README.md"
            elif err["type"] == "missing":
                message = "required setting is missing"
            value = _value_at(config, loc)
            shown = f" (got {value!r})" if value is not None and err["type"] != "missing" else ""
            problems.append(f"{key}: {message}{shown}")
        raise SettingsError(problems, source) from None


def config_from_stack_file(path: Path) -> dict[str, Any]:
    """Read a Pulumi stack file and return its `tritonform:` keys without the namespace."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SettingsError([f"stack file {path} does not exist"], str(path)) from None
    except yaml.YAMLError as exc:
        raise SettingsError([f"not valid YAML: {exc}"], str(path)) from None
    raw = document.get("config") if isinstance(document, dict) else None
    if not isinstance(raw, dict):
        raise SettingsError(["the file needs a top-level `config:` mapping"], str(path))
    ours: dict[str, Any] = {}
    for key, value in raw.items():
        namespace, _, short = str(key).partition(":")
        if namespace == NAMESPACE and short and short not in SECRET_CONFIG_KEYS:
            ours[short] = value
    return ours


def secret_keys_in_stack_file(path: Path) -> list[str]:
    """The secret config keys (SECRET_CONFIG_KEYS) a stack file sets, without their values."""
    document = yaml.safe_load(path.read_text()) or {}
    raw = document.get("config") or {}
    return [key for key in SECRET_CONFIG_KEYS if f"{NAMESPACE}:{key}" in raw]


def load_stack_file(path: Path) -> StackSettings:
    """Settings from a stack file on disk (used by the offline plan and the tests)."""
    return load_settings(config_from_stack_file(path), str(path))


def config_from_pulumi() -> dict[str, Any]:
    """The running Pulumi program's `tritonform:` config, structured values decoded."""
    from pulumi.runtime.config import CONFIG, get_config_env

    merged = {**get_config_env(), **CONFIG.get()}
    ours: dict[str, Any] = {}
    for key, value in merged.items():
        namespace, _, short = key.partition(":")
        if namespace != NAMESPACE or not short or short in SECRET_CONFIG_KEYS:
            continue
        # Pulumi hands structured (object/list) config over as JSON text; scalars stay text.
        if isinstance(value, str) and value[:1] in ("{", "["):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        ours[short] = value
    return ours
