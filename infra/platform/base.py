"""The one cloud interface every cloud implements, the neutral components it returns, and the context
every cloud helper takes.

A `CloudPlatform` turns `StackSettings` into a network, a managed Kubernetes cluster, a tainted GPU
node pool, a private model bucket and an identity that may read it. The components it returns are
the same Python types on every cloud, with the same output names, so everything after the cloud layer
(the Kubernetes workload, the stack outputs) never asks which cloud it is on.

Each cloud is a package (`infra/platform/<cloud>/`) with the same file names for the same parts:
`provider`, `network`, `cluster`, `storage`, `identity`, `registry`, `edge` and, where the cloud needs
it, `addons`. Its helpers take a `CloudContext` and return typed values; the platform class in the
package's `__init__` only wires them in a straight line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeVar

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
    # Where the node keeps the NVIDIA driver's libraries and tools when no NVIDIA container runtime puts
    # them into containers that request no GPU (GKE's COS nodes); None: the runtime does (EKS, AKS).
    # Node agents such as the DCGM exporter mount it.
    driver_host_path: str | None = None

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


@dataclass(frozen=True)
class ReadScope:
    """Which objects of the model bucket an identity may read: every object under `prefix` (no leading
    '/'; empty: the whole bucket), or with `suffixes`, only those of them whose names end with one.

    Each cloud turns it into its own narrowest grant (an IAM resource pattern on AWS, an IAM condition on
    the object name on GCP, an attribute-based condition on the blob path on Azure).
    """

    prefix: str = ""
    suffixes: tuple[str, ...] = ()

    @staticmethod
    def whole_bucket() -> ReadScope:
        return ReadScope()

    @staticmethod
    def tokenizer_files(model_prefix: str) -> ReadScope:
        """What the gateway's start-up step reads of a version: its manifest and the tokenizer files."""
        return ReadScope(
            prefix=f"{model_prefix.strip('/')}/versions/",
            suffixes=tuple(f"/{name}" for name in TOKENIZER_SCOPE_FILES),
        )


# The files of a model version the gateway reads (serving/model_locator.py `tokenizer`).
TOKENIZER_SCOPE_FILES = ("REPOSITORY.json", "tokenizer.json", "generation.json")


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


@dataclass(frozen=True)
class EgressEndpoint:
    """An address a pod must reach for its cloud identity, besides HTTPS to the cloud's public APIs
    (e.g. GKE's metadata server); the workload opens exactly these in its egress network policy."""

    cidr: str
    port: int
    protocol: str = "TCP"


class ReaderIdentity(_Neutral):
    """A cloud identity that may only read (part of) the model bucket, bound to one service account.

    `service_account_annotations`, `pod_labels` and `env` are what the workload puts on the service
    account, the pod and its containers, so that they authenticate without any key; `egress` lists
    the identity endpoints beyond HTTPS that the pod's network policy must let it reach.
    """

    identity_id: pulumi.Output[str]
    service_account_annotations: pulumi.Output[dict[str, str]]
    pod_labels: dict[str, str]
    env: pulumi.Output[dict[str, str]]
    egress: tuple[EgressEndpoint, ...] = ()

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:platform:ReaderIdentity", name, None, opts)

    def finish(
        self,
        *,
        identity_id: pulumi.Input[str],
        service_account_annotations: pulumi.Input[dict[str, pulumi.Input[str]]],
        pod_labels: dict[str, str] | None = None,
        env: pulumi.Input[dict[str, pulumi.Input[str]]] | None = None,
        egress: tuple[EgressEndpoint, ...] = (),
    ) -> None:
        self.pod_labels = dict(pod_labels or {})
        self.egress = egress
        self._finish(
            {
                "identity_id": pulumi.Output.from_input(identity_id),
                "service_account_annotations": pulumi.Output.from_input(service_account_annotations),
                "env": pulumi.Output.from_input(env or {}),
            }
        )


# Where training reads its data sets and writes its checkpoints, under the model bucket's root.
TRAINER_READ_PREFIX = "datasets/"
TRAINER_WRITE_PREFIX = "checkpoints/"


class TrainerIdentity(ReaderIdentity):
    """The identity training Jobs run as: it may read `datasets/` and write `checkpoints/` of the model
    bucket, and nothing else (the serving identities stay read-only). Same fields as a reader's."""

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        _Neutral.__init__(self, "tritonform:platform:TrainerIdentity", name, None, opts)


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


TRITON_IMAGE, GATEWAY_IMAGE, TRAINER_IMAGE = "tritonform-triton", "tritonform-gateway", "tritonform-trainer"
IMAGE_NAMES = (TRITON_IMAGE, GATEWAY_IMAGE, TRAINER_IMAGE)


@dataclass(frozen=True)
class CloudContext:
    """What every cloud helper takes instead of the platform object.

    The stack's settings, the options that carry the cloud's explicit provider (region, credentials,
    default tags) to each top-level component, and the stack's tags as this cloud spells them (GCP:
    labels). A cloud that needs more (its own settings block, the deploying account) subclasses it.
    """

    settings: StackSettings
    options: pulumi.ResourceOptions
    tags: dict[str, str]

    @property
    def prefix(self) -> str:
        """The stack's resource-name prefix (`name` in the stack file)."""
        return self.settings.name

    def name(self, *parts: str) -> str:
        """A resource name: the stack's name prefix and the parts, joined by '-'."""
        return "-".join((self.prefix, *parts))

    @staticmethod
    def child(parent: pulumi.Resource) -> pulumi.ResourceOptions:
        """Options of a child resource: parented to its component, whose provider it inherits."""
        return pulumi.ResourceOptions(parent=parent)


class EdgeTargets:
    """What a cloud's edge step needs from its provisioning; each cloud subclasses it (a frozen dataclass).

    The edge is built after the workload, so these values travel in the `Platform` rather than in the
    platform object, which keeps no state.
    """


TargetsT = TypeVar("TargetsT", bound=EdgeTargets)


@dataclass(frozen=True)
class Platform:
    """Everything a cloud provisioned, in neutral form: the input of the workload and stack outputs."""

    cloud: CloudName
    network: Network
    cluster: KubernetesCluster
    gpu_pool: GpuNodePool
    bucket: ModelBucket
    reader: ReaderIdentity  # Triton's: reads the whole model bucket
    # The gateway's own identity: it may read only the tokenizer files (ReadScope.tokenizer_files).
    gateway_reader: ReaderIdentity
    registry: ContainerRegistry
    # The cloud's own typed value for its edge step (the context it provisioned in included).
    edge_targets: EdgeTargets
    extra_outputs: dict[str, pulumi.Input[Any]] = field(default_factory=dict)
    # Cluster services the workload needs in place before it starts (e.g. the default StorageClass that
    # Prometheus' volume binds through, the metrics API the gateway's autoscaler reads): the workload
    # depends on them as it does on the GPU pool. Empty where the managed cluster brings its own.
    workload_dependencies: tuple[pulumi.Resource, ...] = ()
    # Training Jobs' identity (datasets/ read, checkpoints/ write); every cloud provides one.
    trainer: TrainerIdentity | None = None

    def edge_targets_as(self, kind: type[TargetsT]) -> TargetsT:
        """The edge targets, checked to be the given cloud's own type."""
        if not isinstance(self.edge_targets, kind):
            raise TypeError(
                f"this {self.cloud} platform carries {type(self.edge_targets).__name__}, not "
                f"{kind.__name__}: build the edge with the cloud class that provisioned the platform"
            )
        return self.edge_targets


class CloudPlatform(ABC):
    """One cloud: a small class whose only state is the stack's settings.

    `provision()` wires the cloud package's helpers in a straight line; what one step hands the next
    travels in typed values, and what the edge needs from provisioning travels in `Platform.edge_targets`.
    """

    cloud: ClassVar[CloudName]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, settings: StackSettings) -> None:
        if settings.cloud != self.cloud:
            raise ValueError(f"{type(self).__name__} builds {self.cloud} stacks, not {settings.cloud}")
        self.settings = settings

    @abstractmethod
    def provision(self) -> Platform:
        """Create every cloud resource of the stack in dependency order: the provider, the network, the
        cluster and its GPU pool, the model bucket and its reader identity, GPU enablement, the registry."""

    @abstractmethod
    def gateway_exposure(self) -> ServiceExposure:
        """How the gateway Service must be exposed for this cloud's edge to reach it (internal only)."""

    @abstractmethod
    def edge(self, platform: Platform, backend: EdgeBackend) -> Edge:
        """The public API gateway (TLS, client allow-list, rate limits, unbuffered streaming)."""

    def extra_outputs(self) -> dict[str, pulumi.Input[Any]]:
        """Cloud-specific stack outputs besides the common ones (e.g. the region)."""
        return {"region": self.settings.region}

    def triton_service_account(self) -> ServiceAccountRef:
        """The Kubernetes service account Triton runs as: the one the reader identity is bound to."""
        workload = self.settings.workload
        return ServiceAccountRef(workload.namespace, workload.triton_service_account)

    def gateway_service_account(self) -> ServiceAccountRef:
        """The Kubernetes service account the gateway runs as: the one the gateway reader is bound to."""
        workload = self.settings.workload
        return ServiceAccountRef(workload.namespace, workload.gateway_service_account)

    def trainer_service_account(self) -> ServiceAccountRef:
        """The Kubernetes service account training Jobs run as: the one the trainer identity is bound to."""
        workload = self.settings.workload
        return ServiceAccountRef(workload.namespace, workload.trainer_service_account)

    def gateway_read_scope(self) -> ReadScope:
        """The only objects the gateway's identity may read."""
        return ReadScope.tokenizer_files(self.settings.triton.model_prefix)
