"""AWS stack, through the real program under mocks: the network, EKS, GPU pool, bucket and IRSA role."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from infra.offline import Plan
from infra.platform.aws.network import subnet_cidrs

PlanOf = Callable[[str], Plan]


@pytest.fixture
def dev(plan_of: PlanOf) -> Plan:
    return plan_of("aws-dev")


@pytest.fixture
def prod(plan_of: PlanOf) -> Plan:
    return plan_of("aws-prod")


def test_provider_region_and_default_tags_come_from_the_stack(dev: Plan) -> None:
    provider = dev.one("pulumi:providers:aws")
    assert provider.inputs["region"] == "us-east-1"
    tags = (
        json.loads(provider.inputs["defaultTags"])["tags"]
        if isinstance(provider.inputs["defaultTags"], str)
        else provider.inputs["defaultTags"]["tags"]
    )
    assert tags["team"] == "ml-platform" and tags["stack-name"] == "tf-dev"


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


def test_eks_cluster_version_logging_encryption_and_private_nodes(dev: Plan) -> None:
    eks = dev.one("aws:eks/cluster:Cluster").inputs
    assert eks["version"] == "1.31"
    assert set(eks["enabledClusterLogTypes"]) == {
        "api",
        "audit",
        "authenticator",
        "controllerManager",
        "scheduler",
    }
    assert eks["encryptionConfig"]["resources"] == ["secrets"]
    assert eks["vpcConfig"]["endpointPrivateAccess"] is True
    private_subnets = [s.name for s in dev.of_type("aws:ec2/subnet:Subnet") if "private" in s.name]
    assert sorted(eks["vpcConfig"]["subnetIds"]) == sorted(f"{n}-id" for n in private_subnets)
    assert eks["accessConfig"]["authenticationMode"] == "API"


def test_api_endpoint_public_only_to_allowed_cidrs_in_dev_and_private_in_prod(dev: Plan, prod: Plan) -> None:
    dev_vpc = dev.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert dev_vpc["endpointPublicAccess"] is True
    assert dev_vpc["publicAccessCidrs"] == ["203.0.113.0/24"]
    assert prod.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]["endpointPublicAccess"] is False


def test_oidc_provider_for_irsa(dev: Plan) -> None:
    oidc = dev.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider").inputs
    assert oidc["clientIdLists"] == ["sts.amazonaws.com"]
    assert oidc["url"].startswith("https://oidc.eks.us-east-1.amazonaws.com/id/")


def test_gpu_node_group_taint_labels_scaling_and_spot_from_the_stack_file(dev: Plan, prod: Plan) -> None:
    gpu = dev.one("aws:eks/nodeGroup:NodeGroup", "tf-dev-gpu").inputs
    assert gpu["amiType"] == "AL2023_x86_64_NVIDIA"
    assert gpu["instanceTypes"] == ["g5.xlarge"]
    assert gpu["capacityType"] == "SPOT"
    assert gpu["scalingConfig"] == {"minSize": 0, "desiredSize": 1, "maxSize": 2}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert gpu["labels"]["tritonform.dev/pool"] == "gpu"
    assert gpu["diskSize"] == 100
    prod_gpu = prod.one("aws:eks/nodeGroup:NodeGroup", "tf-prod-gpu").inputs
    assert prod_gpu["capacityType"] == "ON_DEMAND"
    assert prod_gpu["scalingConfig"] == {"minSize": 2, "desiredSize": 2, "maxSize": 8}


def test_system_node_group_is_untainted_and_on_demand(dev: Plan) -> None:
    system = dev.one("aws:eks/nodeGroup:NodeGroup", "tf-dev-system").inputs
    assert "taints" not in system
    assert system["capacityType"] == "ON_DEMAND"
    assert system["instanceTypes"] == ["m6i.large"]


def test_bucket_blocks_public_access_encrypts_versions_and_requires_tls(dev: Plan) -> None:
    block = dev.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert all(
        block[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    sse = dev.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    versioning = dev.one("aws:s3/bucketVersioning:BucketVersioning").inputs
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    policy = json.loads(dev.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    deny = policy["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ownership = dev.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs
    assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"


def test_prod_bucket_uses_the_configured_kms_key(prod: Plan) -> None:
    sse = prod.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    rule = sse.inputs["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].startswith("arn:aws:kms:eu-west-1")
    assert rule["bucketKeyEnabled"] is True


def test_irsa_role_trusts_only_the_triton_service_account(dev: Plan) -> None:
    role = dev.one("aws:iam/role:Role", "tf-dev-model-reader").inputs
    statement = json.loads(role["assumeRolePolicy"])["Statement"]
    assert len(statement) == 1
    assert statement[0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement[0]["Principal"]["Federated"].endswith("tf-dev-eks-oidc")
    conditions = statement[0]["Condition"]["StringEquals"]
    assert sorted(conditions.values()) == ["sts.amazonaws.com", "system:serviceaccount:tritonform:triton"]


def test_irsa_policy_reads_only_the_model_bucket(dev: Plan) -> None:
    bucket_arn = "arn:aws:s3:::tf-dev-models-0123abcd"
    policy = json.loads(dev.one("aws:iam/rolePolicy:RolePolicy", "tf-dev-model-reader").inputs["policy"])
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:GetObjectVersion"}
    resources = {s["Resource"] for s in policy["Statement"]}
    assert resources == {bucket_arn, f"{bucket_arn}/*"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    # Nobody else gets an inline or attached policy on the reader role.
    assert not [
        a for a in dev.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") if "reader" in a.name
    ]


def test_prod_reader_may_decrypt_with_the_bucket_key_only(prod: Plan) -> None:
    policy = json.loads(prod.one("aws:iam/rolePolicy:RolePolicy", "tf-prod-model-reader").inputs["policy"])
    kms = [s for s in policy["Statement"] if s["Action"] == "kms:Decrypt"]
    assert len(kms) == 1 and kms[0]["Resource"] == prod.settings.bucket.kms_key


def test_stack_outputs(dev: Plan) -> None:
    out = dev.outputs
    assert out["cluster_name"] == "tf-dev-eks"
    assert out["kubeconfig"] == "[secret]"
    assert out["bucket_uri"] == "s3://tf-dev-models-0123abcd"
    assert out["region"] == "us-east-1"
    assert out["gpu_tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_kubeconfig_uses_short_lived_tokens_not_keys(dev: Plan) -> None:
    provider = dev.one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == "[secret]"
    from infra.platform.aws import _kubeconfig

    config = json.loads(_kubeconfig("c", "https://x", "Q0E=", "us-east-1"))
    assert config["users"][0]["user"]["exec"]["args"][:2] == ["eks", "get-token"]
    assert "token" not in config["users"][0]["user"]
