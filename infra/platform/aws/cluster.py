"""AWS cluster: EKS (API auth, encrypted secrets, control-plane logs), its OIDC provider for IRSA, the node
role, the untainted system node group and the tainted, autoscaled GPU node group."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    CloudContext,
    GpuNodePool,
    GpuScheduling,
    KubernetesCluster,
    Network,
)
from infra.platform.kubeconfigs import exec_kubeconfig

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "cni": "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}
GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
SYSTEM_AMI_TYPE = "AL2023_x86_64_STANDARD"


@dataclass(frozen=True)
class AwsCluster:
    """EKS and what later steps attach to: IRSA's OIDC provider, the node role, the system nodes."""

    component: KubernetesCluster
    eks: aws.eks.Cluster
    oidc_provider: aws.iam.OpenIdConnectProvider
    node_role: aws.iam.Role
    node_role_policies: list[aws.iam.RolePolicyAttachment]
    system_nodes: aws.eks.NodeGroup


def build_cluster(context: CloudContext, network: Network) -> AwsCluster:
    """EKS in the private subnets, its OIDC provider, the node role and the system node group."""
    settings, name = context.settings, context.name
    component = KubernetesCluster(name("cluster"), context.options)
    child = context.child(component)
    role = aws.iam.Role(name("eks-cluster"), assume_role_policy=_assume_role("eks.amazonaws.com"), opts=child)
    attachment = aws.iam.RolePolicyAttachment(
        name("eks-cluster"),
        role=role.name,
        policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
        opts=child,
    )
    secrets_key = aws.kms.Key(
        name("eks-secrets"),
        description=f"Envelope encryption of Kubernetes secrets in {name('eks')}",
        enable_key_rotation=True,
        deletion_window_in_days=7 if settings.environment == "dev" else 30,
        opts=child,
    )
    eks = aws.eks.Cluster(
        name("eks"),
        name=name("eks"),
        role_arn=role.arn,
        version=settings.cluster.kubernetes_version,
        vpc_config=aws.eks.ClusterVpcConfigArgs(
            subnet_ids=network.private_subnet_ids,
            endpoint_private_access=True,
            endpoint_public_access=settings.api_public,
            public_access_cidrs=list(settings.cluster.endpoint_allowed_cidrs)
            if settings.api_public
            else None,
        ),
        access_config=aws.eks.ClusterAccessConfigArgs(
            authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True
        ),
        enabled_cluster_log_types=CONTROL_PLANE_LOGS,
        encryption_config=aws.eks.ClusterEncryptionConfigArgs(
            provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn),
            resources=["secrets"],
        ),
        opts=pulumi.ResourceOptions(parent=component, depends_on=[attachment]),
    )
    issuer = eks.identities.apply(lambda ids: ids[0]["oidcs"][0]["issuer"] if ids else "")
    oidc_provider = aws.iam.OpenIdConnectProvider(
        name("eks-oidc"), url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child
    )
    node_role = aws.iam.Role(
        name("eks-node"), assume_role_policy=_assume_role("ec2.amazonaws.com"), opts=child
    )
    node_role_policies = [
        aws.iam.RolePolicyAttachment(name(f"eks-node-{key}"), role=node_role.name, policy_arn=arn, opts=child)
        for key, arn in NODE_POLICIES.items()
    ]
    system_pool = settings.system_pool
    system_nodes = aws.eks.NodeGroup(
        name("system"),
        cluster_name=eks.name,
        node_role_arn=node_role.arn,
        subnet_ids=network.private_subnet_ids,
        ami_type=SYSTEM_AMI_TYPE,
        capacity_type="ON_DEMAND",
        instance_types=[settings.system_instance_type],
        disk_size=system_pool.disk_size_gb,
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            min_size=system_pool.min_nodes,
            desired_size=system_pool.desired_nodes,
            max_size=system_pool.max_nodes,
        ),
        labels={GPU_POOL_LABEL: "system"},
        opts=pulumi.ResourceOptions(
            parent=component,
            depends_on=node_role_policies,
            ignore_changes=["scalingConfig.desiredSize"],
        ),
    )
    kubeconfig = pulumi.Output.all(eks.name, eks.endpoint, eks.certificate_authority).apply(
        lambda args: eks_kubeconfig(args[0], args[1], args[2]["data"], settings.region)
    )
    component.finish(cluster_name=eks.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
    return AwsCluster(component, eks, oidc_provider, node_role, node_role_policies, system_nodes)


def build_gpu_pool(context: CloudContext, cluster: AwsCluster, network: Network) -> GpuNodePool:
    """The GPU managed node group: tainted, labelled for the device plugin, tagged for the autoscaler."""
    pool = context.settings.gpu_pool
    component = GpuNodePool(context.name("gpu-pool"), context.options)
    group = aws.eks.NodeGroup(
        context.name("gpu"),
        cluster_name=cluster.component.cluster_name,
        node_role_arn=cluster.node_role.arn,
        subnet_ids=network.private_subnet_ids,
        ami_type=GPU_AMI_TYPE,
        capacity_type="SPOT" if pool.capacity == "spot" else "ON_DEMAND",
        instance_types=[pool.instance_type],
        disk_size=pool.disk_size_gb,
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            min_size=pool.min_nodes, desired_size=pool.desired_nodes, max_size=pool.max_nodes
        ),
        labels={
            GPU_POOL_LABEL: GPU_POOL_LABEL_VALUE,
            # NVIDIA's device plugin chart only schedules onto nodes that say they have a GPU.
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": str(pool.gpus_per_node),
        },
        taints=[aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value=GPU_TAINT_VALUE, effect="NO_SCHEDULE")],
        tags={
            # Lets the cluster autoscaler scale this group from zero with the right labels and taint.
            f"k8s.io/cluster-autoscaler/node-template/label/{GPU_POOL_LABEL}": GPU_POOL_LABEL_VALUE,
            f"k8s.io/cluster-autoscaler/node-template/taint/{GPU_TAINT_KEY}": f"{GPU_TAINT_VALUE}:NoSchedule",
            "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu": str(pool.gpus_per_node),
        },
        opts=pulumi.ResourceOptions(
            parent=component,
            depends_on=cluster.node_role_policies,
            # The cluster autoscaler owns the desired size once the group exists.
            ignore_changes=["scalingConfig.desiredSize"],
        ),
    )
    component.finish(pool_name=group.node_group_name, scheduling=GpuScheduling.standard())
    return component


def eks_kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates through `aws eks get-token` (no long-lived key in it)."""
    return exec_kubeconfig(
        name,
        endpoint,
        ca_data,
        {"command": "aws", "args": ["eks", "get-token", "--cluster-name", name, "--region", region]},
    )


def _assume_role(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )
