"""Azure network: the resource group, the VNet, the node subnets, and the VNet's address plan.

Address plan (CNI overlay: pods do not take VNet addresses): the first quarter of the VNet is the system
node subnet, the second the GPU node subnet, and the third starts with API Management's own subnet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from infra.platform.azure.provider import AzureContext
from infra.platform.base import Network

APIM_SUBNET_PREFIX = 26  # classic injection: a dedicated subnet; /26 leaves room to scale Premium units
NODE_POOLS = ("system", "gpu")


@dataclass(frozen=True)
class AzureNetwork:
    """The neutral network, the resource group everything lives in, the VNet and the node subnets."""

    component: Network
    group: azure.resources.ResourceGroup
    vnet: azure.network.VirtualNetwork
    system_subnet: azure.network.Subnet
    gpu_subnet: azure.network.Subnet

    @property
    def node_subnets(self) -> list[azure.network.Subnet]:
        return [self.system_subnet, self.gpu_subnet]


def node_subnets(cidr: str) -> tuple[str, str]:
    """System and GPU node subnets: the first two quarters of the VNet."""
    quarters = list(ipaddress.ip_network(cidr).subnets(prefixlen_diff=2))
    return str(quarters[0]), str(quarters[1])


def node_subnet_name(prefix: str, pool: str) -> str:
    """A node subnet's fixed name (the gateway's internal load balancer annotation names the system one)."""
    return f"{prefix}-{pool}"


def apim_subnet(cidr: str) -> str:
    """APIM's dedicated subnet: the first /26 of the VNet's third quarter (unused by the node subnets)."""
    third = list(ipaddress.IPv4Network(cidr).subnets(prefixlen_diff=2))[2]
    return str(next(third.subnets(new_prefix=max(third.prefixlen, APIM_SUBNET_PREFIX))))


def backend_ip(cidr: str) -> str:
    """The gateway's internal load balancer IP: the system subnet's last usable address.

    Azure hands out node addresses from the bottom of a subnet, so the top stays free.
    """
    system = ipaddress.IPv4Network(node_subnets(cidr)[0])
    return str(system.broadcast_address - 1)


def build_network(context: AzureContext) -> AzureNetwork:
    """Resource group, VNet and one subnet per node pool."""
    cidr = context.settings.network.cidr
    component = Network(context.name("network"), context.options)
    child = context.child(component)
    group = azure.resources.ResourceGroup(
        context.name("rg"),
        resource_group_name=context.resource_group_name,
        tags=context.tags,
        opts=child,
    )
    vnet = azure.network.VirtualNetwork(
        context.name("vnet"),
        resource_group_name=group.name,
        address_space=azure.network.AddressSpaceArgs(address_prefixes=[cidr]),
        tags=context.tags,
        # Subnets are their own resources; without this an update of the VNet would delete them.
        opts=pulumi.ResourceOptions(parent=component, ignore_changes=["subnets"]),
    )
    # Azure refuses concurrent subnet writes in one VNet (AnotherOperationInProgress): each subnet waits
    # for the one before it (and APIM's subnet, built with the edge, for the last of these).
    subnets: dict[str, azure.network.Subnet] = {}
    previous: list[pulumi.Resource] = []
    for pool, prefix in zip(NODE_POOLS, node_subnets(cidr), strict=True):
        subnets[pool] = azure.network.Subnet(
            node_subnet_name(context.prefix, pool),
            # A fixed name: the internal load balancer annotation names the system subnet.
            subnet_name=node_subnet_name(context.prefix, pool),
            resource_group_name=group.name,
            virtual_network_name=vnet.name,
            address_prefix=prefix,
            opts=pulumi.ResourceOptions(parent=component, depends_on=previous),
        )
        previous = [subnets[pool]]
    component.finish(
        network_id=vnet.id,
        private_subnet_ids=pulumi.Output.all(*(subnet.id for subnet in subnets.values())),
    )
    return AzureNetwork(component, group, vnet, system_subnet=subnets["system"], gpu_subnet=subnets["gpu"])
