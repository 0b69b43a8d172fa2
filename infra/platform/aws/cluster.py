"""AWS cluster: EKS (API auth, encrypted secrets, control-plane logs), its OIDC provider for IRSA, the VPC CNI
with network policy enforcement, the node role, the untainted system node group and the tainted, autoscaled
GPU node group.

Every node group launches from a template that requires IMDSv2 with a hop limit of 1: pods (which are one
hop further than the node) cannot read the node role's credentials from the instance metadata service. What
needs AWS credentials gets its own IRSA role instead (the CNI here; storage, autoscaling, model reads in
their parts). The template carries only what EKS lets it carry next to the node group's instance types and
AMI type: the metadata options and the root volume (the node group's `disk_size` moves here).
"""

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
    ServiceAccountRef,
)
from infra.platform.kubeconfigs import exec_kubeconfig

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
# The CNI's permission to manage every node's network interfaces is not here: the CNI has its own role.
NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}
CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
CNI_SERVICE_ACCOUNT = ServiceAccountRef("kube-system", "aws-node")
GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
SYSTEM_AMI_TYPE = "AL2023_x86_64_STANDARD"
ROOT_DEVICE = "/dev/xvda"  # the root volume of the EKS AL2023 AMIs, standard and NVIDIA alike
# The node's own processes are one hop from the metadata service, a pod's are two: 1 keeps pods out.
METADATA_HOP_LIMIT = 1


@dataclass(frozen=True)
class AwsCluster:
    """EKS and what later steps attach to: IRSA's OIDC provider, the node role, the system nodes, and what
    every node group waits for (the node role's policies, the CNI add-on)."""

    component: KubernetesCluster
    eks: aws.eks.Cluster
    oidc_provider: aws.iam.OpenIdConnectProvider
    node_role: aws.iam.Role
    node_prerequisites: list[pulumi.Resource]
    system_nodes: aws.eks.NodeGroup


def service_account_trust(
    oidc_provider: aws.iam.OpenIdConnectProvider, issuer_url: pulumi.Input[str], account: ServiceAccountRef
) -> pulumi.Output[str]:
    """A trust policy that lets only `account`'s projected tokens from this cluster assume the role (IRSA)."""
    issuer_host = pulumi.Output.from_input(issuer_url).apply(lambda url: url.removeprefix("https://"))
    return pulumi.Output.all(oidc_provider.arn, issuer_host).apply(
        lambda args: json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Federated": args[0]},
                        "Action": "sts:AssumeRoleWithWebIdentity",
                        "Condition": {
                            "StringEquals": {
                                f"{args[1]}:sub": account.subject,
                                f"{args[1]}:aud": "sts.amazonaws.com",
                            }
                        },
                    }
                ],
            }
        )
    )


def node_launch_template(
    context: CloudContext, pool: str, disk_size_gb: int, parent: pulumi.Resource
) -> aws.ec2.LaunchTemplate:
    """A node group's launch template: IMDSv2 only, hop limit 1, an encrypted gp3 root volume.

    No image, instance type, instance profile or subnet: the node group sets those (EKS refuses them here)."""
    return aws.ec2.LaunchTemplate(
        context.name(pool),
        description=f"{context.name(pool)} nodes: IMDSv2 only, hop limit 1, encrypted root volume",
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled",
            http_tokens="required",
            http_put_response_hop_limit=METADATA_HOP_LIMIT,
        ),
        block_device_mappings=[
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=ROOT_DEVICE,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=disk_size_gb,
                    volume_type="gp3",
                    encrypted="true",
                    delete_on_termination="true",
                ),
            )
        ],
        opts=pulumi.ResourceOptions(parent=parent),
    )


def _template_ref(template: aws.ec2.LaunchTemplate) -> aws.eks.NodeGroupLaunchTemplateArgs:
    return aws.eks.NodeGroupLaunchTemplateArgs(id=template.id, version=template.latest_version.apply(str))


def _network_policy_cni(
    context: CloudContext,
    component: KubernetesCluster,
    eks: aws.eks.Cluster,
    oidc_provider: aws.iam.OpenIdConnectProvider,
    issuer: pulumi.Output[str],
) -> aws.eks.Addon:
    """The VPC CNI as a managed add-on that enforces NetworkPolicies, with its own IRSA role.

    It runs before any node joins, so no node ever needs the CNI policy on its own role (as AWS recommends:
    the permission to rewire every node's network interfaces stays with `kube-system/aws-node`)."""
    child = context.child(component)
    role = aws.iam.Role(
        context.name("vpc-cni"),
        description=f"VPC CNI of {context.name('eks')}: manages the nodes' network interfaces",
        assume_role_policy=service_account_trust(oidc_provider, issuer, CNI_SERVICE_ACCOUNT),
        opts=child,
    )
    policy = aws.iam.RolePolicyAttachment(
        context.name("vpc-cni"), role=role.name, policy_arn=CNI_POLICY, opts=child
    )
    return aws.eks.Addon(
        context.name("vpc-cni"),
        cluster_name=eks.name,
        addon_name="vpc-cni",
        service_account_role_arn=role.arn,
        # Without this the cluster accepts NetworkPolicies and enforces none of them.
        configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        opts=pulumi.ResourceOptions(parent=component, depends_on=[policy]),
    )


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
    cni = _network_policy_cni(context, component, eks, oidc_provider, issuer)
    node_prerequisites: list[pulumi.Resource] = [*node_role_policies, cni]
    system_pool = settings.system_pool
    template = node_launch_template(context, "system", system_pool.disk_size_gb, component)
    system_nodes = aws.eks.NodeGroup(
        name("system"),
        cluster_name=eks.name,
        node_role_arn=node_role.arn,
        subnet_ids=network.private_subnet_ids,
        ami_type=SYSTEM_AMI_TYPE,
        capacity_type="ON_DEMAND",
        instance_types=[settings.system_instance_type],
        launch_template=_template_ref(template),
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            min_size=system_pool.min_nodes,
            desired_size=system_pool.desired_nodes,
            max_size=system_pool.max_nodes,
        ),
        labels={GPU_POOL_LABEL: "system"},
        opts=pulumi.ResourceOptions(
            parent=component,
            depends_on=node_prerequisites,
            ignore_changes=["scalingConfig.desiredSize"],
        ),
    )
    kubeconfig = pulumi.Output.all(eks.name, eks.endpoint, eks.certificate_authority).apply(
        lambda args: eks_kubeconfig(args[0], args[1], args[2]["data"], settings.region)
    )
    component.finish(cluster_name=eks.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
    return AwsCluster(component, eks, oidc_provider, node_role, node_prerequisites, system_nodes)


def build_gpu_pool(context: CloudContext, cluster: AwsCluster, network: Network) -> GpuNodePool:
    """The GPU managed node group: tainted, labelled for the device plugin, tagged for the autoscaler."""
    pool = context.settings.gpu_pool
    component = GpuNodePool(context.name("gpu-pool"), context.options)
    template = node_launch_template(context, "gpu", pool.disk_size_gb, component)
    group = aws.eks.NodeGroup(
        context.name("gpu"),
        cluster_name=cluster.component.cluster_name,
        node_role_arn=cluster.node_role.arn,
        subnet_ids=network.private_subnet_ids,
        ami_type=GPU_AMI_TYPE,
        capacity_type="SPOT" if pool.capacity == "spot" else "ON_DEMAND",
        instance_types=[pool.instance_type],
        launch_template=_template_ref(template),
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
            depends_on=cluster.node_prerequisites,
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
