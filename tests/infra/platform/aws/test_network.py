"""AWS network (aws/network.py): a VPC over several zones, public, private and edge subnets, NAT."""

from __future__ import annotations

import ipaddress

import pytest

from infra.offline import Plan
from infra.platform.aws.network import edge_block, edge_subnet_cidrs, subnet_cidrs


def test_vpc_spans_zones_with_public_and_private_subnets_tagged_for_eks(dev: Plan, prod: Plan) -> None:
    for plan, zones in ((dev, 2), (prod, 3)):
        subnets = plan.of_type("aws:ec2/subnet:Subnet")
        public = [s for s in subnets if s.inputs["tags"].get("kubernetes.io/role/elb") == "1"]
        private = [s for s in subnets if s.inputs["tags"].get("kubernetes.io/role/internal-elb") == "1"]
        assert len(public) == len(private) == zones
        assert len({s.inputs["availabilityZone"] for s in private}) == zones
        cluster_tag = f"kubernetes.io/cluster/{plan.settings.name}-eks"
        assert all(s.inputs["tags"][cluster_tag] == "shared" for s in subnets)
        assert not any(s.inputs.get("mapPublicIpOnLaunch") for s in subnets)


def test_nat_is_single_in_dev_and_per_zone_in_prod(dev: Plan, prod: Plan) -> None:
    assert len(dev.of_type("aws:ec2/natGateway:NatGateway")) == 1
    assert len(prod.of_type("aws:ec2/natGateway:NatGateway")) == 3
    routes = [
        r.inputs["routes"][0] for r in dev.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name
    ]
    assert routes and all(r["natGatewayId"] for r in routes)


def test_subnet_split_does_not_overlap() -> None:
    import ipaddress

    public, private = subnet_cidrs("10.0.0.0/16", 3)
    nets = [ipaddress.ip_network(c) for c in public + private]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


@pytest.mark.parametrize(("vpc", "zones"), [("10.0.0.0/16", 6), ("10.40.0.0/16", 2), ("172.16.0.0/20", 6)])
def test_edge_subnets_sit_alone_in_the_edge_block(vpc: str, zones: int) -> None:
    public, private = subnet_cidrs(vpc, zones)
    block = ipaddress.ip_network(edge_block(vpc))
    edge = [ipaddress.ip_network(c) for c in edge_subnet_cidrs(vpc, zones)]
    assert len(edge) == zones and all(subnet.subnet_of(block) for subnet in edge)
    assert all(subnet.num_addresses - 5 >= 8 for subnet in edge)  # an NLB needs 8 free addresses per subnet
    others = [ipaddress.ip_network(c) for c in public + private]
    assert not any(block.overlaps(other) for other in others)
    assert block.subnet_of(ipaddress.ip_network(vpc))


def test_edge_subnets_route_only_inside_the_vpc(dev: Plan) -> None:
    edge = sorted(
        (s for s in dev.of_type("aws:ec2/subnet:Subnet") if "-edge-" in s.name), key=lambda s: s.name
    )
    assert [s.inputs["cidrBlock"] for s in edge] == edge_subnet_cidrs("10.40.0.0/16", 2)
    assert not any("kubernetes.io/role/internal-elb" in s.inputs["tags"] for s in edge)
    table = dev.one("aws:ec2/routeTable:RouteTable", "tf-dev-edge").inputs
    assert not table.get("routes")
    associations = [
        a for a in dev.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation") if "-edge-" in a.name
    ]
    assert {a.inputs["routeTableId"] for a in associations} == {"tf-dev-edge-id"}
    assert sorted(a.inputs["subnetId"] for a in associations) == sorted(f"{s.name}-id" for s in edge)
