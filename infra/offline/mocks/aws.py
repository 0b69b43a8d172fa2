"""What AWS would return for the resources and provider functions the program uses offline."""

from __future__ import annotations

from typing import Any

from infra.settings import StackSettings

ACCOUNT = "111122223333"


def aws_resource(
    typ: str, name: str, inputs: dict[str, Any], settings: StackSettings
) -> tuple[str, dict[str, Any]]:
    """The id and state an AWS create would return for `typ` with `inputs`."""
    state = dict(inputs)
    region = settings.region
    resource_id = f"{name}-id"
    service = typ.split(":")[1].split("/")[0]
    state.setdefault("arn", f"arn:aws:{service}:{region}:{ACCOUNT}:{name}")
    if typ == "aws:eks/cluster:Cluster":
        state.update(
            endpoint=f"https://{name}.gr7.{region}.eks.amazonaws.com",
            certificateAuthority={"data": "Q0VSVElGSUNBVEU="},
            identities=[
                {"oidcs": [{"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/{name.upper()}"}]}
            ],
            vpcConfig={**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{name}"},
        )
    elif typ == "aws:s3/bucket:Bucket":
        state.setdefault("bucket", f"{inputs.get('bucketPrefix', name)}0123abcd")
        state["arn"] = f"arn:aws:s3:::{state['bucket']}"
    elif typ == "aws:eks/nodeGroup:NodeGroup":
        state.setdefault("nodeGroupName", name)
        state["resources"] = [{"autoscalingGroups": [{"name": f"eks-{name}-asg"}]}]
    elif typ == "aws:iam/role:Role":
        state.setdefault("name", name)
        state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{name}"
    elif typ == "aws:lb/loadBalancer:LoadBalancer":
        state["dnsName"] = f"internal-{name}-0123456789.elb.{region}.amazonaws.com"
    elif typ == "aws:apigateway/restApi:RestApi":
        resource_id = "a1b2c3d4e5"
        state.update(
            rootResourceId="root0123", executionArn=f"arn:aws:execute-api:{region}:{ACCOUNT}:{resource_id}"
        )
    elif typ == "aws:apigateway/stage:Stage":
        state["invokeUrl"] = f"https://a1b2c3d4e5.execute-api.{region}.amazonaws.com/{inputs['stageName']}"
        state["arn"] = (
            f"arn:aws:apigateway:{region}::/restapis/{inputs['restApi']}/stages/{inputs['stageName']}"
        )
    elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
        state.update(latestVersion=1, defaultVersion=1)
    elif typ == "aws:cloudwatch/logGroup:LogGroup":
        state["arn"] = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{inputs.get('name', name)}"
    elif typ == "aws:wafv2/webAcl:WebAcl":
        state["arn"] = f"arn:aws:wafv2:{region}:{ACCOUNT}:regional/webacl/{name}/{name}-id"
    elif typ == "aws:ecr/repository:Repository":
        state.update(
            registryId=ACCOUNT, repositoryUrl=f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{inputs['name']}"
        )
    return resource_id, state


def aws_call(token: str, args: dict[str, Any], settings: StackSettings) -> dict[str, Any] | None:
    """The answer to an AWS provider function, or None when `token` is not an AWS function we know."""
    region = settings.region
    if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
        names = [f"{region}{z}" for z in "abcdef"]
        return {"names": names, "zoneIds": [f"use1-az{i}" for i in range(6)], "id": region}
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {
            "accountId": ACCOUNT,
            "arn": f"arn:aws:iam::{ACCOUNT}:user/offline-plan",
            "userId": "AIDAOFFLINEPLAN",
            "id": ACCOUNT,
        }
    if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
        return {
            "authorizationToken": "QVdTOm9mZmxpbmU=",
            "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{region}.amazonaws.com",
            "userName": "AWS",
            "password": "offline-ecr-token",
            "expiresAt": "2026-01-01T00:00:00Z",
            "id": region,
        }
    return None
