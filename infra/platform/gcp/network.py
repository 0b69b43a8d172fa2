"""GCP network: a custom-mode VPC, one node subnet with pod and service ranges, and Cloud NAT."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi_gcp as gcp

from infra.platform.base import Network
from infra.platform.gcp.provider import GcpContext

PODS_RANGE = "pods"
SERVICES_RANGE = "services"


@dataclass(frozen=True)
class GcpNetwork:
    """The neutral network and the VPC and node subnet the cluster and the edge's firewall name."""

    component: Network
    vpc: gcp.compute.Network
    subnet: gcp.compute.Subnetwork


def gke_ranges(cidr: str) -> tuple[str, str, str]:
    """Nodes, services and pods ranges carved from the network CIDR (pods take the larger half)."""
    network = ipaddress.ip_network(cidr)
    first, second = network.subnets(prefixlen_diff=1)
    quarters = list(first.subnets(prefixlen_diff=2))
    return str(quarters[0]), str(quarters[1]), str(second)


def build_network(context: GcpContext) -> GcpNetwork:
    """VPC, node subnet (VPC-native secondary ranges, private Google access), router and NAT."""
    region = context.settings.region
    component = Network(context.name("network"), context.options)
    child = context.child(component)
    nodes, services, pods = gke_ranges(context.settings.network.cidr)
    vpc = gcp.compute.Network(
        context.name("vpc"), auto_create_subnetworks=False, routing_mode="REGIONAL", opts=child
    )
    subnet = gcp.compute.Subnetwork(
        context.name("nodes"),
        network=vpc.id,
        region=region,
        ip_cidr_range=nodes,
        # Private nodes reach Google APIs (GCS, Artifact Registry) without public addresses.
        private_ip_google_access=True,
        secondary_ip_ranges=[
            gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=PODS_RANGE, ip_cidr_range=pods),
            gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=SERVICES_RANGE, ip_cidr_range=services),
        ],
        opts=child,
    )
    router = gcp.compute.Router(context.name("router"), network=vpc.id, region=region, opts=child)
    # Cloud NAT gives the private nodes egress (image pulls from outside Google, NGC).
    gcp.compute.RouterNat(
        context.name("nat"),
        router=router.name,
        region=region,
        nat_ip_allocate_option="AUTO_ONLY",
        source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
        log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
        opts=child,
    )
    component.finish(network_id=vpc.id, private_subnet_ids=subnet.id.apply(lambda subnet_id: [subnet_id]))
    return GcpNetwork(component, vpc, subnet)
