"""AWS cluster add-ons: what EKS does not run by itself.

- The AL2023 NVIDIA AMI carries the driver and container toolkit but not the device plugin, so
  NVIDIA's device-plugin chart is installed; its required node affinity is met by the
  `nvidia.com/gpu.present=true` label the GPU node group carries.
- Managed node groups do not scale by themselves: the cluster autoscaler (with an IRSA role that
  may only resize this cluster's groups) does, from zero, using the node-template tags of the group.
  Its image is the release of the cluster's own minor (infra/catalog.py); the chart's default is not.
- EKS 1.30+ has no default StorageClass and no EBS driver: the EBS CSI driver runs as a managed add-on
  with its own IRSA role, behind a default, encrypted gp3 StorageClass (Prometheus' volume binds to it).
- EKS serves no metrics API: metrics-server does, or the gateway's CPU autoscaler never acts.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.catalog import CLUSTER_AUTOSCALER_IMAGE, cluster_autoscaler_problem, cluster_autoscaler_tag
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
from infra.settings import SettingsError

AUTOSCALER_SA = ServiceAccountRef("kube-system", "cluster-autoscaler")
EBS_CSI_SA = ServiceAccountRef("kube-system", "ebs-csi-controller-sa")
EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
DEFAULT_STORAGE_CLASS = "gp3"
METRICS_SERVER_REPO = "https://kubernetes-sigs.github.io/metrics-server/"
SYSTEM_NODES = {GPU_POOL_LABEL: "system"}


def install_gpu_addons(context: CloudContext, cluster: AwsCluster, gpu_pool: GpuNodePool) -> None:
    """NVIDIA device plugin on the GPU nodes and the cluster autoscaler on the system nodes."""
    settings, prefix = context.settings, context.prefix
    minor = settings.cluster.kubernetes_version
    image_tag = cluster_autoscaler_tag(minor)
    if image_tag is None:  # `pulumi up` stops on this earlier (readiness); the plan gets here
        raise SettingsError([cluster_autoscaler_problem("aws", minor) or minor])
    trust = irsa_trust(cluster, AUTOSCALER_SA)
    opts = pulumi.ResourceOptions.merge(
        context.options, pulumi.ResourceOptions(depends_on=[gpu_pool, cluster.system_nodes])
    )
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
            "image": {"repository": CLUSTER_AUTOSCALER_IMAGE, "tag": image_tag},
            "autoDiscovery": {"clusterName": cluster.component.cluster_name},
            "rbac": {
                "serviceAccount": {
                    "name": AUTOSCALER_SA.name,
                    "annotations": {"eks.amazonaws.com/role-arn": role.arn},
                }
            },
            "nodeSelector": SYSTEM_NODES,
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


def install_cluster_addons(context: CloudContext, cluster: AwsCluster) -> list[pulumi.Resource]:
    """The EBS CSI driver with a default gp3 StorageClass, and metrics-server, on the system nodes.

    Returns what the workload must find in place before it starts (the StorageClass, the metrics API)."""
    settings = context.settings
    after_nodes = pulumi.ResourceOptions.merge(
        context.options, pulumi.ResourceOptions(depends_on=[cluster.system_nodes])
    )
    k8s_opts = pulumi.ResourceOptions.merge(
        after_nodes, pulumi.ResourceOptions(provider=cluster.component.provider)
    )
    role = aws.iam.Role(
        context.name("ebs-csi"),
        description=f"EBS CSI driver of {context.name('eks')}: creates and attaches the cluster's volumes",
        assume_role_policy=irsa_trust(cluster, EBS_CSI_SA),
        opts=context.options,
    )
    policy = aws.iam.RolePolicyAttachment(
        context.name("ebs-csi"), role=role.name, policy_arn=EBS_CSI_POLICY, opts=context.options
    )
    driver = aws.eks.Addon(
        context.name("ebs-csi"),
        cluster_name=cluster.component.cluster_name,
        addon_name="aws-ebs-csi-driver",
        service_account_role_arn=role.arn,
        # Nodes answer metadata requests from their own processes only (hop limit 1): the controller is
        # told its region instead of asking the instance metadata service; the node plugin falls back to
        # the Kubernetes API for its zone and instance id (its attach limit then ignores ENIs).
        configuration_values=json.dumps({"controller": {"region": settings.region}}),
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        opts=pulumi.ResourceOptions.merge(after_nodes, pulumi.ResourceOptions(depends_on=[policy])),
    )
    storage_class = k8s.storage.v1.StorageClass(
        context.name(DEFAULT_STORAGE_CLASS),
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=DEFAULT_STORAGE_CLASS,
            annotations={"storageclass.kubernetes.io/is-default-class": "true"},
        ),
        provisioner="ebs.csi.aws.com",
        # Encrypted with the account's EBS key; the volume is created in the zone of the pod that uses it.
        parameters={"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"},
        volume_binding_mode="WaitForFirstConsumer",
        allow_volume_expansion=True,
        reclaim_policy="Delete",
        opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[driver])),
    )
    highly_available = settings.environment == "prod"
    metrics_server = k8s.helm.v3.Release(
        context.name("metrics-server"),
        name="metrics-server",
        chart="metrics-server",
        version=settings.addons.metrics_server_version,
        namespace="kube-system",
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=METRICS_SERVER_REPO),
        values={
            "nodeSelector": SYSTEM_NODES,
            "replicas": 2 if highly_available else 1,
            "podDisruptionBudget": {"enabled": highly_available, "minAvailable": 1},
            "resources": {
                "requests": {"cpu": "100m", "memory": "200Mi"},
                "limits": {"cpu": "500m", "memory": "400Mi"},
            },
        },
        opts=k8s_opts,
    )
    return [storage_class, metrics_server]


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
