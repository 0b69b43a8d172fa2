"""AWS cluster add-ons: what EKS needs for GPUs to be requestable and the GPU pool to autoscale, and ECR.

- The AL2023 NVIDIA AMI carries the driver and container toolkit but not the device plugin, so
  NVIDIA's device-plugin chart is installed; its required node affinity is met by the
  `nvidia.com/gpu.present=true` label the GPU node group carries.
- Managed node groups do not scale by themselves: the cluster autoscaler (with an IRSA role that
  may only resize this cluster's groups) does, from zero, using the node-template tags of the group.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_EFFECT,
    GPU_TAINT_KEY,
    IMAGE_NAMES,
    ContainerRegistry,
    KubernetesCluster,
    ServiceAccountRef,
)
from infra.settings import StackSettings

AUTOSCALER_SA = ServiceAccountRef("kube-system", "cluster-autoscaler")


def install_gpu_addons(
    settings: StackSettings,
    cluster: KubernetesCluster,
    irsa_trust: pulumi.Output[str],
    opts: pulumi.ResourceOptions,
) -> None:
    """NVIDIA device plugin on the GPU nodes and the cluster autoscaler on the system nodes."""
    prefix = settings.name
    k8s_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=cluster.provider))
    k8s.helm.v3.Release(
        f"{prefix}-nvidia-device-plugin",
        name="nvidia-device-plugin",
        chart="nvidia-device-plugin",
        version=settings.addons.device_plugin_version,
        namespace="kube-system",
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo="https://nvidia.github.io/k8s-device-plugin"),
        values={
            "nodeSelector": {GPU_POOL_LABEL: GPU_POOL_LABEL_VALUE},
            "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": GPU_TAINT_EFFECT}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "200m", "memory": "256Mi"},
            },
        },
        opts=k8s_opts,
    )
    role = aws.iam.Role(
        f"{prefix}-cluster-autoscaler",
        description=f"Cluster autoscaler of {prefix}: resizes only this cluster's node groups",
        assume_role_policy=irsa_trust,
        opts=opts,
    )
    aws.iam.RolePolicy(
        f"{prefix}-cluster-autoscaler",
        role=role.id,
        policy=cluster.cluster_name.apply(_autoscaler_policy),
        opts=opts,
    )
    k8s.helm.v3.Release(
        f"{prefix}-cluster-autoscaler",
        name="cluster-autoscaler",
        chart="cluster-autoscaler",
        version=settings.addons.cluster_autoscaler_version,
        namespace=AUTOSCALER_SA.namespace,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo="https://kubernetes.github.io/autoscaler"),
        values={
            "cloudProvider": "aws",
            "awsRegion": settings.region,
            "autoDiscovery": {"clusterName": cluster.cluster_name},
            "rbac": {
                "serviceAccount": {
                    "name": AUTOSCALER_SA.name,
                    "annotations": {"eks.amazonaws.com/role-arn": role.arn},
                }
            },
            "nodeSelector": {GPU_POOL_LABEL: "system"},
            "extraArgs": {
                "balance-similar-node-groups": True,
                "skip-nodes-with-system-pods": False,
                # Idle GPU nodes cost the most: remove them after 10 minutes without pods.
                "scale-down-unneeded-time": "10m",
            },
            "resources": {
                "requests": {"cpu": "100m", "memory": "300Mi"},
                "limits": {"cpu": "500m", "memory": "600Mi"},
            },
        },
        opts=k8s_opts,
    )


def _autoscaler_policy(cluster_name: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Discover",
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:DescribeAutoScalingGroups",
                        "autoscaling:DescribeAutoScalingInstances",
                        "autoscaling:DescribeLaunchConfigurations",
                        "autoscaling:DescribeScalingActivities",
                        "autoscaling:DescribeTags",
                        "ec2:DescribeImages",
                        "ec2:DescribeInstanceTypes",
                        "ec2:DescribeLaunchTemplateVersions",
                        "ec2:GetInstanceTypesFromInstanceRequirements",
                        "eks:DescribeNodegroup",
                    ],
                    "Resource": "*",
                },
                {
                    "Sid": "ResizeOnlyThisCluster",
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:SetDesiredCapacity",
                        "autoscaling:TerminateInstanceInAutoScalingGroup",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
                    },
                },
            ],
        }
    )


def build_registry(settings: StackSettings, opts: pulumi.ResourceOptions) -> ContainerRegistry:
    """One private ECR repository per image, scanned on push and encrypted.

    Tags stay mutable because a rebuild re-pushes the same version tag; the workload always runs the
    digest-pinned reference the build returns, so what runs is never ambiguous.
    """
    prefix = settings.name
    registry = ContainerRegistry(f"{prefix}-registry", opts)
    child = pulumi.ResourceOptions(parent=registry)
    repositories = {
        image: aws.ecr.Repository(
            f"{prefix}-{image}",
            name=f"{prefix}/{image}",
            image_tag_mutability="MUTABLE",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")],
            force_delete=settings.environment == "dev",
            opts=child,
        )
        for image in IMAGE_NAMES
    }
    first = repositories[IMAGE_NAMES[0]]
    token = aws.ecr.get_authorization_token_output(
        registry_id=first.registry_id, opts=pulumi.InvokeOutputOptions(parent=registry)
    )
    registry.finish(
        address=token.proxy_endpoint.apply(lambda url: url.removeprefix("https://")),
        username=token.user_name,
        password=token.password,
        repositories={image: repo.repository_url for image, repo in repositories.items()},
    )
    return registry
