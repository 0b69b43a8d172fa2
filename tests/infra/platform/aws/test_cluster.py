"""AWS cluster (aws/cluster.py): EKS, its OIDC provider for IRSA, the system and GPU node groups."""

from __future__ import annotations

import json

from infra.offline import Plan


def test_eks_cluster_version_logging_encryption_and_private_nodes(dev: Plan) -> None:
    eks = dev.one("aws:eks/cluster:Cluster").inputs
    assert eks["version"] == "1.36"
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
    # The disk size lives in the launch template's root volume (EKS refuses diskSize next to a template).
    template = dev.one("aws:ec2/launchTemplate:LaunchTemplate", "tf-dev-gpu").inputs
    assert template["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 100
    prod_gpu = prod.one("aws:eks/nodeGroup:NodeGroup", "tf-prod-gpu").inputs
    assert prod_gpu["capacityType"] == "ON_DEMAND"
    assert prod_gpu["scalingConfig"] == {"minSize": 2, "desiredSize": 2, "maxSize": 8}


def test_system_node_group_is_untainted_and_on_demand(dev: Plan) -> None:
    system = dev.one("aws:eks/nodeGroup:NodeGroup", "tf-dev-system").inputs
    assert "taints" not in system
    assert system["capacityType"] == "ON_DEMAND"
    assert system["instanceTypes"] == ["m6i.large"]


def test_kubeconfig_uses_short_lived_tokens_not_keys(dev: Plan) -> None:
    provider = dev.one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == "[secret]"
    from infra.platform.aws.cluster import eks_kubeconfig

    config = json.loads(eks_kubeconfig("c", "https://x", "Q0E=", "us-east-1"))
    assert config["users"][0]["user"]["exec"]["args"][:2] == ["eks", "get-token"]
    assert "token" not in config["users"][0]["user"]


def test_vpc_cni_enforces_network_policies_with_its_own_irsa_role(dev: Plan) -> None:
    addon = dev.one("aws:eks/addon:Addon", "tf-dev-vpc-cni")
    assert addon.inputs["addonName"] == "vpc-cni"
    assert json.loads(addon.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert addon.inputs["serviceAccountRoleArn"] == "arn:aws:iam::111122223333:role/tf-dev-vpc-cni"
    trust = json.loads(dev.one("aws:iam/role:Role", "tf-dev-vpc-cni").inputs["assumeRolePolicy"])
    assert (
        "system:serviceaccount:kube-system:aws-node"
        in trust["Statement"][0]["Condition"]["StringEquals"].values()
    )
    cni_policy = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
    holders = {
        a.inputs["role"]
        for a in dev.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.inputs["policyArn"] == cni_policy
    }
    assert holders == {"tf-dev-vpc-cni"}  # not the node role: no node holds the CNI's permissions
    # Every node joins with the managed CNI already configured (it runs before any node group).
    for group in dev.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert "aws:eks/addon:Addon::tf-dev-vpc-cni" in group.dependencies


def test_nodes_require_imdsv2_with_hop_limit_one_through_launch_templates(dev: Plan, prod: Plan) -> None:
    for plan in (dev, prod):
        name = plan.settings.name
        for pool, disk in (("system", plan.settings.system_pool), ("gpu", plan.settings.gpu_pool)):
            group = plan.one("aws:eks/nodeGroup:NodeGroup", f"{name}-{pool}").inputs
            template = plan.one("aws:ec2/launchTemplate:LaunchTemplate", f"{name}-{pool}").inputs
            assert group["launchTemplate"] == {"id": f"{name}-{pool}-id", "version": "1"}
            assert template["metadataOptions"] == {
                "httpEndpoint": "enabled",
                "httpTokens": "required",
                "httpPutResponseHopLimit": 1,
            }
            (root,) = template["blockDeviceMappings"]
            assert root["deviceName"] == "/dev/xvda"
            assert root["ebs"] == {
                "volumeSize": disk.disk_size_gb,
                "volumeType": "gp3",
                "encrypted": "true",
                "deleteOnTermination": "true",
            }
            # What EKS refuses in a template next to the node group's instance types and AMI type, and
            # the node group's own disk size next to a template.
            assert not {"imageId", "instanceType", "iamInstanceProfile", "networkInterfaces"} & set(template)
            assert "diskSize" not in group and group["amiType"].startswith("AL2023_x86_64_")
