"""The one cloud interface every cloud implements, and the neutral components it returns.

A `CloudPlatform` turns `StackSettings` into a network, a managed Kubernetes cluster, a tainted GPU
node pool, a private model bucket and an identity that may read it. The components it returns are
the same Python types on every cloud, with the same output names, so everything after the cloud layer
(the Kubernetes workload, the stack outputs) never asks which cloud it is on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import pulumi

from infra.catalog import CloudName
from infra.settings import StackSettings

# The taint every GPU pool carries on every cloud, and the toleration GPU pods carry for it.
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"
GPU_TAINT_EFFECT = "NoSchedule"
# A label we put on every GPU node ourselves, so the node selector is the same on every cloud.
GPU_POOL_LABEL = "tritonform.dev/pool"
GPU_POOL_LABEL_VALUE = "gpu"


class Capability(Enum):
    """Things a cloud's managed services may or may not do; workloads ask for capabilities, not names."""

    SPOT_GPUS = "spot-gpus"
    CUSTOMER_MANAGED_KEYS = "customer-managed-keys"
    STREAMING_EDGE = "streaming-edge"


@dataclass(frozen=True)
class GpuScheduling:
    """How a pod lands on the GPU pool: the same shape on every cloud."""

    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    gpu_resource: str = "nvidia.com/gpu"

    @staticmethod
    def standard() -> GpuScheduling:
        return GpuScheduling(
            node_selector={GPU_POOL_LABEL: GPU_POOL_LABEL_VALUE},
            tolerations=[
                {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": GPU_TAINT_EFFECT},
            ],
        )


@dataclass(frozen=True)
class ServiceExposure:
    """How the gateway's Service is exposed to the cloud's edge (an internal load balancer or a port).

    The workload applies it as given; only the cloud class knows what its edge can reach.
    """

    type: str  # "LoadBalancer" | "NodePort" | "ClusterIP"
    # Where the edge's traffic comes from (CIDRs), for the gateway's network policy.
    source_ranges: tuple[str, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    node_port: int | None = None
    # "Local" keeps the client's source address (needed where source_ranges name the edge's subnet
    # and the dataplane would otherwise rewrite it to a node address); None: Kubernetes' default.
    external_traffic_policy: str | None = None


@dataclass(frozen=True)
class ServiceAccountRef:
    """The Kubernetes service account a cloud identity is bound to."""

    namespace: str
    name: str

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


class _Neutral(pulumi.ComponentResource):
    """A component whose outputs are set by the cloud that builds it, then registered once."""

    def _finish(self, outputs: dict[str, Any]) -> None:
        for key, value in outputs.items():
            setattr(self, key, value)
        self.register_outputs(outputs)


class Network(_Neutral):
    """The private network: `network_id` and `private_subnet_ids` (cloud-specific ids)."""

    network_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:Network", name, None, opts)

    def finish(self, *, network_id: pulumi.Input[str], private_subnet_ids: pulumi.Input[list[str]]) -> None:
        self._finish(
            {
                "network_id": pulumi.Output.from_input(network_id),
                "private_subnet_ids": pulumi.Output.from_input(private_subnet_ids),
            }
        )


class KubernetesCluster(_Neutral):
    """A managed Kubernetes cluster: its name, a secret kubeconfig and a Kubernetes provider for it."""

    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_issuer_url: pulumi.Output[str]
    provider: pulumi.ProviderResource  # a pulumi_kubernetes.Provider for this cluster

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:KubernetesCluster", name, None, opts)

    def finish(
        self,
        *,
        cluster_name: pulumi.Input[str],
        kubeconfig: pulumi.Input[str],
        oidc_issuer_url: pulumi.Input[str],
    ) -> None:
        import pulumi_kubernetes as k8s

        secret_kubeconfig = pulumi.Output.secret(kubeconfig)
        self.provider = k8s.Provider(
            f"{self._name}-k8s",
            kubeconfig=secret_kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._finish(
            {
                "cluster_name": pulumi.Output.from_input(cluster_name),
                "kubeconfig": secret_kubeconfig,
                "oidc_issuer_url": pulumi.Output.from_input(oidc_issuer_url),
            }
        )


class GpuNodePool(_Neutral):
    """The tainted, autoscaled GPU pool and how pods get scheduled onto it."""

    pool_name: pulumi.Output[str]
    scheduling: GpuScheduling

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:GpuNodePool", name, None, opts)

    def finish(self, *, pool_name: pulumi.Input[str], scheduling: GpuScheduling) -> None:
        self.scheduling = scheduling
        self._finish(
            {
                "pool_name": pulumi.Output.from_input(pool_name),
                "node_selector": scheduling.node_selector,
                "tolerations": scheduling.tolerations,
            }
        )


class ModelBucket(_Neutral):
    """Private, encrypted, versioned object storage; `uri` is in the scheme Triton reads."""

    bucket_name: pulumi.Output[str]
    uri: pulumi.Output[str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:ModelBucket", name, None, opts)

    def finish(self, *, bucket_name: pulumi.Input[str], uri: pulumi.Input[str]) -> None:
        self._finish(
            {"bucket_name": pulumi.Output.from_input(bucket_name), "uri": pulumi.Output.from_input(uri)}
        )


class ReaderIdentity(_Neutral):
    """A cloud identity that may only read the model bucket, bound to Triton's service account.

    `service_account_annotations`, `pod_labels` and `env` are what the workload puts on the service
    account, the pod and the Triton container, so that Triton authenticates without any key.
    """

    identity_id: pulumi.Output[str]
    service_account_annotations: pulumi.Output[dict[str, str]]
    pod_labels: dict[str, str]
    env: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:ReaderIdentity", name, None, opts)

    def finish(
        self,
        *,
        identity_id: pulumi.Input[str],
        service_account_annotations: pulumi.Input[dict[str, pulumi.Input[str]]],
        pod_labels: dict[str, str] | None = None,
        env: pulumi.Input[dict[str, pulumi.Input[str]]] | None = None,
    ) -> None:
        self.pod_labels = dict(pod_labels or {})
        self._finish(
            {
                "identity_id": pulumi.Output.from_input(identity_id),
                "service_account_annotations": pulumi.Output.from_input(service_account_annotations),
                "env": pulumi.Output.from_input(env or {}),
            }
        )


class ContainerRegistry(_Neutral):
    """A private registry the stack pushes its images to and the nodes pull from.

    `repositories` maps an image name (e.g. "tritonform-triton") to its full repository address;
    `username`/`password` are short-lived push credentials (secret).
    """

    address: pulumi.Output[str]
    username: pulumi.Output[str]
    password: pulumi.Output[str]
    repositories: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:ContainerRegistry", name, None, opts)

    def finish(
        self,
        *,
        address: pulumi.Input[str],
        username: pulumi.Input[str],
        password: pulumi.Input[str],
        repositories: dict[str, pulumi.Input[str]],
    ) -> None:
        self.repositories = {k: pulumi.Output.from_input(v) for k, v in repositories.items()}
        self._finish(
            {
                "address": pulumi.Output.from_input(address),
                "username": pulumi.Output.from_input(username),
                "password": pulumi.Output.secret(password),
            }
        )


@dataclass(frozen=True)
class EdgeBackend:
    """What the edge forwards to: the gateway's Service inside the cluster."""

    namespace: pulumi.Input[str]
    service_name: pulumi.Input[str]
    port: int
    exposure: ServiceExposure
    depends_on: list[pulumi.Resource]


class Edge(_Neutral):
    """The only public entry: the cloud's managed API gateway in front of the gateway Service."""

    endpoint_url: pulumi.Output[str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:Edge", name, None, opts)

    def finish(self, *, endpoint_url: pulumi.Input[str]) -> None:
        self._finish({"endpoint_url": pulumi.Output.from_input(endpoint_url)})


TRITON_IMAGE, GATEWAY_IMAGE = "tritonform-triton", "tritonform-gateway"
IMAGE_NAMES = (TRITON_IMAGE, GATEWAY_IMAGE)


@dataclass
class Platform:
    """Everything a cloud provisioned, in neutral form: the input of the workload and stack outputs."""

    cloud: CloudName
    network: Network
    cluster: KubernetesCluster
    gpu_pool: GpuNodePool
    bucket: ModelBucket
    reader: ReaderIdentity
    registry: ContainerRegistry
    # Carries the cloud's explicit provider; steps after provisioning (the edge) take it too.
    options: pulumi.ResourceOptions = field(default_factory=pulumi.ResourceOptions)
    extra_outputs: dict[str, pulumi.Input[Any]] = field(default_factory=dict)


class CloudPlatform(ABC):
    """One cloud. Subclasses are small and stateless apart from the settings and the cloud provider.

    `provision()` is the template every cloud follows; subclasses fill in the steps.
    """

    cloud: ClassVar[CloudName]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, settings: StackSettings) -> None:
        if settings.cloud != self.cloud:
            raise ValueError(f"{type(self).__name__} builds {self.cloud} stacks, not {settings.cloud}")
        self.settings = settings
        self.prefix = settings.name

    # -- the steps every cloud implements -------------------------------------------------------
    @abstractmethod
    def provider_options(self) -> pulumi.ResourceOptions:
        """Options that carry this cloud's explicit provider (region, default tags) to every child."""

    @abstractmethod
    def network(self, opts: pulumi.ResourceOptions) -> Network: ...

    @abstractmethod
    def cluster(self, network: Network, opts: pulumi.ResourceOptions) -> KubernetesCluster: ...

    @abstractmethod
    def gpu_node_pool(
        self, cluster: KubernetesCluster, network: Network, opts: pulumi.ResourceOptions
    ) -> GpuNodePool: ...

    @abstractmethod
    def model_bucket(self, opts: pulumi.ResourceOptions) -> ModelBucket: ...

    @abstractmethod
    def model_reader(
        self,
        cluster: KubernetesCluster,
        bucket: ModelBucket,
        service_account: ServiceAccountRef,
        opts: pulumi.ResourceOptions,
    ) -> ReaderIdentity: ...

    @abstractmethod
    def gpu_enablement(
        self, cluster: KubernetesCluster, gpu_pool: GpuNodePool, opts: pulumi.ResourceOptions
    ) -> None:
        """Whatever this cloud needs so that pods can request `nvidia.com/gpu` (device plugin, autoscaler)."""

    @abstractmethod
    def container_registry(self, opts: pulumi.ResourceOptions) -> ContainerRegistry: ...

    @abstractmethod
    def gateway_exposure(self) -> ServiceExposure:
        """How the gateway Service must be exposed for this cloud's edge to reach it (internal only)."""

    @abstractmethod
    def edge(self, platform: Platform, backend: EdgeBackend, opts: pulumi.ResourceOptions) -> Edge:
        """The public API gateway (TLS, client allow-list, rate limits, unbuffered streaming)."""

    def extra_outputs(self) -> dict[str, pulumi.Input[Any]]:
        """Cloud-specific stack outputs besides the common ones (e.g. the region)."""
        return {"region": self.settings.region}

    # -- the template -------------------------------------------------------------------------
    def provision(self) -> Platform:
        """Create every cloud resource of the stack in dependency order."""
        opts = self.provider_options()
        network = self.network(opts)
        cluster = self.cluster(network, opts)
        gpu_pool = self.gpu_node_pool(cluster, network, opts)
        bucket = self.model_bucket(opts)
        workload = self.settings.workload
        reader = self.model_reader(
            cluster, bucket, ServiceAccountRef(workload.namespace, workload.triton_service_account), opts
        )
        self.gpu_enablement(cluster, gpu_pool, opts)
        registry = self.container_registry(opts)
        return Platform(
            self.cloud, network, cluster, gpu_pool, bucket, reader, registry, opts, self.extra_outputs()
        )

    # -- helpers shared by every cloud ---------------------------------------------------------
    def name(self, *parts: str) -> str:
        """A resource name: the stack's name prefix and the parts, joined by '-'."""
        return "-".join((self.prefix, *parts))

    def child(self, parent: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=parent)
