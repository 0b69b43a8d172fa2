"""Settings of what runs on the cluster (Triton, the gateway, GPU add-ons) and of the public edge.

Part of the one settings layer: `StackSettings` in infra/settings/stack.py holds these blocks.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from infra.catalog import DEFAULT_TRITON_RELEASE, TRITON_WORKLOAD_IDENTITY_RELEASES, CloudName
from infra.settings.base import Settings

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")
_IMAGE_TAG = re.compile(r"^[0-9]{2}\.[0-9]{2}$")
# `<UTC time>-<first 12 hex digits of the content hash>`, as model_repo/upload.py names versions.
_MODEL_VERSION = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}$")


def _check_quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 512Mi or 16Gi")
    return value


def _check_model_version(value: str | None) -> str | None:
    if value is not None and not _MODEL_VERSION.match(value):
        raise ValueError(
            "must be a version `tritonform model upload` printed, such as 20261201T101500Z-0123456789ab"
        )
    return value


class _Replicas(Settings):
    min_replicas: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(default=4, ge=1, le=100)
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"

    _quantities = field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit")(
        _check_quantity
    )

    @model_validator(mode="after")
    def _ordered(self) -> _Replicas:
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"needs minReplicas <= maxReplicas, got {self.min_replicas} > {self.max_replicas}"
            )
        return self


class TritonSettings(_Replicas):
    """The Triton Deployment on the GPU pool."""

    # NGC release of nvcr.io/nvidia/tritonserver:<version>-py3 our image builds on (the same on every cloud;
    # StackSettings refuses one that cannot read the bucket with the cloud's workload identity).
    version: str = DEFAULT_TRITON_RELEASE
    image: str | None = None  # a prebuilt image to run instead of building docker/triton
    model_prefix: str = "models"  # `tritonform model upload` writes versions/<id>/ and CURRENT under it
    # The uploaded version both Triton and the gateway serve (`tritonform model upload --stack` sets it);
    # unset: neither runs yet, so a first `pulumi up` needs no model.
    model_version: str | None = None
    # None: 2 in prod (a node drain takes one while the other serves), 1 in dev (StackSettings).
    # 0: Triton scales to zero when idle (KEDA) and the gateway holds requests while it comes back.
    min_replicas: int | None = Field(default=None, ge=0, le=100)  # type: ignore[assignment]
    # With minReplicas 0: how long without generations in flight or held before Triton goes to zero
    # (KEDA's cooldownPeriod); the GPU pool's autoscaler then removes the idle node.
    scale_to_zero_after_seconds: int = Field(default=600, ge=60, le=86_400)
    gpus_per_replica: int = Field(default=1, ge=1, le=8)
    cpu_request: str = "2"
    cpu_limit: str = "4"
    memory_request: str = "8Gi"
    memory_limit: str = "12Gi"
    # Autoscaling on inference load: average in-flight requests per replica that triggers a scale-out.
    target_inflight_requests: int = Field(default=8, ge=1, le=1024)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _IMAGE_TAG.match(value):
            raise ValueError(f'must be an NGC release such as "{DEFAULT_TRITON_RELEASE}"')
        return value

    _model_version = field_validator("model_version")(_check_model_version)


class CanarySettings(Settings):
    """A canary rollout: a second version beside `triton.modelVersion`, in its own Triton Deployment.

    `tritonform model upload DIR --stack NAME --canary PERCENT` sets `version` and `weight`; the gateway
    splits conversations by weight and rolls the canary back by itself when, over `windowSeconds`, its
    error ratio or TTFT p95 exceeds the stable version's by the margins below (serving/gateway/canary.py);
    `tritonform model promote|rollback --stack NAME` ends the rollout.
    """

    version: str | None = None
    weight: int = Field(default=10, ge=1, le=99)
    replicas: int = Field(default=1, ge=1, le=10)
    window_seconds: int = Field(default=300, ge=30, le=3600)
    min_requests: int = Field(default=20, ge=1, le=100_000)
    max_error_ratio_increase: float = Field(default=0.02, ge=0, le=1)
    max_ttft_p95_ratio: float = Field(default=1.5, ge=1, le=100)

    _version = field_validator("version")(_check_model_version)


def check_triton_release(cloud: CloudName, release: str) -> None:
    """Triton must be able to read the model bucket with the identity this cloud gives its pods."""
    first = TRITON_WORKLOAD_IDENTITY_RELEASES.get(cloud)
    if first is not None and tuple(map(int, release.split("."))) < tuple(map(int, first.split("."))):
        raise ValueError(
            f"triton.version: Triton {release} cannot read the model bucket on {cloud} with the workload "
            f'identity (the stack creates no storage keys); set triton.version to "{first}" or later, the '
            "first NGC release that can"
        )


class GatewaySettings(_Replicas):
    """Our OpenAI-compatible gateway in front of Triton (CPU nodes)."""

    image: str | None = None  # a prebuilt image to run instead of building docker/gateway
    min_replicas: int = Field(default=2, ge=1, le=100)
    max_replicas: int = Field(default=6, ge=1, le=100)
    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    requests_per_minute: int = Field(default=60, ge=1, le=1_000_000)
    tokens_per_minute: int = Field(default=20_000, ge=1, le=100_000_000)
    max_prompt_tokens: int = Field(default=4096, ge=16, le=1_000_000)
    max_tokens: int = Field(default=1024, ge=1, le=1_000_000)
    # How long a request waits while no Triton replica is ready (scale from zero: a GPU node joins in
    # 2-4 min, then the device plugin and Triton's image pull; see README) before a 503 with Retry-After.
    # Below edge.streamTimeoutSeconds, so the client gets the 503, not the edge's cut.
    cold_start_timeout_seconds: int = Field(default=540, ge=5, le=890)
    # At most this many requests wait at once per gateway replica; more get a 503 with Retry-After at once.
    max_held_requests: int = Field(default=256, ge=1, le=100_000)
    # The store the gateway replicas share their per-key limits through (one small pod in the namespace).
    rate_limit_store_image: str = "valkey/valkey:9.0.3"


class AddonSettings(Settings):
    """Versions of the cluster add-ons (Helm charts) the stack installs."""

    device_plugin_version: str = "0.17.1"  # NVIDIA k8s-device-plugin chart (clouds whose nodes lack one)
    # kubernetes cluster-autoscaler chart (clouds that need it); its image follows the cluster's minor.
    cluster_autoscaler_version: str = "9.59.0"
    metrics_server_version: str = "3.13.1"  # kubernetes-sigs metrics-server chart (clouds without one)
    prometheus_version: str = "27.5.1"  # prometheus-community/prometheus chart
    keda_version: str = "2.17.2"  # kedacore/keda chart: Triton's ScaledObject (load-based, down to zero)
    dcgm_exporter_version: str = "4.8.2"  # NVIDIA dcgm-exporter chart (GPU metrics on the GPU pool)


class EdgeSettings(Settings):
    """The public entry: the cloud's managed API gateway in front of the internal load balancer."""

    rate_limit_per_second: int = Field(default=50, ge=1, le=100_000)
    burst: int = Field(default=100, ge=1, le=100_000)
    # Streams longer than this are cut by the edge; the clouds allow up to 15 minutes.
    stream_timeout_seconds: int = Field(default=600, ge=30, le=900)
    gateway_node_port: int = Field(default=30080, ge=30000, le=32767)
