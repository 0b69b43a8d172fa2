"""AWS edge: a Regional REST API Gateway (TLS, client allow-list, throttling, streaming, WAF, access logs)
in front of an internal Network Load Balancer that forwards to the gateway's NodePort on the system nodes.

Why REST and not HTTP APIs: HTTP APIs cut integrations at 30 s and cannot stream; REST APIs stream
server-sent events with `responseTransferMode: STREAM` (up to 15 minutes) over a private VPC link.
Regional, not edge-optimised: edge-optimised endpoints drop streams idle for 30 s. Only `/v1/...` is
routed: the gateway's operational paths (/metrics, /docs, /openapi.json, /readyz) stay inside the VPC.

Where the gateway's traffic comes from: a REST API's VPC link reaches the load balancer through
PrivateLink, and PrivateLink traffic always reaches targets from the load balancer's own private address
(client IP preservation has no effect on it; ELB docs, target group attributes). The load balancer lives
alone in the edge subnets (aws/network.py), so the gateway admits exactly that block, and its Service keeps
that source address on the node it lands on (`externalTrafficPolicy: Local`; nodes without a gateway pod
fail the load balancer's health check and get no traffic).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.catalog import AWS_COMMON_RULE_SET
from infra.platform.aws.network import edge_block
from infra.platform.aws.provider import AwsContext
from infra.platform.base import Edge, EdgeBackend, EdgeTargets, ServiceExposure
from infra.settings import StackSettings

API_PREFIX = "v1"  # the only path the edge forwards: /v1/{proxy+}
# What API Gateway logs per request: who, what, how it ended and how long it took; never a body or a header.
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "extendedRequestId": "$context.extendedRequestId",
        "ip": "$context.identity.sourceIp",
        "userAgent": "$context.identity.userAgent",
        "requestTime": "$context.requestTime",
        "httpMethod": "$context.httpMethod",
        "path": "$context.path",
        "status": "$context.status",
        "protocol": "$context.protocol",
        "responseLength": "$context.responseLength",
        "latency": "$context.responseLatency",
        "integrationLatency": "$context.integration.latency",
        "integrationStatus": "$context.integration.status",
        "wafResponse": "$context.wafResponseCode",
        "error": "$context.error.responseType",
    }
)
# API Gateway answers a path or method it has no route for with 403 "Missing Authentication Token": say 404.
NOT_FOUND = json.dumps(
    {"error": {"message": "not found: this endpoint serves /v1/ only", "type": "invalid_request_error"}}
)
API_GATEWAY_LOGS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"


@dataclass(frozen=True)
class AwsEdgeTargets(EdgeTargets):
    """What the edge attaches to: the VPC, the edge subnets and the nodes the gateway runs on."""

    context: AwsContext
    vpc_id: pulumi.Input[str]
    edge_subnet_ids: pulumi.Input[list[str]]
    node_security_group_id: pulumi.Input[str]
    node_group: aws.eks.NodeGroup


def gateway_exposure(settings: StackSettings) -> ServiceExposure:
    """A fixed NodePort on the system nodes, behind an internal NLB that Pulumi owns (so the API gateway's
    VPC link can target it); traffic comes only from the NLB's addresses in the edge subnets."""
    return ServiceExposure(
        type="NodePort",
        source_ranges=(edge_block(settings.network.cidr),),
        node_port=settings.edge.gateway_node_port,
        external_traffic_policy="Local",
    )


def build_edge(targets: AwsEdgeTargets, backend: EdgeBackend) -> Edge:
    """Internal NLB -> VPC link -> REST API (/v1 only) with a streaming proxy integration, a WAF and access
    logs on its stage."""
    context = targets.context
    settings = context.settings
    edge = Edge(context.name("edge"), context.options)
    child = context.child(edge)
    node_port = backend.exposure.node_port
    if node_port is None:
        raise ValueError("the AWS edge needs the gateway exposed on a NodePort")
    nlb = _load_balancer(targets, node_port, edge)
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
    client_policy = api.execution_arn.apply(
        lambda arn: _client_allow_list(arn, settings.allowed_client_cidrs)
    )
    api_policy = aws.apigateway.RestApiPolicy(
        context.name("api-clients"), rest_api_id=api.id, policy=client_policy, opts=child
    )
    version = aws.apigateway.Resource(
        context.name("api-v1"),
        rest_api=api.id,
        parent_id=api.root_resource_id,
        path_part=API_PREFIX,
        opts=child,
    )
    proxy = aws.apigateway.Resource(
        context.name("api-proxy"), rest_api=api.id, parent_id=version.id, path_part="{proxy+}", opts=child
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
    uri = nlb.dns_name.apply(lambda dns: f"http://{dns}/{API_PREFIX}/{{proxy}}")
    integration = aws.apigateway.Integration(
        context.name("api-proxy"),
        rest_api=api.id,
        resource_id=proxy.id,
        http_method=method.http_method,
        type="HTTP_PROXY",
        integration_http_method="ANY",
        connection_type="VPC_LINK",
        connection_id=link.id,
        uri=uri,
        request_parameters={"integration.request.path.proxy": "method.request.path.proxy"},
        response_transfer_mode="STREAM",
        timeout_milliseconds=settings.edge.stream_timeout_seconds * 1000,
        opts=child,
    )
    not_found = aws.apigateway.Response(
        context.name("api-not-found"),
        rest_api_id=api.id,
        response_type="MISSING_AUTHENTICATION_TOKEN",
        status_code="404",
        response_templates={"application/json": NOT_FOUND},
        opts=child,
    )
    # A deployment is a snapshot: anything that changes what it serves must make a new one.
    served = pulumi.Output.all(
        client_policy, version.id, proxy.id, method.id, integration.id, link.id, uri, not_found.id
    ).apply(lambda values: [*values, settings.edge.stream_timeout_seconds, NOT_FOUND, API_PREFIX])
    deployment = aws.apigateway.Deployment(
        context.name("api"),
        rest_api=api.id,
        triggers={"redeploy": served.apply(_digest)},
        opts=pulumi.ResourceOptions(
            parent=edge, depends_on=[api_policy, integration, not_found, *backend.depends_on]
        ),
    )
    stage = aws.apigateway.Stage(
        context.name("api"),
        rest_api=api.id,
        deployment=deployment.id,
        stage_name="live",
        xray_tracing_enabled=False,
        access_log_settings=aws.apigateway.StageAccessLogSettingsArgs(
            destination_arn=_access_log_group(context, edge).arn, format=ACCESS_LOG_FORMAT
        ),
        opts=pulumi.ResourceOptions(parent=edge, depends_on=_logging_role(context, edge)),
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
            logging_level="OFF",  # no execution logs: request and response bodies (prompts) stay private
            data_trace_enabled=False,
            caching_enabled=False,
        ),
        opts=child,
    )
    acl = web_acl(context, edge)
    aws.wafv2.WebAclAssociation(context.name("api"), resource_arn=stage.arn, web_acl_arn=acl.arn, opts=child)
    edge.finish(endpoint_url=stage.invoke_url)
    return edge


def _load_balancer(targets: AwsEdgeTargets, node_port: int, edge: Edge) -> aws.lb.LoadBalancer:
    """The internal NLB in the edge subnets, forwarding to the NodePort of the system nodes."""
    context = targets.context
    child = context.child(edge)
    # Nodes accept the NodePort only from the edge subnets, where nothing but this load balancer lives.
    aws.vpc.SecurityGroupIngressRule(
        context.name("gateway-nodeport"),
        security_group_id=targets.node_security_group_id,
        cidr_ipv4=edge_block(context.settings.network.cidr),
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
        subnets=targets.edge_subnet_ids,
        enable_cross_zone_load_balancing=True,
        opts=child,
    )
    target_group = aws.lb.TargetGroup(
        context.name("gateway"),
        port=node_port,
        protocol="TCP",
        target_type="instance",
        vpc_id=targets.vpc_id,
        # The nodes see the load balancer's address on every path (PrivateLink never preserves the client's).
        preserve_client_ip="false",
        deregistration_delay=120,  # let streams finish when a node leaves
        # With externalTrafficPolicy Local only nodes running a gateway pod answer: notice a node that lost
        # its pod within ~20 s (two failed checks, 10 s apart) rather than the default ~90 s.
        health_check=aws.lb.TargetGroupHealthCheckArgs(
            protocol="HTTP",
            path="/healthz",
            port=str(node_port),
            interval=10,
            healthy_threshold=2,
            unhealthy_threshold=2,
        ),
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
    aws.autoscaling.Attachment(
        context.name("gateway"),
        autoscaling_group_name=targets.node_group.resources.apply(_first_autoscaling_group),
        lb_target_group_arn=target_group.arn,
        opts=child,
    )
    return nlb


def _access_log_group(context: AwsContext, edge: Edge) -> aws.cloudwatch.LogGroup:
    return aws.cloudwatch.LogGroup(
        context.name("api-access"),
        name=f"/aws/apigateway/{context.name('api')}/access",
        retention_in_days=context.aws.log_retention_days,
        opts=context.child(edge),
    )


def _logging_role(context: AwsContext, edge: Edge) -> list[pulumi.Resource]:
    """API Gateway writes access logs only with an account-wide CloudWatch role (one per account and region):
    set it here unless `aws.manageApiGatewayAccount` says another stack does."""
    if not context.aws.manage_api_gateway_account:
        return []
    role = aws.iam.Role(
        context.name("apigateway-logs"),
        description="API Gateway writes access logs to CloudWatch (account-wide setting of this region)",
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "apigateway.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
        opts=context.child(edge),
    )
    attachment = aws.iam.RolePolicyAttachment(
        context.name("apigateway-logs"),
        role=role.name,
        policy_arn=API_GATEWAY_LOGS_POLICY,
        opts=context.child(edge),
    )
    account = aws.apigateway.Account(
        context.name("apigateway-account"),
        cloudwatch_role_arn=role.arn,
        opts=pulumi.ResourceOptions(parent=edge, depends_on=[attachment]),
    )
    return [account]


def web_acl(context: AwsContext, edge: Edge) -> aws.wafv2.WebAcl:
    """The stage's firewall: a rate limit per API key (the `Authorization: Bearer <key>` header the gateway
    and OpenAI clients send), then AWS's core rule set, with the rules that would refuse prompts counting.

    Sampled requests stay off: they would keep request headers, API keys included, in the WAF console."""
    settings, waf = context.settings, context.aws

    def visibility(metric: str) -> aws.wafv2.WebAclVisibilityConfigArgsDict:
        return {"cloudwatch_metrics_enabled": True, "metric_name": metric, "sampled_requests_enabled": False}

    rules: list[aws.wafv2.WebAclRuleArgsDict] = [
        {
            "name": "per-api-key-rate",
            "priority": 0,
            "action": {"block": {}},
            "statement": {
                "rate_based_statement": {
                    "aggregate_key_type": "CUSTOM_KEYS",
                    "limit": waf.requests_per_key(settings.gateway.requests_per_minute),
                    "evaluation_window_sec": waf.waf_window_seconds,
                    "custom_keys": [
                        {
                            "header": {
                                "name": "authorization",
                                "text_transformations": [{"priority": 0, "type": "NONE"}],
                            }
                        }
                    ],
                }
            },
            "visibility_config": visibility("per-api-key-rate"),
        },
        {
            "name": "aws-common-rules",
            "priority": 1,
            "override_action": {"none": {}},
            "statement": {
                "managed_rule_group_statement": {
                    "vendor_name": "AWS",
                    "name": AWS_COMMON_RULE_SET,
                    "rule_action_overrides": [
                        {"name": rule, "action_to_use": {"count": {}}} for rule in waf.waf_count_only_rules
                    ],
                }
            },
            "visibility_config": visibility("aws-common-rules"),
        },
    ]
    return aws.wafv2.WebAcl(
        context.name("api"),
        description="tritonform API: per-key rate limit and AWS core rules",
        scope="REGIONAL",
        default_action={"allow": {}},
        visibility_config=visibility(context.name("api")),
        rules=rules,
        opts=context.child(edge),
    )


def _digest(values: list[Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


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
