"""AWS network (aws/network.py): a VPC over several zones, public and private subnets, NAT."""

from __future__ import annotations

from infra.offline import Plan
from infra.platform.aws.network import subnet_cidrs


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
