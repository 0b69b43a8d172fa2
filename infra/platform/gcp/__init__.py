"""GCP: a private VPC-native GKE cluster with Workload Identity, a GPU pool and a locked-down GCS bucket."""

from __future__ import annotations

from infra.platform.base import (
    Capability,
    CloudPlatform,
    Edge,
    EdgeBackend,
    Platform,
    ReadScope,
    ServiceExposure,
)
from infra.platform.gcp.cluster import build_cluster, build_gpu_pool
from infra.platform.gcp.edge import GcpEdgeTargets, build_edge, gateway_exposure
from infra.platform.gcp.identity import GATEWAY_READER, build_reader, build_trainer
from infra.platform.gcp.logging import build_logging
from infra.platform.gcp.network import build_network
from infra.platform.gcp.provider import cloud_context
from infra.platform.gcp.registry import build_registry
from infra.platform.gcp.services import enable_services
from infra.platform.gcp.storage import build_bucket


class GcpPlatform(CloudPlatform):
    """Google Cloud: GKE (VPC-native, private nodes, Workload Identity) + node pools + GCS.

    No add-ons step: the GPU pool's accelerator config installs the driver, GKE runs its own device
    plugin (adding NVIDIA's would double-advertise GPUs), and the pool's autoscaling turns the cluster
    autoscaler on for it (scale from zero included).
    """

    cloud = "gcp"
    capabilities = frozenset(
        {Capability.SPOT_GPUS, Capability.CUSTOMER_MANAGED_KEYS, Capability.STREAMING_EDGE}
    )

    def provision(self) -> Platform:
        context = enable_services(cloud_context(self.settings))
        network = build_network(context)
        cluster = build_cluster(context, network)
        gpu_pool = build_gpu_pool(context, cluster)
        bucket = build_bucket(context)
        build_logging(context)
        triton = self.triton_service_account()
        reader = build_reader(context, cluster, bucket, triton, ReadScope.whole_bucket())
        gateway_reader = build_reader(
            context,
            cluster,
            bucket,
            self.gateway_service_account(),
            self.gateway_read_scope(),
            key=GATEWAY_READER,
        )
        registry = build_registry(context, cluster)
        edge_targets = GcpEdgeTargets(
            context=context,
            network_id=network.vpc.id,
            node_service_account_email=cluster.node_account.email,
            cluster_provider=cluster.component.provider,
        )
        return Platform(
            self.cloud,
            network.component,
            cluster.component,
            gpu_pool,
            bucket.component,
            reader,
            gateway_reader,
            registry,
            edge_targets,
            self.extra_outputs(),
            trainer=build_trainer(context, cluster, bucket, self.trainer_service_account()),
        )

    def gateway_exposure(self) -> ServiceExposure:
        return gateway_exposure()

    def edge(self, platform: Platform, backend: EdgeBackend) -> Edge:
        return build_edge(platform.edge_targets_as(GcpEdgeTargets), backend)
