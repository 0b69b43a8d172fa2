"""Azure cluster: AKS with Entra ID RBAC, the OIDC issuer and Workload Identity (CNI overlay, Cilium), its
inline system pool, and the tainted GPU agent pool (AKS installs the driver)."""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_azure_native as azure
import yaml

from infra.platform.azure.network import AzureNetwork
from infra.platform.azure.provider import AzureContext
from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_EFFECT,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    GpuNodePool,
    GpuScheduling,
    KubernetesCluster,
)

# Built-in Azure role definition ids (the same in every tenant).
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
# AKS marks Spot nodes with this taint itself; GPU pods on a Spot pool must tolerate it too.
SPOT_TAINT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}


@dataclass(frozen=True)
class AzureCluster:
    """The neutral cluster and the AKS resource its GPU pool and the registry's pull grant attach to."""

    component: KubernetesCluster
    aks: azure.containerservice.ManagedCluster


@dataclass(frozen=True)
class AzureGpuPool:
    """The neutral GPU pool and the AKS agent pool the device plugin waits for."""

    component: GpuNodePool
    agent_pool: azure.containerservice.AgentPool


def build_cluster(context: AzureContext, network: AzureNetwork) -> AzureCluster:
    """AKS, cluster-admin RBAC for the deployer, the subnet grant for internal load balancers."""
    settings, azure_settings = context.settings, context.azure
    component = KubernetesCluster(context.name("cluster"), context.options)
    child = context.child(component)
    system_pool = settings.system_pool
    service_net = ipaddress.ip_network(azure_settings.service_cidr)
    aks = azure.containerservice.ManagedCluster(
        context.name("aks"),
        resource_group_name=network.group.name,
        resource_name_=context.name("aks"),
        dns_prefix=context.name("aks"),
        kubernetes_version=settings.cluster.kubernetes_version,
        identity=azure.containerservice.ManagedClusterIdentityArgs(
            type=azure.containerservice.ResourceIdentityType.SYSTEM_ASSIGNED
        ),
        sku=azure.containerservice.ManagedClusterSKUArgs(
            name="Base", tier="Standard" if settings.environment == "prod" else "Free"
        ),
        # AKS cannot exist without a System-mode pool, so the system pool is declared inline.
        agent_pool_profiles=[
            azure.containerservice.ManagedClusterAgentPoolProfileArgs(
                name="system",
                mode="System",
                type="VirtualMachineScaleSets",
                os_type="Linux",
                vm_size=settings.system_instance_type,
                os_disk_size_gb=system_pool.disk_size_gb,
                vnet_subnet_id=network.system_subnet.id,
                enable_auto_scaling=True,
                count=system_pool.desired_nodes,
                min_count=system_pool.min_nodes,
                max_count=system_pool.max_nodes,
                availability_zones=[str(zone + 1) for zone in range(min(settings.network.zone_count, 3))],
                node_labels={GPU_POOL_LABEL: "system"},
            )
        ],
        network_profile=azure.containerservice.ContainerServiceNetworkProfileArgs(
            network_plugin="azure",
            network_plugin_mode="overlay",
            network_dataplane="cilium",
            network_policy="cilium",
            pod_cidr=azure_settings.pod_cidr,
            service_cidr=azure_settings.service_cidr,
            dns_service_ip=str(service_net.network_address + 10),
            load_balancer_sku="standard",
            outbound_type="loadBalancer",
        ),
        api_server_access_profile=azure.containerservice.ManagedClusterAPIServerAccessProfileArgs(
            authorized_ip_ranges=list(settings.cluster.endpoint_allowed_cidrs)
            if settings.api_public
            else None,
            enable_private_cluster=not settings.api_public,
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
            tenant_id=context.deployer.tenant_id,
            admin_group_object_ids=list(azure_settings.admin_group_object_ids) or None,
        ),
        auto_upgrade_profile=azure.containerservice.ManagedClusterAutoUpgradeProfileArgs(
            upgrade_channel="patch", node_os_upgrade_channel="NodeImage"
        ),
        tags=context.tags,
        opts=pulumi.ResourceOptions(parent=component, ignore_changes=["agentPoolProfiles[0].count"]),
    )
    # With local accounts off, whoever runs `pulumi up` needs RBAC on the cluster to deploy the workload.
    azure.authorization.RoleAssignment(
        context.name("aks-deployer-admin"),
        principal_id=context.deployer.object_id,
        principal_type=azure_settings.deployer_principal_type,
        role_definition_id=context.role(AKS_RBAC_CLUSTER_ADMIN),
        scope=aks.id,
        opts=child,
    )
    # With a VNet of our own, the cluster identity needs rights on the subnet where it places the
    # gateway's internal load balancer (the az CLI grants this itself; ARM does not).
    azure.authorization.RoleAssignment(
        context.name("aks-subnet-network"),
        principal_id=aks.identity.apply(lambda identity: identity.principal_id if identity else ""),
        principal_type="ServicePrincipal",
        role_definition_id=context.role(NETWORK_CONTRIBUTOR),
        scope=network.system_subnet.id,
        opts=child,
    )
    credentials = azure.containerservice.list_managed_cluster_user_credentials_output(
        resource_group_name=network.group.name,
        resource_name=aks.name,
        format="exec",
        opts=pulumi.InvokeOptions(parent=component),
    )
    encoded: pulumi.Output[Any] = pulumi.Output.secret(credentials.kubeconfigs[0].value)
    kubeconfig = encoded.apply(lambda text: aks_kubeconfig_for_azure_cli(str(text)))
    issuer = aks.oidc_issuer_profile.apply(lambda profile: profile.issuer_url if profile else "")
    component.finish(cluster_name=aks.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
    return AzureCluster(component, aks)


def build_gpu_pool(context: AzureContext, cluster: AzureCluster, network: AzureNetwork) -> AzureGpuPool:
    """The GPU agent pool: tainted, labelled, autoscaled, Spot when configured (plus AKS's Spot taint)."""
    pool = context.settings.gpu_pool
    spot = pool.capacity == "spot"
    component = GpuNodePool(context.name("gpu-pool"), context.options)
    taints = [f"{GPU_TAINT_KEY}={GPU_TAINT_VALUE}:{GPU_TAINT_EFFECT}"]
    if spot:
        taints.append(f"{SPOT_TAINT['key']}={SPOT_TAINT['value']}:{SPOT_TAINT['effect']}")
    agent_pool = azure.containerservice.AgentPool(
        context.name("gpu"),
        resource_group_name=network.group.name,
        resource_name_=cluster.aks.name,
        agent_pool_name="gpu",
        mode="User",
        type="VirtualMachineScaleSets",
        os_type="Linux",
        vm_size=pool.instance_type,
        os_disk_size_gb=pool.disk_size_gb,
        vnet_subnet_id=network.gpu_subnet.id,
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
        spot_max_price=context.azure.spot_max_price if spot else None,
        tags=context.tags,
        # The cluster autoscaler owns the node count once the pool exists.
        opts=pulumi.ResourceOptions(parent=component, ignore_changes=["count"]),
    )
    scheduling = GpuScheduling.standard()
    if spot:
        scheduling = GpuScheduling(
            node_selector=scheduling.node_selector,
            tolerations=[*scheduling.tolerations, {**SPOT_TAINT, "operator": "Equal"}],
        )
    component.finish(pool_name=agent_pool.name, scheduling=scheduling)
    return AzureGpuPool(component, agent_pool)


def aks_kubeconfig_for_azure_cli(encoded: str) -> str:
    """AKS: the user kubeconfig (base64 YAML, `kubelogin` exec) switched to non-interactive `azurecli` login.

    AKS returns `--login devicecode`, which waits for a person; `azurecli` reuses `az login` (or a CI's
    federated login), so `pulumi up` can deploy the workload unattended.
    """
    config = yaml.safe_load(base64.b64decode(encoded))
    for user in config.get("users", []):
        exec_spec = user.get("user", {}).get("exec")
        if exec_spec and exec_spec.get("command") == "kubelogin":
            args = list(exec_spec.get("args", []))
            if "--login" in args:
                args[args.index("--login") + 1] = "azurecli"
            else:
                args += ["--login", "azurecli"]
            exec_spec["args"] = args
    return yaml.safe_dump(config, sort_keys=False)
