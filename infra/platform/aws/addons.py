"""AWS cluster add-ons: what EKS needs for GPUs to be requestable and the GPU pool to autoscale.

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

from infra.platform.aws.cluster import AwsCluster
from infra.platform.aws.identity import irsa_trust
from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_EFFECT,
    GPU_TAINT_KEY,
    CloudContext,
    GpuNodePool,
    ServiceAccountRef,
)

AUTOSCALER_SA = ServiceAccountRef("kube-system", "cluster-autoscaler")


def install_gpu_addons(context: CloudContext, cluster: AwsCluster, gpu_pool: GpuNodePool) -> None:
    """NVIDIA device plugin on the GPU nodes and the cluster autoscaler on the system nodes."""
    settings, prefix = context.settings, context.prefix
    trust = irsa_trust(cluster, AUTOSCALER_SA)
    opts = pulumi.ResourceOptions.merge(context.options, pulumi.ResourceOptions(depends_on=[gpu_pool]))
    k8s_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=cluster.component.provider))
    k8s.helm.v3.Release(
        context.name("nvidia-device-plugin"),
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
        context.name("cluster-autoscaler"),
        description=f"Cluster autoscaler of {prefix}: resizes only this cluster's node groups",
        assume_role_policy=trust,
        opts=opts,
    )
    aws.iam.RolePolicy(
        context.name("cluster-autoscaler"),
        role=role.id,
        policy=cluster.component.cluster_name.apply(_autoscaler_policy),
        opts=opts,
    )
    k8s.helm.v3.Release(
        context.name("cluster-autoscaler"),
        name="cluster-autoscaler",
        chart="cluster-autoscaler",
        version=settings.addons.cluster_autoscaler_version,
        namespace=AUTOSCALER_SA.namespace,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo="https://kubernetes.github.io/autoscaler"),
        values={
            "cloudProvider": "aws",
            "awsRegion": settings.region,
            "autoDiscovery": {"clusterName": cluster.component.cluster_name},
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
