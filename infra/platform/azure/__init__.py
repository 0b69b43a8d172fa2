"""Azure: AKS with Entra ID RBAC and Workload Identity, a GPU agent pool and a locked-down blob container."""

from __future__ import annotations

from infra.platform.azure.addons import install_gpu_addons
from infra.platform.azure.cluster import build_cluster, build_gpu_pool
from infra.platform.azure.edge import AzureEdgeTargets, build_edge, gateway_exposure
from infra.platform.azure.identity import GATEWAY_READER, build_reader, build_trainer
from infra.platform.azure.logging import build_logging
from infra.platform.azure.network import build_network
from infra.platform.azure.provider import cloud_context
from infra.platform.azure.registry import build_registry
from infra.platform.azure.storage import build_bucket
from infra.platform.base import (
    Capability,
    CloudPlatform,
    Edge,
    EdgeBackend,
    Platform,
    ReadScope,
    ServiceExposure,
)


class AzurePlatform(CloudPlatform):
    """Microsoft Azure: AKS (Entra ID, OIDC issuer, Workload Identity) + agent pools + Blob Storage."""

    cloud = "azure"
    capabilities = frozenset(
        {Capability.SPOT_GPUS, Capability.CUSTOMER_MANAGED_KEYS, Capability.STREAMING_EDGE}
    )

    def provision(self) -> Platform:
        context = cloud_context(self.settings)
        network = build_network(context)
        cluster = build_cluster(context, network)
        gpu_pool = build_gpu_pool(context, cluster, network)
        storage = build_bucket(context, network.group)
        build_logging(context, network.group, cluster, storage)
        triton = self.triton_service_account()
        reader = build_reader(context, network.group, cluster, storage, triton, ReadScope.whole_bucket())
        gateway_reader = build_reader(
            context,
            network.group,
            cluster,
            storage,
            self.gateway_service_account(),
            self.gateway_read_scope(),
            key=GATEWAY_READER,
        )
        install_gpu_addons(context, cluster, gpu_pool)
        registry = build_registry(context, network.group, cluster)
        edge_targets = AzureEdgeTargets(
            context=context,
            group=network.group,
            vnet_name=network.vnet.name,
            node_subnets=network.node_subnets,
        )
        return Platform(
            self.cloud,
            network.component,
            cluster.component,
            gpu_pool.component,
            storage.component,
            reader,
            gateway_reader,
            registry,
            edge_targets,
            self.extra_outputs(),
            trainer=build_trainer(context, network.group, cluster, storage, self.trainer_service_account()),
        )

    def gateway_exposure(self) -> ServiceExposure:
        return gateway_exposure(self.settings)

    def edge(self, platform: Platform, backend: EdgeBackend) -> Edge:
        return build_edge(platform.edge_targets_as(AzureEdgeTargets), backend)
