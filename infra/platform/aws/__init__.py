"""AWS: VPC over several zones, EKS with IRSA, a tainted managed GPU node group, a locked-down S3 bucket."""

from __future__ import annotations

from infra.platform.aws.addons import install_cluster_addons, install_gpu_addons
from infra.platform.aws.cluster import build_cluster, build_gpu_pool
from infra.platform.aws.edge import AwsEdgeTargets, build_edge, gateway_exposure
from infra.platform.aws.identity import build_reader, build_trainer
from infra.platform.aws.network import build_network
from infra.platform.aws.provider import cloud_context
from infra.platform.aws.registry import build_registry
from infra.platform.aws.storage import build_bucket
from infra.platform.base import (
    Capability,
    CloudPlatform,
    Edge,
    EdgeBackend,
    Platform,
    ReadScope,
    ServiceExposure,
)


class AwsPlatform(CloudPlatform):
    """Amazon Web Services: EKS + managed node groups + S3 + IAM roles for service accounts."""

    cloud = "aws"
    capabilities = frozenset(
        {Capability.SPOT_GPUS, Capability.CUSTOMER_MANAGED_KEYS, Capability.STREAMING_EDGE}
    )

    def provision(self) -> Platform:
        context = cloud_context(self.settings)
        network = build_network(context)
        cluster = build_cluster(context, network.component)
        gpu_pool = build_gpu_pool(context, cluster, network.component)
        bucket = build_bucket(context)
        reader = build_reader(
            context, cluster, bucket, self.triton_service_account(), ReadScope.whole_bucket()
        )
        gateway_reader = build_reader(
            context,
            cluster,
            bucket,
            self.gateway_service_account(),
            self.gateway_read_scope(),
            name="gateway-reader",
        )
        install_gpu_addons(context, cluster, gpu_pool)
        cluster_services = install_cluster_addons(context, cluster)
        registry = build_registry(context)
        edge_targets = AwsEdgeTargets(
            context=context,
            vpc_id=network.component.network_id,
            edge_subnet_ids=network.edge_subnet_ids,
            node_security_group_id=cluster.eks.vpc_config.cluster_security_group_id,
            node_group=cluster.system_nodes,
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
            workload_dependencies=tuple(cluster_services),
            trainer=build_trainer(context, cluster, bucket, self.trainer_service_account()),
        )

    def gateway_exposure(self) -> ServiceExposure:
        return gateway_exposure(self.settings)

    def edge(self, platform: Platform, backend: EdgeBackend) -> Edge:
        return build_edge(platform.edge_targets_as(AwsEdgeTargets), backend)
