"""GCP: a private VPC-native GKE cluster with Workload Identity, a GPU pool and a locked-down GCS bucket."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_gcp as gcp

from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    Capability,
    CloudPlatform,
    ContainerRegistry,
    Edge,
    EdgeBackend,
    GpuNodePool,
    GpuScheduling,
    KubernetesCluster,
    ModelBucket,
    Network,
    Platform,
    ReaderIdentity,
    ServiceAccountRef,
    ServiceExposure,
)
from infra.platform.gcp.edge import artifact_registry, gke_gateway_edge, gke_gateway_exposure
from infra.platform.gcp.storage import gcs_model_bucket
from infra.platform.kubeconfigs import gke_kubeconfig
from infra.settings import GcpSettings, SettingsError

if TYPE_CHECKING:
    from pulumi_gcp.container import (
        NodePool,
        NodePoolNodeConfigGuestAcceleratorArgs,
        NodePoolNodeConfigTaintArgs,
    )

PODS_RANGE = "pods"
SERVICES_RANGE = "services"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The least-privilege roles a GKE node's own service account needs (GKE hardening guide).
NODE_ROLES = {
    "log-writer": "roles/logging.logWriter",
    "metric-writer": "roles/monitoring.metricWriter",
    "monitoring-viewer": "roles/monitoring.viewer",
    "metadata-writer": "roles/stackdriver.resourceMetadata.writer",
}  # Artifact Registry read access is granted on our repository alone (gcp_edge.artifact_registry).
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


def gke_ranges(cidr: str) -> tuple[str, str, str]:
    """Nodes, services and pods ranges carved from the network CIDR (pods take the larger half)."""
    network = ipaddress.ip_network(cidr)
    first, second = network.subnets(prefixlen_diff=1)
    quarters = list(first.subnets(prefixlen_diff=2))
    return str(quarters[0]), str(quarters[1]), str(second)


def gcp_labels(tags: dict[str, str]) -> dict[str, str]:
    """GCP labels allow only lowercase letters, digits, '-' and '_' (63 characters at most)."""

    def clean(text: str) -> str:
        return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]

    return {clean(k): clean(v) for k, v in tags.items()}


class GcpPlatform(CloudPlatform):
    """Google Cloud: GKE (VPC-native, private nodes, Workload Identity) + node pools + GCS."""

    cloud = "gcp"
    capabilities = frozenset(
        {Capability.SPOT_GPUS, Capability.CUSTOMER_MANAGED_KEYS, Capability.STREAMING_EDGE}
    )

    @property
    def gcp(self) -> GcpSettings:
        assert self.settings.gcp is not None  # settings refuse a GCP stack without a `gcp:` block
        return self.settings.gcp

    @property
    def location(self) -> str:
        """Where the cluster and its pools live: the zone of a zonal cluster, else the region."""
        return self.gcp.zone if self.gcp.zonal and self.gcp.zone else self.settings.region

    def provider_options(self) -> pulumi.ResourceOptions:
        kms_key = self.settings.bucket.kms_key
        if kms_key is not None and not _KMS_KEY.match(kms_key):
            raise SettingsError(
                [
                    f"tritonform:bucket.kmsKey: {kms_key!r} is not a Cloud KMS key; use "
                    "projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY"
                ]
            )
        provider = gcp.Provider(
            "gcp",
            project=self.gcp.project,
            region=self.settings.region,
            default_labels=gcp_labels(self.settings.resource_tags),
        )
        return pulumi.ResourceOptions(providers={"gcp": provider})

    # -- network ---------------------------------------------------------------------------------
    def network(self, opts: pulumi.ResourceOptions) -> Network:
        s = self.settings
        net = Network(self.name("network"), opts)
        child = self.child(net)
        nodes, services, pods = gke_ranges(s.network.cidr)
        vpc = gcp.compute.Network(
            self.name("vpc"), auto_create_subnetworks=False, routing_mode="REGIONAL", opts=child
        )
        subnet = gcp.compute.Subnetwork(
            self.name("nodes"),
            network=vpc.id,
            region=s.region,
            ip_cidr_range=nodes,
            # Private nodes reach Google APIs (GCS, Artifact Registry) without public addresses.
            private_ip_google_access=True,
            secondary_ip_ranges=[
                gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=PODS_RANGE, ip_cidr_range=pods),
                gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=SERVICES_RANGE, ip_cidr_range=services),
            ],
            opts=child,
        )
        router = gcp.compute.Router(self.name("router"), network=vpc.id, region=s.region, opts=child)
        # Cloud NAT gives the private nodes egress (image pulls from outside Google, NGC).
        gcp.compute.RouterNat(
            self.name("nat"),
            router=router.name,
            region=s.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=child,
        )
        self._vpc, self._subnet = vpc, subnet
        net.finish(network_id=vpc.id, private_subnet_ids=subnet.id.apply(lambda i: [i]))
        return net

    # -- cluster ---------------------------------------------------------------------------------
    def cluster(self, network: Network, opts: pulumi.ResourceOptions) -> KubernetesCluster:
        s = self.settings
        component = KubernetesCluster(self.name("cluster"), opts)
        child = self.child(component)
        cidrs = list(s.cluster.endpoint_allowed_cidrs)
        # With no CIDRs on a public endpoint, behave like EKS: the endpoint is open (auth still applies).
        authorized = (
            gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
                cidr_blocks=[
                    gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(
                        cidr_block=c, display_name=f"allowed-{i}"
                    )
                    for i, c in enumerate(cidrs)
                ],
                gcp_public_cidrs_access_enabled=False,
            )
            if cidrs or not s.api_public
            else None
        )
        gke = gcp.container.Cluster(
            self.name("gke"),
            name=self.name("gke"),
            location=self.location,
            network=self._vpc.id,
            subnetwork=self._subnet.id,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name=PODS_RANGE, services_secondary_range_name=SERVICES_RANGE
            ),
            release_channel=gcp.container.ClusterReleaseChannelArgs(channel=self.gcp.release_channel),
            # The GKE Gateway controller (the edge) needs the Gateway API CRDs installed by GKE.
            gateway_api_config=gcp.container.ClusterGatewayApiConfigArgs(channel="CHANNEL_STANDARD"),
            min_master_version=s.cluster.kubernetes_version,
            workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
                workload_pool=f"{self.gcp.project}.svc.id.goog"
            ),
            private_cluster_config=gcp.container.ClusterPrivateClusterConfigArgs(
                enable_private_nodes=True, enable_private_endpoint=not s.api_public
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
            deletion_protection=s.environment == "prod",
            resource_labels=gcp_labels(s.resource_tags),
            opts=child,
        )
        self._node_account = gcp.serviceaccount.Account(
            self.name("nodes"), account_id=self.name("nodes"), display_name="GKE nodes", opts=child
        )
        for key, role in NODE_ROLES.items():
            gcp.projects.IAMMember(
                self.name(f"nodes-{key}"),
                project=self.gcp.project,
                role=role,
                member=self._node_account.member,
                opts=child,
            )
        self._gke = gke
        self._node_locations = self._zones(component)
        sys = s.system_pool
        self._pool(
            "system",
            component,
            s.system_instance_type,
            sys.min_nodes,
            sys.desired_nodes,
            sys.max_nodes,
            sys.disk_size_gb,
            labels={GPU_POOL_LABEL: "system"},
        )
        kubeconfig = pulumi.Output.all(gke.name, gke.endpoint, gke.master_auth).apply(
            lambda args: gke_kubeconfig(args[0], args[1], _ca_certificate(args[2]))
        )
        # GKE's Workload Identity issuer (what projected service-account tokens carry as `iss`).
        issuer = gke.name.apply(
            lambda name: (
                f"https://container.googleapis.com/v1/projects/{self.gcp.project}"
                f"/locations/{self.location}/clusters/{name}"
            )
        )
        component.finish(cluster_name=gke.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
        return component

    def _zones(self, parent: pulumi.Resource) -> pulumi.Input[list[str]] | None:
        """A regional cluster's pools use the first `network.zoneCount` zones; a zonal one its zone."""
        if self.gcp.zonal:
            return None
        zones = gcp.compute.get_zones_output(
            project=self.gcp.project,
            region=self.settings.region,
            status="UP",
            opts=pulumi.InvokeOptions(parent=parent),
        )
        return zones.names.apply(lambda names: sorted(names)[: self.settings.network.zone_count])

    def _pool(
        self,
        key: str,
        parent: pulumi.Resource,
        machine_type: str,
        min_nodes: int,
        desired_nodes: int,
        max_nodes: int,
        disk_size_gb: int,
        *,
        labels: dict[str, str],
        taints: list[NodePoolNodeConfigTaintArgs] | None = None,
        accelerators: list[NodePoolNodeConfigGuestAcceleratorArgs] | None = None,
        spot: bool = False,
    ) -> NodePool:
        zone_count = 1 if self.gcp.zonal else self.settings.network.zone_count
        return gcp.container.NodePool(
            self.name(key),
            name=self.name(key),
            cluster=self._gke.id,
            location=self.location,
            node_locations=self._node_locations,
            # Counts in settings are for the whole pool; initial_node_count is per zone.
            initial_node_count=math.ceil(desired_nodes / zone_count),
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                total_min_node_count=min_nodes,
                total_max_node_count=max_nodes,
                # ANY: take capacity in whichever zone has it (GPUs and spot are often short in one).
                location_policy="ANY",
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            node_config=gcp.container.NodePoolNodeConfigArgs(
                machine_type=machine_type,
                disk_size_gb=disk_size_gb,
                disk_type="pd-balanced",
                image_type="COS_CONTAINERD",
                service_account=self._node_account.email,
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

    # -- GPU pool --------------------------------------------------------------------------------
    def gpu_node_pool(
        self, cluster: KubernetesCluster, network: Network, opts: pulumi.ResourceOptions
    ) -> GpuNodePool:
        pool = self.settings.gpu_pool
        component = GpuNodePool(self.name("gpu-pool"), opts)
        accelerator = gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
            type=pool.accelerator or self._catalog_accelerator(),
            count=pool.gpus_per_node,
            # GKE installs the driver itself when told which version; GKE also runs the device plugin.
            gpu_driver_installation_config=gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                gpu_driver_version="DEFAULT"
            ),
        )
        node_pool = self._pool(
            "gpu",
            component,
            pool.instance_type,
            pool.min_nodes,
            pool.desired_nodes,
            pool.max_nodes,
            pool.disk_size_gb,
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
        component.finish(pool_name=node_pool.name, scheduling=GpuScheduling.standard())
        return component

    def _catalog_accelerator(self) -> str:
        from infra.catalog import gpu_machine

        machine = gpu_machine("gcp", self.settings.gpu_pool.instance_type)
        assert machine is not None  # settings only accept catalogued GCP GPU machines
        return machine.gpu_model

    # -- model bucket (gcp_storage.py) ---------------------------------------------------------
    def model_bucket(self, opts: pulumi.ResourceOptions) -> ModelBucket:
        component, self._bucket = gcs_model_bucket(self, opts)
        return component

    # -- reader identity (Workload Identity) -----------------------------------------------------
    def model_reader(
        self,
        cluster: KubernetesCluster,
        bucket: ModelBucket,
        service_account: ServiceAccountRef,
        opts: pulumi.ResourceOptions,
    ) -> ReaderIdentity:
        component = ReaderIdentity(self.name("model-reader"), opts)
        child = self.child(component)
        account = gcp.serviceaccount.Account(
            self.name("reader"),
            account_id=self.name("reader"),
            display_name="Triton model reader",
            description=f"Read-only access to the model bucket for {service_account.subject}",
            opts=child,
        )
        # Only the Triton Kubernetes service account may act as this Google service account.
        gcp.serviceaccount.IAMMember(
            self.name("reader-workload-identity"),
            service_account_id=account.name,
            role="roles/iam.workloadIdentityUser",
            member=(
                f"serviceAccount:{self.gcp.project}.svc.id.goog"
                f"[{service_account.namespace}/{service_account.name}]"
            ),
            opts=pulumi.ResourceOptions(parent=component, depends_on=[self._gke]),
        )
        # Bucket-level, read-only: no project-wide storage role.
        gcp.storage.BucketIAMMember(
            self.name("reader-objects"),
            bucket=self._bucket.name,
            role="roles/storage.objectViewer",
            member=account.member,
            opts=child,
        )
        component.finish(
            identity_id=account.email,
            service_account_annotations={"iam.gke.io/gcp-service-account": account.email},
            # Triton's GCS client falls back to the metadata server, which Workload Identity serves.
            env={},
        )
        return component

    # -- GPU enablement, registry, edge (the edge lives in gcp_edge.py) ------------------------
    def gpu_enablement(
        self, cluster: KubernetesCluster, gpu_pool: GpuNodePool, opts: pulumi.ResourceOptions
    ) -> None:
        """Nothing to install on GKE: the accelerator config installs the driver, GKE runs its own device
        plugin (adding NVIDIA's would double-advertise GPUs), and the pool's autoscaling turns the cluster
        autoscaler on for it (scale from zero included)."""

    def container_registry(self, opts: pulumi.ResourceOptions) -> ContainerRegistry:
        return artifact_registry(self, self._node_account.member, opts)

    def gateway_exposure(self) -> ServiceExposure:
        return gke_gateway_exposure()

    def edge(self, platform: Platform, backend: EdgeBackend, opts: pulumi.ResourceOptions) -> Edge:
        return gke_gateway_edge(self, platform, backend, self._node_account.email, self._vpc.id, opts)


def _ca_certificate(master_auth: Any) -> str:
    """The cluster CA from `master_auth`, whether it arrives as the typed output or as a plain dict."""
    if isinstance(master_auth, dict):
        return str(master_auth.get("clusterCaCertificate") or master_auth.get("cluster_ca_certificate") or "")
    return str(master_auth.cluster_ca_certificate)
