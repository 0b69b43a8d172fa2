"""GCP network (gcp/network.py): a VPC with pod and service ranges and Cloud NAT."""

from __future__ import annotations

import ipaddress

import pytest

from infra.offline import Plan
from infra.platform.gcp.network import gke_ranges


def test_subnet_has_pod_and_service_ranges_and_private_google_access(dev: Plan) -> None:
    subnet = dev.one("gcp:compute/subnetwork:Subnetwork").inputs
    ranges = {r["rangeName"]: r["ipCidrRange"] for r in subnet["secondaryIpRanges"]}
    assert set(ranges) == {"pods", "services"}
    assert subnet["privateIpGoogleAccess"] is True
    assert dev.one("gcp:compute/network:Network").inputs["autoCreateSubnetworks"] is False
    blocks = [ipaddress.ip_network(c) for c in (subnet["ipCidrRange"], *ranges.values())]
    assert all(b.subnet_of(ipaddress.ip_network("10.60.0.0/16")) for b in blocks)


@pytest.mark.parametrize("cidr", ["10.0.0.0/16", "10.60.0.0/20", "172.16.0.0/12"])
def test_gke_ranges_do_not_overlap(cidr: str) -> None:
    nets = [ipaddress.ip_network(c) for c in gke_ranges(cidr)]
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


def test_cloud_nat_gives_private_nodes_egress(dev: Plan) -> None:
    nat = dev.one("gcp:compute/routerNat:RouterNat").inputs
    assert nat["router"] == f"{dev.settings.name}-router-a1b2c3d"
    assert nat["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"
