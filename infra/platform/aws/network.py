"""AWS network: a VPC over several zones with small public and large private subnets, tagged for EKS, and tiny
edge subnets that hold nothing but the internal load balancer in front of the gateway."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.platform.base import CloudContext, Network

# Each zone's edge subnet: a /27 leaves the load balancer far more than the 8 free addresses it needs.
EDGE_SUBNET_PREFIX = 27


@dataclass(frozen=True)
class AwsNetwork:
    """The neutral network and the edge subnets the gateway's load balancer lives in."""

    component: Network
    edge_subnet_ids: pulumi.Output[list[str]]


def subnet_cidrs(vpc_cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Split the VPC into `zones` small public subnets and `zones` large private ones."""
    network = ipaddress.IPv4Network(vpc_cidr)
    # Private subnets take the first quarters/eighths (nodes and pods need many addresses);
    # public subnets take small blocks from the last one (only load balancers and NAT live there).
    halves = list(network.subnets(prefixlen_diff=1))
    private_bits = max(1, (zones - 1).bit_length())
    private = [str(block) for block in list(halves[0].subnets(prefixlen_diff=private_bits))[:zones]]
    public = [str(block) for block in list(halves[1].subnets(prefixlen_diff=3))[:zones]]
    return public, private


def edge_block(vpc_cidr: str) -> str:
    """The block kept for the edge subnets: the last eighth of the VPC's upper half (public subnets use at
    most six of its eight blocks), so nothing but the edge's load balancer ever gets an address in it."""
    upper = list(ipaddress.IPv4Network(vpc_cidr).subnets(prefixlen_diff=1))[1]
    return str(list(upper.subnets(prefixlen_diff=3))[-1])


def edge_subnet_cidrs(vpc_cidr: str, zones: int) -> list[str]:
    """One small subnet per zone inside `edge_block`, for the internal load balancer alone."""
    block = ipaddress.IPv4Network(edge_block(vpc_cidr))
    return [str(subnet) for subnet in list(block.subnets(new_prefix=EDGE_SUBNET_PREFIX))[:zones]]


def build_network(context: CloudContext) -> AwsNetwork:
    """VPC, internet gateway, subnets per zone and NAT (one per zone in prod, one in dev for cost)."""
    settings, name = context.settings, context.name
    net = Network(name("network"), context.options)
    child = pulumi.ResourceOptions(parent=net)
    cluster_tag = {f"kubernetes.io/cluster/{name('eks')}": "shared"}
    vpc = aws.ec2.Vpc(
        name("vpc"),
        cidr_block=settings.network.cidr,
        enable_dns_hostnames=True,
        enable_dns_support=True,
        tags={"Name": name("vpc")},
        opts=child,
    )
    zones = aws.get_availability_zones_output(state="available", opts=pulumi.InvokeOptions(parent=net))
    igw = aws.ec2.InternetGateway(name("igw"), vpc_id=vpc.id, opts=child)
    public_rt = aws.ec2.RouteTable(
        name("public"),
        vpc_id=vpc.id,
        routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
        opts=child,
    )
    public_cidrs, private_cidrs = subnet_cidrs(settings.network.cidr, settings.network.zone_count)
    edge_cidrs = edge_subnet_cidrs(settings.network.cidr, settings.network.zone_count)
    # The edge subnets route only inside the VPC: the load balancer talks to the nodes, nothing else.
    edge_rt = aws.ec2.RouteTable(name("edge"), vpc_id=vpc.id, opts=child)
    private_ids: list[pulumi.Output[str]] = []
    edge_ids: list[pulumi.Output[str]] = []
    nat: aws.ec2.NatGateway | None = None
    # One NAT gateway per zone in prod (a zone outage keeps egress), one in dev (cost).
    nat_per_zone = settings.environment == "prod"
    for i in range(settings.network.zone_count):
        zone = zones.names[i]
        public = aws.ec2.Subnet(
            name(f"public-{i}"),
            vpc_id=vpc.id,
            cidr_block=public_cidrs[i],
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags={"Name": name(f"public-{i}"), "kubernetes.io/role/elb": "1", **cluster_tag},
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            name(f"public-{i}"),
            subnet_id=public.id,
            route_table_id=public_rt.id,
            opts=child,
        )
        if nat is None or nat_per_zone:
            eip = aws.ec2.Eip(name(f"nat-{i}"), domain="vpc", opts=child)
            nat = aws.ec2.NatGateway(
                name(f"nat-{i}"),
                allocation_id=eip.id,
                subnet_id=public.id,
                opts=pulumi.ResourceOptions(parent=net, depends_on=[igw]),
            )
        private = aws.ec2.Subnet(
            name(f"private-{i}"),
            vpc_id=vpc.id,
            cidr_block=private_cidrs[i],
            availability_zone=zone,
            tags={
                "Name": name(f"private-{i}"),
                "kubernetes.io/role/internal-elb": "1",
                **cluster_tag,
            },
            opts=child,
        )
        private_rt = aws.ec2.RouteTable(
            name(f"private-{i}"),
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            name(f"private-{i}"),
            subnet_id=private.id,
            route_table_id=private_rt.id,
            opts=child,
        )
        private_ids.append(private.id)
        edge = aws.ec2.Subnet(
            name(f"edge-{i}"),
            vpc_id=vpc.id,
            cidr_block=edge_cidrs[i],
            availability_zone=zone,
            tags={"Name": name(f"edge-{i}"), **cluster_tag},
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            name(f"edge-{i}"), subnet_id=edge.id, route_table_id=edge_rt.id, opts=child
        )
        edge_ids.append(edge.id)
    net.finish(network_id=vpc.id, private_subnet_ids=pulumi.Output.all(*private_ids))
    return AwsNetwork(net, pulumi.Output.all(*edge_ids))
