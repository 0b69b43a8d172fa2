"""AWS edge: a Regional REST API Gateway (TLS, client allow-list, throttling, streaming) in front of an
internal Network Load Balancer that forwards to the gateway's NodePort on the system nodes.

Why REST and not HTTP APIs: HTTP APIs cut integrations at 30 s and cannot stream; REST APIs stream
server-sent events with `responseTransferMode: STREAM` (up to 15 minutes) over a private VPC link.
Regional, not edge-optimised: edge-optimised endpoints drop streams idle for 30 s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.platform.base import CloudContext, Edge, EdgeBackend, EdgeTargets, ServiceExposure
from infra.settings import StackSettings


@dataclass(frozen=True)
class AwsEdgeTargets(EdgeTargets):
    """What the edge attaches to: the VPC, the private subnets and the nodes the gateway runs on."""

    context: CloudContext
    vpc_id: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[list[str]]
    node_security_group_id: pulumi.Input[str]
    node_group: aws.eks.NodeGroup


def gateway_exposure(settings: StackSettings) -> ServiceExposure:
    """A fixed NodePort on the system nodes, behind an internal NLB that Pulumi owns (so the API gateway's
    VPC link can target it); traffic comes only from inside the VPC."""
    return ServiceExposure(
        type="NodePort",
        source_ranges=(settings.network.cidr,),
        node_port=settings.edge.gateway_node_port,
    )


def build_edge(targets: AwsEdgeTargets, backend: EdgeBackend) -> Edge:
    """Internal NLB -> VPC link -> REST API with a streaming proxy integration."""
    context = targets.context
    settings = context.settings
    edge = Edge(context.name("edge"), context.options)
    child = context.child(edge)
    node_port = backend.exposure.node_port
    if node_port is None:
        raise ValueError("the AWS edge needs the gateway exposed on a NodePort")

    # Nodes accept the NodePort only from inside the VPC (the NLB forwards from its private addresses).
    aws.vpc.SecurityGroupIngressRule(
        context.name("gateway-nodeport"),
        security_group_id=targets.node_security_group_id,
        cidr_ipv4=settings.network.cidr,
        ip_protocol="tcp",
        from_port=node_port,
        to_port=node_port,
        description="tritonform gateway NodePort from the internal load balancer",
        opts=child,
    )
    nlb = aws.lb.LoadBalancer(
        context.name("gateway"),
        internal=True,
        load_balancer_type="network",
        subnets=targets.private_subnet_ids,
        enable_cross_zone_load_balancing=True,
        opts=child,
    )
    target_group = aws.lb.TargetGroup(
        context.name("gateway"),
        port=node_port,
        protocol="TCP",
        target_type="instance",
        vpc_id=targets.vpc_id,
        deregistration_delay=120,  # let streams finish when a node leaves
        health_check=aws.lb.TargetGroupHealthCheckArgs(protocol="HTTP", path="/healthz", port=str(node_port)),
        opts=child,
    )
    aws.lb.Listener(
        context.name("gateway"),
        load_balancer_arn=nlb.arn,
        port=80,
        protocol="TCP",
        default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_group.arn)],
        opts=child,
    )
    asg_name = targets.node_group.resources.apply(_first_autoscaling_group)
    aws.autoscaling.Attachment(
        context.name("gateway"),
        autoscaling_group_name=asg_name,
        lb_target_group_arn=target_group.arn,
        opts=child,
    )
    link = aws.apigateway.VpcLink(
        context.name("gateway"), name=context.name("gateway"), target_arn=nlb.arn, opts=child
    )

    api = aws.apigateway.RestApi(
        context.name("api"),
        name=context.name("api"),
        description="tritonform OpenAI-compatible endpoint",
        endpoint_configuration=aws.apigateway.RestApiEndpointConfigurationArgs(types="REGIONAL"),
        disable_execute_api_endpoint=False,
        opts=child,
    )
    aws.apigateway.RestApiPolicy(
        context.name("api-clients"),
        rest_api_id=api.id,
        policy=api.execution_arn.apply(lambda arn: _client_allow_list(arn, settings.allowed_client_cidrs)),
        opts=child,
    )
    proxy = aws.apigateway.Resource(
        context.name("api-proxy"),
        rest_api=api.id,
        parent_id=api.root_resource_id,
        path_part="{proxy+}",
        opts=child,
    )
    method = aws.apigateway.Method(
        context.name("api-proxy"),
        rest_api=api.id,
        resource_id=proxy.id,
        http_method="ANY",
        authorization="NONE",  # the gateway checks API keys itself; the edge filters clients and rate
        request_parameters={"method.request.path.proxy": True},
        opts=child,
    )
    integration = aws.apigateway.Integration(
        context.name("api-proxy"),
        rest_api=api.id,
        resource_id=proxy.id,
        http_method=method.http_method,
        type="HTTP_PROXY",
        integration_http_method="ANY",
        connection_type="VPC_LINK",
        connection_id=link.id,
        uri=nlb.dns_name.apply(lambda dns: f"http://{dns}/{{proxy}}"),
        request_parameters={"integration.request.path.proxy": "method.request.path.proxy"},
        response_transfer_mode="STREAM",
        timeout_milliseconds=settings.edge.stream_timeout_seconds * 1000,
        opts=child,
    )
    deployment = aws.apigateway.Deployment(
        context.name("api"),
        rest_api=api.id,
        triggers={"redeploy": pulumi.Output.all(proxy.id, method.id, integration.id).apply(json.dumps)},
        opts=pulumi.ResourceOptions(parent=edge, depends_on=[integration, *backend.depends_on]),
    )
    stage = aws.apigateway.Stage(
        context.name("api"),
        rest_api=api.id,
        deployment=deployment.id,
        stage_name="live",
        xray_tracing_enabled=False,
        opts=child,
    )
    aws.apigateway.MethodSettings(
        context.name("api-throttle"),
        rest_api=api.id,
        stage_name=stage.stage_name,
        method_path="*/*",
        settings=aws.apigateway.MethodSettingsSettingsArgs(
            throttling_rate_limit=settings.edge.rate_limit_per_second,
            throttling_burst_limit=settings.edge.burst,
            metrics_enabled=True,
            logging_level="OFF",  # no request or response bodies in logs: prompts stay private
            data_trace_enabled=False,
            caching_enabled=False,
        ),
        opts=child,
    )
    edge.finish(endpoint_url=stage.invoke_url)
    return edge


def _first_autoscaling_group(resources: Sequence[aws.eks.outputs.NodeGroupResource]) -> str:
    groups = resources[0].autoscaling_groups or []
    if not groups or not groups[0].name:
        raise ValueError("the system node group has no autoscaling group to attach the load balancer to")
    return groups[0].name


def _client_allow_list(execution_arn: str, cidrs: tuple[str, ...]) -> str:
    """Allow invoking the API only from the configured client CIDRs."""
    resource = f"{execution_arn}/*"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": resource},
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "execute-api:Invoke",
                    "Resource": resource,
                    "Condition": {"NotIpAddress": {"aws:SourceIp": list(cidrs)}},
                },
            ],
        }
    )
