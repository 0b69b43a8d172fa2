"""Azure: AKS with Entra ID RBAC and Workload Identity, a GPU agent pool and a locked-down blob container."""

from __future__ import annotations

import ipaddress
from typing import Any

import pulumi
import pulumi_azure_native as azure

from infra.platform.azure.addons import nvidia_device_plugin
from infra.platform.azure.edge import api_management_edge, internal_lb_exposure, node_subnets
from infra.platform.azure.registry import container_registry
from infra.platform.azure.storage import KEY_ID, model_storage
from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_EFFECT,
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
from infra.platform.kubeconfigs import aks_kubeconfig_for_azure_cli
from infra.settings import AzureSettings, SettingsError

# Built-in Azure role definition ids (the same in every tenant).
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
# AKS marks Spot nodes with this taint itself; GPU pods on a Spot pool must tolerate it too.
SPOT_TAINT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}


def azure_subnets(cidr: str) -> tuple[str, str]:
    """Node subnets for the system and GPU pools (CNI overlay: pods do not take VNet addresses)."""
    return node_subnets(cidr)


class AzurePlatform(CloudPlatform):
    """Microsoft Azure: AKS (Entra ID, OIDC issuer, Workload Identity) + agent pools + Blob Storage."""

    cloud = "azure"
    capabilities = frozenset(
        {Capability.SPOT_GPUS, Capability.CUSTOMER_MANAGED_KEYS, Capability.STREAMING_EDGE}
    )

    @property
    def azure(self) -> AzureSettings:
        return self.settings.azure or AzureSettings()

    @property
    def tags(self) -> dict[str, str]:
        return self.settings.resource_tags

    def provider_options(self) -> pulumi.ResourceOptions:
        s, a = self.settings, self.azure
        network = ipaddress.ip_network(s.network.cidr)
        for key, value in (("podCidr", a.pod_cidr), ("serviceCidr", a.service_cidr)):
            if ipaddress.ip_network(value).overlaps(network):
                problem = f"tritonform:azure.{key}: {value} overlaps network.cidr {s.network.cidr}"
                raise SettingsError([problem + "; pick a range outside the VNet"])
        if s.bucket.kms_key is not None and not KEY_ID.match(s.bucket.kms_key):
            raise SettingsError(
                [
                    f"tritonform:bucket.kmsKey: {s.bucket.kms_key!r} is not a Key Vault key resource id; use "
                    "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.KeyVault/vaults/VAULT/keys/KEY"
                ]
            )
        provider = azure.Provider("azure-native", location=s.region)
        invoke = pulumi.InvokeOptions(provider=provider)
        self._client = azure.authorization.get_client_config_output(opts=invoke)
        return pulumi.ResourceOptions(providers={"azure-native": provider})

    def role(self, role_id: str) -> pulumi.Output[str]:
        """The full id of a built-in role definition in the stack's subscription."""
        return self._client.subscription_id.apply(
            lambda sub: f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
        )

    # -- network ---------------------------------------------------------------------------------
    def network(self, opts: pulumi.ResourceOptions) -> Network:
        s = self.settings
        net = Network(self.name("network"), opts)
        child = self.child(net)
        self._group = azure.resources.ResourceGroup(
            self.name("rg"),
            resource_group_name=self.azure.resource_group or self.name("rg"),
            tags=self.tags,
            opts=child,
        )
        vnet = azure.network.VirtualNetwork(
            self.name("vnet"),
            resource_group_name=self._group.name,
            address_space=azure.network.AddressSpaceArgs(address_prefixes=[s.network.cidr]),
            tags=self.tags,
            # Subnets are their own resources; without this an update of the VNet would delete them.
            opts=pulumi.ResourceOptions(parent=net, ignore_changes=["subnets"]),
        )
        self._vnet = vnet
        self._subnets = {
            key: azure.network.Subnet(
                self.name(key),
                # A fixed name: the internal load balancer annotation names the system subnet.
                subnet_name=self.name(key),
                resource_group_name=self._group.name,
                virtual_network_name=vnet.name,
                address_prefix=prefix,
                opts=child,
            )
            for key, prefix in zip(("system", "gpu"), azure_subnets(s.network.cidr), strict=True)
        }
        net.finish(
            network_id=vnet.id,
            private_subnet_ids=pulumi.Output.all(*(sn.id for sn in self._subnets.values())),
        )
        return net

    # -- cluster ---------------------------------------------------------------------------------
    def cluster(self, network: Network, opts: pulumi.ResourceOptions) -> KubernetesCluster:
        s, a = self.settings, self.azure
        component = KubernetesCluster(self.name("cluster"), opts)
        child = self.child(component)
        sys = s.system_pool
        service_net = ipaddress.ip_network(a.service_cidr)
        aks = azure.containerservice.ManagedCluster(
            self.name("aks"),
            resource_group_name=self._group.name,
            resource_name_=self.name("aks"),
            dns_prefix=self.name("aks"),
            kubernetes_version=s.cluster.kubernetes_version,
            identity=azure.containerservice.ManagedClusterIdentityArgs(
                type=azure.containerservice.ResourceIdentityType.SYSTEM_ASSIGNED
            ),
            sku=azure.containerservice.ManagedClusterSKUArgs(
                name="Base", tier="Standard" if s.environment == "prod" else "Free"
            ),
            # AKS cannot exist without a System-mode pool, so the system pool is declared inline.
            agent_pool_profiles=[
                azure.containerservice.ManagedClusterAgentPoolProfileArgs(
                    name="system",
                    mode="System",
                    type="VirtualMachineScaleSets",
                    os_type="Linux",
                    vm_size=s.system_instance_type,
                    os_disk_size_gb=sys.disk_size_gb,
                    vnet_subnet_id=self._subnets["system"].id,
                    enable_auto_scaling=True,
                    count=sys.desired_nodes,
                    min_count=sys.min_nodes,
                    max_count=sys.max_nodes,
                    availability_zones=[str(z + 1) for z in range(min(s.network.zone_count, 3))],
                    node_labels={GPU_POOL_LABEL: "system"},
                )
            ],
            network_profile=azure.containerservice.ContainerServiceNetworkProfileArgs(
                network_plugin="azure",
                network_plugin_mode="overlay",
                network_dataplane="cilium",
                network_policy="cilium",
                pod_cidr=a.pod_cidr,
                service_cidr=a.service_cidr,
                dns_service_ip=str(service_net.network_address + 10),
                load_balancer_sku="standard",
                outbound_type="loadBalancer",
            ),
            api_server_access_profile=azure.containerservice.ManagedClusterAPIServerAccessProfileArgs(
                authorized_ip_ranges=list(s.cluster.endpoint_allowed_cidrs) if s.api_public else None,
                enable_private_cluster=not s.api_public,
            ),
            oidc_issuer_profile=azure.containerservice.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
            security_profile=azure.containerservice.ManagedClusterSecurityProfileArgs(
                workload_identity=azure.containerservice.ManagedClusterSecurityProfileWorkloadIdentityArgs(
                    enabled=True
                )
            ),
            # No local admin certificate: every user and the deployer authenticate through Entra ID.
            disable_local_accounts=True,
            enable_rbac=True,
            aad_profile=azure.containerservice.ManagedClusterAADProfileArgs(
                managed=True,
                enable_azure_rbac=True,
                tenant_id=self._client.tenant_id,
                admin_group_object_ids=list(a.admin_group_object_ids) or None,
            ),
            auto_upgrade_profile=azure.containerservice.ManagedClusterAutoUpgradeProfileArgs(
                upgrade_channel="patch", node_os_upgrade_channel="NodeImage"
            ),
            tags=self.tags,
            opts=pulumi.ResourceOptions(parent=component, ignore_changes=["agentPoolProfiles[0].count"]),
        )
        # With local accounts off, whoever runs `pulumi up` needs RBAC on the cluster to deploy the workload.
        azure.authorization.RoleAssignment(
            self.name("aks-deployer-admin"),
            principal_id=self._client.object_id,
            principal_type=self.azure.deployer_principal_type,
            role_definition_id=self.role(AKS_RBAC_CLUSTER_ADMIN),
            scope=aks.id,
            opts=child,
        )
        # With a VNet of our own, the cluster identity needs rights on the subnet where it places the
        # gateway's internal load balancer (the az CLI grants this itself; ARM does not).
        azure.authorization.RoleAssignment(
            self.name("aks-subnet-network"),
            principal_id=aks.identity.apply(lambda i: i.principal_id if i else ""),
            principal_type="ServicePrincipal",
            role_definition_id=self.role(NETWORK_CONTRIBUTOR),
            scope=self._subnets["system"].id,
            opts=child,
        )
        credentials = azure.containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=self._group.name,
            resource_name=aks.name,
            format="exec",
            opts=pulumi.InvokeOptions(parent=component),
        )
        encoded: pulumi.Output[Any] = pulumi.Output.secret(credentials.kubeconfigs[0].value)
        kubeconfig = encoded.apply(lambda text: aks_kubeconfig_for_azure_cli(str(text)))
        issuer = aks.oidc_issuer_profile.apply(lambda p: p.issuer_url if p else "")
        self._aks = aks
        component.finish(cluster_name=aks.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
        return component

    # -- GPU pool --------------------------------------------------------------------------------
    def gpu_node_pool(
        self, cluster: KubernetesCluster, network: Network, opts: pulumi.ResourceOptions
    ) -> GpuNodePool:
        pool = self.settings.gpu_pool
        spot = pool.capacity == "spot"
        component = GpuNodePool(self.name("gpu-pool"), opts)
        taints = [f"{GPU_TAINT_KEY}={GPU_TAINT_VALUE}:{GPU_TAINT_EFFECT}"]
        if spot:
            taints.append(f"{SPOT_TAINT['key']}={SPOT_TAINT['value']}:{SPOT_TAINT['effect']}")
        agent_pool = azure.containerservice.AgentPool(
            self.name("gpu"),
            resource_group_name=self._group.name,
            resource_name_=self._aks.name,
            agent_pool_name="gpu",
            mode="User",
            type="VirtualMachineScaleSets",
            os_type="Linux",
            vm_size=pool.instance_type,
            os_disk_size_gb=pool.disk_size_gb,
            vnet_subnet_id=self._subnets["gpu"].id,
            enable_auto_scaling=True,
            count=pool.desired_nodes,
            min_count=pool.min_nodes,
            max_count=pool.max_nodes,
            node_labels={GPU_POOL_LABEL: GPU_POOL_LABEL_VALUE, "accelerator": "nvidia"},
            node_taints=taints,
            # AKS installs the NVIDIA driver; NVIDIA's device plugin DaemonSet is still the workload's job.
            gpu_profile=azure.containerservice.GPUProfileArgs(driver="Install"),
            scale_set_priority="Spot" if spot else "Regular",
            scale_set_eviction_policy="Delete" if spot else None,
            spot_max_price=self.azure.spot_max_price if spot else None,
            tags=self.tags,
            # The cluster autoscaler owns the node count once the pool exists.
            opts=pulumi.ResourceOptions(parent=component, ignore_changes=["count"]),
        )
        self._gpu_agent_pool = agent_pool
        scheduling = GpuScheduling.standard()
        if spot:
            scheduling = GpuScheduling(
                node_selector=scheduling.node_selector,
                tolerations=[*scheduling.tolerations, {**SPOT_TAINT, "operator": "Equal"}],
            )
        component.finish(pool_name=agent_pool.name, scheduling=scheduling)
        return component

    # -- GPU enablement, registry, edge (in azure_addons / azure_registry / azure_edge) ---------
    def gpu_enablement(
        self, cluster: KubernetesCluster, gpu_pool: GpuNodePool, opts: pulumi.ResourceOptions
    ) -> None:
        """NVIDIA's device plugin: AKS installs the driver (gpu_profile) but not the plugin."""
        nvidia_device_plugin(
            self.name("nvidia-device-plugin"),
            self.settings.addons.device_plugin_version,
            gpu_pool.scheduling,
            cluster.provider,
            parent=gpu_pool,
            depends_on=[self._gpu_agent_pool],
        )

    def container_registry(self, opts: pulumi.ResourceOptions) -> ContainerRegistry:
        kubelet = self._aks.identity_profile.apply(
            lambda profile: str(profile["kubeletidentity"].object_id) if profile else ""
        )
        return container_registry(self, self._group, kubelet, opts)

    def gateway_exposure(self) -> ServiceExposure:
        return internal_lb_exposure(self.settings, self.name("system"))

    def edge(self, platform: Platform, backend: EdgeBackend, opts: pulumi.ResourceOptions) -> Edge:
        return api_management_edge(
            self, platform, backend, self._group, self._vnet.name, list(self._subnets.values()), opts
        )

    # -- model bucket (azure_storage.py) -------------------------------------------------------
    def model_bucket(self, opts: pulumi.ResourceOptions) -> ModelBucket:
        component, self._account, self._container = model_storage(self, self._group, opts)
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
        identity = azure.managedidentity.UserAssignedIdentity(
            self.name("model-reader"), resource_group_name=self._group.name, tags=self.tags, opts=child
        )
        # Only tokens AKS issues to Triton's service account may be exchanged for this identity.
        azure.managedidentity.FederatedIdentityCredential(
            self.name("model-reader"),
            resource_group_name=self._group.name,
            resource_name_=identity.name,
            issuer=cluster.oidc_issuer_url,
            subject=service_account.subject,
            audiences=[FEDERATED_AUDIENCE],
            opts=child,
        )
        # Read-only, and on the model container only (not the account, group or subscription).
        azure.authorization.RoleAssignment(
            self.name("model-reader"),
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            role_definition_id=self.role(STORAGE_BLOB_DATA_READER),
            scope=self._container.id,
            description=f"Read the model repository for {service_account.subject}",
            opts=child,
        )
        component.finish(
            identity_id=identity.client_id,
            service_account_annotations={"azure.workload.identity/client-id": identity.client_id},
            # The workload identity webhook injects AZURE_CLIENT_ID/TENANT_ID/FEDERATED_TOKEN_FILE into
            # pods with this label.
            pod_labels={"azure.workload.identity/use": "true"},
            # Triton reads as:// with an account key unless told otherwise. AZURE_STORAGE_AUTH_TYPE comes
            # from triton-inference-server server PR #8652 / core PR #468 (merged 2026-02-11), so the
            # Triton image must be a release that contains it (26.03 or later; which one first shipped it
            # is unconfirmed). "default" (DefaultAzureCredential) is the mode that reads the federated
            # token; "managed_identity" only asks the node's IMDS, which is not Workload Identity.
            env={"AZURE_STORAGE_ACCOUNT": self._account.name, "AZURE_STORAGE_AUTH_TYPE": "default"},
        )
        return component
