"""AWS edge (aws/edge.py): a streaming REST API, a VPC link, an internal NLB on the gateway NodePort."""

from __future__ import annotations

import json

from infra.offline import Plan


def test_load_balancer_is_internal_in_private_subnets(dev: Plan) -> None:
    nlb = dev.one("aws:lb/loadBalancer:LoadBalancer").inputs
    assert nlb["internal"] is True and nlb["loadBalancerType"] == "network"
    private = sorted(f"{s.name}-id" for s in dev.of_type("aws:ec2/subnet:Subnet") if "private" in s.name)
    assert sorted(nlb["subnets"]) == private


def test_nlb_targets_the_gateway_node_port_on_the_system_nodes(dev: Plan) -> None:
    port = dev.settings.edge.gateway_node_port
    group = dev.one("aws:lb/targetGroup:TargetGroup").inputs
    assert group["port"] == port and group["targetType"] == "instance"
    attachment = dev.one("aws:autoscaling/attachment:Attachment").inputs
    assert attachment["autoscalingGroupName"] == "eks-tf-dev-system-asg"
    rule = dev.one("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule").inputs
    assert (rule["fromPort"], rule["toPort"], rule["cidrIpv4"]) == (port, port, dev.settings.network.cidr)
    service = next(
        r
        for r in dev.resources
        if r.type == "kubernetes:core/v1:Service" and r.inputs["metadata"]["name"] == "gateway"
    ).inputs
    assert service["spec"]["type"] == "NodePort" and service["spec"]["ports"][0]["nodePort"] == port


def test_rest_api_is_regional_and_streams_through_the_vpc_link(dev: Plan) -> None:
    api = dev.one("aws:apigateway/restApi:RestApi").inputs
    assert api["endpointConfiguration"]["types"] == "REGIONAL"
    integration = dev.one("aws:apigateway/integration:Integration").inputs
    assert integration["type"] == "HTTP_PROXY"
    assert integration["connectionType"] == "VPC_LINK"
    assert integration["connectionId"] == "tf-dev-gateway-id"
    assert integration["responseTransferMode"] == "STREAM"
    assert integration["timeoutMilliseconds"] == dev.settings.edge.stream_timeout_seconds * 1000
    assert integration["uri"].startswith("http://internal-tf-dev-gateway")
    assert dev.one("aws:apigateway/vpcLink:VpcLink").inputs["targetArn"].endswith(":tf-dev-gateway")


def test_clients_are_limited_to_the_allow_list_and_throttled(dev: Plan) -> None:
    policy = json.loads(dev.one("aws:apigateway/restApiPolicy:RestApiPolicy").inputs["policy"])
    deny = next(s for s in policy["Statement"] if s["Effect"] == "Deny")
    assert deny["Condition"]["NotIpAddress"]["aws:SourceIp"] == ["203.0.113.0/24"]
    settings = dev.one("aws:apigateway/methodSettings:MethodSettings").inputs["settings"]
    assert settings["throttlingRateLimit"] == dev.settings.edge.rate_limit_per_second
    assert settings["throttlingBurstLimit"] == dev.settings.edge.burst
    assert settings["dataTraceEnabled"] is False and settings["cachingEnabled"] is False


def test_endpoint_output_is_the_stage_url(dev: Plan) -> None:
    assert dev.outputs["endpoint_url"] == "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/live"
