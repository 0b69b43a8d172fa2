"""GCP cluster: private VPC-native GKE with Workload Identity, the nodes' own service account, the system
pool and the tainted GPU pool (GKE installs the driver and runs the device plugin itself)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_gcp as gcp

from infra.catalog import gpu_machine
from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    GpuNodePool,
    GpuScheduling,
    KubernetesCluster,
)
from infra.platform.gcp.network import PODS_RANGE, SERVICES_RANGE, GcpNetwork
from infra.platform.gcp.provider import GcpContext
from infra.platform.kubeconfigs import exec_kubeconfig
from infra.settings import GpuPoolSettings, SystemPoolSettings

if TYPE_CHECKING:
    from pulumi_gcp.container import (
        NodePool,
        NodePoolNodeConfigGuestAcceleratorArgs,
        NodePoolNodeConfigTaintArgs,
    )

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GKE_DRIVER_HOST_PATH = "/home/kubernetes/bin/nvidia"  # COS: the driver GKE installs (lib64/, bin/)
# The least-privilege roles a GKE node's own service account needs (GKE hardening guide).
NODE_ROLES = {
    "log-writer": "roles/logging.logWriter",
    "metric-writer": "roles/monitoring.metricWriter",
    "monitoring-viewer": "roles/monitoring.viewer",
    "metadata-writer": "roles/stackdriver.resourceMetadata.writer",
}  # Artifact Registry read access is granted on our repository alone (registry.py).


@dataclass(frozen=True)
class GcpCluster:
    """The GKE cluster and what its pools, the reader, the registry and the edge need from it."""

    component: KubernetesCluster
    gke: gcp.container.Cluster
    node_account: gcp.serviceaccount.Account
    node_locations: pulumi.Input[list[str]] | None


def build_cluster(context: GcpContext, network: GcpNetwork) -> GcpCluster:
    """GKE, the nodes' service account and its roles, and the system pool."""
    settings, name = context.settings, context.name
    component = KubernetesCluster(name("cluster"), context.options)
    child = context.child(component)
    cidrs = list(settings.cluster.endpoint_allowed_cidrs)
    # With no CIDRs on a public endpoint, behave like EKS: the endpoint is open (auth still applies).
    authorized = (
        gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
            cidr_blocks=[
                gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(
                    cidr_block=cidr, display_name=f"allowed-{index}"
                )
                for index, cidr in enumerate(cidrs)
            ],
            gcp_public_cidrs_access_enabled=False,
        )
        if cidrs or not settings.api_public
        else None
    )
    gke = gcp.container.Cluster(
        name("gke"),
        name=name("gke"),
        location=context.location,
        network=network.vpc.id,
        subnetwork=network.subnet.id,
        networking_mode="VPC_NATIVE",
        ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
            cluster_secondary_range_name=PODS_RANGE, services_secondary_range_name=SERVICES_RANGE
        ),
        release_channel=gcp.container.ClusterReleaseChannelArgs(channel=context.gcp.release_channel),
        # The GKE Gateway controller (the edge) needs the Gateway API CRDs installed by GKE.
        gateway_api_config=gcp.container.ClusterGatewayApiConfigArgs(channel="CHANNEL_STANDARD"),
        min_master_version=settings.cluster.kubernetes_version,
        workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
            workload_pool=f"{context.project}.svc.id.goog"
        ),
        private_cluster_config=gcp.container.ClusterPrivateClusterConfigArgs(
            enable_private_nodes=True, enable_private_endpoint=not settings.api_public
        ),
        master_authorized_networks_config=authorized,
        # Static client certificates are off: the kubeconfig authenticates through gcloud.
        master_auth=gcp.container.ClusterMasterAuthArgs(
            client_certificate_config=gcp.container.ClusterMasterAuthClientCertificateConfigArgs(
                issue_client_certificate=False
            )
        ),
        enable_shielded_nodes=True,
        datapath_provider="ADVANCED_DATAPATH",
        # GKE needs a pool to create the cluster; ours are managed separately.
        remove_default_node_pool=True,
        initial_node_count=1,
        deletion_protection=settings.environment == "prod",
        resource_labels=context.tags,
        opts=child,
    )
    node_account = gcp.serviceaccount.Account(
        name("nodes"), account_id=name("nodes"), display_name="GKE nodes", opts=child
    )
    for key, role in NODE_ROLES.items():
        gcp.projects.IAMMember(
            name(f"nodes-{key}"), project=context.project, role=role, member=node_account.member, opts=child
        )
    cluster = GcpCluster(component, gke, node_account, _node_locations(context, component))
    _node_pool(
        context,
        cluster,
        "system",
        component,
        settings.system_instance_type,
        settings.system_pool,
        labels={GPU_POOL_LABEL: "system"},
    )
    kubeconfig = pulumi.Output.all(gke.name, gke.endpoint, gke.master_auth).apply(
        lambda args: gke_kubeconfig(args[0], args[1], _ca_certificate(args[2]))
    )
    # GKE's Workload Identity issuer (what projected service-account tokens carry as `iss`).
    issuer = gke.name.apply(
        lambda cluster_name: (
            f"https://container.googleapis.com/v1/projects/{context.project}"
            f"/locations/{context.location}/clusters/{cluster_name}"
        )
    )
    component.finish(cluster_name=gke.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
    return cluster


def build_gpu_pool(context: GcpContext, cluster: GcpCluster) -> GpuNodePool:
    """The GPU pool: accelerators with a GKE-installed driver, our taint and label, spot when configured."""
    pool = context.settings.gpu_pool
    component = GpuNodePool(context.name("gpu-pool"), context.options)
    accelerator = gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
        type=pool.accelerator or _catalog_accelerator(pool),
        count=pool.gpus_per_node,
        # GKE installs the driver itself when told which version; GKE also runs the device plugin.
        gpu_driver_installation_config=gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
            gpu_driver_version="DEFAULT"
        ),
    )
    node_pool = _node_pool(
        context,
        cluster,
        "gpu",
        component,
        pool.instance_type,
        pool,
        labels={GPU_POOL_LABEL: GPU_POOL_LABEL_VALUE},
        # GKE adds its own nvidia.com/gpu taint when a non-GPU pool exists; ours makes it explicit
        # and identical to the other clouds' (key, value and effect).
        taints=[
            gcp.container.NodePoolNodeConfigTaintArgs(
                key=GPU_TAINT_KEY, value=GPU_TAINT_VALUE, effect="NO_SCHEDULE"
            )
        ],
        accelerators=[accelerator],
        spot=pool.capacity == "spot",
    )
    # COS keeps the driver GKE installs under /home/kubernetes/bin/nvidia and runs no NVIDIA container
    # runtime: only pods that request a GPU get it (the device plugin mounts it at /usr/local/nvidia)
    scheduling = dataclasses.replace(GpuScheduling.standard(), driver_host_path=GKE_DRIVER_HOST_PATH)
    component.finish(pool_name=node_pool.name, scheduling=scheduling)
    return component


def gke_kubeconfig(name: str, endpoint: str, ca_data: str) -> str:
    """GKE: `gke-gcloud-auth-plugin` turns the caller's gcloud login into a short-lived token."""
    return exec_kubeconfig(
        name,
        f"https://{endpoint}",
        ca_data,
        {
            "command": "gke-gcloud-auth-plugin",
            "provideClusterInfo": True,
            "installHint": "gcloud components install gke-gcloud-auth-plugin",
        },
    )


def _node_locations(context: GcpContext, parent: pulumi.Resource) -> pulumi.Input[list[str]] | None:
    """A regional cluster's pools use the first `network.zoneCount` zones; a zonal one its zone."""
    if context.gcp.zonal:
        return None
    zones = gcp.compute.get_zones_output(
        project=context.project,
        region=context.settings.region,
        status="UP",
        opts=context.invoke_options(parent),
    )
    zone_count = context.settings.network.zone_count
    return zones.names.apply(lambda names: sorted(names)[:zone_count])


def _node_pool(
    context: GcpContext,
    cluster: GcpCluster,
    key: str,
    parent: pulumi.Resource,
    machine_type: str,
    scaling: SystemPoolSettings | GpuPoolSettings,
    *,
    labels: dict[str, str],
    taints: list[NodePoolNodeConfigTaintArgs] | None = None,
    accelerators: list[NodePoolNodeConfigGuestAcceleratorArgs] | None = None,
    spot: bool = False,
) -> NodePool:
    """One autoscaled, auto-repaired pool of shielded nodes that run as the nodes' service account."""
    zone_count = 1 if context.gcp.zonal else context.settings.network.zone_count
    return gcp.container.NodePool(
        context.name(key),
        name=context.name(key),
        cluster=cluster.gke.id,
        location=context.location,
        node_locations=cluster.node_locations,
        # Counts in settings are for the whole pool; initial_node_count is per zone.
        initial_node_count=math.ceil(scaling.desired_nodes / zone_count),
        autoscaling=gcp.container.NodePoolAutoscalingArgs(
            total_min_node_count=scaling.min_nodes,
            total_max_node_count=scaling.max_nodes,
            # ANY: take capacity in whichever zone has it (GPUs and spot are often short in one).
            location_policy="ANY",
        ),
        management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
        node_config=gcp.container.NodePoolNodeConfigArgs(
            machine_type=machine_type,
            disk_size_gb=scaling.disk_size_gb,
            disk_type="pd-balanced",
            image_type="COS_CONTAINERD",
            service_account=cluster.node_account.email,
            oauth_scopes=[CLOUD_PLATFORM_SCOPE],
            labels=labels,
            taints=taints,
            guest_accelerators=accelerators,
            spot=spot,
            workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(
                mode="GKE_METADATA"
            ),
            shielded_instance_config=gcp.container.NodePoolNodeConfigShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_integrity_monitoring=True
            ),
            metadata={"disable-legacy-endpoints": "true"},
        ),
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["initialNodeCount"]),
    )


def _catalog_accelerator(pool: GpuPoolSettings) -> str:
    machine = gpu_machine("gcp", pool.instance_type)
    assert machine is not None  # settings only accept catalogued GCP GPU machines
    return machine.gpu_model


def _ca_certificate(master_auth: Any) -> str:
    """The cluster CA from `master_auth`, whether it arrives as the typed output or as a plain dict."""
    if isinstance(master_auth, dict):
        return str(master_auth.get("clusterCaCertificate") or master_auth.get("cluster_ca_certificate") or "")
    return str(master_auth.cluster_ca_certificate)
