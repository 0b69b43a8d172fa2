"""AWS edge (aws/edge.py): a streaming REST API (/v1 only, WAF, access logs), a VPC link, an internal NLB
on the gateway NodePort."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

from infra.catalog import CloudName
from infra.offline import Plan, plan_stack
from infra.platform.aws.network import edge_block
from tests.infra.conftest import CLIENT_CIDR, STACKS
from tests.infra.platform.provisioned import provisioned


def test_load_balancer_is_internal_in_its_own_edge_subnets(dev: Plan) -> None:
    nlb = dev.one("aws:lb/loadBalancer:LoadBalancer").inputs
    assert nlb["internal"] is True and nlb["loadBalancerType"] == "network"
    # Private subnets no longer: pods take addresses there, and the gateway admits the load balancer's block.
    edge = sorted(f"{s.name}-id" for s in dev.of_type("aws:ec2/subnet:Subnet") if "-edge-" in s.name)
    assert len(edge) == dev.settings.network.zone_count and sorted(nlb["subnets"]) == edge


def test_nlb_targets_the_gateway_node_port_on_the_system_nodes(dev: Plan) -> None:
    port = dev.settings.edge.gateway_node_port
    group = dev.one("aws:lb/targetGroup:TargetGroup").inputs
    assert group["port"] == port and group["targetType"] == "instance"
    attachment = dev.one("aws:autoscaling/attachment:Attachment").inputs
    assert attachment["autoscalingGroupName"] == "eks-tf-dev-system-asg"
    rule = dev.one("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule").inputs
    # Only the edge block (the load balancer's subnets), a narrower range than the VPC's.
    assert (rule["fromPort"], rule["toPort"], rule["cidrIpv4"]) == (
        port,
        port,
        edge_block(dev.settings.network.cidr),
    )
    assert ipaddress.ip_network(rule["cidrIpv4"]).subnet_of(ipaddress.ip_network(dev.settings.network.cidr))
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


# -- what the edge exposes, and how it stays closed (issue 13) --------------------------------------
def test_only_v1_is_routed_and_everything_else_is_a_404_from_api_gateway(dev: Plan) -> None:
    resources = {r.name: r.inputs for r in dev.of_type("aws:apigateway/resource:Resource")}
    assert (
        resources["tf-dev-api-v1"]["parentId"] == "root0123"
        and resources["tf-dev-api-v1"]["pathPart"] == "v1"
    )
    assert resources["tf-dev-api-proxy"]["parentId"] == "tf-dev-api-v1-id"
    assert resources["tf-dev-api-proxy"]["pathPart"] == "{proxy+}"
    (method,) = dev.of_type("aws:apigateway/method:Method")
    assert method.inputs["resourceId"] == "tf-dev-api-proxy-id"  # nothing on "/" or "/v1" itself
    integration = dev.one("aws:apigateway/integration:Integration").inputs
    assert integration["uri"].endswith(".amazonaws.com/v1/{proxy}")
    not_found = dev.one("aws:apigateway/response:Response").inputs
    assert (not_found["responseType"], not_found["statusCode"]) == ("MISSING_AUTHENTICATION_TOKEN", "404")
    assert "error" in json.loads(not_found["responseTemplates"]["application/json"])


def _redeploy(plan: Plan) -> str:
    return str(plan.one("aws:apigateway/deployment:Deployment").inputs["triggers"]["redeploy"])


def test_a_new_client_allow_list_makes_a_new_deployment(
    ready_stack: Callable[[CloudName, str], Path],
) -> None:
    path = ready_stack("aws", "dev")
    text = path.read_text()
    before = plan_stack(path)
    path.write_text(text.replace(CLIENT_CIDR, "100.64.0.0/16"))
    after = plan_stack(path)
    assert after.settings.allowed_client_cidrs == ("100.64.0.0/16",)
    assert _redeploy(after) != _redeploy(before)
    path.write_text(text.replace("maxNodes: 2", "maxNodes: 3"))  # nothing the API serves
    assert _redeploy(plan_stack(path)) == _redeploy(before)
    deployment = before.one("aws:apigateway/deployment:Deployment")
    assert "aws:apigateway/restApiPolicy:RestApiPolicy::tf-dev-api-clients" in deployment.dependencies


def test_stage_access_logs_go_to_cloudwatch_as_json_without_bodies(dev: Plan) -> None:
    stage = dev.one("aws:apigateway/stage:Stage")
    logs = stage.inputs["accessLogSettings"]
    group = dev.one("aws:cloudwatch/logGroup:LogGroup", "tf-dev-api-access").inputs
    assert logs["destinationArn"].endswith(f":log-group:{group['name']}")
    assert group["retentionInDays"] == 90
    fields = json.loads(logs["format"])
    assert {"requestId", "ip", "status", "latency", "httpMethod", "path"} <= set(fields)
    assert fields["requestId"] == "$context.requestId" and fields["ip"] == "$context.identity.sourceIp"
    assert not any("body" in value.lower() or "header" in value.lower() for value in fields.values())
    # Access logs need API Gateway's account-wide CloudWatch role, set before the stage.
    account = dev.one("aws:apigateway/account:Account")
    assert account.inputs["cloudwatchRoleArn"] == "arn:aws:iam::111122223333:role/tf-dev-apigateway-logs"
    assert "aws:apigateway/account:Account::tf-dev-apigateway-account" in stage.dependencies
    push = dev.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "tf-dev-apigateway-logs").inputs
    assert push["policyArn"].endswith("service-role/AmazonAPIGatewayPushToCloudWatchLogs")
    trust = json.loads(dev.one("aws:iam/role:Role", "tf-dev-apigateway-logs").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "apigateway.amazonaws.com"}


def test_another_stack_may_own_the_account_wide_logging_role(write_stack: Callable[..., Path]) -> None:
    text = (
        STACKS / "Pulumi.aws-dev.yaml"
    ).read_text() + "  tritonform:aws:\n    manageApiGatewayAccount: false\n"
    plan = plan_stack(write_stack(text))
    assert plan.of_type("aws:apigateway/account:Account") == []
    assert plan.one("aws:apigateway/stage:Stage").inputs["accessLogSettings"]["destinationArn"]


def test_waf_limits_each_api_key_and_counts_the_body_size_rule(dev: Plan) -> None:
    acl = dev.one("aws:wafv2/webAcl:WebAcl").inputs
    assert acl["scope"] == "REGIONAL" and acl["defaultAction"] == {"allow": {}}
    assert acl["visibilityConfig"]["sampledRequestsEnabled"] is False  # samples would keep API keys
    rate, common = sorted(acl["rules"], key=lambda rule: rule["priority"])
    statement = rate["statement"]["rateBasedStatement"]
    assert rate["action"] == {"block": {}} and statement["aggregateKeyType"] == "CUSTOM_KEYS"
    # The gateway and OpenAI clients send `Authorization: Bearer <key>`.
    assert statement["customKeys"] == [
        {"header": {"name": "authorization", "textTransformations": [{"priority": 0, "type": "NONE"}]}}
    ]
    assert statement["evaluationWindowSec"] == 300
    assert statement["limit"] == dev.settings.gateway.requests_per_minute * 5
    managed = common["statement"]["managedRuleGroupStatement"]
    assert (managed["vendorName"], managed["name"]) == ("AWS", "AWSManagedRulesCommonRuleSet")
    # Only the body rules count (prompts are code, markup, paths); header/URI/query rules still block.
    body_rules = ["SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY", "GenericRFI_BODY"]
    assert managed["ruleActionOverrides"] == [
        {"name": name, "actionToUse": {"count": {}}} for name in [*body_rules, "EC2MetaDataSSRF_BODY"]
    ]
    assert common["overrideAction"] == {"none": {}}
    association = dev.one("aws:wafv2/webAclAssociation:WebAclAssociation").inputs
    assert association["resourceArn"] == "arn:aws:apigateway:us-east-1::/restapis/a1b2c3d4e5/stages/live"
    assert association["webAclArn"].startswith("arn:aws:wafv2:us-east-1:")


def test_gateway_admits_only_the_load_balancers_block_and_keeps_its_address(dev: Plan) -> None:
    exposure = provisioned("aws-dev").cloud.gateway_exposure()
    assert exposure.source_ranges == (edge_block(dev.settings.network.cidr),)
    assert exposure.source_ranges != (dev.settings.network.cidr,)
    assert exposure.external_traffic_policy == "Local"
    group = dev.one("aws:lb/targetGroup:TargetGroup").inputs
    assert group["preserveClientIp"] == "false"
    # Only nodes with a gateway pod pass the health check; a node that lost its pod leaves within ~20 s.
    check = group["healthCheck"]
    assert (check["path"], check["interval"], check["unhealthyThreshold"]) == ("/healthz", 10, 2)
    service = next(
        r
        for r in dev.resources
        if r.type == "kubernetes:core/v1:Service" and r.inputs["metadata"]["name"] == "gateway"
    ).inputs
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    policy = next(
        r.inputs
        for r in dev.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        if r.inputs["metadata"]["name"] == "gateway-from-edge"
    )
    blocks = [peer["ipBlock"]["cidr"] for peer in policy["spec"]["ingress"][0]["from"] if "ipBlock" in peer]
    assert blocks == [edge_block(dev.settings.network.cidr)]
